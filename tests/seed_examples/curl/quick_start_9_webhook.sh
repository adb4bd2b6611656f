# Register a webhook to receive pricing events
curl -X POST "$J1MSKY_API/pricing/webhook" \
  -H "Content-Type: application/json" \
  -d '{
    "url": "https://your-app.com/webhooks/j1msky",
    "events": ["pricing.quote_generated", "pricing.exception_created"],
    "secret": "your_webhook_secret"
  }' | jq '.'

# List registered webhooks
curl "$J1MSKY_API/pricing/webhooks" | jq '.'
