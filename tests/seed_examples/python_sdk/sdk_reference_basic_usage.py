from j1msky import J1MSKYClient

# Initialize client
client = J1MSKYClient(
    base_url="http://localhost:8080",
    api_key="your_api_key"  # Optional for local instances
)

# Spawn an agent
agent = client.spawn(
    model="k2p5",
    task="Write a Python function to calculate fibonacci",
    priority="normal"
)

# Wait for completion with timeout
result = agent.wait_for_completion(timeout=300)
print(result.output)
print(f"Cost: ${result.cost}")
