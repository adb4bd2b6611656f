"""Operational endpoints of the core: health, plugins, and the sunset v3 routes."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from multidict import CIMultiDict

from .. import __version__, jsonx
from ..errors import Gone
from .common import config_of, SERVICES, json_response
from .middleware import METRICS

__all__ = ["SUNSET", "SUNSET_DATE", "health", "health_view", "plugins", "sunset_handler"]

# v3 endpoint -> its v4 successor (the J1MSKY API reference's "Migration Guide").
SUNSET = {("POST", "/agent"): ("POST", "/spawn"), ("GET", "/status"): ("GET", "/agent/{agent_id}"),
          ("DELETE", "/cancel"): ("DELETE", "/agent/{agent_id}")}
SUNSET_DATE = "Mon, 01 Jun 2026 00:00:00 GMT"
_JSON = CIMultiDict({hdrs.CONTENT_TYPE: "application/json; charset=utf-8"})  # copied into each response


async def health(request: web.Request) -> web.Response:
    """Built at most once a second: monitors may poll it hard, and it must stay cheap."""
    services = request.app[SERVICES]
    runtime = services.runtime
    # Rebuilt when a breaker or an agent count may have changed, or a second has passed
    # (uptime, error rate): comparing a few integers is far cheaper than building the JSON.
    stamp = (int(time.monotonic()), services.breaker_changes.count, len(runtime.live), runtime.running_count(),
             runtime.completed_total, runtime.failed_total, services.store.state_changes, services.reloader.reloads)
    cached = services.health_cache
    if cached is None or cached[0] != stamp:
        status, data = health_view(request)
        cached = services.health_cache = (stamp, jsonx.dumps(data).encode(), status)
    return web.Response(body=cached[1], status=cached[2], headers=_JSON)


def health_view(request: web.Request) -> tuple[int, dict]:
    """GET /health's status and body (also the Kyros dialect's /monitoring/health)."""
    services = request.app[SERVICES]
    missing = config_of(request).missing_api_keys
    providers = {name: slot.breaker.snapshot() | _provider_status(slot.usable, missing.get(name))
                 for name, slot in services.slots.items()}
    usable = [p for p in providers.values() if p["available"] and p["state"] != "open"]
    reasons = [f"provider {name}: " + (p["status"] if not p["available"] else "circuit open")
               + (f" ({missing[name]} not set)" if name in missing else "")
               for name, p in providers.items() if not p["available"] or p["state"] == "open"]
    store = services.store
    if store.full is not None:  # writes wait in memory; spawns get 507 (503 locked) until it passes
        refused = store.refusal_status()
        reasons.append(f"storage: {store.full}; {store.pending_writes()} writes waiting "
                       f"{'for the lock' if refused == 503 else 'for disk space'}, new spawns refused ({refused})")
    status = "unhealthy" if providers and not usable else "degraded" if reasons else "healthy"
    # 503 when nothing can serve, so load balancers and `curl -f` notice; degraded stays 200.
    return 503 if status == "unhealthy" else 200, {
        "status": status,
        "reasons": reasons,
        "version": __version__,
        "uptime_seconds": int(time.monotonic() - services.started),
        "error_rate": request.app[METRICS].error_rate,
        "models_configured": len(config_of(request).models),
        "agents": {"queued": services.runtime.queued_count(), "running": services.runtime.running_count()},
        "providers": providers,
    }


def _provider_status(built: bool, missing_key: str | None) -> dict[str, object]:
    """``status``: ``unconfigured`` (its API key is missing: the config names a variable that is
    set nowhere), ``unavailable`` (its plugin could not build it) or ``available``."""
    status = "unconfigured" if missing_key else "available" if built else "unavailable"
    return {"available": status == "available", "status": status}


async def plugins(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return json_response({"plugins": services.registry.report(),
                          "providers": {n: s.snapshot() for n, s in services.slots.items()}})


def sunset_handler(method: str, successor: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        raise Gone(f"This v3 endpoint was removed; use {method} /api/v1{successor}",
                   headers={"Link": f'</api/v1{successor}>; rel="successor-version"',
                            "Sunset": SUNSET_DATE, "Deprecation": "true"},
                   successor=f"{method} /api/v1{successor}")
    return handler
