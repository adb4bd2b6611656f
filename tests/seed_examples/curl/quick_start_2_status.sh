# Replace with your agent_id from spawn response
AGENT_ID="subagent_1234567890_1234"

curl "$J1MSKY_API/agent/$AGENT_ID" \
  -H "Authorization: Bearer $J1MSKY_KEY" | jq '.'
