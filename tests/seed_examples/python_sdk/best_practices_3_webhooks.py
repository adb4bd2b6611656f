# Set up webhook for completion
client.register_webhook(url="https://your-app.com/webhook")

# Spawn without blocking
agent = client.spawn(model="k2p5", task="Long task")
# Result will POST to your webhook when ready
