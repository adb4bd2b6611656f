# Generate a quote for a medium complexity coding task
curl -X POST "$J1MSKY_API/pricing/quote" \
  -H "Content-Type: application/json" \
  -d '{
    "model": "k2p5",
    "estimated_input": 2000,
    "estimated_output": 800,
    "complexity": "medium",
    "segment": "mid_market"
  }' | jq '.'

# Expected response shows internal cost, recommended price, and margin
