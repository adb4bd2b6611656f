"""The route table, mounted under /api and its alias /api/v1.

Each route names its rate-limit class (the seed's "Rate Limits" table).
"""

from __future__ import annotations

from aiohttp import web

from . import agents, ops, system
from .middleware import ROUTE_CLASSES

PREFIXES = ("/api", "/api/v1")

ROUTES = (
    ("POST", "/spawn", agents.spawn, "spawn"),
    ("POST", "/spawn-team", agents.spawn_team, "spawn"),
    ("POST", "/spawn-batch", agents.spawn_batch, "spawn"),
    ("GET", "/agents", agents.list_agents, "agents_list"),
    ("GET", "/agents/active", agents.active_agents, "agents_list"),
    ("GET", "/agent/{agent_id}", agents.get_agent, "agent_read"),
    ("DELETE", "/agent/{agent_id}", agents.cancel_agent, "other"),
    ("GET", "/health", system.health, "other"),
    ("GET", "/plugins", system.plugins, "other"),
    ("GET", "/rate-limits", ops.rate_limits, "other"),
    ("GET", "/system", ops.system, "system"),
    ("GET", "/metrics", ops.metrics_json, "other"),
    ("GET", "/billing/usage", ops.billing_usage, "other"),
)


def setup_routes(app: web.Application) -> None:
    classes: dict[tuple[str, str], str] = {}
    for prefix in PREFIXES:
        for method, path, handler, limit_class in ROUTES:
            app.router.add_route(method, prefix + path, handler)
            classes[(method, prefix + path)] = limit_class
        for (method, path), (new_method, successor) in system.SUNSET.items():
            app.router.add_route(method, prefix + path, system.sunset_handler(new_method, successor))
    app[ROUTE_CLASSES] = classes
    app.router.add_get("/metrics", ops.metrics_prometheus)  # Prometheus scrapes the root
