# Deploy the coding team for a complex project
curl -X POST "$J1MSKY_API/spawn-team" \
  -H "Content-Type: application/json" \
  -H "Authorization: Bearer $J1MSKY_KEY" \
  -d '{
    "team": "team_coding",
    "task": "Build a REST API for user authentication with JWT tokens",
    "priority": "high"
  }' | jq '.'
