"""Kyros alerts (``GET /monitoring/alerts``, the WebSocket's ``system_alerts``) from what the
daemon records: the budget's level changes in the event log (budget.notice, .warning,
.critical, and budget.exceeded when a provider billed past a cap) and the providers whose
circuit breaker is open now."""

from __future__ import annotations

from typing import Any

from ...events import Event
from ...agent_record import iso

__all__ = ["ALERT_EVENTS", "alert_of", "breaker_alerts"]

# event type -> (alert type, severity)
ALERT_EVENTS = {"budget.notice": ("budget_notice", "info"), "budget.warning": ("budget_warning", "warning"),
                "budget.critical": ("budget_critical", "critical"), "budget.exceeded": ("cost_overrun", "error")}


def alert_of(event: Event, active: bool) -> dict[str, Any]:
    """The alert an event of ALERT_EVENTS is; ``active``: the budget is still at its level."""
    kind, severity = ALERT_EVENTS[event.type]
    data = event.data
    level = data.get("budget_alert_level", severity)
    message = (f"Daily budget at {data.get('budget_utilization_pct')}% (level {level})" if kind != "cost_overrun"
               else "A provider billed past a budget's cap")
    return {"id": f"alert_{event.id}", "type": kind, "severity": severity, "status": "active" if active else "resolved",
            "message": message, "details": data, "created_at": iso(event.ts), "acknowledged_at": None,
            "resolved_at": None}


def breaker_alerts(slots: Any) -> list[dict[str, Any]]:
    """One active alert per provider whose breaker is open now."""
    alerts = []
    for name, slot in slots.items():
        snap = slot.breaker.snapshot()
        if snap["state"] == "open":
            alerts.append({"id": f"alert_breaker_{name}", "type": "provider_unavailable", "severity": "error",
                           "status": "active", "message": f"Provider {name}: circuit open after repeated failures",
                           "details": {"provider": name, **snap}, "created_at": None, "acknowledged_at": None,
                           "resolved_at": None})
    return alerts
