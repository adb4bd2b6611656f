"""The budget is a hard cap: no agent may cost more than was reserved for it, however the
upstream bills (issue 12, item 3).

A fake upstream on loopback reports as many output tokens as the ``max_tokens`` it was sent
(an upstream that writes until it is cut off), in both wire formats; or it ignores
``max_tokens`` and bills more.  Prices are per 1k tokens: output $1, input $0.01, so a call
allowed 200 output tokens may cost $0.20 plus its input.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd import worstcase
from j1mskyd.budget import Budget, BudgetPolicy, BudgetExceeded
from j1mskyd.config import ModelConfig, TeamConfig
from j1mskyd.providers import ProviderSettings
from tests.conftest import Clock, make_config, route_models, wait_status
from tests.fakeupstream import FakeUpstream

CAP = 0.50
MAX_TOKENS = 200
PLUGINS = {"openai_compat": "/v1", "anthropic": ""}  # plugin -> path under the fake upstream's URL


@pytest.fixture
async def upstream():
    up = await FakeUpstream().start()
    up.input_tokens = 5
    up.bill_max_tokens = True
    yield up
    await up.close()


def model(alias: str, provider: str, *, output_per_1k: float = 1.0, fallback: str | None = None) -> ModelConfig:
    # typical_output_tokens is what today's estimate assumes; the upstream bills max_tokens.
    return ModelConfig(alias=alias, provider=provider, upstream=f"up-{alias}", input_per_1k=0.01,
                       output_per_1k=output_per_1k, blended_per_1k=output_per_1k, fallback=fallback,
                       typical_output_tokens=50, max_tokens=MAX_TOKENS)


LEVELS = {"daily": {"daily_budget": CAP},
          "monthly": {"daily_budget": 100.0, "monthly_ceiling": CAP},
          "hourly": {"daily_budget": 100.0, "monthly_ceiling": 3000.0, "spike_per_hour": CAP}}


def capped_config(tmp_path, upstream: FakeUpstream, plugin: str = "openai_compat", level: str = "daily",
                  **models: ModelConfig):
    base = make_config(tmp_path, runtime={"retry_base_delay": 0.01, "retry_max_delay": 0.02})
    providers = {
        "paid": ProviderSettings(name="paid", plugin=plugin, base_url=upstream.url + PLUGINS[plugin],
                                 api_key="sk-paid", timeout=60, max_concurrency=64, hourly_limit=100_000),
        "broken": ProviderSettings(name="broken", plugin="offline", options={"fail": "server_error"},
                                   max_concurrency=64, hourly_limit=100_000),
    }
    models = models or {"k2p5": model("k2p5", "paid")}
    teams = {"team_paid": TeamConfig(id="team_paid", name="Paid", members=tuple(models)[:2])}
    cfg = dataclasses.replace(base, providers=providers, models=models, teams=teams)
    return dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, **LEVELS[level]))


async def ledger(app) -> list[dict[str, Any]]:
    def read(conn):
        return [dict(r) for r in conn.execute("SELECT * FROM usage ORDER BY ts")]
    return await app[SERVICES].store.read(read)


async def budget_of(client) -> dict:
    return (await (await client.get("/api/rate-limits")).json())["budget"]


async def finish_all(client, responses) -> list[dict]:
    """Every accepted spawn's agents, once ended (teams: the team agent)."""
    ids = []
    for resp in responses:
        if resp.status == 200:
            body = await resp.json()
            ids += [a["agent_id"] for a in body["agents"]] if "agents" in body else [body["agent_id"]]
    return [await wait_status(client, agent_id, timeout=30) for agent_id in ids]


def assert_ledger_matches_upstream(rows, upstream: FakeUpstream, models) -> None:
    """Each cost record is what the upstream reported, at the prices of the model that answered."""
    billed = sorted(c["json"]["max_tokens"] for c in upstream.calls)
    assert sorted(r["output_tokens"] for r in rows) == billed
    for r in rows:
        m = models[r["model"]]
        assert r["input_tokens"] == upstream.input_tokens
        assert r["cost"] == pytest.approx(r["input_tokens"] / 1000 * m.input_per_1k
                                          + r["output_tokens"] / 1000 * m.output_per_1k)


@pytest.mark.parametrize("plugin,level", [("openai_compat", "daily"), ("anthropic", "daily"),
                                          ("openai_compat", "monthly"), ("anthropic", "hourly")])
async def test_200_concurrent_spawns_never_spend_past_the_cap(aiohttp_client, tmp_path, upstream, plugin, level):
    cfg = capped_config(tmp_path, upstream, plugin, level)
    app = build_app(cfg)
    client = await aiohttp_client(app)
    responses = await asyncio.gather(*(client.post("/api/spawn", json={"model": "k2p5", "task": f"race {i}"})
                                       for i in range(200)))
    statuses = [r.status for r in responses]
    refused = 429 if level == "hourly" else 402  # the spike limit passes with the hour
    assert set(statuses) == {200, refused}, statuses
    done = await finish_all(client, responses)
    assert done and all(a["status"] == "completed" for a in done)
    rows = await ledger(app)
    assert len(rows) == len(done) == len(upstream.calls) == statuses.count(200)
    per_hour: dict[int, float] = {}  # the spike cap holds per clock hour of settlement
    for r in rows:
        per_hour[int(r["ts"] // 3600)] = per_hour.get(int(r["ts"] // 3600), 0.0) + r["cost"]
    assert sum(r["cost"] for r in rows) <= CAP + 1e-9 or (level == "hourly" and len(per_hour) > 1)
    assert max(per_hour.values()) <= CAP + 1e-9
    # Each call was allowed the model's whole max_tokens (the reservation paid for it) and used it.
    assert {c["json"]["max_tokens"] for c in upstream.calls} == {MAX_TOKENS}
    assert_ledger_matches_upstream(rows, upstream, cfg.models)
    snap = await budget_of(client)
    assert snap["reserved"] == 0 and snap["today_spend"] == pytest.approx(sum(r["cost"] for r in rows))
    # The worst case of one spawn is 0.2 and a bit of input: two fit in 0.5, a third would not.
    assert statuses.count(200) == 2


async def test_racing_batches_and_teams_stay_under_the_cap(aiohttp_client, tmp_path, upstream):
    models = {"k2p5": model("k2p5", "paid"), "sonnet": model("sonnet", "paid", output_per_1k=0.5)}
    cfg = capped_config(tmp_path, upstream, **models)
    app = build_app(cfg)
    client = await aiohttp_client(app)
    batch = {"agents": [{"model": "sonnet", "task": "batch a"}, {"model": "sonnet", "task": "batch b"}]}
    requests = [client.post("/api/spawn-batch", json=batch) for _ in range(20)]
    requests += [client.post("/api/spawn-team", json={"team": "team_paid", "task": "team work"}) for _ in range(20)]
    responses = await asyncio.gather(*requests)
    assert {r.status for r in responses} == {200, 402}
    done = await finish_all(client, responses)
    assert all(a["status"] == "completed" for a in done)
    rows = await ledger(app)
    assert len(rows) == len(upstream.calls) > 0
    assert sum(r["cost"] for r in rows) <= CAP + 1e-9
    assert_ledger_matches_upstream(rows, upstream, cfg.models)
    snap = await budget_of(client)
    assert snap["reserved"] == 0 and snap["today_spend"] == pytest.approx(sum(r["cost"] for r in rows))


async def test_a_fallback_to_a_dearer_model_stays_under_the_cap(aiohttp_client, tmp_path, upstream):
    # "cheap" is served by a provider that always fails; its fallback costs ten times as much.
    models = {"cheap": model("cheap", "broken", output_per_1k=0.1, fallback="dear"), "dear": model("dear", "paid")}
    cfg = capped_config(tmp_path, upstream, **models)
    app = build_app(cfg)
    client = await aiohttp_client(app)
    responses = await asyncio.gather(*(client.post("/api/spawn", json={"model": "cheap", "task": f"fall {i}"})
                                       for i in range(50)))
    done = await finish_all(client, responses)
    assert done and all(a["status"] == "completed" and a["served_by"]["model"] == "dear" for a in done)
    rows = await ledger(app)
    assert len(rows) == len(upstream.calls) == len(done)
    assert sum(r["cost"] for r in rows) <= CAP + 1e-9
    assert_ledger_matches_upstream(rows, upstream, cfg.models)


async def events_of(client, type_: str, expect: int) -> list[dict]:
    """The stored events of one type, once there are ``expect`` of them (bounded wait)."""
    for _ in range(500):
        data = (await (await client.get(f"/api/events?types={type_}")).json())["data"]
        if len(data) >= expect:
            return data
        await asyncio.sleep(0.01)
    return data


async def test_an_upstream_that_ignores_max_tokens_is_recorded_truthfully_and_blocks(
        aiohttp_client, tmp_path, upstream, caplog):
    upstream.bill_max_tokens = False
    upstream.output_tokens = 1000  # five times the 200 it is allowed
    cfg = capped_config(tmp_path, upstream)
    app = build_app(cfg)
    client = await aiohttp_client(app)
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "overbill me"})
    assert resp.status == 200
    done = await wait_status(client, (await resp.json())["agent_id"])
    assert upstream.calls[0]["json"]["max_tokens"] == MAX_TOKENS
    true_cost = 5 / 1000 * 0.01 + 1000 / 1000 * 1.0
    assert done["status"] == "completed" and done["cost"] == pytest.approx(true_cost)
    assert done["usage"] == {"input_tokens": 5, "output_tokens": 1000}
    rows = await ledger(app)
    assert [r["cost"] for r in rows] == [pytest.approx(true_cost)]
    events = await events_of(client, "budget.exceeded", 1)
    assert len(events) == 1
    data = events[0]["data"]
    assert data["agent_id"] == done["agent_id"] and data["cost"] == pytest.approx(true_cost)
    assert data["levels"][0]["level"] == "daily" and data["levels"][0]["cap"] == CAP
    assert data["levels"][0]["spent"] == pytest.approx(true_cost)
    # Spend is past the cap: every spawn is refused, and the event is not sent again.
    refused = await client.post("/api/spawn", json={"model": "k2p5", "task": "more"})
    assert refused.status == 402
    error = (await refused.json())["error"]
    assert error["type"] == "BUDGET_EXCEEDED" and error["budget_remaining"] == 0
    assert "Daily budget of $0.5 is exceeded" in error["message"] and "until the UTC day ends" in error["message"]
    assert (await client.post("/api/spawn-team", json={"team": "team_paid", "task": "t"})).status == 402
    assert len(await events_of(client, "budget.exceeded", 1)) == 1
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "j1mskyd.runtime"]
    assert any(level == "WARNING" and "more than the $0.200" in text and "max_tokens" in text
               for level, text in logged), logged
    assert any(level == "ERROR" and "daily cap of $0.5 passed" in text for level, text in logged), logged
    assert len(upstream.calls) == 1
    assert (await budget_of(client))["today_spend"] == pytest.approx(true_cost)


async def test_each_call_is_sent_no_more_than_its_reservation_pays_for(aiohttp_client, tmp_path, upstream):
    """The runtime's own guard: whatever was reserved, the max_tokens sent fits in it."""
    from j1mskyd.agent_record import KIND_AGENT, Agent
    from j1mskyd.worstcase import FRAMING_TOKENS

    cfg = capped_config(tmp_path, upstream)
    app = build_app(cfg)
    client = await aiohttp_client(app)
    runtime = app[SERVICES].runtime
    m = cfg.models["k2p5"]
    input_cost = (len("short") + FRAMING_TOKENS) / 1000 * m.input_per_1k
    short = Agent(agent_id="subagent_1_0001", kind=KIND_AGENT, model="k2p5", task="short", priority="normal",
                  timeout=30.0, estimated_cost=0.0, reserved=input_cost + 0.05)  # pays for 50 output tokens
    broke = Agent(agent_id="subagent_1_0002", kind=KIND_AGENT, model="k2p5", task="short", priority="normal",
                  timeout=30.0, estimated_cost=0.0, reserved=input_cost / 2)  # not even the input
    await runtime.admit([short, broke])
    assert (await wait_status(client, short.agent_id))["status"] == "completed"
    failed = await wait_status(client, broke.agent_id)
    assert failed["status"] == "failed" and "k2p5: its reservation of $" in failed["error"]
    assert "does not pay for a call" in failed["error"]
    assert [c["json"]["max_tokens"] for c in upstream.calls] == [50]
    assert short.cost <= short.reserved


def test_output_allowance():
    from j1mskyd.worstcase import FRAMING_TOKENS, output_allowance

    m = model("k2p5", "paid")
    input_cost = (3 + FRAMING_TOKENS) / 1000 * 0.01
    assert output_allowance(m, "abc", 10.0) == MAX_TOKENS            # plenty: the model's own cap
    assert output_allowance(m, "abc", input_cost + 0.0375) == 37     # 37.5 tokens' worth: rounded down
    assert output_allowance(m, "abc", input_cost) == 0               # the input, no output
    assert output_allowance(m, "abc", input_cost / 2) == 0
    assert output_allowance(m, "é", 10.0) == MAX_TOKENS
    free = dataclasses.replace(m, input_per_1k=0.0, output_per_1k=0.0)
    assert output_allowance(free, "abc", 0.0) == MAX_TOKENS


def test_an_amount_that_pays_exactly_for_n_tokens_allows_n():
    # The reservation of a call asking max_tokens=n is call_bound(n); its allowance must be n,
    # not n - 1 from the float quotient rounding down (it did for about a quarter of prompt lengths).
    from j1mskyd.worstcase import call_bound, output_allowance

    m = model("k2p5", "paid")
    short = [n for n in range(100, 700) for asked in (37, 150, MAX_TOKENS)
             if output_allowance(m, "x" * n, call_bound(m, "x" * n, asked), asked) != asked]
    assert short == []


def test_an_overbill_past_the_spike_limit_blocks_the_key_until_the_hour_ends():
    from j1mskyd.budget import SpawnRefused

    clock = Clock(1_764_028_800.0 + 600)  # ten minutes into an hour
    budget = Budget(BudgetPolicy(daily_budget=100.0, monthly_ceiling=1000.0, spike_per_hour=1.0), clock)
    budget.reserve("a", "k", 0.5)
    over = budget.settle("a", 2.0)
    assert [(lv.name, lv.cap) for lv in over] == [("hourly", 1.0)]
    with pytest.raises(SpawnRefused) as err:
        budget.reserve("b", "k", 0.0)
    assert err.value.extra["retry_after"] == 3001
    budget.reserve("c", "other", 0.5)        # another key's hour is its own
    clock.t += 3000                          # the next hour
    budget.reserve("b", "k", 0.5)


def test_an_overbill_is_reported_once_per_period_and_blocks_until_it_ends():
    clock = Clock(1_764_028_800.0 + 60)  # a minute into a UTC day
    budget = Budget(BudgetPolicy(daily_budget=1.0, monthly_ceiling=100.0, spike_per_hour=100.0), clock)
    budget.reserve("a", "k", 0.5)
    assert budget.settle("a", 0.4) == []       # under its reservation: nothing to report
    budget.reserve("b", "k", 0.5)
    over = budget.settle("b", 0.9)             # billed past its reservation and the cap
    assert [(lv.name, lv.cap, round(lv.settled, 6)) for lv in over] == [("daily", 1.0, 1.3)]
    with pytest.raises(BudgetExceeded, match="is exceeded"):
        budget.reserve("c", "k", 0.0)          # even a free agent waits for the day's end
    assert budget.settle("x", 0.2) == []       # more spend the same day: already reported
    clock.t += 86_400                          # the next day: under the cap again
    budget.reserve("c", "k", 0.5)
    assert budget.settle("c", 1.5)[0].name == "daily"  # a new day's overbill is reported again


async def test_a_team_across_a_restart_counts_each_member_once(aiohttp_client, tmp_path):
    """A member settles its own share as it ends; after a restart the team holds only for the
    members still live, and each member's cost is counted once (the ledger's figure)."""
    base = make_config(tmp_path)
    slow = ProviderSettings(name="slow", plugin="offline", options={"delay": 30}, max_concurrency=4,
                            hourly_limit=1000)
    models = route_models(base, {"sonnet": "slow"})
    models["sonnet"] = dataclasses.replace(models["sonnet"], fallback=None)
    cfg = dataclasses.replace(base, providers={**base.providers, "slow": slow}, models=models)
    task = "plan the launch"
    client = await aiohttp_client(build_app(cfg))
    resp = await client.post("/api/spawn-team", json={"team": "team_coding", "task": task})
    assert resp.status == 200
    team_id = (await resp.json())["agent_id"]
    for _ in range(1000):  # the k2p5 member ends; the sonnet one waits on its slow provider
        members = (await (await client.get(f"/api/agent/{team_id}")).json())["members"]
        if [m["status"] for m in members] == ["completed", "running"]:
            break
        await asyncio.sleep(0.01)
    first_cost = members[0]["cost"]
    sonnet = cfg.models["sonnet"]  # its worst case: every byte a token plus 64 of framing, and max_tokens
    sonnet_worst = (len(task) + 64) / 1000 * sonnet.input_per_1k + sonnet.max_tokens / 1000 * sonnet.output_per_1k
    before = await budget_of(client)
    assert before["today_spend"] == pytest.approx(first_cost, abs=1e-6)
    assert before["reserved"] == pytest.approx(sonnet_worst, abs=1e-6)
    await client.close()

    app = build_app(cfg)
    client = await aiohttp_client(app)
    after = await budget_of(client)
    assert after["today_spend"] == pytest.approx(first_cost, abs=1e-6)
    assert after["reserved"] == pytest.approx(sonnet_worst, abs=1e-6)
    slot = app[SERVICES].slots["slow"]
    for _ in range(1000):  # the sonnet member runs again, its call under way
        if slot.calls:
            break
        await asyncio.sleep(0.01)
    assert slot.calls == 1
    resp = await client.delete(f"/api/agent/{team_id}")
    assert resp.status == 200
    end = await budget_of(client)
    assert end["reserved"] == 0
    # The cancelled member's call was under way: it counts at its worst case, once.
    assert end["today_spend"] == pytest.approx(first_cost + sonnet_worst, abs=1e-6)
    assert [r["cost"] for r in await ledger(app)] == [pytest.approx(first_cost, abs=1e-6),
                                                      pytest.approx(sonnet_worst, abs=1e-6)]


def test_an_overbill_past_the_monthly_ceiling_blocks_until_the_month_ends():
    clock = Clock(1_764_028_800.0)  # 2025-11-25T00:00:00Z
    budget = Budget(BudgetPolicy(daily_budget=100.0, monthly_ceiling=1.0, spike_per_hour=100.0), clock)
    budget.reserve("a", "k", 0.5)
    assert [lv.name for lv in budget.settle("a", 2.0)] == ["monthly"]
    clock.t += 86_400  # a new day does not help: the month is spent
    with pytest.raises(BudgetExceeded, match=r"Monthly ceiling of \$1 is exceeded .*until the month ends"):
        budget.reserve("b", "k", 0.1)
    clock.t += 6 * 86_400  # 2025-12-02: a new month
    budget.reserve("b", "k", 0.5)


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
async def test_a_call_after_a_billed_failure_gets_only_what_is_left(aiohttp_client, tmp_path, upstream, plugin):
    """An upstream bills a call whose answer is unusable (usage, no content): the cost is in the
    ledger, and the fallback is sent only the max_tokens the rest of the reservation pays for."""
    models = {"k2p5": model("k2p5", "paid", fallback="backup"), "backup": model("backup", "paid")}
    cfg = capped_config(tmp_path, upstream, plugin, **models)
    app = build_app(cfg)
    client = await aiohttp_client(app)
    upstream.billed_empty_next(1, 50)  # 50 output tokens billed, nothing usable
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "filtered"})
    assert resp.status == 200
    done = await wait_status(client, (await resp.json())["agent_id"])
    assert done["status"] == "completed" and done["served_by"]["model"] == "backup"
    sent = [c["json"]["max_tokens"] for c in upstream.calls]
    assert sent == [MAX_TOKENS, 149]  # $0.20 of output reserved, $0.05 of it billed already
    rows = await ledger(app)
    assert [(r["model"], r["output_tokens"]) for r in rows] == [("k2p5", 50), ("backup", 149)]
    reserved = (len("filtered") + 64) / 1000 * 0.01 + MAX_TOKENS / 1000 * 1.0
    assert done["cost"] == pytest.approx(sum(r["cost"] for r in rows)) and done["cost"] <= reserved
    assert (await budget_of(client))["today_spend"] == pytest.approx(done["cost"])


async def test_a_billed_failure_that_spends_the_reservation_ends_the_agent(aiohttp_client, tmp_path, upstream):
    models = {"k2p5": model("k2p5", "paid", fallback="backup"), "backup": model("backup", "paid")}
    app = build_app(capped_config(tmp_path, upstream, **models))
    client = await aiohttp_client(app)
    upstream.billed_empty_next(1, MAX_TOKENS)  # the whole output allowance billed, nothing usable
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "filtered"})
    done = await wait_status(client, (await resp.json())["agent_id"])
    assert done["status"] == "failed" and "backup: its reservation of $" in done["error"]
    assert len(upstream.calls) == 1  # the fallback was not called: nothing was left to pay for it
    cost = 5 / 1000 * 0.01 + MAX_TOKENS / 1000 * 1.0
    assert done["cost"] == pytest.approx(cost)  # a failed agent costs what it was billed
    rows = await ledger(app)
    assert [(r["model"], r["output_tokens"], r["cost"]) for r in rows] == [("k2p5", MAX_TOKENS, pytest.approx(cost))]
    assert (await budget_of(client))["today_spend"] == pytest.approx(cost)


FLAKY_PLUGIN = '''
J1MSKY_PLUGIN_API = 1
from j1mskyd.providers import CompletionResult, ProviderError

class Flaky:
    """Its first call fails after the upstream billed it (a plugin that learnt the usage, say
    from a stream cut after its usage chunk); later calls write all they are allowed."""
    calls = 0
    def __init__(self, settings, session):
        self.billed = settings.options["billed"]
    async def complete(self, request):
        Flaky.calls += 1
        if Flaky.calls == 1 and self.billed:
            raise ProviderError("flaky: cut off", kind="connection", usage=(5, self.billed))
        return CompletionResult(text="ok", input_tokens=5, output_tokens=request.max_tokens)

def register(registry):
    registry.add_provider("flaky", Flaky)
'''


def flaky_config(tmp_path, upstream, billed: int, **runtime):
    plugdir = tmp_path / "plugins.d"
    plugdir.mkdir(mode=0o755, exist_ok=True)
    (plugdir / "flaky.py").write_text(FLAKY_PLUGIN)
    (plugdir / "flaky.py").chmod(0o644)
    cfg = capped_config(tmp_path, upstream, k2p5=model("k2p5", "flaky"))
    flaky = ProviderSettings(name="flaky", plugin="flaky", options={"billed": billed}, hourly_limit=1000)
    return dataclasses.replace(cfg, providers={**cfg.providers, "flaky": flaky},
                               runtime=dataclasses.replace(cfg.runtime, **runtime),
                               plugins=dataclasses.replace(cfg.plugins, dropin_dir=str(plugdir), require_root=False))


@pytest.mark.parametrize("billed,outcome", [(120, "completed"), (MAX_TOKENS, "failed")])
async def test_a_retry_after_a_billed_failure_gets_only_what_is_left(aiohttp_client, tmp_path, upstream,
                                                                     billed, outcome):
    app = build_app(flaky_config(tmp_path, upstream, billed))
    client = await aiohttp_client(app)
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "flaky"})
    done = await wait_status(client, (await resp.json())["agent_id"])
    assert done["status"] == outcome, done
    rows = await ledger(app)
    reserved = (len("flaky") + 64) / 1000 * 0.01 + MAX_TOKENS / 1000 * 1.0
    if outcome == "completed":  # the retry was sent the 79 tokens the rest of $0.20 pays for
        assert [r["output_tokens"] for r in rows] == [billed, 79]
    else:
        assert [r["output_tokens"] for r in rows] == [billed]
        assert done["error"].endswith("then its reservation was spent")
    assert done["cost"] == pytest.approx(sum(r["cost"] for r in rows)) and done["cost"] <= reserved
    assert (await budget_of(client))["today_spend"] == pytest.approx(done["cost"])


async def test_a_billed_failure_is_remembered_across_a_restart(aiohttp_client, tmp_path, upstream):
    """Stopped while it waits to retry after a billed failure, the agent comes back holding only
    what is left of its reservation, and its retry is sent only what that pays for."""
    app = build_app(flaky_config(tmp_path, upstream, 120, retry_base_delay=60.0, retry_max_delay=60.0))
    client = await aiohttp_client(app)
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "flaky"})
    agent_id = (await resp.json())["agent_id"]
    for _ in range(1000):  # the billed failure reaches the ledger; the retry waits a minute
        if await ledger(app):
            break
        await asyncio.sleep(0.01)
    first = (await ledger(app))[0]["cost"]
    reserved = (len("flaky") + 64) / 1000 * 0.01 + MAX_TOKENS / 1000 * 1.0
    before = await budget_of(client)
    assert before["today_spend"] == pytest.approx(first, abs=1e-6)
    assert before["reserved"] == pytest.approx(reserved - first, abs=1e-6)
    await client.close()

    app = build_app(flaky_config(tmp_path, upstream, 0))  # now it answers at once
    client = await aiohttp_client(app)
    done = await wait_status(client, agent_id)
    assert done["status"] == "completed"
    rows = await ledger(app)
    assert [r["output_tokens"] for r in rows] == [120, 79]  # not 200: $0.12 of it was spent before
    assert done["cost"] == pytest.approx(sum(r["cost"] for r in rows)) and done["cost"] <= reserved
    end = await budget_of(client)
    assert end["reserved"] == 0 and end["today_spend"] == pytest.approx(done["cost"], abs=1e-6)


@pytest.mark.parametrize("how", ["cancel", "timeout", "provider_timeout"])
async def test_calls_abandoned_in_flight_count_at_their_worst_case(aiohttp_client, tmp_path, upstream, how):
    """A provider bills a call it has begun even when the caller hangs up: spawning and then
    cancelling (or letting the agent's timeout cut the call) in a loop must not make calls past
    the cap.  Each abandoned call counts, in the budget and the ledger, at the most it could
    cost (its input bound and the max_tokens it was sent)."""
    upstream.delay = 30.0  # never answers within the test: every call is abandoned
    cfg = capped_config(tmp_path, upstream)
    if how == "provider_timeout":  # the HTTP call times out; a retry would be another abandoned call
        paid = dataclasses.replace(cfg.providers["paid"], timeout=1)
        cfg = dataclasses.replace(cfg, providers={**cfg.providers, "paid": paid})
    app = build_app(cfg)
    client = await aiohttp_client(app)
    statuses = []
    for i in range(6):
        body = {"model": "k2p5", "task": f"abandon {i}", **({"timeout": 1} if how == "timeout" else {})}
        resp = await client.post("/api/spawn", json=body)
        statuses.append(resp.status)
        if resp.status != 200:
            continue
        agent_id = (await resp.json())["agent_id"]
        await upstream.wait_calls(sum(s == 200 for s in statuses))
        if how == "cancel":
            assert (await client.delete(f"/api/agent/{agent_id}")).status == 200
        done = await wait_status(client, agent_id, timeout=30)
        assert done["status"] == ("cancelled" if how == "cancel" else "failed")
        assert how != "provider_timeout" or "then its reservation was spent" in done["error"]
    worst = worstcase.call_bound(cfg.models["k2p5"], "abandon 0", MAX_TOKENS)
    assert statuses == [200, 200, 402, 402, 402, 402]  # two worst cases fit in $0.50, a third would not
    assert len(upstream.calls) == 2
    rows = await ledger(app)
    assert [r["cost"] for r in rows] == [pytest.approx(worst)] * 2
    assert [r["output_tokens"] for r in rows] == [MAX_TOKENS] * 2
    snap = await budget_of(client)
    assert snap["reserved"] == 0 and snap["today_spend"] == pytest.approx(2 * worst)
