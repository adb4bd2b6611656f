"""What ``GET /metrics`` exposes: every metric family, built from the services at scrape time.

Names follow the Prometheus conventions: the unit in the name (``_seconds``, ``_bytes``, ``_usd``),
``_total`` on counters, ratios as 0-1 (``_ratio``); labels bounded (route templates, never raw
paths; model aliases, provider names and key *ids* from the config and the keys, never a token).
docs/operations.md lists them; tests/test_metrics_prometheus.py holds them to ``promtool check
metrics``.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from . import __version__
from .metrics import Family, Metrics
from .procstats import process_families

__all__ = ["BREAKER_STATES", "families"]

BREAKER_STATES = ("closed", "half_open", "open")


class Runtime(Protocol):
    def queued_count(self) -> int: ...
    def running_count(self) -> int: ...
    def provider_tokens(self, name: str) -> Any: ...


def families(metrics: Metrics, runtime: Runtime, budget: Mapping[str, Any], slots: Mapping[str, Any],
             connections: Any = None, *, aiohttp_version: str = "",
             sees: Callable[[str], bool] = lambda key_id: True, reloads: Any = None) -> list[Family]:
    """Every family, in the order of docs/operations.md.  ``budget``: Budget.snapshot();
    ``connections``: the listener's ConnectionStats, under ``j1mskyd serve`` only; ``reloads``:
    the config's reload.Reloader (its counts and last outcome); ``sees``: whether
    the scraping key may see a key's work (tenancy.Viewer.sees): the token and spend counters
    list only those keys (their own, unless it reads every key's work), the rest is daemon-wide."""
    routes = sorted(metrics.routes.items())
    agents = metrics.agents
    usage = sorted(item for item in agents.usage.items() if sees(item[0][2]))
    out: list[Family] = [
        ("j1mskyd_build_info", "gauge", "Always 1; the daemon's version and platform in its labels.",
         [({"version": __version__, "python": platform.python_version(), "aiohttp": aiohttp_version}, 1)]),
        ("j1msky_http_requests_total", "counter", "HTTP requests by route and outcome.",
         [({"route": r, "outcome": o}, n) for r, s in routes
          for o, n in (("ok", s.count - s.client_errors - s.server_errors), ("client_error", s.client_errors),
                       ("server_error", s.server_errors))]),
        ("j1msky_http_request_duration_seconds", "histogram",
         "Time from a request's arrival to its answer, by route template and status class.",
         [({"route": r, "status_class": c}, h) for r, s in routes for c, h in s.by_class()]),
        ("j1msky_rate_limit_hits_total", "counter", "Requests refused by a rate limit.", [({}, metrics.rate_limit_hits)]),
        ("j1msky_agents", "gauge", "Live agents by status (queued: the queue depth).",
         [({"status": "queued"}, runtime.queued_count()), ({"status": "running"}, runtime.running_count())]),
        ("j1msky_agents_finished_total", "counter", "Agents ended since start, by final status (teams included).",
         [({"status": s}, agents.finished.get(s, 0)) for s in ("completed", "failed", "cancelled")]),
        ("j1msky_agent_duration_seconds", "histogram",
         "Agent time from creation (queue included) to its end, by the model that answered (else the one asked).",
         [({"model": m}, h) for m, h in sorted(agents.duration.items())]),
        ("j1msky_agent_run_seconds", "histogram",
         "Completed agents' time from start to end (queue not included), by the provider that answered.",
         [({"provider": p}, h) for p, h in sorted(agents.run.items())]),
        ("j1msky_agent_time_to_first_token_seconds", "histogram",
         "Front-door (chat) calls: time from creation to the first text, by model.",
         [({"model": m}, h) for m, h in sorted(agents.ttft.items())]),
        ("j1msky_input_tokens_total", "counter", "Input tokens the upstream reported, by model, provider and key id.",
         [(_usage_labels(k), used[0]) for k, used in usage]),
        ("j1msky_output_tokens_total", "counter", "Output tokens the upstream reported, by model, provider and key id.",
         [(_usage_labels(k), used[1]) for k, used in usage]),
        ("j1msky_spend_usd_total", "counter",
         "Cost recorded for agents at their end (US dollars), by model, provider and key id.",
         [(_usage_labels(k), round(used[2], 8)) for k, used in usage]),
        ("j1msky_spend_today_usd", "gauge", "Settled spend today (UTC).", [({}, budget["today_spend"])]),
        ("j1msky_spend_month_usd", "gauge", "Settled spend this month (UTC).", [({}, budget["month_spend"])]),
        ("j1msky_spend_reserved_usd", "gauge", "Worst-case cost reserved by live agents (settled when each ends).",
         [({}, budget["reserved"])]),
        ("j1msky_budget_daily_usd", "gauge", "Daily budget.", [({}, budget["daily_budget"])]),
        ("j1msky_budget_monthly_ceiling_usd", "gauge", "Monthly ceiling.", [({}, budget["monthly_ceiling"])]),
        ("j1msky_budget_remaining_usd", "gauge",
         "Daily budget left for new spawns: budget - settled spend - open reservations.",
         [({}, budget["budget_remaining"])]),
        ("j1msky_budget_utilization_ratio", "gauge", "Today's settled spend / the daily budget (0-1; above 1 when overbilled).",
         [({}, _ratio(budget["today_spend"], budget["daily_budget"]))]),
        ("j1msky_provider_calls_total", "counter", "Upstream calls by provider.",
         [({"provider": n}, s.calls) for n, s in slots.items()]),
        ("j1msky_provider_failures_total", "counter", "Failed upstream calls by provider.",
         [({"provider": n}, s.breaker.total_failures) for n, s in slots.items()]),
        ("j1msky_provider_circuit_open", "gauge", "1 when the provider's circuit breaker is open.",
         [({"provider": n}, int(s.breaker.state == "open")) for n, s in slots.items()]),
        ("j1msky_provider_circuit_state", "gauge", "1 for the breaker's current state (closed, half_open, open).",
         [({"provider": n, "state": st}, int(s.breaker.state == st)) for n, s in slots.items()
          for st in BREAKER_STATES]),
        ("j1msky_provider_hourly_calls_remaining", "gauge",
         "Upstream calls left in the provider's hourly quota (a token bucket of providers.<name>.hourly_limit).",
         [({"provider": n}, _calls(runtime.provider_tokens(n).remaining)) for n in slots]),
        ("j1msky_provider_hourly_calls_limit", "gauge", "The provider's hourly quota of upstream calls.",
         [({"provider": n}, runtime.provider_tokens(n).limit) for n in slots]),
    ]
    if reloads is not None:
        out += [
            ("j1msky_config_reloads_total", "counter", "Config reloads (SIGHUP, POST /api/admin/reload) by result.",
             [({"result": "applied"}, reloads.reloads), ({"result": "refused"}, reloads.refused)]),
            ("j1msky_config_last_reload_successful", "gauge",
             "1 when the last reload was applied (or none was tried), 0 when the file was refused.",
             [({}, int(reloads.last_ok))]),
            ("j1msky_config_last_reload_success_timestamp_seconds", "gauge",
             "When the configuration in force was taken (the start's, until a reload), unix seconds.",
             [({}, reloads.last_success)]),
        ]
    if connections is not None:
        out += [
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
    out += process_families()
    return out


def _usage_labels(key: tuple[str, str, str]) -> dict[str, str]:
    model, provider, key_id = key
    return {"model": model, "provider": provider, "key": key_id}


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def _calls(remaining: float) -> float:
    """Whole calls: a bucket refilling continuously holds fractions, but a call takes one token."""
    return float(int(remaining))
