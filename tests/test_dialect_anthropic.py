"""The Anthropic Messages dialect, pure: parse, render, the stream's events, errors, and a type
fuzz over every field of a full request (each JSON type in each place is a 400 naming it,
never another exception)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from j1mskyd.budget import BudgetExceeded, SpawnRefused
from j1mskyd.chat_request import ChatFailed, ChatOutcome
from j1mskyd.config import ModelConfig
from j1mskyd.dialects import Dialect, ModelNotFound
from j1mskyd.dialects.anthropic_messages import (
    DIALECT, SPEND_LIMIT_CODE, estimate_input_tokens, parse, parse_count, stop_reason, tool_input)
from j1mskyd.errors import ApiError, Forbidden, NotFound, PayloadTooLarge, RateLimited, Unauthorized, ValidationFailed
from j1mskyd.plugin_api import Message, TextBlock, Tool, ToolCall, ToolChoice, ToolResult
from j1mskyd.provider_http import estimate_tokens

MODELS = {alias: ModelConfig(alias=alias, provider="offline", upstream=f"up-{alias}", input_per_1k=0.001,
                             output_per_1k=0.002, blended_per_1k=0.0015)
          for alias in ("sonnet", "k2p5")}


def body(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "sonnet", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def refused(payload: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        parse(payload, MODELS)
    return info.value


def field_of(exc: ValidationFailed) -> str:
    return exc.extra["details"][0]["field"]


# A request using every field and block this dialect reads.
FULL: dict[str, Any] = {
    "model": "sonnet",
    "max_tokens": 256,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
               {"type": "text", "text": "Answer in English."}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo", "days": [1, 2]}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "-3 C"}],
             "is_error": False},
            {"type": "text", "text": "And tomorrow?"}]},
        {"role": "assistant", "content": "The"},
    ],
    "stop_sequences": ["END"],
    "temperature": 0.5,
    "top_p": 0.9,
    "tools": [{"name": "weather", "description": "Weather by city",
               "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": False},
    "metadata": {"user_id": "u-42"},
    "stream": True,
    "thinking": {"type": "disabled"},
    "service_tier": "auto",
    "cache_control": {"type": "ephemeral"},
}


def test_dialect_implements_the_protocol() -> None:
    dialect: Dialect = DIALECT
    assert dialect.name == "anthropic"


def test_parse_full_request() -> None:
    req = parse(copy.deepcopy(FULL), MODELS)
    assert req.model == "sonnet" and req.max_tokens == 256 and req.dialect == "anthropic" and req.stream is True
    assert req.system == "Be brief.\n\nAnswer in English."
    assert req.messages == (
        Message("user", (TextBlock("Weather in Oslo?"),)),
        Message("assistant", (TextBlock("Let me look."),
                              ToolCall("toolu_1", "weather", '{"city":"Oslo","days":[1,2]}'))),
        Message("user", (ToolResult("toolu_1", "-3 C", False), TextBlock("And tomorrow?"))),
        Message("assistant", (TextBlock("The"),)),   # a prefill: the final assistant turn goes through
    )
    assert req.stop == ("END",) and req.temperature == 0.5 and req.top_p == 0.9
    assert req.tools == (Tool("weather", "Weather by city",
                              {"type": "object", "properties": {"city": {"type": "string"}}}),)
    assert req.tool_choice == ToolChoice("auto")
    assert req.user == "u-42" and req.response_format is None


def test_parse_minimal_defaults() -> None:
    req = parse(body(), MODELS)
    assert req.messages == (Message("user", (TextBlock("Hi"),)),)
    assert (req.system, req.temperature, req.top_p, req.stop, req.tools, req.tool_choice, req.user, req.stream) == \
        (None, None, None, (), (), None, None, False)


def test_nulls_are_left_out() -> None:
    req = parse(body(system=None, temperature=None, top_p=None, top_k=None, stop_sequences=None, tools=None,
                     tool_choice=None, metadata=None, stream=None, thinking=None, service_tier=None), MODELS)
    assert req.temperature is None and req.stream is False


def test_consecutive_turns_merge_and_an_empty_final_assistant_turn_is_dropped() -> None:
    req = parse(body(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text",
                                                                                                "text": "b"}]},
                               {"role": "assistant", "content": ""}]), MODELS)
    assert req.messages == (Message("user", (TextBlock("a"), TextBlock("b"))),)


def test_tool_result_forms() -> None:
    msgs = [{"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "t", "input": {}},
                                              {"type": "tool_use", "id": "b", "name": "t", "input": {}},
                                              {"type": "tool_use", "id": "c", "name": "t", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": "text"},
                                         {"type": "tool_result", "tool_use_id": "b", "is_error": True},
                                         {"type": "tool_result", "tool_use_id": "c",
                                          "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]}]}]
    req = parse(body(messages=msgs), MODELS)
    assert req.messages[2].content == (ToolResult("a", "text"), ToolResult("b", "", True), ToolResult("c", "x\n\ny"))


@pytest.mark.parametrize("choice, expected", [
    ({"type": "auto"}, ToolChoice("auto")), ({"type": "any"}, ToolChoice("required")),
    ({"type": "none"}, ToolChoice("none")), ({"type": "tool", "name": "t"}, ToolChoice("tool", "t"))])
def test_tool_choices(choice: dict[str, Any], expected: ToolChoice) -> None:
    tools = [{"name": "t", "input_schema": {"type": "object"}}]
    assert parse(body(tools=tools, tool_choice=choice), MODELS).tool_choice == expected


TOOLS = [{"name": "t", "input_schema": {"type": "object"}}]
CALL = {"role": "assistant", "content": [{"type": "tool_use", "id": "x", "name": "t", "input": {}}]}


@pytest.mark.parametrize("fields, field, words", [
    ({"max_tokens": ...}, "max_tokens", "field required"),
    ({"max_tokens": 0}, "max_tokens", "at least 1"),
    ({"max_tokens": 10.0}, "max_tokens", "integer"),
    ({"max_tokens": True}, "max_tokens", "boolean"),
    ({"model": ...}, "model", "string"),
    ({"model": ""}, "model", "empty"),
    ({"messages": []}, "messages", "at least one"),
    ({"messages": [{"role": "assistant", "content": ""}]}, "messages", "at least one message with content"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role", "top-level system"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},
     "messages.0.content", "empty"),
    ({"messages": [{"role": "user", "content": []}]}, "messages.0.content", "empty"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}, "messages.0.content.0.text",
     "empty"),
    ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages.0.name", "not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "messages.0.content.0.type",
     "'image' blocks"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
     "messages.0.content.0.type", "'document' blocks"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hm", "signature": "s"}]}]}, "messages.1.content.0.type", "'thinking'"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "x", "name": "t", "input": {}}]}]},
     "messages.0.content.0.type", "assistant messages"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "x", "content": "r"}]}]}, "messages.1.content.0.type",
     "user messages"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "r"}]}]},
     "messages", "unexpected tool_use_id"),
    ({"messages": [{"role": "user", "content": "x"}, CALL, {"role": "user", "content": "no result"}]},
     "messages", "without tool_result"),
    ({"messages": [{"role": "user", "content": "x"}, CALL, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "x", "content": [{"type": "image", "source": {}}]}]}]},
     "messages.2.content.0.content.0.type", "'image' blocks"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "x", "name": "t", "input": "{}"}]}]}, "messages.1.content.0.input", "object"),
    ({"system": [{"type": "image"}]}, "system.0.type", "'image' blocks"),
    ({"system": 5}, "system", "string or an array"),
    ({"temperature": 1.5}, "temperature", "between 0 and 1"),
    ({"temperature": float("nan")}, "temperature", "between"),
    ({"top_p": -0.1}, "top_p", "between 0 and 1"),
    ({"top_k": 40}, "top_k", "top-k"),
    ({"top_k": "40"}, "top_k", "integer"),
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking", "extended thinking"),
    ({"thinking": {"type": "adaptive"}}, "thinking", "extended thinking"),
    ({"stop_sequences": ["  "]}, "stop_sequences.0", "non-whitespace"),
    ({"stop_sequences": "END"}, "stop_sequences", "array"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type",
     "server tool 'web_search_20250305'"),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools.0.type", "server tool 'bash_20250124'"),
    ({"tools": [{"name": "t"}]}, "tools.0.input_schema", "object"),
    ({"tools": [{"name": "t", "input_schema": {"type": "string"}}]}, "tools.0.input_schema.type", "'object'"),
    ({"tools": [{"name": "bad name", "input_schema": {"type": "object"}}]}, "tools.0.name", "letters"),
    ({"tools": [{"name": "x" * 65, "input_schema": {"type": "object"}}]}, "tools.0.name", "1 to 64"),
    ({"tools": TOOLS * 2}, "tools.1.name", "unique"),
    ({"tools": TOOLS, "tool_choice": {"type": "tool", "name": "other"}}, "tool_choice.name", "no tool named"),
    ({"tools": TOOLS, "tool_choice": {"type": "tool"}}, "tool_choice.name", "string"),
    ({"tools": TOOLS, "tool_choice": {"type": "required"}}, "tool_choice.type", "one of"),
    ({"tool_choice": {"type": "any"}}, "tool_choice", "while providing tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
     "tool_choice.disable_parallel_tool_use", "not supported"),
    ({"metadata": {"user_id": "u", "session": "s"}}, "metadata.session", "not supported"),
    ({"metadata": {"user_id": "u" * 257}}, "metadata.user_id", "at most 256"),
    ({"stream": "yes"}, "stream", "boolean"),
    ({"service_tier": "priority"}, "service_tier", "'auto' or 'standard_only'"),
    ({"container": "c1"}, "container", "not supported"),
    ({"mcp_servers": []}, "mcp_servers", "not supported"),
    ({"output_config": {}}, "output_config", "not supported"),
])
def test_refusals_name_the_field(fields: dict[str, Any], field: str, words: str) -> None:
    exc = refused(body(**fields))
    assert field_of(exc) == field
    assert exc.message.startswith(f"{field}: ") and words in exc.message
    status, answer = DIALECT.error(exc)
    assert status == 400 and answer == {"type": "error", "error": {"type": "invalid_request_error",
                                                                   "message": exc.message}}


@pytest.mark.parametrize("payload", [[], "x", 3, None, True])
def test_body_not_an_object(payload: Any) -> None:
    assert field_of(refused(payload)) == "body"


def test_unknown_model_is_404_after_the_rest_is_checked() -> None:
    with pytest.raises(NotFound) as info:
        parse(body(model="gpt-9"), MODELS)
    assert "'gpt-9'" in info.value.message and "k2p5, sonnet" in info.value.message
    assert isinstance(info.value, ModelNotFound)
    assert DIALECT.error(info.value) == (404, {"type": "error", "error": {"type": "not_found_error",
                                                                          "message": info.value.message}})
    assert field_of(refused(body(model="gpt-9", temperature=3))) == "temperature"


# -- the type fuzz --------------------------------------------------------------------------------

SAMPLES: list[Any] = [None, True, False, 0, -1, 1.5, "", "x", [], [1], {}, {"a": 1}]


def paths(value: Any, prefix: str = "") -> list[tuple[str, list[Any]]]:
    """Every place in ``value``: (dotted name, key path)."""
    found: list[tuple[str, list[Any]]] = []

    def walk(item: Any, name: str, keys: list[Any]) -> None:
        if keys:
            found.append((name, keys))
        children = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, sub in children:
            walk(sub, f"{name}.{key}" if name else str(key), keys + [key])

    walk(value, prefix, [])
    return found


def replaced(value: Any, keys: list[Any], new: Any) -> Any:
    copied = copy.deepcopy(value)
    target = copied
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = new
    return copied


def json_kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value is None or "bool")
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def typed(name: str) -> bool:
    """A place with one JSON type (not free-form data such as a tool's input or schema, not a
    field that takes a string or an array)."""
    parts = name.split(".")
    free = {"input", "input_schema", "cache_control"} & set(parts[:-1])
    union = name == "system" or (parts[-1] == "content" and parts[0] == "messages")
    return not free and not union


@pytest.mark.parametrize("name, keys", paths(FULL), ids=[n for n, _ in paths(FULL)])
def test_type_fuzz_every_field(name: str, keys: list[Any]) -> None:
    original = FULL
    for key in keys:
        original = original[key]
    for sample in SAMPLES:
        payload = replaced(FULL, keys, sample)
        try:
            parse(payload, MODELS)
            # Accepted: null (left out), a value of the field's own type, or free-form data.
            assert sample is None or json_kind(sample) == json_kind(original) or not typed(name), (name, sample)
        except ValidationFailed as exc:
            field = field_of(exc)
            # The error names this place, a place inside it, or (the tool pairing, which
            # spans turns) the messages as a whole.
            assert field.startswith(name) or name.startswith(field), (name, sample, field)
            assert DIALECT.error(exc)[0] == 400
        except NotFound:
            assert name == "model", (name, sample)


@pytest.mark.parametrize("name, keys", paths(FULL), ids=[n for n, _ in paths(FULL)])
def test_type_fuzz_count_tokens(name: str, keys: list[Any]) -> None:
    counted = {k: v for k, v in FULL.items() if k in ("model", "system", "messages", "tools", "tool_choice")}
    if keys[0] not in counted:
        return
    for sample in SAMPLES:
        try:
            parse_count(replaced(counted, keys, sample), MODELS)
        except ValidationFailed as exc:
            assert field_of(exc).startswith(name) or name.startswith(field_of(exc)), (name, sample)
        except NotFound:
            assert name == "model"


# -- count_tokens ---------------------------------------------------------------------------------

def test_count_tokens_takes_no_generation_fields() -> None:
    for field, value in (("max_tokens", 10), ("stream", True), ("temperature", 0.5), ("metadata", {})):
        with pytest.raises(ValidationFailed) as info:
            parse_count({"model": "sonnet", "messages": [{"role": "user", "content": "x"}], field: value}, MODELS)
        assert field_of(info.value) == field
    with pytest.raises(NotFound):
        parse_count({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, MODELS)


def test_estimate_counts_all_the_text_sent_with_the_providers_estimate() -> None:
    req = parse_count({k: v for k, v in FULL.items() if k in ("model", "system", "messages", "tools")}, MODELS)
    text = ("Be brief.\n\nAnswer in English." "Weather in Oslo?" "Let me look." "weather" '{"city":"Oslo","days":[1,2]}'
            "-3 C" "And tomorrow?" "The"
            '["weather","Weather by city",{"type":"object","properties":{"city":{"type":"string"}}}]')
    assert estimate_input_tokens(req) == estimate_tokens(text)
    short = parse_count({"model": "sonnet", "messages": [{"role": "user", "content": "x" * 400}]}, MODELS)
    assert estimate_input_tokens(short) == 100


# -- render -----------------------------------------------------------------------------------------

def outcome(**fields: Any) -> ChatOutcome:
    base: dict[str, Any] = dict(agent_id="agent_abc", model="sonnet", served_model="k2p5", provider="offline",
                                upstream_model="up-k2p5", text="Hello", tool_calls=(), finish_reason="stop",
                                input_tokens=12, output_tokens=3, cost=0.0, created_at=1_764_000_000.0)
    base.update(fields)
    return ChatOutcome(**base)


def test_render_text() -> None:
    assert DIALECT.render(outcome()) == {
        "id": "msg_agent_abc", "type": "message", "role": "assistant", "model": "sonnet",
        "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 3, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0}}


def test_render_tool_calls() -> None:
    answer = DIALECT.render(outcome(text="", finish_reason="tool_calls", tool_calls=(
        ToolCall("toolu_9", "weather", '{"city": "Oslo"}'), ToolCall("call_2", "now", ""))))
    assert answer["content"] == [{"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {"city": "Oslo"}},
                                 {"type": "tool_use", "id": "call_2", "name": "now", "input": {}}]
    assert answer["stop_reason"] == "tool_use"


@pytest.mark.parametrize("finish, calls, expected", [
    ("stop", False, "end_turn"), ("length", False, "max_tokens"), ("tool_calls", True, "tool_use"),
    ("content_filter", False, "refusal"), ("stop", True, "tool_use"), ("length", True, "max_tokens"),
    ("stop_sequence", False, "stop_sequence"), ("end_turn", False, "end_turn"), ("weird", False, "end_turn")])
def test_stop_reasons(finish: str, calls: bool, expected: str) -> None:
    tool_calls = (ToolCall("a", "t", "{}"),) if calls else ()
    assert stop_reason(outcome(finish_reason=finish, tool_calls=tool_calls)) == expected


@pytest.mark.parametrize("arguments, expected", [
    ('{"a": 1}', {"a": 1}), ("", {}), ("  ", {}), ('{"a": ', {"_raw_arguments": '{"a": '}),
    ("[1]", {"_raw_arguments": "[1]"})])
def test_tool_input(arguments: str, expected: dict[str, Any]) -> None:
    assert tool_input(ToolCall("a", "t", arguments)) == expected


def test_round_trip_keeps_the_models_arguments() -> None:
    """A rendered tool_use sent back as history gives the same ToolCall arguments (compact JSON)."""
    answer = DIALECT.render(outcome(text="", tool_calls=(ToolCall("toolu_1", "t", '{"q":"é","n":[1,2]}'),)))
    req = parse(body(tools=TOOLS, messages=[{"role": "user", "content": "x"},
                                            {"role": "assistant", "content": answer["content"]},
                                            {"role": "user", "content": [{"type": "tool_result",
                                                                          "tool_use_id": "toolu_1",
                                                                          "content": "ok"}]}]), MODELS)
    assert req.messages[1].content == (ToolCall("toolu_1", "t", '{"q":"é","n":[1,2]}'),)


# -- the stream -------------------------------------------------------------------------------------

def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        if not frame:
            continue
        lines = frame.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: ") and len(lines) == 2, frame
        name, data = lines[0][7:], json.loads(lines[1][6:])
        assert data["type"] == name
        out.append((name, data))
    assert raw.endswith(b"\n\n")
    return out


def stream_request() -> Any:
    return parse(body(messages=[{"role": "user", "content": "x" * 40}]), MODELS)


def test_stream_text() -> None:
    enc = DIALECT.encoder(stream_request(), "agent_abc", 1.0)
    raw = enc.start() + enc.delta("Hel") + enc.delta("") + enc.delta("lo") + enc.finish(outcome(input_tokens=11))
    got = events(raw)
    assert [n for n, _ in got] == ["message_start", "content_block_start", "content_block_delta",
                                   "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    start = got[0][1]["message"]
    assert start["id"] == "msg_agent_abc" and start["model"] == "sonnet" and start["content"] == []
    assert start["stop_reason"] is None and start["usage"]["input_tokens"] == 10 and start["usage"]["output_tokens"] == 0
    assert got[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert [d["delta"] for _, d in got[2:4]] == [{"type": "text_delta", "text": "Hel"},
                                                 {"type": "text_delta", "text": "lo"}]
    assert got[4][1] == {"type": "content_block_stop", "index": 0}
    assert got[5][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert got[5][1]["usage"]["input_tokens"] == 11 and got[5][1]["usage"]["output_tokens"] == 3


def test_stream_tool_calls_follow_the_text_block() -> None:
    enc = DIALECT.encoder(stream_request(), "agent_abc", 1.0)
    calls = (ToolCall("toolu_1", "weather", '{"city":"Oslo"}'), ToolCall("toolu_2", "now", ""))
    got = events(enc.start() + enc.delta("Looking.") + enc.finish(outcome(text="Looking.", tool_calls=calls,
                                                                          finish_reason="tool_calls")))
    names = [n for n, _ in got]
    assert names == ["message_start", "content_block_start", "content_block_delta", "content_block_stop"] + \
        ["content_block_start", "content_block_delta", "content_block_stop"] * 2 + ["message_delta", "message_stop"]
    assert got[4][1] == {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}}
    assert got[5][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Oslo"}'}
    assert got[7][1]["index"] == 2 and got[8][1]["delta"]["partial_json"] == "{}"
    assert got[10][1]["delta"]["stop_reason"] == "tool_use"


def test_stream_without_deltas_still_carries_the_text() -> None:
    """No delta came (the encoder started at the end): the outcome's text is its block."""
    enc = DIALECT.encoder(stream_request(), "agent_abc", 1.0)
    got = events(enc.finish(outcome(text="All at once")))
    assert [n for n, _ in got][:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert got[2][1]["delta"]["text"] == "All at once"


def test_stream_fail_is_an_error_event() -> None:
    enc = DIALECT.encoder(stream_request(), "agent_abc", 1.0)
    raw = enc.start() + enc.delta("par") + enc.fail(ChatFailed("upstream", "the provider died", agent_id="a"))
    got = events(raw)
    assert got[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "the provider died"}})


# -- errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("error, status, kind", [
    (ValidationFailed([{"field": "x", "message": "x: bad"}]), 400, "invalid_request_error"),
    (Unauthorized("no key"), 401, "authentication_error"),
    (Forbidden("no scope"), 403, "permission_error"),
    (NotFound("nope"), 404, "not_found_error"),
    (PayloadTooLarge("big"), 413, "request_too_large"),
    (RateLimited("slow down"), 429, "rate_limit_error"),
    (SpawnRefused("too many"), 429, "rate_limit_error"),
    (ChatFailed("bad_request", "provider refused", agent_id="a"), 400, "invalid_request_error"),
    (ChatFailed("upstream", "all failed", agent_id="a"), 502, "api_error"),
    (ChatFailed("timeout", "slow", agent_id="a"), 504, "timeout_error"),
    (ChatFailed("interrupted", "stopping", agent_id="a"), 503, "api_error"),
    (ApiError("boom"), 500, "api_error"),
])
def test_errors(error: ApiError, status: int, kind: str) -> None:
    assert DIALECT.error(error) == (status, {"type": "error", "error": {"type": kind, "message": error.message}})


def test_spent_budget_is_a_rate_limit_with_the_spend_limit_code() -> None:
    error = BudgetExceeded("Daily budget of $1 would be exceeded")
    assert DIALECT.error(error) == (429, {"type": "error", "error": {
        "type": "rate_limit_error", "message": error.message, "details": {"error_code": SPEND_LIMIT_CODE}}})
