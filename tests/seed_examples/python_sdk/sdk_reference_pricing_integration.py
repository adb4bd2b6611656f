from j1msky import J1MSKYClient

client = J1MSKYClient()

# Get quote before running task
quote = client.get_quote(
    model="k2p5",
    estimated_input_tokens=2000,
    estimated_output_tokens=800,
    complexity="medium",
    segment="mid_market"
)

print(f"Internal cost: ${quote.internal_cost}")
print(f"Customer price: ${quote.recommended_price}")
print(f"Margin: {quote.gross_margin_pct}%")

# Check if quote passes guardrails
if quote.guardrail_check.is_compliant:
    # Safe to proceed
    agent = client.spawn(model="k2p5", task="Task description")
