"""Operations endpoints through real HTTP: /rate-limits, /health, /system, /metrics (JSON
and Prometheus at the root) and /billing/usage, in the seed's shapes."""

from __future__ import annotations

import dataclasses
import glob
import re
import time
from datetime import datetime, timezone

import pytest

from j1mskyd import sysinfo
from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.providers import ProviderSettings
from tests.conftest import make_config, route_models, wait_status
from tests.fakeupstream import FakeUpstream

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def with_hourly_limit(cfg, limit: int):
    return dataclasses.replace(cfg, providers={n: dataclasses.replace(p, hourly_limit=limit)
                                               for n, p in cfg.providers.items()})


async def spawn(client, model: str = "k2p5", task: str = "an ops task", **extra) -> str:
    resp = await client.post("/api/spawn", json={"model": model, "task": task, **extra})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["agent_id"]


# -- /rate-limits ------------------------------------------------------------------------------

async def test_rate_limits_seed_shape(aiohttp_client, tmp_path):
    cfg = with_hourly_limit(make_config(tmp_path), 10)
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, spawn=10))
    client = await aiohttp_client(build_app(cfg))
    body = await (await client.get("/api/rate-limits")).json()
    fresh = body["limits"]["offline"]
    assert (fresh["used"], fresh["limit"], fresh["remaining"]) == (0, 10, 10) and ISO_Z.match(fresh["reset_at"])
    for _ in range(2):
        await wait_status(client, await spawn(client))
    body = await (await client.get("/api/rate-limits")).json()
    offline = body["limits"]["offline"]
    assert set(offline) == {"used", "limit", "remaining", "reset_at"}
    assert (offline["used"], offline["limit"], offline["remaining"]) == (2, 10, 8)
    assert ISO_Z.match(offline["reset_at"])
    reset = datetime.strptime(offline["reset_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    assert abs(reset - (time.time() + 2 * 360)) <= 3  # two tokens at 10/h: full again in 720 s
    assert set(body["requests"]) == {"spawn", "agent_read", "agents_list", "system", "other"}
    assert body["requests"]["spawn"]["used"] == 2
    assert {"daily_budget", "today_spend", "budget_remaining", "budget_utilization_pct",
            "budget_alert_level"} <= set(body["budget"])


# -- /health --------------------------------------------------------------------------------------

async def test_health_seed_fields_and_breaker_state_per_provider(aiohttp_client, tmp_path):
    up = await FakeUpstream().start()
    try:
        base = make_config(tmp_path, runtime={"breaker_threshold": 2, "max_attempts": 2, "retry_base_delay": 0.01,
                                              "retry_max_delay": 0.02, "breaker_reset_seconds": 60})
        providers = dict(base.providers)
        providers["flaky"] = ProviderSettings(name="flaky", plugin="openai_compat", base_url=up.url + "/v1",
                                              api_key="sk-f", timeout=10)
        cfg = dataclasses.replace(base, providers=providers, models=route_models(base, {"codex": "flaky"}))
        client = await aiohttp_client(build_app(cfg))
        resp = await client.get("/api/health")
        assert resp.status == 200
        body = await resp.json()
        assert body["status"] == "healthy"
        assert isinstance(body["uptime_seconds"], int) and body["uptime_seconds"] >= 0
        assert isinstance(body["error_rate"], float) and body["error_rate"] == 0
        assert body["models_configured"] == len(cfg.models)
        assert set(body["providers"]) == {"offline", "flaky"}
        assert body["providers"]["flaky"]["state"] == "closed"

        up.fail_next(2, 500)
        done = await wait_status(client, await spawn(client, model="codex"))
        assert done["served_by"]["provider"] == "offline"  # fell back once flaky failed
        body = await (await client.get("/api/health")).json()
        assert body["providers"]["flaky"]["state"] == "open"
        assert body["providers"]["offline"]["state"] == "closed"
        assert body["status"] == "degraded"
    finally:
        await up.close()


async def test_health_is_503_when_no_provider_can_serve(aiohttp_client, tmp_path):
    base = make_config(tmp_path)
    cfg = dataclasses.replace(base, providers={
        "offline": dataclasses.replace(base.providers["offline"], plugin="no-such-plugin")})
    client = await aiohttp_client(build_app(cfg))
    resp = await client.get("/api/health")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "unhealthy" and body["providers"]["offline"]["available"] is False
    assert "X-RateLimit-Remaining" in resp.headers


# -- /system -----------------------------------------------------------------------------------

async def test_system_fields(aiohttp_client, tmp_path):
    base = make_config(tmp_path)
    slow = dataclasses.replace(base.providers["offline"], options={"delay": 5})
    client = await aiohttp_client(build_app(dataclasses.replace(base, providers={"offline": slow})))
    await spawn(client)
    resp = await client.get("/api/system")
    assert resp.status == 200
    body = await resp.json()
    for field in ("cpu_temp", "load_average", "memory_usage", "uptime", "disk_free", "active_agents"):
        assert field in body
    if not glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        assert body["cpu_temp"] is None
    else:
        assert body["cpu_temp"] is None or isinstance(body["cpu_temp"], float)
    assert isinstance(body["load_average"], (int, float)) and body["load_average"] >= 0
    assert 0 < body["memory_usage"] <= 100
    assert re.fullmatch(r"\d+h \d+m", body["uptime"])
    assert re.fullmatch(r"\d+(\.\d)?[BKMGT]", body["disk_free"])
    assert body["active_agents"] == 1


def test_cpu_temp_reads_the_thermal_zone(tmp_path):
    pattern = str(tmp_path / "thermal_zone*" / "temp")
    assert sysinfo.cpu_temp(pattern) is None  # no sensor (a VM, a container): null
    (tmp_path / "thermal_zone0").mkdir()
    (tmp_path / "thermal_zone0" / "temp").write_text("65500\n")
    (tmp_path / "thermal_zone1").mkdir()
    (tmp_path / "thermal_zone1" / "temp").write_text("30000\n")
    assert sysinfo.cpu_temp(pattern) == 65.5  # zone0 is the SoC on a Pi
    (tmp_path / "thermal_zone0" / "temp").write_text("garbage")
    assert sysinfo.cpu_temp(pattern) == 30.0  # an unreadable zone is skipped


def test_system_text_formats():
    assert sysinfo.human_bytes(45 * 1024 ** 3) == "45G"
    assert sysinfo.human_bytes(4.5 * 1024 ** 3) == "4.5G"
    assert sysinfo.human_bytes(512) == "512B"
    assert sysinfo.human_duration(24 * 3600 + 15 * 60) == "24h 15m"  # the seed's example
    assert sysinfo.human_duration(100 * 3600 + 59) == "100h 0m"
    assert sysinfo.human_duration(3 * 3600 + 5 * 60 + 59) == "3h 5m"


# -- /metrics ------------------------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})? '
                    r'(-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> tuple[dict[str, str], dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """(help by family, type by family, samples) of the text format 0.0.4; asserts its grammar."""
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples = []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            helps[name] = doc
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "summary", "histogram", "untyped"), line
            assert name not in types, f"TYPE twice for {name}"
            types[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name = m.group(1)
            family = name if name in types else re.sub(r"_(sum|count|bucket)$", "", name)
            assert family in types, f"sample before its TYPE: {line!r}"
            samples.append((name, dict(LABEL.findall(m.group(3) or "")), float(m.group(4))))
    for name, kind in types.items():
        assert name in helps, f"no HELP for {name}"
        if kind == "counter":
            assert name.endswith("_total"), name
    return helps, types, samples


def value(samples, name: str, **labels: str) -> float:
    found = [v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())]
    assert found, (name, labels)
    return sum(found)


async def test_metrics_json_and_prometheus_agree(aiohttp_client, tmp_path):
    cfg = make_config(tmp_path)
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, system=2))
    app = build_app(cfg)

    async def boom(request):
        raise RuntimeError("a handler bug")

    app.router.add_get("/api/boom", boom)
    client = await aiohttp_client(app)
    first, second = await spawn(client), await spawn(client)
    await wait_status(client, first)
    await wait_status(client, second)
    assert (await client.get("/api/agent/subagent_1_0001")).status == 404
    statuses = [(await client.get("/api/system")).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert (await client.get("/api/boom")).status == 500
    assert (await client.get("/api/no-such-thing")).status == 404

    body = await (await client.get("/api/metrics")).json()
    endpoints = body["endpoints"]
    assert "GET /api/agent/{agent_id}" in endpoints
    assert not [r for r in endpoints if "subagent_" in r], "raw ids must not become routes"
    reads = endpoints["GET /api/agent/{agent_id}"]
    assert reads["requests"] >= 3 and reads["client_errors"] == 1  # wait_status polled it too
    assert endpoints["POST /api/spawn"]["requests"] == 2
    system = endpoints["GET /api/system"]
    assert system["requests"] == 3 and system["client_errors"] == 1
    assert endpoints["GET /api/boom"]["server_errors"] == 1
    assert body["rate_limit_hits"] == 1
    assert body["errors"]["server"] == 1
    assert body["error_rate"] == pytest.approx(round(1 / body["requests_total"], 4))
    lat = body["latency"]
    assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
    assert system["p50_ms"] <= system["p95_ms"] <= system["p99_ms"]
    assert body["agents"]["completed_total"] == 2

    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain") and "version=0.0.4" in resp.headers["Content-Type"]
    assert "X-RateLimit-Limit" not in resp.headers
    _, types, samples = parse_prometheus(await resp.text())
    assert types["j1msky_http_requests_total"] == "counter"
    # Every route the JSON listed matches; the JSON request itself was recorded after it answered.
    assert "GET /api/metrics" not in endpoints
    for route, stats in endpoints.items():
        assert value(samples, "j1msky_http_requests_total", route=route) == stats["requests"], route
        assert value(samples, "j1msky_http_requests_total", route=route, outcome="client_error") \
            == stats["client_errors"]
        assert value(samples, "j1msky_http_requests_total", route=route, outcome="server_error") \
            == stats["server_errors"]
        # The histogram: its _count over the status classes is the route's requests; 4xx and 5xx
        # are the JSON's client and server errors; +Inf holds them all.
        assert value(samples, "j1msky_http_request_duration_seconds_count", route=route) == stats["requests"]
        assert value(samples, "j1msky_http_request_duration_seconds_bucket", route=route, le="+Inf") \
            == stats["requests"]
        if stats["client_errors"]:
            assert value(samples, "j1msky_http_request_duration_seconds_count", route=route,
                         status_class="4xx") == stats["client_errors"]
        if stats["server_errors"]:
            assert value(samples, "j1msky_http_request_duration_seconds_count", route=route,
                         status_class="5xx") == stats["server_errors"]
    assert value(samples, "j1msky_http_requests_total", route="GET /api/metrics") == 1
    assert value(samples, "j1msky_rate_limit_hits_total") == body["rate_limit_hits"] == 1
    assert value(samples, "j1msky_agents_finished_total", status="completed") == 2
    assert value(samples, "j1msky_agents", status="running") == 0
    assert value(samples, "j1msky_spend_today_usd") == pytest.approx(body["budget"]["today_spend"])
    assert value(samples, "j1msky_budget_daily_usd") == body["budget"]["daily_budget"]
    assert value(samples, "j1msky_provider_calls_total", provider="offline") == 2
    assert value(samples, "j1msky_provider_circuit_open", provider="offline") == 0


# -- /billing/usage ---------------------------------------------------------------------------------

def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


LEDGER = [  # (ts, model, cost, key)
    ("2026-01-31T23:59:59", "k2p5", 50.0, "key_a"),   # before the range
    ("2026-02-01T00:00:00", "k2p5", 1.0, "key_a"),
    ("2026-02-01T23:59:59", "sonnet", 2.0, "key_b"),
    ("2026-02-02T00:00:00", "k2p5", 0.5, "key_a"),
    ("2026-02-19T12:00:00", "opus", 3.0, "anonymous"),
    ("2026-02-20T00:00:00", "opus", 70.0, "key_b"),   # after the range
]


async def _write_ledger(app) -> None:
    store = app[SERVICES].store
    await store.write(*[
        ("INSERT INTO usage (ts, agent_id, model, provider, input_tokens, output_tokens, cost, api_key) "
         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (_ts(ts), f"subagent_{i}", model, "offline", 100, 200, cost, key))
        for i, (ts, model, cost, key) in enumerate(LEDGER)])


async def test_billing_usage_seed_shape_and_range(aiohttp_client, tmp_path):
    app = build_app(make_config(tmp_path))
    client = await aiohttp_client(app)
    await _write_ledger(app)
    resp = await client.get("/api/billing/usage", params={"from": "2026-02-01", "to": "2026-02-19"})
    assert resp.status == 200
    body = await resp.json()
    assert body["period"] == "2026-02-01 to 2026-02-19"
    assert body["total_cost"] == pytest.approx(6.5)
    assert body["by_model"] == {"opus": 3.0, "sonnet": 2.0, "k2p5": 1.5}
    assert body["by_day"] == {"2026-02-01": 3.0, "2026-02-02": 0.5, "2026-02-19": 3.0}
    assert "by_key" not in body
    body = await (await client.get("/api/billing/usage?from=2026-02-01&to=2026-02-19&by_key=true")).json()
    assert body["by_key"] == {"anonymous": 3.0, "key_b": 2.0, "key_a": 1.5}
    one_day = await (await client.get("/api/billing/usage?from=2026-02-02&to=2026-02-02")).json()
    assert one_day["period"] == "2026-02-02 to 2026-02-02"
    assert one_day["total_cost"] == 0.5 and one_day["by_day"] == {"2026-02-02": 0.5}
    empty = await (await client.get("/api/billing/usage?from=2025-06-01&to=2025-06-30")).json()
    assert empty["total_cost"] == 0 and empty["by_model"] == {} and empty["by_day"] == {}


async def test_billing_usage_defaults_to_this_month_with_real_agents(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    done = [await wait_status(client, await spawn(client, model=m)) for m in ("k2p5", "sonnet", "k2p5")]
    body = await (await client.get("/api/billing/usage")).json()
    today = datetime.now(timezone.utc).date()
    assert body["period"] == f"{today.replace(day=1).isoformat()} to {today.isoformat()}"
    assert body["total_cost"] == pytest.approx(sum(d["cost"] for d in done))
    assert set(body["by_model"]) == {"k2p5", "sonnet"}
    assert body["by_day"] == {today.isoformat(): pytest.approx(body["total_cost"])}


@pytest.mark.parametrize("query,field", [
    ("from=2026-13-01", "from"),
    ("to=yesterday", "to"),
    ("from=2026-02-30", "from"),
    ("from=20260201&to=2026-02-19", "from"),        # the basic ISO form is not YYYY-MM-DD
    ("from=2026-W05-1&to=2026-02-19", "from"),      # nor is an ISO week date
    ("from=2026-02-19&to=2026-02-01", "from"),      # from after to
    ("from=2024-01-01&to=2026-01-01", "from"),      # more than a year
])
async def test_billing_usage_bad_dates_are_400_envelopes(aiohttp_client, tmp_path, query, field):
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    resp = await client.get("/api/billing/usage?" + query)
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == 400 and error["type"] == "VALIDATION_ERROR"
    assert error["details"][0]["field"] == field
