"""The Kyros routes, under PREFIX: method, path, handler, scope, rate-limit class.

Scopes as the native API's for the same service: reads agents:read, writes agents:write,
deciding an escalation and changing configuration admin:write, costs billing:read; the
daemon-wide series of /monitoring/metrics admin:read, as the native /metrics/timeseries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import configuration, models, monitoring, tasks, webhooks, ws
from .envelope import ENVELOPE

__all__ = ["ENVELOPE", "MOUNT", "PREFIX", "ROUTES", "WS_PATH", "all_routes"]

PREFIX = "/kyros/v1"
MOUNT = "/kyros"  # every path under it answers in the Kyros envelope, unknown ones included
WS_PATH = "/ws"
READ, WRITE, BILLING, ADMIN, ADMIN_READ = "agents:read", "agents:write", "billing:read", "admin:write", "admin:read"

# method, path, handler, scope; the rate-limit class is "other" for all, as for the native task routes
_DECLARED = (
    ("POST", "/tasks", tasks.create_task, WRITE),
    ("GET", "/tasks", tasks.list_tasks, READ),
    ("GET", "/tasks/{task_id}", tasks.get_task, READ),
    ("PUT", "/tasks/{task_id}", tasks.update_task, WRITE),
    ("DELETE", "/tasks/{task_id}", tasks.cancel_task, WRITE),
    ("POST", "/agents/{role}/submit", tasks.submit_to_agent, WRITE),
    ("GET", "/agents/{role}/status", tasks.agent_status, READ),
    ("GET", "/agents/{role}/configuration", tasks.agent_configuration, READ),
    ("PUT", "/agents/{role}/configuration", tasks.update_agent_configuration, ADMIN),
    ("POST", "/models/select", tasks.select_model, WRITE),
    ("GET", "/models", models.list_models, READ),
    ("GET", "/models/{model_name}", models.get_model, READ),
    ("POST", "/escalation/submit", tasks.submit_escalation, WRITE),
    ("POST", "/escalation/{escalation_id}/approve", tasks.approve_escalation, ADMIN),
    ("GET", "/escalation/{escalation_id}/status", tasks.escalation_status, READ),
    ("GET", "/escalations", tasks.list_escalations, READ),
    ("GET", "/monitoring/costs", tasks.costs, BILLING),
    ("GET", "/monitoring/health", monitoring.health, READ),
    ("GET", "/monitoring/metrics", monitoring.metrics, ADMIN_READ),
    ("GET", "/monitoring/alerts", monitoring.alerts, READ),
    ("GET", "/configuration", configuration.get_configuration, READ),
    ("PUT", "/configuration", configuration.put_configuration, ADMIN),
    ("GET", "/configuration/agents/{role}", tasks.agent_configuration, READ),
    ("GET", WS_PATH, ws.websocket, READ),
)
ROUTES = tuple((method, path, handler, scope, "other") for method, path, handler, scope in _DECLARED)


def all_routes(native: Iterable[tuple[Any, ...]]) -> tuple[tuple[Any, ...], ...]:
    """ROUTES and the webhook routes: the native API's rows (same path, scope and class),
    each served by the Kyros handler of the same name (webhooks.py)."""
    same = tuple((method, path, getattr(webhooks, handler.__name__), scope, limit_class)
                 for method, path, handler, scope, limit_class in native
                 if path.startswith("/webhooks") and hasattr(webhooks, handler.__name__))
    return ROUTES + same
