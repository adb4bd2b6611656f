"""GET /api/metrics/timeseries: the dashboard's series, rolled up in the store (metric_points),
live before they are written, kept across a restart, bounded by the purge, refused clearly."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app, state_db_path
from j1mskyd.providers import ProviderSettings
from j1mskyd.timeseries import DAY, HOUR
from tests.conftest import Clock, bearer, bootstrap_key, make_config, wait_status

URL = "/api/metrics/timeseries"
T0 = 1_764_000_000.0 // DAY * DAY + 10 * HOUR + 5  # 10:00:05 UTC on some day


def _config(tmp_path, **security):
    cfg = make_config(tmp_path)
    k2p5 = cfg.models["k2p5"]
    return dataclasses.replace(
        cfg, providers={**cfg.providers, "broken": ProviderSettings(name="broken", plugin="offline",
                                                                    options={"fail": "server_error"})},
        models={**cfg.models, "brokenm": dataclasses.replace(k2p5, alias="brokenm", provider="broken", fallback=None)},
        runtime=dataclasses.replace(cfg.runtime, retry_base_delay=0.01, retry_max_delay=0.02),
        security=dataclasses.replace(cfg.security, **security))


async def _run_agents(client) -> dict[str, dict]:
    ids = []
    for model, n in (("k2p5", 3), ("brokenm", 2)):
        for i in range(n):
            resp = await client.post("/api/spawn", json={"model": model, "task": f"task {i}"})
            assert resp.status == 200, await resp.text()
            ids.append((await resp.json())["agent_id"])
    return {a: await wait_status(client, a) for a in ids}


async def _series(client, **params) -> dict:
    resp = await client.get(URL, params=params)
    assert resp.status == 200, await resp.text()
    return await resp.json()


def _by_label(body: dict) -> dict[str, dict]:
    return {s["label"]: s for s in body["series"]}


async def test_series_are_live_written_once_and_survive_a_restart(aiohttp_client, tmp_path):
    cfg = _config(tmp_path)
    clock = Clock(T0)
    client = await aiohttp_client(build_app(cfg, clock=clock))
    agents = await _run_agents(client)
    cost = sum(a["cost"] for a in agents.values() if a["status"] == "completed")
    assert cost > 0

    async def check(client) -> None:
        hourly = await _series(client, metric="agents")  # hour, 48h by default
        assert hourly["granularity"] == "hour" and hourly["period"] == "48h" and len(hourly["buckets"]) == 48
        assert hourly["buckets"][-1] == "2025-11-24T10:00:00Z"
        by = _by_label(hourly)
        assert by["completed"]["count"][-1] == 3 and by["failed"]["count"][-1] == 2
        assert sum(by["completed"]["count"]) == 3  # every other bucket is an explicit 0
        spend = _by_label(await _series(client, metric="spend_usd", granularity="day", period="30d"))
        assert list(spend) == ["k2p5"]  # failed calls nobody billed are no spend
        assert spend["k2p5"]["count"][-1] == 3 and spend["k2p5"]["sum"][-1] == pytest.approx(cost)
        latency = _by_label(await _series(client, metric="latency_seconds", period="2h"))
        assert list(latency) == ["offline"] and latency["offline"]["count"] == [0, 3]
        assert latency["offline"]["p50"][0] is None and 0 <= latency["offline"]["p50"][1] <= latency["offline"]["p95"][1]

    await check(client)  # from memory: nothing written yet
    rollups = client.server.app[SERVICES].rollups
    await rollups.flush()
    assert rollups.pending == {}
    await check(client)  # from the store, not counted twice
    await rollups.flush()  # nothing new: no write, nothing doubled
    await check(client)

    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "one more"})
    await wait_status(client, (await resp.json())["agent_id"])
    await client.close()  # the stop writes the last minute's observations

    with sqlite3.connect(state_db_path(cfg)) as conn:
        (rows,) = conn.execute("SELECT COUNT(*) FROM metric_points").fetchone()
        assert rows > 0
    again = await aiohttp_client(build_app(cfg, clock=clock))
    by = _by_label(await _series(again, metric="agents"))
    assert by["completed"]["count"][-1] == 4 and by["failed"]["count"][-1] == 2


async def test_the_purge_keeps_a_week_of_hours_and_400_days(aiohttp_client, tmp_path):
    cfg = _config(tmp_path)
    clock = Clock(T0)
    client = await aiohttp_client(build_app(cfg, clock=clock))
    await _run_agents(client)
    rollups = client.server.app[SERVICES].rollups
    await rollups.flush()

    def granularities() -> dict[int, int]:
        with sqlite3.connect(state_db_path(cfg)) as conn:
            return dict(conn.execute("SELECT granularity, COUNT(*) FROM metric_points WHERE granularity > 0 "
                                     "GROUP BY granularity"))  # (0: the last flush's marker row)

    before = granularities()
    assert before[HOUR] > 0 and before[DAY] > 0
    clock.t = T0 + 6 * DAY
    await rollups.purge()
    assert granularities() == before  # within the week: kept
    clock.t = T0 + 8 * DAY
    await rollups.purge()
    assert granularities() == {DAY: before[DAY]}  # hours gone after a week, days kept
    by = _by_label(await _series(client, metric="agents", granularity="day", period="30d"))
    assert by["completed"]["count"][-9] == 3
    clock.t = T0 + 401 * DAY
    await rollups.purge()
    assert granularities() == {}


@pytest.mark.parametrize("params, field", [
    ({}, "metric"),
    ({"metric": "cpu"}, "metric"),
    ({"metric": "agents", "granularity": "minute"}, "granularity"),
    ({"metric": "latency_seconds", "granularity": "day"}, "granularity"),
    ({"metric": "agents", "period": "two days"}, "period"),
    ({"metric": "agents", "period": "0h"}, "period"),
    ({"metric": "agents", "period": "8d"}, "period"),  # hourly rows are kept for 7 days
    ({"metric": "agents", "granularity": "day", "period": "12h"}, "period"),  # less than a bucket
    ({"metric": "agents", "granularity": "day", "period": "401d"}, "period"),
])
async def test_bad_queries_are_400_naming_the_field(client, params, field):
    resp = await client.get(URL, params=params)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "VALIDATION_ERROR" and field in [d["field"] for d in error["details"]], error


async def test_only_a_reader_of_every_keys_work_sees_the_series(aiohttp_client, tmp_path):
    cfg = _config(tmp_path, auth=True)
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])
    resp = await client.post("/api/keys", json={"name": "reader", "scopes": ["agents:read", "billing:read"]},
                             headers=admin)
    reader = bearer((await resp.json())["token"])
    assert (await client.get(URL, params={"metric": "agents"}, headers=reader)).status == 403
    assert (await client.get(URL, params={"metric": "agents"}, headers=admin)).status == 200
    assert (await client.get(URL, params={"metric": "agents"})).status == 401


async def test_a_read_while_a_flush_commits_counts_its_rows_once(aiohttp_client, tmp_path):
    """A flush takes its rows out of memory before its commit: a series read in between (the
    dashboard's, on the minute) must count them, from memory, and once the commit is in what a
    read sees, from the store alone.  The commit is held back by another sqlite writer."""
    cfg = _config(tmp_path)
    clock = Clock(T0)
    client = await aiohttp_client(build_app(cfg, clock=clock))
    await _run_agents(client)
    rollups = client.server.app[SERVICES].rollups

    async def completed() -> int:
        return sum(_by_label(await _series(client, metric="agents"))["completed"]["count"])

    assert await completed() == 3
    other = sqlite3.connect(state_db_path(cfg), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        flushing = asyncio.ensure_future(rollups.flush())
        await asyncio.sleep(0.1)
        assert rollups.pending == {} and not flushing.done()  # taken, its commit waiting
        assert await completed() == 3
    finally:
        other.execute("ROLLBACK")
        other.close()
    await asyncio.wait_for(flushing, 10)
    assert await completed() == 3  # from the store, not counted twice
    await rollups.flush()
    assert await completed() == 3
