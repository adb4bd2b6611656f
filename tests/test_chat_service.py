"""ChatService: a front-door call runs as an agent of kind ``chat`` through the real runtime,
store and budget, against fake upstreams on loopback (tests/fakeupstream.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from j1mskyd.agent_record import KIND_CHAT, Agent, insert
from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd import chat_service
from j1mskyd.chat_request import ChatFailed, ChatRequest, ClientGone
from j1mskyd.chat_service import canonical_json
from j1mskyd.budget import BudgetExceeded, SpawnRefused
from j1mskyd.plugin_api import Message, TextBlock, Tool, ToolCall, ToolChoice, ToolResult
from j1mskyd.provider_http import estimate_tokens
from j1mskyd.pricing import token_cost
from j1mskyd.store import Store
from j1mskyd.worstcase import input_bound
from j1mskyd.providers import ProviderSettings
from tests.conftest import make_config, route_models
from tests.test_runtime import two_provider_config

QUESTION = "what is the capital of France?"


def chat(text: str = QUESTION, **fields) -> ChatRequest:
    return ChatRequest(model=fields.pop("model", "k2p5"), messages=(Message("user", (TextBlock(text),)),), **fields)


async def app_client(aiohttp_client, cfg):
    client = await aiohttp_client(build_app(cfg))
    return client, client.server.app[SERVICES]


async def usage_rows(services, agent_id: str) -> list[dict]:
    return await services.store.read(lambda conn: [dict(r) for r in conn.execute(
        "SELECT * FROM usage WHERE agent_id = ? ORDER BY id", (agent_id,))])


async def collect(call) -> list[str]:
    return [d async for d in call.deltas()]


# -- a call, not streamed ----------------------------------------------------------------------
async def test_a_call_completes_as_a_chat_agent_with_usage_cost_ledger_and_events(aiohttp_client, tmp_path,
                                                                                  upstreams):
    primary, secondary = upstreams
    primary.input_tokens, primary.output_tokens = 300, 120
    cfg = two_provider_config(tmp_path, primary, secondary)
    client, services = await app_client(aiohttp_client, cfg)
    request = chat(system="be brief", temperature=0.2, max_tokens=200, metadata={"session": "s1"})
    call = await services.chat.start(request, "anonymous")
    outcome = await call.outcome()

    k2p5 = cfg.models["k2p5"]
    cost = (300 * k2p5.input_per_1k + 120 * k2p5.output_per_1k) / 1000
    assert outcome.agent_id == call.agent_id and outcome.text == "fake reply"
    assert (outcome.model, outcome.served_model, outcome.provider) == ("k2p5", "k2p5", "primary")
    assert (outcome.input_tokens, outcome.output_tokens) == (300, 120) and outcome.cost == pytest.approx(cost)
    assert outcome.finish_reason == "stop" and outcome.tool_calls == ()
    assert await collect(call) == ["fake reply"]  # not streamed: the whole text at the end

    # The provider got the conversation and the sampling fields, max_tokens as asked.
    sent = primary.calls[0]["json"]
    assert sent["max_tokens"] == 200 and "stream" not in sent
    assert sent["messages"][-1]["content"] == QUESTION

    view = await (await client.get(f"/api/agent/{call.agent_id}")).json()
    assert view["kind"] == KIND_CHAT and view["status"] == "completed" and view["result"] == "fake reply"
    assert view["served_by"] == {"model": "k2p5", "provider": "primary"}
    assert view["usage"] == {"input_tokens": 300, "output_tokens": 120} and view["cost"] == pytest.approx(cost)
    assert view["priority"] == "normal" and view["timeout"] == cfg.runtime.default_timeout
    assert view["time_to_first_token"] is not None and view["time_to_first_token"] >= 0
    assert view["tool_calls"] == []
    assert json.loads(view["task"]) == json.loads(canonical_json(request))
    assert json.loads(view["task"])["metadata"] == {"session": "s1"}

    assert [(r["model"], r["provider"], r["input_tokens"], r["output_tokens"]) for r in
            await usage_rows(services, call.agent_id)] == [("k2p5", "primary", 300, 120)]
    events = (await (await client.get("/api/events", params={"limit": 100})).json())["data"]
    mine = sorted(e["event"] for e in events if e["data"].get("agent_id") == call.agent_id)
    assert mine == ["agent.completed", "agent.spawned"]
    listed = (await (await client.get("/api/agents")).json())["data"]
    assert [a["kind"] for a in listed if a["agent_id"] == call.agent_id] == [KIND_CHAT]
    assert services.budget.reserved == pytest.approx(0.0)


async def test_task_and_result_are_sealed_at_rest(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    call = await services.chat.start(chat("secret question about Paris"))
    await call.outcome()
    row = await services.store.read(lambda conn: dict(conn.execute(
        "SELECT task, result FROM agents WHERE agent_id = ?", (call.agent_id,)).fetchone()))
    for column in ("task", "result"):
        assert row[column] and "Paris" not in row[column] and "fake" not in row[column], column


async def test_the_conversation_tools_and_sampling_fields_reach_the_provider(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.tool_calls_next([("get_weather", '{"city":"Paris"}')])
    cfg = two_provider_config(tmp_path, primary, secondary)
    client, services = await app_client(aiohttp_client, cfg)
    tool = Tool("get_weather", "the weather", {"type": "object", "properties": {"city": {"type": "string"}}})
    request = ChatRequest(model="k2p5", system="sys", messages=(
        Message("user", (TextBlock("weather?"),)),
        Message("assistant", (ToolCall("call_1", "get_weather", '{"city":"Rome"}'),)),
        Message("user", (ToolResult("call_1", "sunny"), TextBlock("and Paris?"))),
    ), tools=(tool,), tool_choice=ToolChoice("auto"), stop=("END",), top_p=0.5, temperature=0.3, user="u-1")
    call = await services.chat.start(request)
    outcome = await call.outcome()
    assert [(c.name, json.loads(c.arguments)) for c in outcome.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert outcome.finish_reason == "tool_calls"
    # What the runtime handed the plugin: the conversation, the tools and the sampling fields.
    sent = primary.calls[0]["json"]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert sent["messages"][2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Rome"}'}
    assert sent["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert sent["tools"][0]["function"]["name"] == "get_weather" and sent["tool_choice"] == "auto"
    assert (sent["stop"], sent["top_p"], sent["temperature"], sent["user"]) == (["END"], 0.5, 0.3, "u-1")
    # The agent record shows the tool calls; they are sealed at rest like the result.
    view = await (await client.get(f"/api/agent/{call.agent_id}")).json()
    assert [(c["name"], json.loads(c["arguments"])) for c in view["tool_calls"]] == [("get_weather",
                                                                                      {"city": "Paris"})]
    raw = await services.store.read(lambda conn: conn.execute(
        "SELECT tool_calls FROM agents WHERE agent_id = ?", (call.agent_id,)).fetchone()[0])
    assert raw and "get_weather" not in raw and "Paris" not in raw
    # Erased with the task and result.
    assert (await client.delete(f"/api/agent/{call.agent_id}/data")).status == 200
    view = await (await client.get(f"/api/agent/{call.agent_id}")).json()
    assert view["tool_calls"] == [] and view["task"] == "" and view["result"] is None


async def test_streamed_tool_calls_come_with_the_outcome(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.tool_calls_next([("get_weather", '{"city":"Paris"}')], text="checking")
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    call = await services.chat.start(chat(stream=True, tools=(Tool("get_weather"),)))
    assert "".join(await collect(call)) == "checking"
    outcome = await call.outcome()
    assert [(c.name, c.arguments) for c in outcome.tool_calls] == [("get_weather", '{"city":"Paris"}')]
    assert outcome.finish_reason == "tool_calls"


# A provider written before ``messages`` existed: it reads the prompt and nothing else.
PROMPT_ONLY_PLUGIN = '''
J1MSKY_PLUGIN_API = 1
from j1mskyd.plugin_api import CompletionResult


class PromptOnly:
    def __init__(self, settings, session):
        pass

    async def complete(self, request):
        return CompletionResult(text="heard: " + request.prompt, input_tokens=5, output_tokens=5)


def register(registry):
    registry.add_provider("prompt_only", PromptOnly)
'''


async def test_a_plugin_that_reads_only_the_prompt_gets_the_conversation_flattened(aiohttp_client, tmp_path):
    plugdir = tmp_path / "plugins.d"
    plugdir.mkdir(mode=0o755)
    (plugdir / "prompt_only.py").write_text(PROMPT_ONLY_PLUGIN)
    (plugdir / "prompt_only.py").chmod(0o644)
    base = make_config(tmp_path)
    cfg = dataclasses.replace(
        base, providers={**base.providers, "legacy": ProviderSettings(name="legacy", plugin="prompt_only")},
        models=route_models(base, {"k2p5": "legacy"}),
        plugins=dataclasses.replace(base.plugins, dropin_dir=str(plugdir), require_root=False))
    client, services = await app_client(aiohttp_client, cfg)
    one = await (await services.chat.start(chat("just this"))).outcome()
    assert one.text == "heard: just this"  # a lone user message is its text
    request = ChatRequest(model="k2p5", messages=(
        Message("user", (TextBlock("weather in Rome?"),)),
        Message("assistant", (TextBlock("let me look"), ToolCall("call_1", "get_weather", '{"city":"Rome"}'))),
        Message("user", (ToolResult("call_1", "sunny"), TextBlock("and Paris?"))),
    ))
    outcome = await (await services.chat.start(request)).outcome()
    assert outcome.provider == "legacy"
    assert outcome.text == ("heard: user: weather in Rome?\n\n"
                            "assistant: let me look\n[tool call call_1: get_weather({\"city\":\"Rome\"})]\n\n"
                            "user: [tool result call_1: sunny]\nand Paris?")


# -- streamed ------------------------------------------------------------------------------------
async def test_a_streamed_call_hands_out_deltas_in_order(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.reply_text = "one two three four five"
    primary.chunk_delay = 0.02
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    call = await services.chat.start(chat(stream=True))
    deltas = await collect(call)
    outcome = await call.outcome()
    assert deltas == ["one", " two", " three", " four", " five"]
    assert "".join(deltas) == outcome.text == "one two three four five"
    assert primary.calls[0]["json"]["stream"] is True
    view = await (await client.get(f"/api/agent/{call.agent_id}")).json()
    assert view["status"] == "completed" and view["usage"] == {"input_tokens": 11, "output_tokens": 7}
    # The first delta's arrival, not the end of the stream (four chunk delays later).
    created, first, completed = await services.store.read(lambda conn: conn.execute(
        "SELECT created_at, first_token_at, completed_at FROM agents WHERE agent_id = ?",
        (call.agent_id,)).fetchone())
    assert created <= first < completed
    assert view["time_to_first_token"] == round(first - created, 3)


async def test_a_cancelled_reader_spoils_nothing_for_the_next_and_readers_may_overlap(aiohttp_client, tmp_path,
                                                                                      upstreams):
    primary, secondary = upstreams
    primary.reply_text = "one two three"
    primary.chunk_delay = 0.05
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    call = await services.chat.start(chat(stream=True))
    waiting = asyncio.ensure_future(call.outcome())
    await asyncio.sleep(0.01)
    waiting.cancel()  # a reader that gives up (its handler cancelled) ...
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # ... leaves the call running and readable: the text and the outcome, read at once.
    deltas, outcome = await asyncio.gather(collect(call), call.outcome())
    assert "".join(deltas) == outcome.text == "one two three"
    assert (await call.outcome()).text == outcome.text  # read again once it has ended


async def test_a_reader_whose_caller_left_gets_client_gone_and_the_call_runs_on(aiohttp_client, tmp_path,
                                                                              upstreams, monkeypatch):
    primary, secondary = upstreams
    primary.delay = 0.5
    monkeypatch.setattr(chat_service, "WATCH", 0.05)
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    call = await services.chat.start(chat())
    looks = []

    def gone() -> bool:
        looks.append(1)
        return len(looks) >= 2  # still there at the first look, gone at the second

    with pytest.raises(ClientGone):
        await call.outcome(gone)
    assert len(looks) == 2
    assert call.agent_id in services.runtime.live  # cancelling it is the caller's part
    assert (await call.outcome()).text  # unwatched, it waits for the end


async def test_a_provider_that_cannot_stream_gives_the_whole_text_as_one_delta(aiohttp_client, tmp_path):
    client, services = await app_client(aiohttp_client, make_config(tmp_path))  # offline: no stream()
    call = await services.chat.start(chat("hello there", stream=True))
    deltas = await collect(call)
    outcome = await call.outcome()
    assert deltas == [outcome.text] and outcome.text.startswith("[offline:")


async def test_failures_before_the_first_delta_retry_and_fall_back(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.fail_next(3, 503)  # every attempt on the primary, before any byte
    secondary.reply_text = "from the fallback"
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    call = await services.chat.start(chat(stream=True))
    deltas = await collect(call)
    outcome = await call.outcome()
    assert "".join(deltas) == "from the fallback" == outcome.text
    assert (outcome.served_model, outcome.provider) == ("minimax-m2.5", "secondary")
    assert len(primary.calls) == 3 and len(secondary.calls) == 1


async def test_no_retry_and_no_fallback_once_a_delta_went_out(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.reply_text = "alpha beta gamma delta"
    primary.die_after_next(2)
    cfg = two_provider_config(tmp_path, primary, secondary)
    client, services = await app_client(aiohttp_client, cfg)
    request = chat(stream=True)
    call = await services.chat.start(request)
    deltas = await collect(call)
    with pytest.raises(ChatFailed) as failed:
        await call.outcome()
    assert deltas == ["alpha", " beta"]
    assert failed.value.kind == "upstream" and failed.value.status == 502
    assert failed.value.agent_id == call.agent_id and "no retry and no fallback" in failed.value.message
    assert len(primary.calls) == 1 and not secondary.calls  # no silent switch of model
    assert services.slots["primary"].breaker.snapshot()["consecutive_failures"] == 1  # a failure all the same
    view = await (await client.get(f"/api/agent/{call.agent_id}")).json()
    assert view["status"] == "failed" and view["attempts"] == 1
    # What was used is billed: the input bound and the streamed text's tokens.
    rows = await usage_rows(services, call.agent_id)
    assert [(r["input_tokens"], r["output_tokens"]) for r in rows] == [
        (input_bound(canonical_json(request)), estimate_tokens("alpha beta"))]
    assert view["cost"] == pytest.approx(rows[0]["cost"])
    assert services.budget.reserved == pytest.approx(0.0)


async def test_a_stream_that_dies_is_billed_the_usage_its_upstream_reported(aiohttp_client, tmp_path, upstreams):
    """The fallback (Anthropic format) reports its usage in message_start, then dies mid-stream:
    the ledger has the upstream's count, not the estimate."""
    primary, secondary = upstreams
    primary.fail_next(3, 503)
    secondary.input_tokens = 42
    secondary.reply_text = "alpha beta gamma delta"
    secondary.die_after_next(2)
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    call = await services.chat.start(chat(stream=True))
    assert await collect(call) == ["alpha", " beta"]
    with pytest.raises(ChatFailed) as failed:
        await call.outcome()
    assert failed.value.kind == "upstream" and len(secondary.calls) == 1
    rows = await usage_rows(services, call.agent_id)
    assert [(r["model"], r["input_tokens"]) for r in rows] == [("minimax-m2.5", 42)]


async def test_a_request_the_provider_refuses_fails_as_bad_request_without_fallback(aiohttp_client, tmp_path,
                                                                                     upstreams):
    primary, secondary = upstreams
    primary.fail_next(1, 400)
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    call = await services.chat.start(chat(stream=True))
    assert await collect(call) == []
    with pytest.raises(ChatFailed) as failed:
        await call.outcome()
    assert (failed.value.kind, failed.value.status) == ("bad_request", 400)
    assert "bad_request" in failed.value.message and not secondary.calls


async def test_a_call_past_the_default_timeout_fails_as_timeout(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.delay = 30.0
    cfg = two_provider_config(tmp_path, primary, secondary, default_timeout=0.5)
    client, services = await app_client(aiohttp_client, cfg)
    call = await services.chat.start(chat())
    with pytest.raises(ChatFailed) as failed:
        await asyncio.wait_for(call.outcome(), 10)
    assert (failed.value.kind, failed.value.status) == ("timeout", 504)
    assert failed.value.message == "timeout: agent exceeded its 0.5 s timeout"


async def test_a_plain_agent_still_retries_a_stream_that_broke_for_live_readers(aiohttp_client, tmp_path,
                                                                                upstreams):
    """The no-retry rule is the chat caller's: an agent whose deltas only went to readers of
    agent.output retries as before (its stored result is written once, at the end)."""
    primary, secondary = upstreams
    primary.die_after_next(1)
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    async with client.get("/api/events/stream", params={"types": "agent.output"}) as stream:
        assert stream.status == 200
        resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "do it"})
        agent_id = (await resp.json())["agent_id"]
        done = await services.runtime.wait(agent_id)
    assert done.status == "completed" and done.attempts == 2  # went on after the broken stream
    assert len(primary.calls) + len(secondary.calls) == 2


async def test_cancel_mid_stream_bills_the_streamed_tokens_and_refunds_the_rest(aiohttp_client, tmp_path,
                                                                              upstreams):
    primary, secondary = upstreams
    primary.reply_text = " ".join(f"w{i}" for i in range(200))
    primary.chunk_delay = 0.05  # 10 s for the whole answer: the cancel comes long before
    cfg = two_provider_config(tmp_path, primary, secondary)
    client, services = await app_client(aiohttp_client, cfg)
    request = chat(stream=True)
    call = await services.chat.start(request)
    assert services.budget.reserved > 0
    got = []
    async for delta in call.deltas():
        got.append(delta)
        if len(got) == 3:
            await call.cancel()
    with pytest.raises(ChatFailed) as failed:
        await call.outcome()
    assert failed.value.kind == "cancelled"
    streamed = "".join(got)
    assert streamed.startswith("w0 w1 w2")
    rows = await usage_rows(services, call.agent_id)
    assert len(rows) == 1 and rows[0]["input_tokens"] == input_bound(canonical_json(request))
    # The tokens of what came before the cancel took effect (a chunk or two may follow the third).
    assert estimate_tokens("w0 w1 w2") <= rows[0]["output_tokens"] <= estimate_tokens(streamed) + 1
    assert rows[0]["output_tokens"] < cfg.models["k2p5"].max_tokens  # not the worst case
    view = await (await client.get(f"/api/agent/{call.agent_id}")).json()
    assert view["status"] == "cancelled" and view["cost"] == pytest.approx(rows[0]["cost"])
    assert services.budget.reserved == pytest.approx(0.0)  # the rest of the reservation released
    assert services.budget.spent_today == pytest.approx(rows[0]["cost"])


async def test_cancel_before_the_call_ran_bills_nothing(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.delay = 5.0
    cfg = two_provider_config(tmp_path, primary, secondary, primary_limit=1)
    client, services = await app_client(aiohttp_client, cfg)
    first = await services.chat.start(chat())
    second = await services.chat.start(chat())  # waits for the primary's one slot
    await asyncio.sleep(0)
    assert services.runtime.live[second.agent_id].status == "queued"
    await second.cancel()
    with pytest.raises(ChatFailed) as failed:
        await second.outcome()
    assert failed.value.kind == "cancelled" and await usage_rows(services, second.agent_id) == []
    await first.cancel()


# -- admission --------------------------------------------------------------------------------------
async def test_the_reservation_is_the_worst_case_of_the_asked_max_tokens(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.delay = 5.0
    cfg = two_provider_config(tmp_path, primary, secondary)
    client, services = await app_client(aiohttp_client, cfg)
    small = chat(max_tokens=10)
    call = await services.chat.start(small)
    agent = services.runtime.live[call.agent_id]
    bound = input_bound(canonical_json(small))
    expected = max((bound * m.input_per_1k + min(10, m.max_tokens) * m.output_per_1k) / 1000
                   for m in (cfg.models["k2p5"], cfg.models["minimax-m2.5"]))
    assert agent.reserved == pytest.approx(expected) and services.budget.reserved == pytest.approx(expected)
    await call.cancel()


async def test_max_tokens_above_the_models_cap_is_capped(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    cfg = two_provider_config(tmp_path, primary, secondary)
    client, services = await app_client(aiohttp_client, cfg)
    await (await services.chat.start(chat(max_tokens=10_000_000))).outcome()
    assert primary.calls[0]["json"]["max_tokens"] == cfg.models["k2p5"].max_tokens


async def test_a_budget_refusal_writes_nothing(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    cfg = two_provider_config(tmp_path, primary, secondary)
    cfg = dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, daily_budget=0.000001))
    client, services = await app_client(aiohttp_client, cfg)
    with pytest.raises(BudgetExceeded):
        await services.chat.start(chat())
    await nothing_written(services)
    assert not primary.calls


async def nothing_written(services, agents: int = 0) -> None:
    count = await services.store.read(lambda conn: conn.execute("SELECT COUNT(*) FROM agents").fetchone()[0])
    events = await services.store.read(lambda conn: conn.execute("SELECT COUNT(*) FROM events "
                                                                 "WHERE type LIKE 'agent.%'").fetchone()[0])
    assert (count, events) == (agents, agents)


async def test_the_per_key_agent_cap_refuses_a_call_and_writes_nothing(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.delay = 5.0
    cfg = two_provider_config(tmp_path, primary, secondary)
    cfg = dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, max_agents_per_key=1))
    client, services = await app_client(aiohttp_client, cfg)
    first = await services.chat.start(chat(), "key_a")
    reserved = services.budget.reserved
    with pytest.raises(SpawnRefused) as refused:
        await services.chat.start(chat(), "key_a")
    assert refused.value.status == 429
    await nothing_written(services, agents=1)
    assert services.budget.reserved == reserved
    await first.cancel()


async def test_chat_calls_wait_in_the_queue_like_agents(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.delay = 0.3
    cfg = two_provider_config(tmp_path, primary, secondary, primary_limit=1)
    client, services = await app_client(aiohttp_client, cfg)
    calls = [await services.chat.start(chat(f"question {i}")) for i in range(3)]
    await asyncio.sleep(0)
    statuses = sorted(services.runtime.live[c.agent_id].status for c in calls)
    assert statuses == ["queued", "queued", "running"]
    outcomes = [await c.outcome() for c in calls]
    assert all(o.provider == "primary" for o in outcomes) and len(primary.calls) == 3


# -- restart -----------------------------------------------------------------------------------------
async def test_a_chat_agent_found_live_at_start_fails_as_interrupted_and_is_not_run(aiohttp_client, tmp_path,
                                                                                     upstreams):
    primary, secondary = upstreams
    cfg = two_provider_config(tmp_path, primary, secondary)
    # The previous daemon died (kill -9) with a chat call running and another queued.
    from j1mskyd.app import state_db_path
    from j1mskyd import statedir
    statedir.prepare(cfg.server.state_dir)
    store = Store(state_db_path(cfg))
    store.open()
    task = canonical_json(chat())
    agents = [Agent(agent_id=f"subagent_1_000{i}", kind=KIND_CHAT, model="k2p5", task=task, priority="normal",
                    timeout=300, status=status, runs=runs, estimated_cost=0.001)
              for i, (status, runs) in enumerate([("running", 1), ("queued", 0)])]
    await store.write(*[insert(a, store.cipher) for a in agents])
    await store.close()

    client, services = await app_client(aiohttp_client, cfg)
    for a in agents:
        view = await (await client.get(f"/api/agent/{a.agent_id}")).json()
        assert view["status"] == "failed" and view["kind"] == KIND_CHAT
        assert view["error"] == "interrupted: the daemon stopped during this chat call"
    assert not primary.calls and not services.runtime.live
    assert services.budget.reserved == pytest.approx(0.0)  # their reservations released
    # The running one's call was cut by the crash: billed at its worst case (the request's bytes
    # and 64 tokens of chat template in, the model's max_tokens out), marked as cut; the queued
    # one made no call.
    rows = await services.store.read(lambda c: c.execute(
        "SELECT agent_id, input_tokens, output_tokens, cost, cut FROM usage").fetchall())
    model = cfg.models["k2p5"]
    worst = token_cost(model, len(task.encode()) + 64, model.max_tokens)
    assert [tuple(r) for r in rows] == [(agents[0].agent_id, len(task.encode()) + 64, model.max_tokens,
                                          pytest.approx(worst), 1)]
    view = await (await client.get(f"/api/agent/{agents[0].agent_id}")).json()
    assert view["cost"] == pytest.approx(worst, abs=1e-6)
    assert services.budget.spent_today == pytest.approx(worst)


async def test_a_graceful_stop_fails_a_running_chat_call_and_the_restart_leaves_it(aiohttp_client, tmp_path,
                                                                                    upstreams):
    primary, secondary = upstreams
    primary.delay = 30.0
    cfg = two_provider_config(tmp_path, primary, secondary, primary_limit=1)
    client, services = await app_client(aiohttp_client, cfg)
    call = await services.chat.start(chat())
    queued = await services.chat.start(chat())  # waits for the primary's one slot
    await primary.wait_calls(1)  # the upstream holds the call
    await client.close()  # the daemon stops: the runtime stops, the store closes
    with pytest.raises(ChatFailed) as failed:
        await call.outcome()
    assert failed.value.kind == "interrupted" and failed.value.status == 503
    with pytest.raises(ChatFailed) as failed:
        await queued.outcome()
    assert failed.value.kind == "interrupted"

    client, services = await app_client(aiohttp_client, cfg)  # the same state dir
    for agent_id in (call.agent_id, queued.agent_id):
        view = await (await client.get(f"/api/agent/{agent_id}")).json()
        assert view["status"] == "failed" and view["error"] == "interrupted: the daemon stopped during this chat call"
    assert len(primary.calls) == 1 and not services.runtime.live
    chats = (await (await client.get("/api/agents", params={"kind": "chat"})).json())["data"]
    assert sorted(a["agent_id"] for a in chats) == sorted([call.agent_id, queued.agent_id])


async def test_a_call_cancelled_at_once_ends_cancelled_and_frees_its_slot(aiohttp_client, tmp_path, upstreams):
    """A cancel right after start, before the runtime's task took its first step: such a task
    never runs its body when cancelled, so the runtime must not cancel it (it used to hang the
    cancel and keep the provider's slot).  A live reader of the text keeps the call behind its
    insert's commit (no dispatch on submit, tests/test_chat_dispatch_on_submit.py), so the cancel
    can come before the task's first step."""
    primary, secondary = upstreams
    cfg = two_provider_config(tmp_path, primary, secondary, primary_limit=1)
    client, services = await app_client(aiohttp_client, cfg)
    reader = services.events.subscribe(["agent.output"])
    call = await services.chat.start(chat())
    services.events.unsubscribe(reader)
    async with asyncio.timeout(5):  # not wait_for: its own task would let the runtime's take its step first
        await call.cancel()
    with pytest.raises(ChatFailed) as failed:
        await asyncio.wait_for(call.outcome(), 5)
    assert failed.value.kind == "cancelled" and not primary.calls
    assert services.slots["primary"].active == 0
    outcome = await asyncio.wait_for((await services.chat.start(chat())).outcome(), 5)
    assert outcome.provider == "primary"
