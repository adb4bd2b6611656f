"""The Kyros routes, under PREFIX: method, path, handler, scope, rate-limit class.

Scopes as the native API's for the same service: reads agents:read, writes agents:write,
deciding an escalation and changing configuration admin:write, costs billing:read; the
daemon-wide series of /monitoring/metrics admin:read, as the native /metrics/timeseries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import models, monitoring, webhooks, ws
from .envelope import ENVELOPE

__all__ = ["ENVELOPE", "MOUNT", "PREFIX", "ROUTES", "WS_PATH", "all_routes"]

PREFIX = "/kyros/v1"
MOUNT = "/kyros"  # every path under it answers in the Kyros envelope, unknown ones included
WS_PATH = "/ws"
READ, WRITE, BILLING, ADMIN, ADMIN_READ = "agents:read", "agents:write", "billing:read", "admin:write", "admin:read"

# method, path, handler, scope (rate-limit class: SPAWNING's, else "other")
_DECLARED = (
    ("GET", "/models", models.list_models, READ),
    ("GET", "/models/{model_name}", models.get_model, READ),
    ("GET", "/monitoring/health", monitoring.health, READ),
    ("GET", "/monitoring/metrics", monitoring.metrics, ADMIN_READ),
    ("GET", "/monitoring/alerts", monitoring.alerts, READ),
    ("GET", WS_PATH, ws.websocket, READ),
)
SPAWNING: dict[tuple[str, str], str] = {}  # (method, path) of routes that start agents -> "spawn"
ROUTES = tuple((method, path, handler, scope, SPAWNING.get((method, path), "other"))
               for method, path, handler, scope in _DECLARED)


def all_routes(native: Iterable[tuple[Any, ...]]) -> tuple[tuple[Any, ...], ...]:
    """ROUTES and the webhook routes: the native API's rows (same path, scope and class),
    each served by the Kyros handler of the same name (webhooks.py)."""
    same = tuple((method, path, getattr(webhooks, handler.__name__), scope, limit_class)
                 for method, path, handler, scope, limit_class in native
                 if path.startswith("/webhooks") and hasattr(webhooks, handler.__name__))
    return ROUTES + same
