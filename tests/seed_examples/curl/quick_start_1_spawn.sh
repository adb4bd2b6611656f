# Spawn a simple coding agent
curl -X POST "$J1MSKY_API/spawn" \
  -H "Content-Type: application/json" \
  -H "Authorization: Bearer $J1MSKY_KEY" \
  -d '{
    "model": "k2p5",
    "task": "Write a Python function to reverse a string",
    "priority": "normal"
  }' | jq '.'

# Expected response:
# {
#   "success": true,
#   "agent_id": "subagent_1234567890_1234",
#   "model": "k2p5",
#   "status": "spawning",
#   "estimated_cost": 0.05
# }
