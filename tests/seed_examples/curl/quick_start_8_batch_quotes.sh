# Generate quotes for multiple segments at once
curl -X POST "$J1MSKY_API/pricing/batch-quotes" \
  -H "Content-Type: application/json" \
  -d '{
    "model": "k2p5",
    "estimated_input": 3000,
    "estimated_output": 1200,
    "complexity": "high",
    "delivery_type": "task"
  }' | jq '.quotes_by_segment'

# Compare pricing across all segments
