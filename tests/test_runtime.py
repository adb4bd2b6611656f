"""The agent runtime against real fake upstreams: retries, fallback, breaker, timeout,
cancel, priority and concurrency limits."""

from __future__ import annotations

import dataclasses

import pytest

from j1mskyd.app import build_app
from j1mskyd.providers import ProviderSettings
from tests.conftest import Clock, make_config, route_models, wait_status
from tests.fakeupstream import FakeUpstream


def two_provider_config(tmp_path, primary: FakeUpstream, secondary: FakeUpstream, *,
                        primary_plugin: str = "openai_compat", primary_limit: int = 4, **runtime):
    """k2p5 -> provider "primary" (OpenAI wire format); its fallback minimax-m2.5 -> "secondary"
    (Anthropic wire format).  Everything else stays offline."""
    rt = {"retry_base_delay": 0.01, "retry_max_delay": 0.05, "max_attempts": 3} | runtime
    base = make_config(tmp_path, runtime=rt)
    providers = dict(base.providers)
    providers["primary"] = ProviderSettings(name="primary", plugin=primary_plugin, base_url=primary.url + "/v1",
                                            api_key="sk-primary", timeout=30, max_concurrency=primary_limit)
    providers["secondary"] = ProviderSettings(name="secondary", plugin="anthropic", base_url=secondary.url,
                                              api_key="sk-secondary", timeout=30, max_concurrency=4)
    models = route_models(base, {"k2p5": "primary", "minimax-m2.5": "secondary"})
    return dataclasses.replace(base, providers=providers, models=models)


async def spawn(client, **body):
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "do the thing"} | body)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["agent_id"]


async def test_tokens_from_upstream_set_the_cost(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.input_tokens, primary.output_tokens = 3000, 1200
    cfg = two_provider_config(tmp_path, primary, secondary)
    client = await aiohttp_client(build_app(cfg))
    done = await wait_status(client, await spawn(client))
    assert done["status"] == "completed" and done["result"] == "fake reply"
    assert done["usage"] == {"input_tokens": 3000, "output_tokens": 1200}
    k2p5 = cfg.models["k2p5"]
    assert done["cost"] == pytest.approx(3 * k2p5.input_per_1k + 1.2 * k2p5.output_per_1k)
    assert done["served_by"] == {"model": "k2p5", "provider": "primary"}
    sent = primary.calls[0]
    assert sent["json"]["model"] == "k2p5" and sent["json"]["messages"][-1]["content"] == "do the thing"


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_retryable_errors_are_retried(aiohttp_client, tmp_path, upstreams, status):
    primary, secondary = upstreams
    primary.fail_next(2, status, retry_after=0)
    client = await aiohttp_client(build_app(two_provider_config(tmp_path, primary, secondary)))
    done = await wait_status(client, await spawn(client))
    assert done["status"] == "completed" and done["attempts"] == 3
    assert len(primary.calls) == 3 and not secondary.calls


async def test_exhausted_retries_fall_back_to_the_next_model(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.fail_next(3, 500)
    cfg = two_provider_config(tmp_path, primary, secondary)
    client = await aiohttp_client(build_app(cfg))
    done = await wait_status(client, await spawn(client))
    assert done["status"] == "completed"
    assert done["served_by"] == {"model": "minimax-m2.5", "provider": "secondary"}
    mm = cfg.models["minimax-m2.5"]
    assert done["cost"] == pytest.approx((11 * mm.input_per_1k + 7 * mm.output_per_1k) / 1000)
    assert len(primary.calls) == 3 and len(secondary.calls) == 1
    assert secondary.calls[0]["json"]["model"] == "MiniMax-M2.5"


async def test_auth_failure_falls_back_without_retrying(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.fail_next(1, 401)
    client = await aiohttp_client(build_app(two_provider_config(tmp_path, primary, secondary)))
    done = await wait_status(client, await spawn(client))
    assert done["status"] == "completed" and done["served_by"]["provider"] == "secondary"
    assert len(primary.calls) == 1


async def test_malformed_answer_falls_back(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.malformed_next(1)
    client = await aiohttp_client(build_app(two_provider_config(tmp_path, primary, secondary)))
    done = await wait_status(client, await spawn(client))
    assert done["status"] == "completed" and done["served_by"]["provider"] == "secondary"


async def test_bad_request_fails_without_fallback(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.fail_next(1, 400)
    client = await aiohttp_client(build_app(two_provider_config(tmp_path, primary, secondary)))
    done = await wait_status(client, await spawn(client))
    assert done["status"] == "failed" and "bad_request" in done["error"]
    assert done["cost"] is None and not secondary.calls


async def test_every_model_failing_fails_the_agent_with_reasons(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.fail_next(3, 500)
    secondary.fail_next(3, 529)
    client = await aiohttp_client(build_app(two_provider_config(tmp_path, primary, secondary)))
    done = await wait_status(client, await spawn(client))
    assert done["status"] == "failed"
    assert done["error"].startswith("all providers failed")
    assert "k2p5" in done["error"] and "minimax-m2.5" in done["error"] and "529" in done["error"]
    assert "sk-primary" not in done["error"] and "sk-secondary" not in done["error"]
    listing = await (await client.get("/api/agents?status=failed")).json()
    assert listing["pagination"]["total"] == 1


async def test_breaker_opens_skips_the_provider_then_probes_and_closes(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    cfg = two_provider_config(tmp_path, primary, secondary, max_attempts=1, breaker_threshold=2,
                              breaker_reset_seconds=0.5)
    clock = Clock()  # the breaker's recovery time passes when the test says so
    client = await aiohttp_client(build_app(cfg, clock=clock))
    primary.fail_next(2, 503)
    for _ in range(2):
        done = await wait_status(client, await spawn(client))
        assert done["served_by"]["provider"] == "secondary"
    health = await (await client.get("/api/health")).json()
    assert health["providers"]["primary"]["state"] == "open"
    assert health["status"] == "degraded"
    # Open: the primary is not even called.
    done = await wait_status(client, await spawn(client))
    assert done["served_by"]["provider"] == "secondary" and len(primary.calls) == 2
    # After the recovery time one probe goes through; it succeeds and closes the breaker.
    clock.t += 0.6
    done = await wait_status(client, await spawn(client))
    assert done["served_by"]["provider"] == "primary" and len(primary.calls) == 3
    health = await (await client.get("/api/health")).json()
    assert health["providers"]["primary"]["state"] == "closed" and health["status"] == "healthy"


async def test_failed_probe_reopens_the_breaker(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    cfg = two_provider_config(tmp_path, primary, secondary, max_attempts=1, breaker_threshold=1,
                              breaker_reset_seconds=0.3)
    clock = Clock()
    client = await aiohttp_client(build_app(cfg, clock=clock))
    primary.fail_next(2, 500)
    await wait_status(client, await spawn(client))
    clock.t += 0.35
    done = await wait_status(client, await spawn(client))  # the probe fails -> open again
    assert done["served_by"]["provider"] == "secondary" and len(primary.calls) == 2
    health = await (await client.get("/api/health")).json()
    assert health["providers"]["primary"]["state"] == "open"
    assert health["providers"]["primary"]["times_opened"] == 2


async def test_timeout_fails_a_slow_agent(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.delay = 5
    client = await aiohttp_client(build_app(two_provider_config(tmp_path, primary, secondary)))
    agent_id = await spawn(client, timeout=1)
    done = await wait_status(client, agent_id, timeout=4)
    assert done["status"] == "failed" and done["error"].startswith("timeout")


async def test_timeout_counts_time_spent_queued(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.delay = 3
    cfg = two_provider_config(tmp_path, primary, secondary, primary_limit=1)
    client = await aiohttp_client(build_app(cfg))
    await spawn(client, timeout=10)
    waiting = await spawn(client, timeout=1)
    done = await wait_status(client, waiting, timeout=4)
    assert done["status"] == "failed" and "queued" in done["error"] and done["started"] is None


async def test_cancel_running_agent_refunds_and_stops_the_call(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.delay = 10
    client = await aiohttp_client(build_app(two_provider_config(tmp_path, primary, secondary)))
    agent_id = await spawn(client)
    running = await wait_status(client, agent_id, statuses=("running",))
    await primary.wait_calls(1)
    resp = await client.delete(f"/api/agent/{agent_id}")
    body = await resp.json()
    assert resp.status == 200 and body["success"] is True and body["message"] == "Agent cancelled"
    done = await wait_status(client, agent_id)
    # The call was under way: the provider may bill it, so it counts at its worst case.
    assert done["status"] == "cancelled" and done["cost"] > 0
    assert body["refund"] == pytest.approx(max(running["estimated_cost"] - done["cost"], 0.0))
    again = await client.delete(f"/api/agent/{agent_id}")
    assert again.status == 409


async def test_priority_orders_the_queue(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.delay = 0.3
    cfg = two_provider_config(tmp_path, primary, secondary, primary_limit=1)
    client = await aiohttp_client(build_app(cfg))
    first = await spawn(client, task="first")
    await wait_status(client, first, statuses=("running",))
    ids = {p: await spawn(client, task=p, priority=p) for p in ("low", "normal", "high")}
    done = {p: await wait_status(client, i) for p, i in ids.items()}
    order = sorted(done, key=lambda p: done[p]["started"] + str(len(primary.calls)))
    prompts = [c["json"]["messages"][-1]["content"] for c in primary.calls]
    assert prompts == ["first", "high", "normal", "low"], order


async def test_provider_limit_does_not_block_other_providers(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.delay = 1.0
    cfg = two_provider_config(tmp_path, primary, secondary, primary_limit=1)
    client = await aiohttp_client(build_app(cfg))
    slow = [await spawn(client) for _ in range(3)]
    other = await spawn(client, model="minimax-m2.5")
    done = await wait_status(client, other, timeout=0.9)
    assert done["status"] == "completed"
    statuses = [(await (await client.get(f"/api/agent/{a}")).json())["status"] for a in slow]
    assert statuses.count("running") == 1 and statuses.count("queued") == 2


async def test_global_limit_caps_running_agents(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    # Long enough for a loaded machine to see the first two running before they end.
    primary.delay = 3.0
    secondary.delay = 3.0
    cfg = two_provider_config(tmp_path, primary, secondary, max_concurrency=2)
    client = await aiohttp_client(build_app(cfg))
    ids = [await spawn(client, model=m) for m in ("k2p5", "minimax-m2.5", "k2p5", "minimax-m2.5")]
    await wait_status(client, ids[0], statuses=("running",))
    health = await (await client.get("/api/health")).json()
    assert health["agents"] == {"queued": 2, "running": 2}
    for i in ids:
        assert (await wait_status(client, i))["status"] == "completed"


async def test_unusable_provider_falls_back(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    cfg = two_provider_config(tmp_path, primary, secondary, primary_plugin="no_such_plugin")
    client = await aiohttp_client(build_app(cfg))
    plugins = await (await client.get("/api/plugins")).json()
    assert plugins["providers"]["primary"]["available"] is False
    assert "no_such_plugin" in plugins["providers"]["primary"]["error"]
    done = await wait_status(client, await spawn(client))
    assert done["status"] == "completed" and done["served_by"]["provider"] == "secondary"


BUGGY_PLUGIN = '''
J1MSKY_PLUGIN_API = 1
from j1mskyd.providers import CompletionResult

class Buggy:
    calls = 0
    def __init__(self, settings, session):
        self.mode = settings.options.get("mode", "raise")
    async def complete(self, request):
        Buggy.calls += 1
        if Buggy.calls == 1:
            if self.mode == "raise":
                raise RuntimeError("plugin bug")
            return "not a CompletionResult"
        return CompletionResult(text="recovered", input_tokens=1, output_tokens=1)

def register(registry):
    registry.add_provider("buggy", Buggy)
'''


@pytest.mark.parametrize("mode", ["raise", "wrong_type"])
async def test_a_buggy_plugin_is_retried_and_never_crashes_the_daemon(aiohttp_client, tmp_path, mode):
    plugdir = tmp_path / "plugins.d"
    plugdir.mkdir(mode=0o755)
    (plugdir / "buggy.py").write_text(BUGGY_PLUGIN)
    (plugdir / "buggy.py").chmod(0o644)
    base = make_config(tmp_path, runtime={"retry_base_delay": 0.01, "retry_max_delay": 0.02})
    cfg = dataclasses.replace(
        base, plugins=dataclasses.replace(base.plugins, dropin_dir=str(plugdir)),
        providers=dict(base.providers) | {"bug": ProviderSettings(name="bug", plugin="buggy", options={"mode": mode})},
        models=route_models(base, {"k2p5": "bug"}))
    client = await aiohttp_client(build_app(cfg))
    done = await wait_status(client, await spawn(client))
    assert done["status"] == "completed" and done["result"] == "recovered" and done["attempts"] == 2
    health = await (await client.get("/api/health")).json()
    assert health["providers"]["bug"]["failures"] == 1


async def test_health_is_503_when_no_provider_can_serve(aiohttp_client, tmp_path):
    base = make_config(tmp_path)
    broken = {"offline": dataclasses.replace(base.providers["offline"], plugin="missing_plugin")}
    client = await aiohttp_client(build_app(dataclasses.replace(base, providers=broken)))
    resp = await client.get("/api/health")
    body = await resp.json()
    assert resp.status == 503 and body["status"] == "unhealthy"
    done = await wait_status(client, await spawn(client))
    assert done["status"] == "failed" and "missing_plugin" in done["error"]


async def test_an_agent_that_ends_between_its_dispatch_and_its_run_ends_once(aiohttp_client, tmp_path, monkeypatch):
    # The queue's deadline sweep failed an agent after the scheduler had made its run's task but
    # before that task's first step (seen when a full disk held the sweep up): the run marked it
    # running over its end and ended it again, two agent.failed events for one agent.
    from j1mskyd.api.common import SERVICES

    client = await aiohttp_client(build_app(make_config(tmp_path)))
    runtime = client.app[SERVICES].runtime
    run = runtime._run

    async def swept_first(agent, slot):
        runtime._finish_soon(agent, "failed", "timeout", {"error": "timeout: still queued after 1 s"})
        await run(agent, slot)

    monkeypatch.setattr(runtime, "_run", swept_first)
    agent_id = await spawn(client, model="k2p5", task="x")
    agent = await wait_status(client, agent_id, "failed")
    assert agent["error"] == "timeout: still queued after 1 s" and agent.get("started_at") is None
    monkeypatch.setattr(runtime, "_run", run)
    await wait_status(client, await spawn(client, model="k2p5", task="y"))  # the queue moves on
    events = (await (await client.get("/api/events?limit=100")).json())["data"]
    ends = [e["event"] for e in events if e["data"].get("agent_id") == agent_id and e["event"] != "agent.spawned"]
    assert ends == ["agent.failed"]


async def test_queued_agents_past_their_deadline_all_fail_at_it_on_a_full_disk(aiohttp_client, tmp_path, upstreams):
    # The sweep awaited each failure's write in turn: on a full disk the first one waited for
    # space and the others stayed queued past their deadline until space returned.
    from j1mskyd.api.common import SERVICES
    from tests.test_store_full import FullDisk

    primary, secondary = upstreams
    primary.delay = 5
    cfg = two_provider_config(tmp_path, primary, secondary, primary_limit=1)
    client = await aiohttp_client(build_app(cfg))
    await spawn(client, timeout=30)  # holds the provider's one slot
    waiting = [await spawn(client, timeout=1) for _ in range(3)]
    store = client.app[SERVICES].store
    disk = store._wconn = FullDisk(store._wconn)
    try:
        for agent_id in waiting:  # as memory holds them: the writes wait for space
            done = await wait_status(client, agent_id, timeout=10)  # a bound: the disk stays full throughout
            assert done["status"] == "failed" and "queued" in done["error"], done
    finally:
        disk.full = False
