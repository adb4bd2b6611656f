"""The route table, mounted under /api and its alias /api/v1."""

from __future__ import annotations

from aiohttp import web

from . import agents, system

PREFIXES = ("/api", "/api/v1")

ROUTES = (
    ("POST", "/spawn", agents.spawn),
    ("POST", "/spawn-team", agents.spawn_team),
    ("POST", "/spawn-batch", agents.spawn_batch),
    ("GET", "/agents", agents.list_agents),
    ("GET", "/agents/active", agents.active_agents),
    ("GET", "/agent/{agent_id}", agents.get_agent),
    ("DELETE", "/agent/{agent_id}", agents.cancel_agent),
    ("GET", "/health", system.health),
    ("GET", "/plugins", system.plugins),
)


def setup_routes(app: web.Application) -> None:
    for prefix in PREFIXES:
        for method, path, handler in ROUTES:
            app.router.add_route(method, prefix + path, handler)
        for (method, path), (new_method, successor) in system.SUNSET.items():
            app.router.add_route(method, prefix + path, system.sunset_handler(new_method, successor))
