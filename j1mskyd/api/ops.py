"""Operations endpoints: rate limits, system, metrics (JSON and Prometheus), billing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from .. import billing, sysinfo, timeseries
from ..agent_record import ANONYMOUS
from ..listener import CONNECTION_STATS
from ..request_fields import bad, flag_param
from ..metric_families import families
from ..metrics import prometheus
from .common import SERVICES, actor, config_of, json_response, key_id_of, key_of, query_params, viewer
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
    key_id = key_id_of(request) or ANONYMOUS
    key = key_of(request)  # its own request limits, where it has them
    return json_response({"limits": providers,
                          "requests": request.app[LIMITER].status(key_id, key.limits if key is not None else None),
                          "budget": services.budget.snapshot()})


async def system(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    active = len(services.runtime.live)
    state_dir = config_of(request).server.state_dir
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
    """Metrics in the Prometheus text exposition format 0.0.4 (docs/operations.md lists them)."""
    services = request.app[SERVICES]
    text = prometheus(families(request.app[METRICS], services.runtime, services.budget.snapshot(), services.slots,
                               request.app.get(CONNECTION_STATS),  # only under `j1mskyd serve` (listener.py)
                               aiohttp_version=aiohttp.__version__, sees=viewer(request).sees,
                               reloads=services.reloader))
    # The exposition format's own content type (with version); aiohttp refuses content_type= and a
    # Content-Type header together, so the header alone says it.
    return web.Response(body=text.encode("utf-8"), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def metrics_timeseries(request: web.Request) -> web.Response:
    """The dashboard's series: agents by status, spend by model, run time by provider, per hour or day."""
    query = timeseries.parse_query(query_params(request))
    return json_response(await request.app[SERVICES].rollups.series(query))


async def billing_usage(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    params = query_params(request)
    start, end = billing.period(params, services.runtime.clock())
    by = billing.group_by(params)
    if by is not None:
        return json_response(await services.billing.grouped_report(start, end, by, viewer(request)))
    try:
        by_key = flag_param(params, "by_key")
    except ValueError as exc:
        raise bad("by_key", str(exc)) from None
    return json_response(await services.billing.usage_report(start, end, by_key, viewer(request)))


async def reload_config(request: web.Request) -> web.Response:
    """Re-read the config file and apply it without a restart, as SIGHUP does (reload.py):
    what changed, what needs a restart; 422 listing every problem of an invalid file."""
    services: Services = request.app[SERVICES]
    return json_response(await services.reloader.reload(actor(request)))
