"""GET /metrics (Prometheus): histograms, token and spend counters, gauges, process metrics, and
``promtool check metrics`` on the real output of a daemon whose agents completed, failed, were
cancelled and answered a front-door chat call."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from j1mskyd import __version__
from j1mskyd.app import build_app
from j1mskyd.metrics import HTTP_BUCKETS, Histogram, RouteStats, prometheus
from j1mskyd.providers import ProviderSettings
from tests.conftest import auth_config, bearer, bootstrap_key, wait_status
from tests.test_ops_endpoints import parse_prometheus, value

PROMTOOL = shutil.which("promtool")


def promtool_check(text: str) -> None:
    """``promtool check metrics`` must find nothing: exit 0 and no lint line.  Skipped without
    promtool (Debian's ``prometheus`` package), unless J1MSKY_REQUIRE_DEBIAN=1 (CI) makes it a failure."""
    if PROMTOOL is None:
        if os.environ.get("J1MSKY_REQUIRE_DEBIAN") == "1":
            pytest.fail("promtool is missing (apt-get install prometheus) and J1MSKY_REQUIRE_DEBIAN=1")
        pytest.skip("promtool not installed (Debian package prometheus)")
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), \
        f"promtool check metrics: exit {done.returncode}\n{done.stdout}{done.stderr}"


# -- the pieces -----------------------------------------------------------------------------------

def test_histogram_buckets_are_less_or_equal_and_cumulative():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0):
        h.observe(v)
    # le=0.1 holds 0.05 and 0.1 itself (less than or equal); +Inf holds everything.
    assert h.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert h.count == 5 and h.sum == pytest.approx(4.65)


def test_route_stats_by_status_class():
    s = RouteStats()
    for status in (200, 201, 404, 500, 503, 299):
        s.record(status, 0.002)
    classes = dict(s.by_class())
    assert sorted(classes) == ["2xx", "4xx", "5xx"]
    assert (classes["2xx"].count, classes["4xx"].count, classes["5xx"].count) == (3, 1, 2)
    assert (s.count, s.client_errors, s.server_errors) == (6, 1, 2)
    assert s.classes[2].bounds == HTTP_BUCKETS


def test_exposition_escapes_and_renders_histograms():
    h = Histogram((1.0,))
    h.observe(0.5)
    text = prometheus([
        ("x_total", "counter", "line one\nback\\slash", [({"v": 'a"b\\c\nd'}, 3)]),
        ("y_seconds", "histogram", "h", [({"m": "k"}, h)]),
        ("z", "gauge", "inf", [({}, float("inf"))]),
    ])
    assert "# HELP x_total line one\\nback\\\\slash\n" in text
    assert 'x_total{v="a\\"b\\\\c\\nd"} 3\n' in text
    assert 'y_seconds_bucket{m="k",le="1.0"} 1\ny_seconds_bucket{m="k",le="+Inf"} 1\n' in text
    assert 'y_seconds_sum{m="k"} 0.5\ny_seconds_count{m="k"} 1\n' in text
    assert "z +Inf\n" in text
    promtool_check(text)


def test_promtool_check_can_fail():
    """The check is not a tautology: promtool refuses a counter without _total and a bad line."""
    if PROMTOOL is None:
        pytest.skip("promtool not installed")
    bad = "# HELP j1_calls Calls.\n# TYPE j1_calls counter\nj1_calls 1\n"
    with pytest.raises(AssertionError, match="promtool"):
        promtool_check(bad)


# -- a real daemon's output ------------------------------------------------------------------------

def _config(tmp_path):
    cfg = auth_config(tmp_path)
    k2p5 = cfg.models["k2p5"]
    providers = {**cfg.providers,
                 "broken": ProviderSettings(name="broken", plugin="offline", options={"fail": "server_error"}),
                 "slow": ProviderSettings(name="slow", plugin="offline", options={"delay": 60})}
    models = {**cfg.models,
              "brokenm": dataclasses.replace(k2p5, alias="brokenm", provider="broken", fallback=None),
              "slowm": dataclasses.replace(k2p5, alias="slowm", provider="slow", fallback=None)}
    return dataclasses.replace(
        cfg, providers=providers, models=models,
        budget=dataclasses.replace(cfg.budget, daily_budget=10_000.0, monthly_ceiling=300_000.0,
                                   spike_per_hour=10_000.0),
        runtime=dataclasses.replace(cfg.runtime, retry_base_delay=0.01, retry_max_delay=0.02))


async def test_metrics_after_completed_failed_cancelled_and_chat_agents(aiohttp_client, tmp_path):
    cfg = _config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    key = bootstrap_key(cfg)
    auth = bearer(key["token"])

    async def spawn(model: str, task: str) -> str:
        resp = await client.post("/api/spawn", json={"model": model, "task": task}, headers=auth)
        assert resp.status == 200, await resp.text()
        return (await resp.json())["agent_id"]

    done = [await spawn("k2p5", f"count to {n}") for n in range(3)]
    failed = [await spawn("brokenm", "this provider always fails") for _ in range(2)]
    slow = await spawn("slowm", "wait for a minute")
    chat = await client.post("/v1/chat/completions", headers=auth,
                             json={"model": "sonnet", "messages": [{"role": "user", "content": "hello"}]})
    assert chat.status == 200, await chat.text()

    class Authed:  # wait_status polls with the key
        async def get(self, path):
            return await client.get(path, headers=auth)
    agents = {a: await wait_status(Authed(), a) for a in done + failed}
    assert {agents[a]["status"] for a in done} == {"completed"}
    assert {agents[a]["status"] for a in failed} == {"failed"}
    assert (await client.delete(f"/api/agent/{slow}", headers=auth)).status == 200
    assert (await wait_status(Authed(), slow))["status"] == "cancelled"
    assert (await client.get("/api/agent/subagent_1_0001", headers=auth)).status == 404

    resp = await client.get("/metrics", headers=auth)
    assert resp.status == 200
    text = await resp.text()
    promtool_check(text)
    _, types, samples = parse_prometheus(text)

    # Never a token, never a raw path: key ids and route templates only.
    assert key["token"] not in text and "subagent_" not in text
    routes = {lab["route"] for n, lab, _ in samples if n == "j1msky_http_request_duration_seconds_count"}
    assert "GET /api/agent/{agent_id}" in routes and "POST /api/spawn" in routes
    assert value(samples, "j1msky_http_request_duration_seconds_count", route="POST /api/spawn",
                 status_class="2xx") == 6
    assert value(samples, "j1msky_http_request_duration_seconds_count", route="GET /api/agent/{agent_id}",
                 status_class="4xx") == 1
    assert types["j1msky_http_request_duration_seconds"] == "histogram"

    assert value(samples, "j1msky_agents_finished_total", status="completed") == 4  # 3 + the chat call
    assert value(samples, "j1msky_agents_finished_total", status="failed") == 2
    assert value(samples, "j1msky_agents_finished_total", status="cancelled") == 1
    assert value(samples, "j1msky_agents", status="queued") == 0
    assert value(samples, "j1msky_agents", status="running") == 0

    # Tokens and spend, by model, provider and key id: what the agents report.
    key_id = key["key_id"]
    k2p5 = {"model": "k2p5", "provider": "offline", "key": key_id}
    assert value(samples, "j1msky_input_tokens_total", **k2p5) \
        == sum(agents[a]["usage"]["input_tokens"] for a in done)
    assert value(samples, "j1msky_output_tokens_total", **k2p5) \
        == sum(agents[a]["usage"]["output_tokens"] for a in done)
    assert value(samples, "j1msky_spend_usd_total", **k2p5) == pytest.approx(sum(agents[a]["cost"] for a in done))
    assert value(samples, "j1msky_input_tokens_total", model="sonnet", key=key_id) > 0
    assert not [lab for n, lab, _ in samples if n == "j1msky_spend_usd_total" and lab["model"] == "brokenm"], \
        "a failed call that nobody billed is no spend"
    billing = await (await client.get("/api/billing/usage", headers=auth)).json()
    spend = sum(v for n, _, v in samples if n == "j1msky_spend_usd_total")
    assert spend == pytest.approx(billing["total_cost"], abs=1e-6)

    # Agent duration per model (every agent that ended, failed ones too); time to first token: chat.
    assert value(samples, "j1msky_agent_duration_seconds_count", model="k2p5") == 3
    assert value(samples, "j1msky_agent_duration_seconds_count", model="brokenm") == 2
    assert value(samples, "j1msky_agent_duration_seconds_count", model="slowm") == 1
    assert value(samples, "j1msky_agent_time_to_first_token_seconds_count", model="sonnet") == 1
    assert not [lab for n, lab, _ in samples
                if n == "j1msky_agent_time_to_first_token_seconds_count" and lab["model"] == "k2p5"]

    # Gauges: ratios 0-1, calls (not a bucket level) left, one breaker state at a time.
    budget = (await (await client.get("/api/metrics", headers=auth)).json())["budget"]
    ratio = value(samples, "j1msky_budget_utilization_ratio")
    assert 0 < ratio < 1 and ratio == pytest.approx(budget["today_spend"] / budget["daily_budget"], rel=1e-3)
    assert "j1msky_budget_utilization_pct" not in types
    assert value(samples, "j1msky_budget_remaining_usd") <= budget["daily_budget"]
    calls = value(samples, "j1msky_provider_calls_total", provider="broken")
    limit = value(samples, "j1msky_provider_hourly_calls_limit", provider="broken")
    assert calls >= 2 and value(samples, "j1msky_provider_hourly_calls_remaining", provider="broken") == limit - calls
    assert "j1msky_provider_tokens_remaining" not in types
    for provider in ("offline", "broken", "slow"):
        states = [lab["state"] for n, lab, v in samples
                  if n == "j1msky_provider_circuit_state" and lab["provider"] == provider and v == 1]
        assert len(states) == 1, (provider, states)

    # Build and process.
    [build] = [lab for n, lab, v in samples if n == "j1mskyd_build_info" and v == 1]
    assert build["version"] == __version__
    now = time.time()
    assert now - 86400 < value(samples, "process_start_time_seconds") <= now
    assert value(samples, "process_resident_memory_bytes") > 10_000_000
    assert value(samples, "process_open_fds") > 3
    assert value(samples, "process_cpu_seconds_total") > 0
    assert types["process_cpu_seconds_total"] == "counter"
    await asyncio.sleep(0)


async def test_metrics_is_in_the_openapi_document(client):
    doc = await (await client.get("/api/openapi.json")).json()
    op = doc["paths"]["/metrics"]["get"]
    assert list(op["responses"]["200"]["content"]) == ["text/plain"]
    assert op["x-scope"] == "agents:read" and "401" in op["responses"]
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"


async def test_the_grafana_dashboard_uses_only_metrics_the_daemon_exposes(client):
    """docs/grafana-j1msky.json is valid JSON and every metric its queries name is a family that
    GET /metrics declares (a renamed metric breaks this test, not the operator's dashboard)."""
    doc = json.loads((Path(__file__).resolve().parents[1] / "docs" / "grafana-j1msky.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", ())]
    assert len(exprs) > 20
    _, types, _ = parse_prometheus(await (await client.get("/metrics")).text())
    used = {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in types else n
            for e in exprs for n in re.findall(r"\b(?:j1mskyd?|process)_[a-z_]+\b", e)}
    assert used and used <= set(types), sorted(used - set(types))
    for name in ("j1msky_http_request_duration_seconds", "j1msky_spend_usd_total", "j1msky_agent_duration_seconds"):
        assert name in used
