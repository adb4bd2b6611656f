from j1msky import J1MSKYClient, TaskPriority

# Spawn with callback
agent = client.spawn(
    model="sonnet",
    task="Research AI trends",
    priority=TaskPriority.HIGH,
    webhook_url="https://your-app.com/webhook"
)

# Check status manually
status = client.get_agent_status(agent.id)
if status.state == "completed":
    print(status.result)

# Spawn team for complex tasks
team_result = client.spawn_team(
    team="team_creative",
    task="Design a landing page for our product",
    priority=TaskPriority.HIGH
)
