"""Operations endpoints: rate limits, system, metrics (JSON and Prometheus), billing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from .. import billing, sysinfo
from ..agent_record import ANONYMOUS
from ..listener import CONNECTION_STATS
from ..metrics import Family, prometheus
from .common import CONFIG, SERVICES, json_response, query_params, viewer
from .common import API_KEY, API_KEY_ID
from .middleware import LIMITER, METRICS

if TYPE_CHECKING:  # app.py imports this module (through routes.py)
    from ..app import Services


async def rate_limits(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    providers = {}
    for name, slot in services.slots.items():
        d = services.runtime.provider_tokens(name)
        providers[name] = {"used": services.runtime.provider_calls(name), "limit": d.limit,
                           "remaining": d.remaining, "reset_at": d.reset_at}
    key_id = request.get(API_KEY_ID, ANONYMOUS)
    key = request.get(API_KEY)  # its own request limits, where it has them
    return json_response({"limits": providers,
                          "requests": request.app[LIMITER].status(key_id, key.limits if key is not None else None),
                          "budget": services.budget.snapshot()})


async def system(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    active = len(services.runtime.live)
    state_dir = request.app[CONFIG].server.state_dir
    # psutil reads /proc files: keep that off the event loop.
    snap = await asyncio.get_running_loop().run_in_executor(None, sysinfo.snapshot, state_dir, active)
    return json_response(snap)


def _agent_metrics(services: Services) -> dict[str, object]:
    runtime = services.runtime
    return {"queued": runtime.queued_count(), "running": runtime.running_count(),
            "completed_total": runtime.completed_total, "failed_total": runtime.failed_total}


async def metrics_json(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return json_response(request.app[METRICS].snapshot() | {"agents": _agent_metrics(services),
                                                             "budget": services.budget.snapshot()})


async def metrics_prometheus(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    m = request.app[METRICS]
    runtime = services.runtime
    budget = services.budget.snapshot()
    routes = sorted(m.routes.items())
    families: list[Family] = [
        ("j1msky_http_requests_total", "counter", "HTTP requests by route and outcome.",
         [({"route": r, "outcome": o}, n) for r, s in routes
          for o, n in (("ok", s.count - s.client_errors - s.server_errors), ("client_error", s.client_errors),
                       ("server_error", s.server_errors))]),
        ("j1msky_http_request_duration_seconds", "summary", "Request latency over recent requests.",
         [({"route": r, "quantile": q}, v / 1000) for r, s in routes
          for q, v in zip(("0.5", "0.95", "0.99"), m.latency(s.samples()).values())]),
        ("j1msky_rate_limit_hits_total", "counter", "Requests refused by a rate limit.", [({}, m.rate_limit_hits)]),
        ("j1msky_agents", "gauge", "Live agents by status.",
         [({"status": "queued"}, runtime.queued_count()), ({"status": "running"}, runtime.running_count())]),
        ("j1msky_agents_finished_total", "counter", "Agents finished since start, by outcome.",
         [({"outcome": "completed"}, runtime.completed_total), ({"outcome": "failed"}, runtime.failed_total)]),
        ("j1msky_spend_today_usd", "gauge", "Settled spend today (UTC).", [({}, budget["today_spend"])]),
        ("j1msky_spend_reserved_usd", "gauge", "Worst-case cost reserved by live agents (settled when each ends).",
         [({}, budget["reserved"])]),
        ("j1msky_budget_daily_usd", "gauge", "Daily budget.", [({}, budget["daily_budget"])]),
        ("j1msky_budget_utilization_pct", "gauge", "Today's spend as a percentage of the daily budget.",
         [({}, budget["budget_utilization_pct"])]),
        ("j1msky_provider_calls_total", "counter", "Upstream calls by provider.",
         [({"provider": n}, s.calls) for n, s in services.slots.items()]),
        ("j1msky_provider_failures_total", "counter", "Failed upstream calls by provider.",
         [({"provider": n}, s.breaker.total_failures) for n, s in services.slots.items()]),
        ("j1msky_provider_circuit_open", "gauge", "1 when the provider's circuit breaker is open.",
         [({"provider": n}, int(s.breaker.state == "open")) for n, s in services.slots.items()]),
        ("j1msky_provider_tokens_remaining", "gauge", "Calls left in the provider's hourly bucket.",
         [({"provider": n}, runtime.provider_tokens(n).remaining) for n in services.slots]),
    ]
    connections = request.app.get(CONNECTION_STATS)  # only under `j1mskyd serve` (listener.py)
    if connections is not None:
        families += [
            ("j1msky_connections_open", "gauge", "Open client connections.", [({}, connections.open)]),
            ("j1msky_connections_accepted_total", "counter", "Client connections accepted.",
             [({}, connections.accepted)]),
            ("j1msky_connections_closed_by_guard_total", "counter",
             "Connections the daemon closed itself: peer refused at accept, at the cap, evicted to make room, "
             "headers not complete within server.header_timeout, or a body within server.body_timeout.",
             [({"reason": "refused_peer"}, connections.refused_peer),
              ({"reason": "refused_full"}, connections.refused_full),
              ({"reason": "evicted"}, connections.evicted),
              ({"reason": "header_timeout"}, connections.header_timeouts),
              ({"reason": "body_timeout"}, connections.body_timeouts)]),
        ]
    # The exposition format's own content type (with version); aiohttp refuses content_type= and a
    # Content-Type header together, so the header alone says it.
    return web.Response(body=prometheus(families).encode("utf-8"),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def billing_usage(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    params = query_params(request)
    start, end = billing.period(params, services.runtime.clock())
    by = billing.group_by(params)
    if by is not None:
        return json_response(await services.billing.grouped_report(start, end, by, viewer(request)))
    by_key = params.get("by_key", "").lower() in ("1", "true", "yes")
    return json_response(await services.billing.usage_report(start, end, by_key, viewer(request)))
