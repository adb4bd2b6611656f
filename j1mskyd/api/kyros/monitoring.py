"""Kyros monitoring (the Kyros document's "Monitoring API"): health from the health service, metrics from
the rolled-up series (timeseries.Rollups), alerts from the event log and the breakers, costs
from TaskService.costs.  What is computed here is arithmetic over those series (a rate, an
average per bucket), nothing the daemon does not already record."""

from __future__ import annotations

from collections import deque
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from ... import timeseries
from ...errors import ValidationFailed
from ...request_fields import query_int
from ...task_request import MAX_LIMIT, EscalationQuery, TaskQuery
from ..common import SERVICES, config_of, query_params, viewer
from ..system import health_view
from .alerts import ALERT_EVENTS, alert_of, breaker_alerts
from .envelope import ok

__all__ = ["ALERT_STATUSES", "DOCUMENT_GRANULARITIES", "GRANULARITIES", "METRICS", "PERIODS", "SEVERITIES", "alerts",
           "health", "metrics"]

PERIODS = {"1h": 3600, "24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
# The document's granularities -> what the rollups keep (1m and 5m are not kept: refused by name).
GRANULARITIES = {"1h": timeseries.HOUR, "1d": timeseries.DAY}
DOCUMENT_GRANULARITIES = ("1m", "5m", "1h", "1d")
METRICS = {"task_completion_rate": "percent", "average_response_time": "seconds", "cost_per_task": "USD",
           "escalation_rate": "percent"}
ALERT_STATUSES = ("active", "resolved", "acknowledged")
SEVERITIES = ("info", "warning", "error", "critical")
_ALERT_PAGE, _MAX_PAGES = 500, 50  # bounded reads of the event log and the task lists


def _bad(field: str, issue: str) -> ValidationFailed:
    return ValidationFailed([{"field": field, "message": issue}])


async def health(request: web.Request) -> web.Response:
    """Overall status (healthy | degraded | unhealthy), the daemon, providers, database and models"""
    _, native = health_view(request)
    services = request.app[SERVICES]
    providers = {f"provider:{name}": {"status": "healthy" if p["available"] and p["state"] != "open" else "unhealthy",
                                      "circuit": p["state"], "configured": p["status"]}
                 for name, p in native["providers"].items()}
    store = services.store
    orchestrator = services.orchestrator
    models = {alias: {"status": "available" if orchestrator.available(alias) else "unavailable",
                      "provider": m.provider} for alias, m in config_of(request).models.items()}
    return ok(request, {
        "overall_status": native["status"], "reasons": native["reasons"],
        "services": {"j1mskyd": {"status": native["status"], "uptime": native["uptime_seconds"],
                                 "version": native["version"], "error_rate": native["error_rate"]}, **providers},
        "database": {"status": "healthy" if store.full is None else "unhealthy",
                     "pending_writes": store.pending_writes()},
        "models": models, "agents": native["agents"]})


def _metrics_query(params: dict[str, str]) -> tuple[str, str, int, list[str]]:
    period = params.get("period", "24h")
    if period not in PERIODS:
        raise _bad("period", f"Must be one of: {', '.join(PERIODS)}")
    default = "1d" if period == "30d" else "1h"
    granularity = params.get("granularity", default)
    if granularity not in DOCUMENT_GRANULARITIES:
        raise _bad("granularity", f"Must be one of: {', '.join(DOCUMENT_GRANULARITIES)}")
    if granularity not in GRANULARITIES:
        raise _bad("granularity", f"{granularity} is not kept here: the series are kept per hour (7 days) and per "
                                  "day (400 days); use 1h or 1d")
    g = GRANULARITIES[granularity]
    if PERIODS[period] > timeseries.KEEP[g]:
        raise _bad("granularity", f"hourly series are kept for 7 days: period {period} needs granularity 1d")
    if PERIODS[period] < g:
        raise _bad("granularity", f"period {period} is shorter than one {granularity} bucket: use 1h")
    names = [n.strip() for n in params.get("metrics", "").split(",") if n.strip()] or list(METRICS)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise _bad("metrics", f"Unknown metric(s) {', '.join(unknown)}: the metrics are {', '.join(METRICS)}")
    return period, granularity, g, names


async def _series(request: web.Request, metric: str, g: int, seconds: int) -> dict[str, Any]:
    name = "hour" if g == timeseries.HOUR else "day"
    query = timeseries.Query(metric, g, f"{seconds // g}{name[0]}", seconds)
    return await request.app[SERVICES].rollups.series(query)  # type: ignore[no-any-return]


def _sum(series: dict[str, Any], part: str, labels: tuple[str, ...] | None = None) -> list[float]:
    width = len(series["buckets"])
    total = [0.0] * width
    for entry in series["series"]:
        if labels is None or entry["label"] in labels:
            for i, value in enumerate(entry[part]):
                total[i] += value
    return total


def _ratio(num: list[float], den: list[float], scale: float = 1.0) -> list[float | None]:
    return [round(n / d * scale, 4) if d else None for n, d in zip(num, den)]


def _metric(data: list[float | None], unit: str) -> dict[str, Any]:
    values = [v for v in data if v is not None]
    return {"data": data, "unit": unit, "average": round(sum(values) / len(values), 4) if values else None}


async def metrics(request: web.Request) -> web.Response:
    """Task completion rate, response time, cost per task and escalation rate per bucket"""
    period, granularity, g, names = _metrics_query(query_params(request))
    seconds = PERIODS[period]
    agents = await _series(request, "agents", g, seconds)
    ended = _sum(agents, "count")
    out: dict[str, Any] = {}
    if "task_completion_rate" in names:
        out["task_completion_rate"] = _metric(_ratio(_sum(agents, "count", ("completed",)), ended, 100), "percent")
    if "average_response_time" in names:
        latency = await _series(request, "latency_seconds", timeseries.HOUR, min(seconds, timeseries.KEEP[3600]))
        total, count = _by_bucket(latency, agents["buckets"], "sum"), _by_bucket(latency, agents["buckets"], "count")
        out["average_response_time"] = _metric(_ratio(total, count), "seconds")
    if "cost_per_task" in names:
        spend = await _series(request, "spend_usd", g, seconds)
        out["cost_per_task"] = _metric(_ratio(_sum(spend, "sum"), ended), "USD")
    if "escalation_rate" in names:
        out["escalation_rate"] = _metric(await _escalation_rate(request, agents["buckets"], g), "percent")
    return ok(request, {"period": period, "granularity": granularity, "buckets": agents["buckets"], "metrics": out})


def _by_bucket(hourly: dict[str, Any], buckets: list[str], part: str) -> list[float]:
    """An hourly series' ``part`` summed into ``buckets`` (hours, or days: their hours)."""
    index = {b: i for i, b in enumerate(buckets)}
    total = [0.0] * len(buckets)
    values = _sum(hourly, part)
    for stamp, value in zip(hourly["buckets"], values):
        i = index.get(stamp, index.get(stamp[:10] + "T00:00:00Z"))
        if i is not None:
            total[i] += value
    return total


async def _escalation_rate(request: web.Request, buckets: list[str], g: int) -> list[float | None]:
    """Escalations opened per task created in each bucket (%), from the task service's lists
    (newest first, read in pages until the period's start; bounded)."""
    tasks, seen = request.app[SERVICES].tasks, viewer(request)
    index = {b: i for i, b in enumerate(buckets)}
    start = buckets[0]
    created, escalated = [0.0] * len(buckets), [0.0] * len(buckets)

    def count(into: list[float], stamp: str | None) -> None:
        i = index.get(_bucket_of(stamp or "", g))
        if i is not None:
            into[i] += 1

    for page in range(_MAX_PAGES):
        found, _ = await tasks.list(TaskQuery(sort_by="created_at", sort_order="desc", limit=MAX_LIMIT,
                                              offset=page * MAX_LIMIT), seen)
        for task in found:
            count(created, task["created_at"])
        if len(found) < MAX_LIMIT or found[-1]["created_at"] < start:
            break
    since = datetime.strptime(start, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    for page in range(_MAX_PAGES):
        found, _ = await tasks.escalations(EscalationQuery(from_date=since, limit=MAX_LIMIT,
                                                           offset=page * MAX_LIMIT), seen)
        for esc in found:
            count(escalated, esc["submitted_at"])
        if len(found) < MAX_LIMIT:
            break
    return _ratio(escalated, created, 100)


def _bucket_of(stamp: str, g: int) -> str:
    """The bucket (ISO start) an ISO 8601 Z time falls in."""
    return stamp[:13] + ":00:00Z" if g == timeseries.HOUR else stamp[:10] + "T00:00:00Z"


async def alerts(request: web.Request) -> web.Response:
    """Budget alerts from the event log and providers whose breaker is open"""
    params = query_params(request)
    status, severity = params.get("status"), params.get("severity")
    if status is not None and status not in ALERT_STATUSES:
        raise _bad("status", f"Must be one of: {', '.join(ALERT_STATUSES)}")
    if severity is not None and severity not in SEVERITIES:
        raise _bad("severity", f"Must be one of: {', '.join(SEVERITIES)}")
    limit, offset = _page(params)
    services = request.app[SERVICES]
    events = await _alert_events(request)
    level = services.budget.snapshot()["budget_alert_level"]
    newest_level = max((e.id for e in events if e.type != "budget.exceeded"), default=None)
    found = breaker_alerts(services.slots) + [
        alert_of(e, e.id == newest_level and e.type == f"budget.{level}") for e in reversed(events)]
    found = [a for a in found if (status is None or a["status"] == status)
             and (severity is None or a["severity"] == severity)]
    return ok(request, {"alerts": found[offset:offset + limit],
                        "pagination": {"total": len(found), "limit": limit, "offset": offset,
                                       "has_more": offset + limit < len(found)}})


async def _alert_events(request: web.Request) -> list[Any]:
    """The budget's events in the log (the newest _ALERT_PAGE x _MAX_PAGES at most), oldest first."""
    log, seen = request.app[SERVICES].events, viewer(request)
    kept: deque[Any] = deque(maxlen=_ALERT_PAGE * _MAX_PAGES)
    last = 0
    for _ in range(1000):  # bounded (500,000 budget events: far more than a log keeps)
        page = await log.after(last, _ALERT_PAGE, tuple(ALERT_EVENTS), seen)
        kept.extend(page)
        if len(page) < _ALERT_PAGE:
            break
        last = page[-1].id
    return list(kept)


def _page(params: dict[str, str]) -> tuple[int, int]:
    return _int(params, "limit", 50, 1, 200), _int(params, "offset", 0, 0, 10**9)


def _int(params: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    value = query_int(text)
    if value is None or not lo <= value <= hi:  # isdigit() took "--5" and "²", which int() refused: a 500
        raise _bad(name, f"Must be an integer from {lo} to {hi}")
    return value
