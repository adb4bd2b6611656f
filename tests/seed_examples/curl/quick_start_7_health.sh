# Quick health check
curl "$J1MSKY_API/health" | jq '.'

# Full orchestrator status
curl "$J1MSKY_API/orchestrator/status" | jq '
  {
    timestamp: .timestamp,
    budget_used: .today_spend,
    budget_remaining: .budget_remaining,
    alert_level: .budget_alert_level,
    models_active: .models_active
  }
'
