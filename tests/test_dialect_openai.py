"""The OpenAI Chat Completions dialect alone (j1mskyd/dialects/openai_chat.py): parsing,
rendering, the chunk stream and the error shapes, without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from j1mskyd.budget import BudgetExceeded, SpawnRefused
from j1mskyd.chat_request import ChatFailed, ChatOutcome
from j1mskyd.config import embedded_default
from j1mskyd.dialects import ModelNotFound, retry_headers
from j1mskyd.dialects.openai_chat import DEFAULT_ONLY, IGNORED, OPENAI
from j1mskyd.errors import ApiError, Conflict, Forbidden, NotFound, PayloadTooLarge, RateLimited, Unauthorized, \
    ValidationFailed
from j1mskyd.plugin_api import Message, TextBlock, Tool, ToolCall, ToolChoice, ToolResult

MODELS = embedded_default().models
BODY = {"model": "k2p5", "messages": [{"role": "user", "content": "hi"}]}


def parse(**fields: Any):
    return OPENAI.parse({**BODY, **fields}, MODELS)


def refused(body: Any) -> dict[str, Any]:
    """The OpenAI error body of a refused request (and its status must be a 400)."""
    with pytest.raises(ApiError) as info:
        OPENAI.parse(body, MODELS)
    status, answer = OPENAI.error(info.value)
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error"
    return answer["error"]


def test_a_minimal_request():
    req = parse()
    assert req.model == "k2p5" and req.dialect == "openai"
    assert req.messages == (Message("user", (TextBlock("hi"),)),)
    assert req.system is None and not req.stream and req.max_tokens is None and req.tools == ()


def test_system_and_developer_messages_join_in_order_and_same_roles_merge():
    req = parse(messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "developer", "content": [{"type": "text", "text": "in French"}]},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ])
    assert req.system == "be brief\n\nin French"
    assert req.messages == (Message("user", (TextBlock("ab"), TextBlock("c"))),
                            Message("assistant", (TextBlock("d"),)))


def test_a_tool_round_trip_becomes_tool_call_and_tool_result_blocks():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    req = parse(messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None, "annotations": []},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
        {"role": "user", "content": "thanks"},
    ], tools=[{"type": "function", "function": {"name": "get_weather", "description": "d",
                                                "parameters": {"type": "object", "properties": {}},
                                                "strict": True}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert req.messages[1] == Message("assistant", (ToolCall("call_1", "get_weather", '{"city":"Oslo"}'),))
    assert req.messages[2] == Message("user", (ToolResult("call_1", "rain"), TextBlock("thanks")))
    assert req.tools == (Tool("get_weather", "d", {"type": "object", "properties": {}}),)
    assert req.tool_choice == ToolChoice("tool", "get_weather")


def test_sampling_fields_and_the_rest():
    req = parse(temperature=0.5, top_p=1, max_completion_tokens=77, stop="END", n=1, user="u1",
                metadata={"team": "a"}, stream=True, stream_options={"include_usage": True},
                response_format={"type": "json_object"}, store=False, seed=None, logprobs=False,
                frequency_penalty=0, parallel_tool_calls=True, modalities=["text"])
    assert (req.temperature, req.top_p, req.max_tokens, req.stop) == (0.5, 1.0, 77, ("END",))
    assert (req.user, req.metadata, req.stream, req.include_usage) == ("u1", {"team": "a"}, True, True)
    assert req.response_format == {"type": "json_object"}
    assert parse(response_format={"type": "text"}).response_format is None
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}}
    assert parse(response_format=schema).response_format == schema


@pytest.mark.parametrize("fields, param", [
    ({"n": 2}, "n"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": -0.1}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10, "max_completion_tokens": 20}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ""}, "stop"),
    ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ({"tool_choice": "required"}, "tool_choice"),  # without tools
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema.name"),
    ({"user": "u" * 257}, "user"),
    ({"top_k": 5}, "top_k"),
    ({"seed": 1}, "seed"),
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"store": "yes"}, "store"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "only"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages[0].name"),
    ({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant", "content": "x", "refusal": "no"}]}, "messages[0].refusal"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "a", "parameters": {"type": "object",
                                                                            "maxLength": 10**30}}}]},
     "tools[0].function.parameters"),
])
def test_refusals_name_the_parameter(fields, param):
    error = refused({**BODY, **fields})
    assert error["param"] == param and error["message"], error


def test_image_parts_are_refused_naming_the_part_type():
    error = refused({**BODY, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "look"}, {"type": "input_audio", "input_audio": {}}]}]})
    assert "'input_audio'" in error["message"] and "not supported by this daemon" in error["message"]
    assert error["code"] == "unsupported_content"


def test_every_refused_parameter_is_refused_and_every_ignored_one_accepted():
    odd = {"logprobs": True, "top_logprobs": 2, "logit_bias": {"1": 1}, "seed": 7, "frequency_penalty": 1,
           "presence_penalty": -1, "parallel_tool_calls": False, "audio": {"voice": "x"}, "modalities": ["audio"],
           "reasoning_effort": "low", "verbosity": "low", "web_search_options": {}, "functions": [],
           "function_call": "auto"}
    assert set(odd) == set(DEFAULT_ONLY)
    for name, value in odd.items():
        error = refused({**BODY, name: value})
        assert error["param"] == name and error["code"] == "unsupported_parameter", error
    fine = {"store": True, "service_tier": "auto", "prediction": {"type": "content", "content": "x"},
            "safety_identifier": "s", "prompt_cache_key": "k", "prompt_cache_retention": "24h"}
    assert set(fine) == set(IGNORED)
    assert parse(**fine).messages == parse().messages


def test_an_unknown_model_is_a_404_model_not_found():
    with pytest.raises(ModelNotFound) as info:
        OPENAI.parse({**BODY, "model": "gpt-5"}, MODELS)
    status, body = OPENAI.error(info.value)
    assert status == 404
    assert body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    assert "k2p5" in body["error"]["message"]


@pytest.mark.parametrize("body", [None, [], "x", 1, True])
def test_a_body_that_is_no_object(body):
    assert refused(body)["param"] == "body"


# -- answers ---------------------------------------------------------------------------------------

def outcome(**kw: Any) -> ChatOutcome:
    base = dict(agent_id="agent_1", model="k2p5", served_model="sonnet", provider="anthropic",
                upstream_model="claude-x", text="hello", tool_calls=(), finish_reason="stop", input_tokens=10,
                output_tokens=3, cost=0.001, created_at=1_700_000_000.5)
    return ChatOutcome(**{**base, **kw})  # type: ignore[arg-type]


def test_render_the_chat_completion():
    body = OPENAI.render(outcome())
    assert body["id"] == "chatcmpl-agent_1" and body["object"] == "chat.completion"
    assert body["created"] == 1_700_000_000 and body["model"] == "k2p5"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "hello", "refusal": None,
                                                        "annotations": []},
                                "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    assert body["system_fingerprint"] == "j1msky:anthropic/claude-x"


def test_render_tool_calls_and_the_message_parses_back():
    body = OPENAI.render(outcome(text="", tool_calls=(ToolCall("c1", "f", "{}"),), finish_reason="tool_calls"))
    message = body["choices"][0]["message"]
    assert message["content"] is None and body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"] == [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    # A caller appends the message it was given, as it was given: accepted.
    req = parse(messages=[{"role": "user", "content": "q"}, message,
                          {"role": "tool", "tool_call_id": "c1", "content": "r"}])
    assert req.messages[1] == Message("assistant", (ToolCall("c1", "f", "{}"),))


def frames(raw: bytes) -> list[Any]:
    assert raw.endswith(b"\n\n")
    out = []
    for frame in raw.decode().split("\n\n")[:-1]:
        assert frame.startswith("data: ")
        data = frame[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_the_chunk_stream_with_usage():
    enc = OPENAI.encoder(parse(stream=True, stream_options={"include_usage": True}), "agent_1", 1_700_000_000.0)
    first, = frames(enc.start())
    assert first["object"] == "chat.completion.chunk" and first["id"] == "chatcmpl-agent_1"
    assert first["choices"][0]["delta"]["role"] == "assistant" and first["usage"] is None
    text, = frames(enc.delta("hel"))
    assert text["choices"][0]["delta"] == {"content": "hel"} and text["choices"][0]["finish_reason"] is None
    *tools, finish, usage, done = frames(enc.finish(outcome(tool_calls=(ToolCall("c1", "f", '{"a":1}'),))))
    assert tools[0]["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]
    assert finish["choices"][0]["finish_reason"] == "tool_calls" and finish["choices"][0]["delta"] == {}
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 13
    assert done == "[DONE]"


def test_the_chunk_stream_without_usage_and_a_failure():
    enc = OPENAI.encoder(parse(stream=True), "agent_1", 1.0)
    assert "usage" not in frames(enc.start())[0]
    finish, done = frames(enc.finish(outcome()))
    assert finish["choices"][0]["finish_reason"] == "stop" and "usage" not in finish and done == "[DONE]"
    failed, = frames(enc.fail(ChatFailed("upstream", "every provider failed", agent_id="agent_1")))
    assert failed == {"error": {"message": "every provider failed", "type": "server_error", "param": None,
                                "code": "upstream"}}


# -- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("error, status, kind, code", [
    (Unauthorized("no key"), 401, "invalid_request_error", "invalid_api_key"),
    (Unauthorized("bad key", type_="INVALID_API_KEY"), 401, "invalid_request_error", "invalid_api_key"),
    (Forbidden("scope", required_scope="agents:write"), 403, "invalid_request_error", "insufficient_scope"),
    (NotFound("nothing"), 404, "invalid_request_error", "not_found"),
    (Conflict("Idempotency key payload mismatch"), 409, "invalid_request_error", "conflict"),
    (PayloadTooLarge("big"), 413, "invalid_request_error", "request_too_large"),
    (RateLimited("slow down", retry_after=2), 429, "requests", "rate_limit_exceeded"),
    (SpawnRefused("too many agents"), 429, "requests", "rate_limit_exceeded"),
    (BudgetExceeded("Daily budget exceeded"), 429, "insufficient_quota", "insufficient_quota"),
    (ChatFailed("timeout", "took too long", agent_id="a"), 504, "server_error", "timeout"),
    (ChatFailed("bad_request", "the provider refused", agent_id="a"), 400, "invalid_request_error", "bad_request"),
    (ApiError("boom"), 500, "server_error", "internal_error"),
])
def test_error_shapes(error, status, kind, code):
    got, body = OPENAI.error(error)
    assert got == status
    assert body == {"error": {"message": error.message, "type": kind, "param": None, "code": code}}


def test_a_validation_error_names_its_field_as_param():
    status, body = OPENAI.error(ValidationFailed([{"field": "messages[0].content", "message": "bad"}]))
    assert status == 400 and body["error"]["param"] == "messages[0].content" and body["error"]["code"] is None


def test_only_final_refusals_tell_the_sdk_not_to_retry():
    assert retry_headers(BudgetExceeded("spent")) == {"x-should-retry": "false"}
    assert retry_headers(Conflict("reused")) == {"x-should-retry": "false"}
    assert retry_headers(RateLimited("slow")) == {}
