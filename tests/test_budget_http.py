"""Budgets through real HTTP: 402 refusals, 200 racing spawns, reserve/settle, alert
levels, the daily budget across a restart, cost-spike blocks and per-key concurrency.

Prices are chosen so that money is exact: k2p5 runs on a fake upstream at $1 per 1k
output tokens and nothing for input, with 100 typical output tokens and a max_tokens of
100, so each spawn is estimated at and reserves (its worst case) $0.10 and (with the
upstream answering 100 output tokens) costs $0.10.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from j1mskyd.app import build_app
from j1mskyd.budget import Budget, BudgetExceeded, BudgetPolicy, SpawnRefused
from j1mskyd.providers import ProviderSettings
from j1mskyd.worstcase import FRAMING_TOKENS
from tests.conftest import Clock, make_config, wait_status
from tests.fakeupstream import FakeUpstream

ESTIMATE = 0.1



@pytest.fixture
async def upstream():
    up = await FakeUpstream().start()
    up.input_tokens, up.output_tokens = 5, 100
    yield up
    await up.close()


def priced_config(tmp_path, upstream: FakeUpstream, **budget):
    base = make_config(tmp_path, runtime={"retry_base_delay": 0.01, "retry_max_delay": 0.05})
    providers = dict(base.providers)
    providers["paid"] = ProviderSettings(name="paid", plugin="openai_compat", base_url=upstream.url + "/v1",
                                         api_key="sk-paid", timeout=60, max_concurrency=64, hourly_limit=100_000)
    models = dict(base.models)
    models["k2p5"] = dataclasses.replace(models["k2p5"], provider="paid", input_per_1k=0.0, output_per_1k=1.0,
                                         typical_output_tokens=100, max_tokens=100, fallback=None)
    cfg = dataclasses.replace(base, providers=providers, models=models)
    return dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, **budget))


async def spawn(client, **body):
    return await client.post("/api/spawn", json={"model": "k2p5", "task": "spend some money"} | body)


async def spawn_ok(client, **body) -> str:
    resp = await spawn(client, **body)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["agent_id"]


async def budget_of(client) -> dict:
    resp = await client.get("/api/rate-limits")
    assert resp.status == 200
    return (await resp.json())["budget"]


def app_config(app):
    from j1mskyd.api.common import CONFIG
    return app[CONFIG].current


async def ledger_total(app) -> float:
    from j1mskyd.api.common import SERVICES
    store = app[SERVICES].store
    return await store.read(lambda conn: conn.execute("SELECT COALESCE(SUM(cost), 0) FROM usage").fetchone()[0])


async def test_spawn_over_the_daily_budget_is_402_with_budget_remaining(aiohttp_client, tmp_path, upstream):
    upstream.delay = 5  # keep them in flight: reservations alone must stop the third
    client = await aiohttp_client(build_app(priced_config(tmp_path, upstream, daily_budget=0.25)))
    first = await spawn(client)
    assert (await first.json())["estimated_cost"] == pytest.approx(ESTIMATE)
    await spawn_ok(client)
    resp = await spawn(client)
    assert resp.status == 402
    body = await resp.json()
    error = body["error"]
    assert body["success"] is False
    assert error["code"] == 402 and error["type"] == "BUDGET_EXCEEDED"
    assert error["budget_remaining"] == pytest.approx(0.05)
    assert "budget" in error["message"].lower() and error["request_id"].startswith("req_")
    assert "X-RateLimit-Remaining" in resp.headers
    # A refused batch spawns nothing; the agent count shows only the two accepted.
    batch = await client.post("/api/spawn-batch", json={"agents": [{"model": "k2p5", "task": "a"}]})
    assert batch.status == 402
    assert (await (await client.get("/api/agents")).json())["pagination"]["total"] == 2
    snap = await budget_of(client)
    assert snap["reserved"] == pytest.approx(0.2) and snap["today_spend"] == 0
    assert snap["budget_remaining"] == pytest.approx(0.05)


async def test_200_concurrent_spawns_at_the_limit_never_overspend(aiohttp_client, tmp_path, upstream):
    daily = 1.05
    app = build_app(priced_config(tmp_path, upstream, daily_budget=daily))
    client = await aiohttp_client(app)
    responses = await asyncio.gather(*(spawn(client, task=f"racing spawn {i}") for i in range(200)))
    statuses = [r.status for r in responses]
    assert statuses.count(200) == int(daily // ESTIMATE) == 10, statuses
    assert statuses.count(402) == 190
    snap = await budget_of(client)
    assert snap["today_spend"] + snap["reserved"] <= daily + 1e-9
    accepted = [(await r.json())["agent_id"] for r in responses if r.status == 200]
    for agent_id in accepted:
        assert (await wait_status(client, agent_id))["status"] == "completed"
    snap = await budget_of(client)
    assert snap["today_spend"] == pytest.approx(1.0) and snap["reserved"] == 0
    assert snap["today_spend"] <= daily
    assert await ledger_total(app) == pytest.approx(1.0)
    assert len(upstream.calls) == 10


async def test_settle_releases_the_unspent_reservation(aiohttp_client, tmp_path, upstream):
    upstream.output_tokens = 40  # costs $0.04 against a $0.10 estimate
    upstream.delay = 0.3
    client = await aiohttp_client(build_app(priced_config(tmp_path, upstream, daily_budget=0.15)))
    first = await spawn_ok(client)
    refused = await spawn(client)  # 0.10 reserved + 0.10 > 0.15
    assert refused.status == 402
    assert (await refused.json())["error"]["budget_remaining"] == pytest.approx(0.05)
    done = await wait_status(client, first)
    assert done["cost"] == pytest.approx(0.04)
    snap = await budget_of(client)
    assert snap["reserved"] == 0 and snap["today_spend"] == pytest.approx(0.04)
    assert snap["budget_remaining"] == pytest.approx(0.11)
    second = await spawn_ok(client)  # 0.04 spent + 0.10 reserved fits now
    assert (await budget_of(client))["reserved"] == pytest.approx(0.1)
    await wait_status(client, second)


async def test_cancel_releases_the_reservation_but_the_call_in_flight_counts(aiohttp_client, tmp_path, upstream):
    """The provider may bill a call whose caller hung up: it counts at its worst case (here
    all 100 output tokens at $1/1k, the whole estimate), the rest of the reservation is freed."""
    upstream.delay = 5
    client = await aiohttp_client(build_app(priced_config(tmp_path, upstream, daily_budget=0.25)))
    agent_id = await spawn_ok(client)
    await spawn_ok(client, task="a second one")
    assert (await spawn(client)).status == 402
    await upstream.wait_calls(2)
    resp = await client.delete(f"/api/agent/{agent_id}")
    assert resp.status == 200 and (await resp.json())["refund"] == 0
    snap = await budget_of(client)
    assert snap["reserved"] == pytest.approx(ESTIMATE) and snap["today_spend"] == pytest.approx(ESTIMATE)
    assert (await spawn(client)).status == 402  # 0.1 spent + 0.1 reserved: no room for 0.1 more


async def test_alert_levels_follow_real_spend(aiohttp_client, tmp_path, upstream):
    client = await aiohttp_client(build_app(priced_config(tmp_path, upstream, daily_budget=1.0)))
    expected = {0: "ok", 4: "ok", 5: "notice", 6: "notice", 7: "warning", 8: "warning", 9: "critical",
                10: "critical"}
    snap = await budget_of(client)
    assert snap["budget_alert_level"] == "ok" and snap["budget_utilization_pct"] == 0
    for n in range(1, 11):
        assert (await wait_status(client, await spawn_ok(client)))["status"] == "completed"
        if n in expected:
            snap = await budget_of(client)
            assert snap["budget_utilization_pct"] == pytest.approx(n * 10), n
            assert snap["budget_alert_level"] == expected[n], (n, snap)
    resp = await spawn(client)
    assert resp.status == 402 and (await resp.json())["error"]["budget_remaining"] == 0
    metrics = await (await client.get("/api/metrics")).json()
    assert metrics["budget"]["budget_alert_level"] == "critical"


async def test_daily_budget_context_survives_a_restart(aiohttp_client, tmp_path, upstream):
    cfg = priced_config(tmp_path, upstream, daily_budget=0.45)
    client = await aiohttp_client(build_app(cfg))
    for _ in range(3):
        assert (await wait_status(client, await spawn_ok(client)))["status"] == "completed"
    upstream.delay = 30  # the fourth is in flight when the daemon stops
    in_flight = await spawn_ok(client)
    await upstream.wait_calls(4)  # its call is in flight, not still queued
    before = await budget_of(client)
    assert before["today_spend"] == pytest.approx(0.3) and before["reserved"] == pytest.approx(0.1)
    await client.close()

    client = await aiohttp_client(build_app(cfg))
    after = await budget_of(client)
    assert after["today_spend"] == pytest.approx(0.3)
    assert after["reserved"] == pytest.approx(0.1)  # the re-queued agent still holds its estimate
    assert after["budget_utilization_pct"] == pytest.approx(66.67)
    assert after["budget_alert_level"] == "notice"
    assert after["budget_remaining"] == pytest.approx(0.05)
    resp = await spawn(client)  # 0.3 + 0.1 + 0.1 > 0.45: still refused after the restart
    assert resp.status == 402
    assert (await resp.json())["error"]["budget_remaining"] == pytest.approx(0.05)
    assert (await (await client.get(f"/api/agent/{in_flight}")).json())["status"] in ("queued", "running")


def _into_an_hour() -> Clock:
    """The app's clock, 20 minutes into the current hour: the test never straddles an hour."""
    return Clock(time.time() // 3600 * 3600 + 1200)


async def test_cost_spike_blocks_the_key_until_the_hour_ends(aiohttp_client, tmp_path, upstream):
    clock = _into_an_hour()
    cfg = priced_config(tmp_path, upstream, daily_budget=100.0, spike_per_hour=0.25)
    client = await aiohttp_client(build_app(cfg, clock=clock))
    for _ in range(2):  # 0.20 this hour; another 0.10 would pass 0.25
        await wait_status(client, await spawn_ok(client))
    resp = await spawn(client)
    assert resp.status == 429
    error = (await resp.json())["error"]
    assert error["code"] == 429 and error["type"] == "RATE_LIMITED" and "spike" in error["message"].lower()
    assert isinstance(error["retry_after"], int)
    assert error["retry_after"] == 2400 + 1  # the hour's 40 minutes left, rounded up
    assert resp.headers["Retry-After"] == str(error["retry_after"])
    assert (await client.get("/api/health")).status == 200  # only spawning is blocked
    assert (await client.get("/api/agents")).status == 200
    await client.close()
    # The hour's spend per key comes back from the ledger: still blocked after a restart.
    client = await aiohttp_client(build_app(cfg, clock=clock))
    resp = await spawn(client)
    assert resp.status == 429 and "spike" in (await resp.json())["error"]["message"].lower()


def test_cost_spike_is_per_key_and_ends_with_the_hour():
    clock = Clock(1_764_028_800.0 + 1200)  # 20 minutes into an hour
    budget = Budget(BudgetPolicy(daily_budget=1000.0, monthly_ceiling=30000.0, spike_per_hour=1.0), clock)
    budget.reserve("a1", "key_a", 0.4)
    budget.settle("a1", 0.4)
    budget.reserve("a2", "key_a", 0.4)
    budget.settle("a2", 0.4)
    with pytest.raises(SpawnRefused) as err:  # 0.8 spent + 0.3 would pass 1.0: a hard cap
        budget.reserve("a3", "key_a", 0.3)
    assert err.value.extra["retry_after"] == 2401 and err.value.headers["Retry-After"] == "2401"
    budget.reserve("a3", "key_a", 0.2)  # exactly at the cap fits
    budget.settle("a3", 0.2)
    budget.reserve("b1", "key_b", 0.5)  # key_b spent nothing: unaffected
    budget.settle("b1", 0.5)
    clock.t += 2399
    with pytest.raises(SpawnRefused):
        budget.reserve("a4", "key_a", 0.01)
    clock.t += 1  # the hour ended
    budget.reserve("a4", "key_a", 0.01)
    assert budget.spent_today == pytest.approx(1.5)  # the day's spend is untouched by the hour


def test_cost_spike_counts_reservations_in_flight():
    budget = Budget(BudgetPolicy(daily_budget=1000.0, spike_per_hour=1.0), Clock(1_764_028_800.0 + 60))
    budget.reserve("a1", "key_a", 0.7)
    with pytest.raises(SpawnRefused) as err:  # 0.7 held + 0.4: what is in flight may yet be spent
        budget.reserve("a2", "key_a", 0.4)
    assert err.value.extra["retry_after"] == 5 and "in flight" in err.value.message
    budget.settle("a1", 0.1)  # it cost less than its worst case: the room comes back
    budget.reserve("a2", "key_a", 0.4)


def test_restore_brings_back_the_spike_block_per_key():
    clock = Clock(1_764_028_800.0 + 60)
    budget = Budget(BudgetPolicy(spike_per_hour=1.0), clock)
    budget.restore(spent_today=3.0, spent_month=3.0, spent_hour_by_key={"key_a": 2.5, "key_b": 0.5}, live=[])
    with pytest.raises(SpawnRefused):
        budget.reserve("x", "key_a", 0.1)
    budget.reserve("y", "key_b", 0.1)


def test_per_key_concurrency_counts_batches_and_is_per_key():
    budget = Budget(BudgetPolicy(max_agents_per_key=3), Clock(1_764_028_800.0))
    budget.reserve_all("key_a", [("a1", 0.1), ("a2", 0.1)])
    with pytest.raises(SpawnRefused) as err:  # a batch of two would make four: all or nothing
        budget.reserve_all("key_a", [("a3", 0.1), ("a4", 0.1)])
    assert err.value.status == 429 and err.value.extra["retry_after"] == 5
    assert budget.reserved == pytest.approx(0.2)
    budget.reserve_all("key_b", [("b1", 0.1), ("b2", 0.1), ("b3", 0.1)])
    budget.reserve("a3", "key_a", 0.1)
    with pytest.raises(SpawnRefused):
        budget.reserve("a4", "key_a", 0.1)
    budget.settle("a1", 0.05)
    budget.reserve("a4", "key_a", 0.1)
    with pytest.raises(BudgetExceeded):
        Budget(BudgetPolicy(daily_budget=0.1), Clock(0.0)).reserve("z", "key_c", 0.2)


async def test_per_key_concurrency_limit_over_http(aiohttp_client, tmp_path, upstream):
    upstream.delay = 0.5
    client = await aiohttp_client(build_app(priced_config(tmp_path, upstream, max_agents_per_key=2)))
    first = await spawn_ok(client)
    await spawn_ok(client)
    resp = await spawn(client)
    assert resp.status == 429
    error = (await resp.json())["error"]
    assert error["type"] == "RATE_LIMITED" and error["retry_after"] == 5 and resp.headers["Retry-After"] == "5"
    batch = await client.post("/api/spawn-batch", json={"agents": [{"model": "k2p5", "task": "one more"}]})
    assert batch.status == 429
    assert (await (await client.get("/api/agents")).json())["pagination"]["total"] == 2
    await wait_status(client, first)
    third = await spawn_ok(client)  # one finished: room for one more
    await wait_status(client, third)


async def test_a_batch_larger_than_the_key_may_have_live_is_a_400_not_a_429_to_wait_out(aiohttp_client, tmp_path,
                                                                                      upstream):
    # With no agent live, a batch of three under a limit of two could never start: a 429 with
    # Retry-After told a client (the reference's retry loop) to wait for room that never comes.
    client = await aiohttp_client(build_app(priced_config(tmp_path, upstream, max_agents_per_key=2)))
    resp = await client.post("/api/spawn-batch", json={"agents": [{"model": "k2p5", "task": "t"}] * 3})
    assert resp.status == 400 and "Retry-After" not in resp.headers
    error = (await resp.json())["error"]
    assert error["type"] == "VALIDATION_ERROR" and error["details"][0]["field"] == "agents"
    assert "(2)" in error["details"][0]["message"]
    assert (await (await client.get("/api/agents")).json())["pagination"]["total"] == 0
    ok = await client.post("/api/spawn-batch", json={"agents": [{"model": "k2p5", "task": "t"}] * 2})
    assert ok.status == 200, await ok.text()


async def test_a_team_reserves_for_its_members_and_settles_once(aiohttp_client, tmp_path):
    base = make_config(tmp_path)
    slow = dataclasses.replace(base.providers["offline"], options={"delay": 0.3})
    app = build_app(dataclasses.replace(base, providers={"offline": slow}))
    client = await aiohttp_client(app)
    resp = await client.post("/api/spawn-team", json={"team": "team_coding", "task": "build the thing"})
    assert resp.status == 200, await resp.text()
    team = await resp.json()
    snap = await budget_of(client)
    # Each member holds its worst case: every input byte a token (plus the chat framing) and
    # max_tokens of output, at the dearest model of its fallback chain.
    models = app_config(app).models
    worst = {a: (len("build the thing") + FRAMING_TOKENS) / 1000 * m.input_per_1k
             + m.max_tokens / 1000 * m.output_per_1k for a, m in models.items()}
    assert snap["reserved"] == pytest.approx(max(worst["k2p5"], worst["minimax-m2.5"])
                                             + max(worst["sonnet"], worst["k2p5"], worst["minimax-m2.5"]), abs=1e-6)
    assert snap["reserved"] > team["estimated_cost"] > 0
    done = await wait_status(client, team["agent_id"])
    assert done["status"] == "completed"
    snap = await budget_of(client)
    assert snap["reserved"] == 0
    assert snap["today_spend"] == pytest.approx(done["cost"])  # members' cost, counted once
    assert await ledger_total(app) == pytest.approx(done["cost"])


async def test_monthly_ceiling_refuses_with_402(aiohttp_client, tmp_path, upstream):
    cfg = priced_config(tmp_path, upstream, daily_budget=10.0, monthly_ceiling=0.15)
    client = await aiohttp_client(build_app(cfg))
    await wait_status(client, await spawn_ok(client))
    resp = await spawn(client)  # 0.10 this month + 0.10 > 0.15, although the day has room
    assert resp.status == 402
    error = (await resp.json())["error"]
    assert error["type"] == "BUDGET_EXCEEDED" and "monthly" in error["message"].lower()
    assert error["budget_remaining"] == pytest.approx(9.9)


async def test_spike_block_and_concurrency_cap_are_per_api_key(aiohttp_client, tmp_path, upstream):
    from tests.test_auth import bearer, bootstrap_key, new_key

    cfg = priced_config(tmp_path, upstream, daily_budget=100.0, spike_per_hour=0.25, max_agents_per_key=1)
    cfg = dataclasses.replace(cfg, security=dataclasses.replace(cfg.security, auth=True))
    client = await aiohttp_client(build_app(cfg, clock=_into_an_hour()))
    admin = bootstrap_key(cfg)
    a = bearer((await new_key(client, admin, ["agents:read", "agents:write"], name="a"))["token"])
    b = bearer((await new_key(client, admin, ["agents:read", "agents:write"], name="b"))["token"])

    async def spawn_as(headers):
        return await client.post("/api/spawn", json={"model": "k2p5", "task": "keyed"}, headers=headers)

    async def finish(headers, resp):
        assert resp.status == 200, await resp.text()
        agent_id = (await resp.json())["agent_id"]
        for _ in range(500):
            body = await (await client.get(f"/api/agent/{agent_id}", headers=headers)).json()
            if body["status"] == "completed":
                return
            await asyncio.sleep(0.01)
        raise AssertionError(body)

    upstream.delay = 0.3
    first = await spawn_as(a)
    refused = await spawn_as(a)  # A has one in flight: its cap
    assert refused.status == 429 and "Too many agents" in (await refused.json())["error"]["message"]
    other = await spawn_as(b)  # B's cap is its own
    await finish(a, first)
    await finish(b, other)
    upstream.delay = 0
    await finish(a, await spawn_as(a))  # A: 0.20 this hour; 0.10 more would pass 0.25
    resp = await spawn_as(a)
    assert resp.status == 429 and "spike" in (await resp.json())["error"]["message"].lower()
    await finish(b, await spawn_as(b))  # B spent 0.10 before this one: not blocked
    resp = await spawn_as(b)  # now B is at 0.20 too
    assert resp.status == 429 and "spike" in (await resp.json())["error"]["message"].lower()
