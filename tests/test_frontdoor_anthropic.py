"""The Anthropic front door (/v1/messages, /v1/messages/count_tokens) on a real loopback server:
with the official ``anthropic`` SDK (create, stream, tools round trips, count_tokens, each
refusal as the SDK's own exception class) and with raw HTTP (the error shape on every refusal,
every JSON type in every field; a refusal changes nothing).  Providers behind it: the offline
stand-in, and fake OpenAI- and Anthropic-format upstreams on loopback (either format reaches
either provider)."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest

from j1mskyd.api.common import CONFIG
from j1mskyd.api.frontdoor_anthropic import ESTIMATE_HEADER
from j1mskyd.config import ModelConfig
from j1mskyd.dialects.anthropic_messages import SPEND_LIMIT_CODE
from j1mskyd.providers import ProviderSettings
from tests.conftest import auth_config, bearer
from tests.fakeupstream import FakeUpstream
from tests.frontdoor_fuzz import fuzz_door
from tests.test_frontdoor_openai import Door, broken_config, lifted, open_door

MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
BODY: dict[str, Any] = {"model": "k2p5", "max_tokens": 200, "messages": [{"role": "user", "content": "hello there"}]}
SDK_REASON = "the official anthropic SDK (the test extra: pip install -e '.[test]') is not installed here"
WEATHER = {"name": "get_weather", "description": "the weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture
async def door(aiohttp_client, tmp_path) -> Door:
    return await open_door(aiohttp_client, tmp_path)


@pytest.fixture
def anthropic_sdk():
    return pytest.importorskip("anthropic", reason=SDK_REASON)


def sdk_client(anthropic_sdk, door: Door, token: str | None = None, retries: int = 0) -> Any:
    # The base URL without /v1: the SDK adds /v1/messages.  The 2.x SDK sends the key as
    # Authorization: Bearer (older ones as x-api-key, which post() below sends).
    return anthropic_sdk.AsyncAnthropic(base_url=door.url("/"), api_key=token or door.token, max_retries=retries)


async def post(door: Door, body: Any, path: str = MESSAGES, headers: dict[str, str] | None = None,
               raw: bytes | None = None) -> Any:
    data = raw if raw is not None else json.dumps(body).encode()
    return await door.client.post(path, data=data, headers={"x-api-key": door.token, "anthropic-version": "2023-06-01",
                                                            "Content-Type": "application/json", **(headers or {})})


def anthropic_error(body: Any) -> dict[str, Any]:
    """The ``error`` of Anthropic's error body, checked to be that shape (never the native envelope)."""
    assert isinstance(body, dict) and set(body) == {"type", "error"} and body["type"] == "error", body
    error = body["error"]
    assert set(error) - {"details"} == {"type", "message"}, error
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    return error


async def calls_state(door: Door) -> Any:
    """The state a refusal must leave as it was, less the security log: a refused key or scope
    is recorded there (a ``security.violation`` event and its audit entry) by design."""
    state = await door.api.state()
    for name in ("events", "audit_log", "deliveries"):
        state["db"].pop(name)
    return state


def provider_config(tmp_path, upstream: FakeUpstream, plugin: str, **budget: Any) -> Any:
    """The fake upstream as a provider of ``plugin`` (``openai_compat`` or ``anthropic``)
    behind the alias ``k2p5``."""
    cfg = lifted(auth_config(tmp_path), **budget)
    base_url = upstream.url + ("/v1" if plugin == "openai_compat" else "")
    provider = ProviderSettings(name="fake", plugin=plugin, base_url=base_url, api_key="sk-x", timeout=60,
                                max_concurrency=8, hourly_limit=100_000)
    models = {"k2p5": ModelConfig(alias="k2p5", provider="fake", upstream="fake-model", input_per_1k=0.001,
                                  output_per_1k=0.002, blended_per_1k=0.002, max_tokens=1000)}
    return dataclasses.replace(cfg, providers={"fake": provider}, models=models)


# -- the official SDK ------------------------------------------------------------------------------

async def test_sdk_create_is_a_recorded_chat_agent(door, anthropic_sdk):
    async with sdk_client(anthropic_sdk, door) as sdk:
        message = await sdk.messages.create(model="k2p5", max_tokens=200, system="be brief",
                                            messages=[{"role": "user", "content": "hello there"}])
    assert message.type == "message" and message.role == "assistant" and message.model == "k2p5"
    assert [b.type for b in message.content] == ["text"] and message.content[0].text.startswith("[offline:")
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    agent_id = message.id.removeprefix("msg_")
    listed = {a["agent_id"]: a for a in await door.agents()}
    assert listed[agent_id]["status"] == "completed" and listed[agent_id]["model"] == "k2p5"


async def test_sdk_stream_and_final_message(door, anthropic_sdk):
    async with sdk_client(anthropic_sdk, door) as sdk:
        whole = await sdk.messages.create(**BODY)
        async with sdk.messages.stream(**BODY) as stream:
            texts = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert len(texts) >= 1 and "".join(texts) == final.content[0].text == whole.content[0].text
    assert final.stop_reason == "end_turn" and final.model == "k2p5" and final.id != whole.id
    # message_delta carries the provider's counts: the accumulated message has them.
    assert (final.usage.input_tokens, final.usage.output_tokens) == (whole.usage.input_tokens,
                                                                     whole.usage.output_tokens)
    listed = {a["agent_id"]: a for a in await door.agents()}
    assert listed[final.id.removeprefix("msg_")]["status"] == "completed"


async def test_sdk_tools_round_trip_offline(door, anthropic_sdk):
    """tool_use, then tool_result: the offline stand-in forces the named tool, then repeats
    what the tool said."""
    messages: list[Any] = [{"role": "user", "content": "weather in Oslo?"}]
    async with sdk_client(anthropic_sdk, door) as sdk:
        first = await sdk.messages.create(model="k2p5", max_tokens=200, messages=messages, tools=[WEATHER],
                                          tool_choice={"type": "tool", "name": "get_weather"})
        (call,) = first.content
        assert (first.stop_reason, call.type, call.name, call.input) == ("tool_use", "tool_use", "get_weather", {})
        messages += [{"role": "assistant", "content": first.content},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                   "content": "rain, 4 C"}]}]
        second = await sdk.messages.create(model="k2p5", max_tokens=200, messages=messages, tools=[WEATHER])
    assert second.stop_reason == "end_turn" and f"tool {call.id}: rain, 4 C" in second.content[0].text


async def test_sdk_anthropic_format_reaches_an_openai_format_provider(aiohttp_client, tmp_path, anthropic_sdk,
                                                                      fake_upstream):
    door = await open_door(aiohttp_client, tmp_path, provider_config(tmp_path, fake_upstream, "openai_compat"))
    fake_upstream.tool_calls_next([("get_weather", '{"city":"Oslo"}')], text="Looking.")
    messages: list[Any] = [{"role": "user", "content": "weather in Oslo?"}]
    async with sdk_client(anthropic_sdk, door) as sdk:
        # The 2.x SDK has no temperature argument any more; the API still takes the field.
        first = await sdk.messages.create(model="k2p5", max_tokens=300, system="be brief", messages=messages,
                                          tools=[WEATHER], stop_sequences=["END"], extra_body={"temperature": 0.2})
        assert [b.type for b in first.content] == ["text", "tool_use"] and first.stop_reason == "tool_use"
        text, call = first.content
        assert (text.text, call.name, call.input) == ("Looking.", "get_weather", {"city": "Oslo"})
        assert (first.usage.input_tokens, first.usage.output_tokens) == (fake_upstream.input_tokens,
                                                                         fake_upstream.output_tokens)
        sent = fake_upstream.bodies[-1]
        assert sent["messages"][0] == {"role": "system", "content": "be brief"}
        assert sent["tools"][0]["function"]["name"] == "get_weather" and sent["stop"] == ["END"]
        assert sent["temperature"] == 0.2
        messages += [{"role": "assistant", "content": first.content},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "rain"}]}]
        async with sdk.messages.stream(model="k2p5", max_tokens=300, messages=messages, tools=[WEATHER]) as stream:
            final = await stream.get_final_message()
    assert final.content[0].text == fake_upstream.reply_text and final.stop_reason == "end_turn"
    sent = fake_upstream.bodies[-1]
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": call.id, "content": "rain"}
    assert sent["messages"][-2]["tool_calls"][0]["id"] == call.id and sent["stream"] is True


async def test_sdk_anthropic_format_reaches_an_anthropic_provider_streamed(aiohttp_client, tmp_path, anthropic_sdk,
                                                                          fake_upstream):
    door = await open_door(aiohttp_client, tmp_path, provider_config(tmp_path, fake_upstream, "anthropic"))
    fake_upstream.tool_calls_next([("get_weather", '{"city":"Oslo"}')], text="Let me see.")
    async with sdk_client(anthropic_sdk, door) as sdk:
        async with sdk.messages.stream(model="k2p5", max_tokens=300, tools=[WEATHER],
                                       messages=[{"role": "user", "content": "weather?"}]) as stream:
            texts = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert "".join(texts) == "Let me see." and final.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "input", None)) for b in final.content] == [("text", None),
                                                                            ("tool_use", {"city": "Oslo"})]
    assert final.usage.input_tokens == fake_upstream.input_tokens
    sent = fake_upstream.bodies[-1]
    assert sent["model"] == "fake-model" and sent["tools"][0]["name"] == "get_weather" and sent["stream"] is True


async def test_openai_format_reaches_an_anthropic_provider(aiohttp_client, tmp_path, fake_upstream):
    """The reverse: the openai SDK's call to a model served by the anthropic plugin."""
    openai_sdk = pytest.importorskip("openai", reason="the official openai SDK (the test extra) is not installed")
    door = await open_door(aiohttp_client, tmp_path, provider_config(tmp_path, fake_upstream, "anthropic"))
    fake_upstream.tool_calls_next([("get_weather", '{"city":"Oslo"}')])
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}]
    messages: list[Any] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather?"}]
    async with openai_sdk.AsyncOpenAI(base_url=door.url(), api_key=door.token, max_retries=0) as sdk:
        first = await sdk.chat.completions.create(model="k2p5", messages=messages, tools=tools, max_tokens=300)
        call = first.choices[0].message.tool_calls[0]
        assert first.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"city": "Oslo"}
        messages += [first.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "rain"}]
        second = await sdk.chat.completions.create(model="k2p5", messages=messages, tools=tools, max_tokens=300)
    assert second.choices[0].message.content == fake_upstream.reply_text
    sent = fake_upstream.bodies[-1]
    assert sent["system"] == "be brief" and sent["tools"][0]["input_schema"] == WEATHER["input_schema"]
    assert sent["messages"][-1]["content"][0]["type"] == "tool_result"
    assert sent["messages"][-1]["content"][0]["tool_use_id"] == call.id
    assert sent["messages"][-2]["content"][-1]["type"] == "tool_use"


async def test_sdk_count_tokens_is_the_estimate_the_provider_makes(door, anthropic_sdk):
    """count_tokens gives the figure the offline provider (which counts as every provider
    estimates an input) reports for the same call; it makes no agent and spends nothing."""
    conversation: dict[str, Any] = {"model": "k2p5", "system": "be brief", "tools": [WEATHER],
                                    "messages": [{"role": "user", "content": "weather in Oslo, please? " * 20}]}
    async with sdk_client(anthropic_sdk, door) as sdk:
        before = await door.api.state()
        counted = await sdk.messages.count_tokens(**conversation)
        assert await door.api.state() == before
        message = await sdk.messages.create(max_tokens=100, **conversation)
    assert counted.input_tokens == message.usage.input_tokens > 100
    assert counted.model_extra == {"estimated": True}
    resp = await post(door, conversation, COUNT)
    assert resp.status == 200 and resp.headers[ESTIMATE_HEADER] == "estimate"
    assert await resp.json() == {"input_tokens": counted.input_tokens, "estimated": True}


async def test_count_tokens_needs_agents_write_and_refuses_generation_fields(door, anthropic_sdk):
    reader = await door.key("agents:read")
    writer = await door.key("agents:write")
    before = await calls_state(door)
    async with sdk_client(anthropic_sdk, door, reader) as sdk:
        with pytest.raises(anthropic_sdk.PermissionDeniedError) as denied:
            await sdk.messages.count_tokens(model="k2p5", messages=[{"role": "user", "content": "x"}])
    assert denied.value.type == "permission_error"
    async with sdk_client(anthropic_sdk, door, writer) as sdk:
        assert (await sdk.messages.count_tokens(model="k2p5", messages=[{"role": "user", "content": "x"}])
                ).input_tokens == 1
        with pytest.raises(anthropic_sdk.NotFoundError):
            await sdk.messages.count_tokens(model="claude-nope", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(anthropic_sdk.BadRequestError) as info:
            await sdk.messages.count_tokens(model="k2p5", messages=[{"role": "user", "content": "x"}],
                                            extra_body={"max_tokens": 10})
    assert info.value.api_message.startswith("max_tokens: ")
    assert await calls_state(door) == before


async def test_sdk_raises_its_own_class_for_each_refusal_and_nothing_changes(door, anthropic_sdk):
    reader = await door.key("agents:read")
    before = await calls_state(door)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    cases = [
        (anthropic_sdk.AuthenticationError, "authentication_error", "jsk_nope", {}, None),
        (anthropic_sdk.PermissionDeniedError, "permission_error", reader, {}, None),
        (anthropic_sdk.NotFoundError, "not_found_error", None, {"model": "claude-sonnet-9"}, "'claude-sonnet-9'"),
        (anthropic_sdk.BadRequestError, "invalid_request_error", None,
         {"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking: "),
        (anthropic_sdk.BadRequestError, "invalid_request_error", None, {"extra_body": {"top_k": 5}}, "top_k: "),
        (anthropic_sdk.BadRequestError, "invalid_request_error", None, {"max_tokens": 0}, "max_tokens: "),
        (anthropic_sdk.BadRequestError, "invalid_request_error", None,
         {"messages": [{"role": "user", "content": [image]}]}, "messages.0.content.0.type: 'image'"),
        (anthropic_sdk.BadRequestError, "invalid_request_error", None,
         {"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type: server tool"),
    ]
    for exc_class, kind, token, fields, words in cases:
        async with sdk_client(anthropic_sdk, door, token) as sdk:
            with pytest.raises(exc_class) as info:
                await sdk.messages.create(**{**BODY, **fields})
        assert info.value.type == kind, (exc_class, info.value.body)
        assert words is None or words in info.value.api_message, info.value.api_message
    assert await calls_state(door) == before


async def test_sdk_rate_limit_error_for_the_request_limit(aiohttp_client, tmp_path, anthropic_sdk):
    cfg = lifted(auth_config(tmp_path))
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, spawn=1))
    door = await open_door(aiohttp_client, tmp_path, cfg)
    async with sdk_client(anthropic_sdk, door) as sdk:
        await sdk.messages.create(**BODY)
        with pytest.raises(anthropic_sdk.RateLimitError) as info:
            await sdk.messages.create(**BODY)
    assert info.value.type == "rate_limit_error" and info.value.error_code is None
    assert int(info.value.response.headers["retry-after"]) >= 1


async def test_sdk_spent_budget_is_a_spend_limit_rate_limit_error_and_no_retry(aiohttp_client, tmp_path,
                                                                               anthropic_sdk):
    cfg = lifted(auth_config(tmp_path), daily_budget=0.000001)
    door = await open_door(aiohttp_client, tmp_path, cfg)
    before = await door.api.state()
    # The SDK's own retries on: x-should-retry: false keeps it from asking three times.
    async with sdk_client(anthropic_sdk, door, retries=2) as sdk:
        with pytest.raises(anthropic_sdk.RateLimitError) as info:
            await sdk.messages.create(**{**BODY, "model": "opus"})
    assert isinstance(info.value, anthropic_sdk.EnforcedSpendLimitReachedError)
    assert info.value.type == "rate_limit_error" and info.value.error_code == SPEND_LIMIT_CODE
    assert "budget" in info.value.api_message.lower()
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.response.request.headers["x-stainless-retry-count"] == "0"  # the first try was the last
    assert await door.api.state() == before


async def test_a_stream_that_dies_mid_way_ends_with_an_error_event(aiohttp_client, tmp_path, anthropic_sdk,
                                                                   fake_upstream):
    door = await open_door(aiohttp_client, tmp_path, provider_config(tmp_path, fake_upstream, "anthropic"))
    fake_upstream.reply_text = "one two three four five six"
    fake_upstream.die_after_next(2)
    texts: list[str] = []
    async with sdk_client(anthropic_sdk, door) as sdk:
        with pytest.raises(anthropic_sdk.APIStatusError) as info:
            async with sdk.messages.stream(**BODY) as stream:
                async for text in stream.text_stream:
                    texts.append(text)
    assert texts and "".join(texts) in fake_upstream.reply_text  # what came before the death
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "api_error"
    (agent,) = await door.agents()
    assert agent["status"] == "failed"


async def test_a_stream_that_fails_before_its_first_byte_is_a_real_http_error(aiohttp_client, tmp_path,
                                                                              anthropic_sdk):
    cfg = broken_config(tmp_path)
    door = await open_door(aiohttp_client, tmp_path, cfg)
    async with sdk_client(anthropic_sdk, door) as sdk:
        with pytest.raises(anthropic_sdk.InternalServerError) as info:
            async with sdk.messages.stream(**BODY) as stream:
                await stream.get_final_message()
    assert info.value.status_code == 502 and info.value.type == "api_error"
    assert info.value.response.headers["content-type"].startswith("application/json")


# -- raw HTTP --------------------------------------------------------------------------------------

async def test_refusals_are_anthropic_errors_with_the_rate_headers(door):
    cases = [
        (await door.client.post(MESSAGES, json=BODY), 401, "authentication_error"),
        (await post(door, BODY, headers={"x-api-key": "jsk_wrong"}), 401, "authentication_error"),
        (await post(door, None, raw=b"{"), 400, "invalid_request_error"),
        (await post(door, [BODY]), 400, "invalid_request_error"),
        (await post(door, {**BODY, "temperature": "hot"}), 400, "invalid_request_error"),
        (await post(door, {**BODY, "model": "nope"}), 404, "not_found_error"),
        (await post(door, None, COUNT, raw=b""), 400, "invalid_request_error"),
        (await post(door, {"model": "nope", "messages": BODY["messages"]}, COUNT), 404, "not_found_error"),
        (await door.client.post(COUNT, json=BODY, headers=bearer("jsk_wrong")), 401, "authentication_error"),
    ]
    for resp, status, kind in cases:
        error = anthropic_error(await resp.json())
        assert (resp.status, error["type"]) == (status, kind), error
        assert resp.headers["X-Request-Id"] and resp.headers["X-RateLimit-Limit"].isdigit()
    assert anthropic_error(await cases[4][0].json())["message"].startswith("temperature: ")
    for field in ("temperature", "top_p", "max_tokens"):  # an integer no float holds was a 500
        resp = await post(door, {**BODY, field: 10**309})
        assert (resp.status, anthropic_error(await resp.json())["type"]) == (400, "invalid_request_error"), field


async def test_unknown_paths_and_methods_under_messages_speak_anthropic(door):
    # The dialect of the longest front-door path that prefixes the request's: /v1/messages/... is
    # Anthropic's, /v1/chat/... OpenAI's, whichever was added first under /v1.
    for resp, status in [(await post(door, BODY, "/v1/messages/batches"), 404),
                         (await door.client.get(MESSAGES, headers={"x-api-key": door.token}), 405),
                         (await door.client.delete(COUNT, headers={"x-api-key": door.token}), 405)]:
        assert resp.status == status
        anthropic_error(await resp.json())
    resp = await door.client.post("/v1/chat/completions/nope", json={}, headers=bearer(door.token))
    body = await resp.json()
    assert resp.status == 404 and set(body) == {"error"} and body["error"]["type"] == "invalid_request_error", body


async def test_a_body_over_the_size_limit_is_request_too_large(aiohttp_client, tmp_path):
    cfg = lifted(auth_config(tmp_path))
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, max_body_bytes=1000))
    door = await open_door(aiohttp_client, tmp_path, cfg)
    resp = await post(door, {**BODY, "system": "x" * 2000})
    assert resp.status == 413 and anthropic_error(await resp.json())["type"] == "request_too_large"


async def test_calls_count_as_spawns_and_counts_as_other(door):
    limits = door.client.app[CONFIG].current.limits
    resp = await post(door, BODY)
    assert resp.status == 200 and resp.headers["X-RateLimit-Limit"] == str(limits.spawn)
    resp = await post(door, {"model": "k2p5", "messages": BODY["messages"]}, COUNT)
    assert resp.status == 200 and resp.headers["X-RateLimit-Limit"] == str(limits.other)


async def test_idempotency_key_replays_a_non_streamed_message(door):
    key = {"Idempotency-Key": "msg-1"}
    first, again = await post(door, BODY, headers=key), await post(door, BODY, headers=key)
    assert first.status == again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert (await first.json())["id"] == (await again.json())["id"]
    assert len(await door.agents()) == 1


async def test_the_stream_on_the_wire(door):
    """The events, in order, as Anthropic's API sends them (what SDKs other than Python's read)."""
    resp = await post(door, {**BODY, "stream": True})
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    frames = [f for f in (await resp.text()).split("\n\n") if f]
    names = [f.split("\n")[0].removeprefix("event: ") for f in frames]
    datas = [json.loads(f.split("\n")[1].removeprefix("data: ")) for f in frames]
    assert names[:2] == ["message_start", "content_block_start"] and names[-3:] == ["content_block_stop",
                                                                                    "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}
    assert all(d["type"] == n for n, d in zip(names, datas))
    assert datas[-2]["delta"]["stop_reason"] == "end_turn" and datas[-2]["usage"]["output_tokens"] > 0


# -- every JSON type in every field -----------------------------------------------------------------

FUZZ_EXAMPLE: dict[str, Any] = {
    "model": "k2p5", "max_tokens": 100, "system": [{"type": "text", "text": "be brief"}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "rain",
                                      "is_error": False}]},
    ],
    "temperature": 0.5, "top_p": 0.9, "stop_sequences": ["END"], "metadata": {"user_id": "u1"}, "stream": False,
    "tools": [WEATHER], "tool_choice": {"type": "auto"}, "thinking": {"type": "disabled"},
}


def _names(error: dict[str, Any], field: str) -> bool:
    """Does the refusal name the broken field, the object or list it is in, or a part of it?
    Anthropic's paths are dotted (``messages.0.content: ...``); the tool pairing rule names
    the messages as a whole."""
    # "field: ..." (the dialect's), or "field must be ..." (the body reader's lone-surrogate check)
    named = re.split("[: ]", error["message"], maxsplit=1)[0].replace("[", ".").replace("]", "")
    field = field.replace("[", ".").replace("]", "")
    return named in (field, "messages") or field.startswith(named + ".") or named.startswith(field + ".")


async def test_every_field_with_every_json_type_is_an_anthropic_400_that_changes_nothing(door):
    async def send(body: Any, raw: bytes | None = None) -> Any:
        return await post(door, body, raw=raw)

    problems = await fuzz_door(door.api, send, FUZZ_EXAMPLE, [("top_k",), ("container",), ("unknown",)],
                               anthropic_error, _names)
    assert not problems, "\n".join(problems[:60])
