"""The built-in providers speak the whole normalised conversation (plugin_api: messages of
text, tool-call and tool-result blocks; tools; tool choice; sampling fields) in their
upstream's format, against the fake upstream on loopback: what each sends is checked on
the recorded request bodies, what each answers on the CompletionResult."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from j1mskyd.plugin_api import (
    CompletionRequest,
    CompletionResult,
    Message,
    ProviderError,
    TextBlock,
    Tool,
    ToolCall,
    ToolChoice,
    ToolResult,
)
from j1mskyd.provider_http import HttpCaller, estimate_tokens, request_text
from tests.fakeupstream import FakeUpstream, fake_upstream  # noqa: F401 - fixture
from tests.test_providers import make, registry, session  # noqa: F401 - fixtures

WEATHER = Tool("get_weather", "The weather now", {"type": "object", "properties": {"city": {"type": "string"}},
                                                   "required": ["city"]})
CLOCK = Tool("clock")
CONVERSATION = (
    Message("user", (TextBlock("What is the weather in Paris?"),)),
    Message("assistant", (TextBlock("Let me look."), ToolCall("call_1", "get_weather", '{"city": "Paris"}'))),
    Message("user", (ToolResult("call_1", "18C, sunny"), TextBlock("And is that warm?"))),
)
CHAT = CompletionRequest(model="m-1", prompt="(flattened)", max_tokens=64, system="Be brief.", timeout=5,
                         messages=CONVERSATION, tools=(WEATHER, CLOCK), tool_choice=ToolChoice("auto"),
                         temperature=0.5, top_p=0.9, stop=("END", "STOP"), user="user-42")


def chat(**changes) -> CompletionRequest:
    return dataclasses.replace(CHAT, **changes)


def base(plugin: str, upstream: FakeUpstream) -> str:
    return upstream.url + "/v1" if plugin == "openai_compat" else upstream.url


async def collect(provider, request) -> tuple[list[str], CompletionResult]:
    items = [item async for item in provider.stream(request)]
    assert all(isinstance(i, str) for i in items[:-1]) and isinstance(items[-1], CompletionResult)
    return items[:-1], items[-1]


# -- what goes up --------------------------------------------------------------------------


async def test_openai_compat_sends_the_whole_conversation(registry, session, fake_upstream):
    provider = make(registry, session, "openai_compat", base("openai_compat", fake_upstream))
    await provider.complete(chat(response_format={"type": "json_object"}))
    [body] = fake_upstream.bodies
    assert body == {
        "model": "m-1", "max_tokens": 64,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
            {"role": "user", "content": "And is that warm?"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "The weather now",
                                              "parameters": WEATHER.parameters}},
            {"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}},
        ],
        "tool_choice": "auto", "temperature": 0.5, "top_p": 0.9, "stop": ["END", "STOP"],
        "response_format": {"type": "json_object"}, "user": "user-42",
    }


async def test_openai_compat_tool_results_and_text_keep_their_order(registry, session, fake_upstream):
    provider = make(registry, session, "openai_compat", base("openai_compat", fake_upstream))
    messages = (
        Message("assistant", (ToolCall("a", "clock"), ToolCall("b", "clock", ""))),
        Message("user", (TextBlock("before"), ToolResult("a", "noon"), ToolResult("b", "no clock", is_error=True),
                         TextBlock("after"))),
    )
    await provider.complete(chat(messages=messages, system=None, tools=(), tool_choice=None, temperature=None,
                                 top_p=None, stop=(), user=None))
    [body] = fake_upstream.bodies
    assert body["messages"] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "clock", "arguments": ""}}]},
        {"role": "user", "content": "before"},
        {"role": "tool", "tool_call_id": "a", "content": "noon"},
        {"role": "tool", "tool_call_id": "b", "content": "Error: no clock"},  # OpenAI has no is_error
        {"role": "user", "content": "after"},
    ]
    assert set(body) == {"model", "messages", "max_tokens"}  # unset fields are not sent


@pytest.mark.parametrize("choice, openai, anthropic", [
    (ToolChoice("auto"), "auto", {"type": "auto"}),
    (ToolChoice("none"), "none", {"type": "none"}),
    (ToolChoice("required"), "required", {"type": "any"}),
    (ToolChoice("tool", "clock"), {"type": "function", "function": {"name": "clock"}},
     {"type": "tool", "name": "clock"}),
])
async def test_tool_choice_in_each_format(registry, session, fake_upstream, choice, openai, anthropic):
    for plugin, expected in (("openai_compat", openai), ("anthropic", anthropic)):
        provider = make(registry, session, plugin, base(plugin, fake_upstream))
        await provider.complete(chat(tool_choice=choice))
        assert fake_upstream.bodies[-1]["tool_choice"] == expected


async def test_anthropic_sends_the_whole_conversation(registry, session, fake_upstream):
    provider = make(registry, session, "anthropic", base("anthropic", fake_upstream))
    # Two user messages in a row (an OpenAI client's tool message, then its next question):
    # Anthropic wants the roles to alternate, so they are merged into one.
    messages = CONVERSATION[:2] + (Message("user", (ToolResult("call_1", "18C, sunny", is_error=False),)),
                                   Message("user", (TextBlock("And is that warm?"),)))
    await provider.complete(chat(messages=messages, response_format={"type": "text"}))
    [body] = fake_upstream.bodies
    assert body == {
        "model": "m-1", "max_tokens": 64, "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C, sunny", "is_error": False},
                {"type": "text", "text": "And is that warm?"}]},
        ],
        "tools": [{"name": "get_weather", "description": "The weather now", "input_schema": WEATHER.parameters},
                  {"name": "clock", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "auto"}, "temperature": 0.5, "top_p": 0.9, "stop_sequences": ["END", "STOP"],
        "metadata": {"user_id": "user-42"},
    }


async def test_anthropic_tool_error_and_empty_arguments(registry, session, fake_upstream):
    provider = make(registry, session, "anthropic", base("anthropic", fake_upstream))
    messages = (Message("assistant", (ToolCall("t1", "clock", " "),)),
                Message("user", (ToolResult("t1", "clock is broken", is_error=True),)))
    await provider.complete(chat(messages=messages))
    assert fake_upstream.bodies[0]["messages"] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "clock", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "clock is broken", "is_error": True}]},
    ]


# -- what cannot be translated is refused, and nothing goes up ---------------------------


@pytest.mark.parametrize("plugin, changes, words", [
    ("anthropic", {"response_format": {"type": "json_object"}}, ["response_format", "json_object", "JSON mode"]),
    ("anthropic", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
     ["response_format", "json_schema"]),
    ("anthropic", {"temperature": 1.5}, ["temperature", "1.5", "0 to 1"]),
    ("anthropic", {"messages": (Message("assistant", (ToolCall("t9", "clock", "[1, 2]"),)),)},
     ["arguments", "t9", "not a JSON object"]),
    ("anthropic", {"messages": (Message("assistant", (ToolCall("t9", "clock", "{not json"),)),)},
     ["arguments", "t9", "not a JSON object"]),
    ("anthropic", {"tools": (), "tool_choice": ToolChoice("required")}, ["tool_choice", "needs tools"]),
    ("openai_compat", {"tools": (), "tool_choice": ToolChoice("required")}, ["tool_choice", "needs tools"]),
    ("anthropic", {"tool_choice": ToolChoice("tool", "missing")}, ["tool_choice", "'missing'"]),
    ("openai_compat", {"tool_choice": ToolChoice("tool", "missing")}, ["tool_choice", "'missing'"]),
])
@pytest.mark.parametrize("streamed", [False, True])
async def test_untranslatable_fields_are_refused_naming_them(registry, session, fake_upstream, plugin, changes,
                                                             words, streamed):
    provider = make(registry, session, plugin, base(plugin, fake_upstream))
    with pytest.raises(ProviderError) as info:
        if streamed:
            await collect(provider, chat(**changes))
        else:
            await provider.complete(chat(**changes))
    assert info.value.kind == "bad_request" and not info.value.retryable
    for word in words:
        assert word in info.value.message
    assert fake_upstream.calls == []


# -- what comes back -----------------------------------------------------------------------


@pytest.mark.parametrize("plugin", ["openai_compat", "anthropic"])
async def test_tool_call_answers(registry, session, fake_upstream, plugin):
    fake_upstream.tool_calls_next([("get_weather", '{"city": "Paris"}'), ("clock", "{}")], text="Looking.")
    provider = make(registry, session, plugin, base(plugin, fake_upstream))
    result = await provider.complete(chat())
    assert result.finish_reason == "tool_calls" and result.text == "Looking."
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [
        ("get_weather", {"city": "Paris"}), ("clock", {})]
    assert [c.id for c in result.tool_calls] == (
        ["call_fake_0", "call_fake_1"] if plugin == "openai_compat" else ["toolu_fake_0", "toolu_fake_1"])
    if plugin == "openai_compat":  # kept as the upstream's own text
        assert result.tool_calls[0].arguments == '{"city": "Paris"}'
    else:  # Anthropic's input object, written compactly
        assert result.tool_calls[0].arguments == '{"city":"Paris"}'
    assert (result.input_tokens, result.output_tokens) == (11, 7)


async def test_tool_round_trips_between_the_formats(registry, session, fake_upstream):
    """A tool call an Anthropic model asked for goes back to an OpenAI-format upstream with its
    result, and the reverse: the arguments survive both ways."""
    openai = make(registry, session, "openai_compat", base("openai_compat", fake_upstream))
    anthropic = make(registry, session, "anthropic", base("anthropic", fake_upstream))
    question = Message("user", (TextBlock("Weather in Oslo?"),))
    for first, second in ((anthropic, openai), (openai, anthropic)):
        fake_upstream.tool_calls_next([("get_weather", '{"city": "Oslo", "units": ["C"]}')])
        asked = await first.complete(chat(messages=(question,)))
        [call] = asked.tool_calls
        follow_up = (question, Message("assistant", asked.tool_calls),
                     Message("user", (ToolResult(call.id, "-3C"),)))
        answer = await second.complete(chat(messages=follow_up))
        assert answer.text == "fake reply" and answer.finish_reason == "stop"
        sent = fake_upstream.bodies[-1]["messages"]
        if second is openai:  # after the system message
            assert sent[2]["tool_calls"][0]["id"] == call.id
            assert json.loads(sent[2]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo", "units": ["C"]}
            assert sent[3] == {"role": "tool", "tool_call_id": call.id, "content": "-3C"}
        else:
            assert sent[1]["content"] == [{"type": "tool_use", "id": call.id, "name": "get_weather",
                                           "input": {"city": "Oslo", "units": ["C"]}}]
            assert sent[2]["content"][0]["tool_use_id"] == call.id


@pytest.mark.parametrize("wire, ours", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("model_context_window_exceeded", "length"), ("pause_turn", "pause_turn"),
])
@pytest.mark.parametrize("streamed", [False, True])
async def test_anthropic_stop_reasons(registry, session, fake_upstream, wire, ours, streamed):
    fake_upstream.reply_next(text="x", stop_reason=wire)
    provider = make(registry, session, "anthropic", base("anthropic", fake_upstream))
    result = (await collect(provider, chat()))[1] if streamed else await provider.complete(chat())
    assert result.finish_reason == ours


@pytest.mark.parametrize("wire", ["stop", "length", "content_filter"])
@pytest.mark.parametrize("streamed", [False, True])
async def test_openai_finish_reasons_pass_through(registry, session, fake_upstream, wire, streamed):
    fake_upstream.reply_next(text="x", stop_reason=wire)
    provider = make(registry, session, "openai_compat", base("openai_compat", fake_upstream))
    result = (await collect(provider, chat()))[1] if streamed else await provider.complete(chat())
    assert result.finish_reason == wire


async def test_openai_tool_calls_said_stop_still_finish_as_tool_calls(registry, session, fake_upstream):
    # Some OpenAI-compatible servers answer tool calls with finish_reason "stop".
    fake_upstream.reply_next(text="", tool_calls=[("clock", "{}")], stop_reason="stop")
    provider = make(registry, session, "openai_compat", base("openai_compat", fake_upstream))
    result = await provider.complete(chat())
    assert result.finish_reason == "tool_calls" and result.tool_calls == (ToolCall("call_fake_0", "clock", "{}"),)


# -- streaming -------------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", ["openai_compat", "anthropic"])
async def test_stream_with_tool_calls(registry, session, fake_upstream, plugin):
    fake_upstream.tool_calls_next([("get_weather", '{"city": "Paris", "days": 3}'), ("clock", "{}")],
                                  text="Let me look that up.")
    provider = make(registry, session, plugin, base(plugin, fake_upstream))
    deltas, result = await collect(provider, chat())
    assert deltas == ["Let", " me", " look", " that", " up."]
    assert result.text == "Let me look that up." and result.finish_reason == "tool_calls"
    prefix = "call_fake_" if plugin == "openai_compat" else "toolu_fake_"
    # Streamed arguments are the upstream's own text, put together from its pieces.
    assert result.tool_calls == (ToolCall(prefix + "0", "get_weather", '{"city": "Paris", "days": 3}'),
                                 ToolCall(prefix + "1", "clock", "{}"))
    assert (result.input_tokens, result.output_tokens) == (11, 7)
    body = fake_upstream.bodies[0]
    assert body["stream"] is True and body["tools"] and body["temperature"] == 0.5
    if plugin == "openai_compat":
        assert body["stream_options"] == {"include_usage": True}


async def test_anthropic_stream_of_an_agent_call(registry, session, fake_upstream):
    fake_upstream.reply_text = "one two three"
    provider = make(registry, session, "anthropic", fake_upstream.url)
    request = CompletionRequest(model="m-1", prompt="Write a haiku", max_tokens=64, system="Be brief.", timeout=5)
    deltas, result = await collect(provider, request)
    assert deltas == ["one", " two", " three"]
    assert (result.text, result.finish_reason, result.tool_calls) == ("one two three", "stop", ())
    assert (result.input_tokens, result.output_tokens, result.model) == (11, 7, "m-1")
    assert fake_upstream.bodies == [{"model": "m-1", "max_tokens": 64, "system": "Be brief.", "stream": True,
                                     "messages": [{"role": "user", "content": "Write a haiku"}]}]


@pytest.mark.parametrize("plugin", ["openai_compat", "anthropic"])
async def test_stream_failing_before_the_first_byte(registry, session, fake_upstream, plugin):
    fake_upstream.fail_next(1, 503, retry_after=2)
    provider = make(registry, session, plugin, base(plugin, fake_upstream))
    seen = []
    with pytest.raises(ProviderError) as info:
        async for item in provider.stream(chat()):
            seen.append(item)
    assert seen == []
    assert (info.value.kind, info.value.status, info.value.retry_after, info.value.usage) == (
        "server_error", 503, 2.0, None)


async def test_anthropic_stream_dying_midway_bills_what_was_seen(registry, session, fake_upstream):
    fake_upstream.reply_text = "alpha beta gamma delta epsilon"
    fake_upstream.die_after_next(3)
    provider = make(registry, session, "anthropic", fake_upstream.url)
    seen = []
    with pytest.raises(ProviderError) as info:
        async for item in provider.stream(chat()):
            seen.append(item)
    assert seen == ["alpha", " beta", " gamma"]
    err = info.value
    assert err.kind == "connection" and "broke off" in err.message
    # message_start reported 11 input tokens (and 1 output); the streamed text is more than that.
    assert err.usage == (11, estimate_tokens("alpha beta gamma"))


async def test_anthropic_stream_error_event_midway(registry, session, fake_upstream):
    fake_upstream.die_after_next(1, error="overloaded_error")
    provider = make(registry, session, "anthropic", fake_upstream.url)
    seen = []
    with pytest.raises(ProviderError) as info:
        async for item in provider.stream(chat()):
            seen.append(item)
    assert seen == ["fake"]
    assert (info.value.kind, info.value.usage) == ("server_error", (11, 1))
    assert "overloaded_error" in info.value.message


async def test_openai_stream_dying_midway(registry, session, fake_upstream):
    fake_upstream.reply_text = "alpha beta gamma"
    fake_upstream.die_after_next(2)
    provider = make(registry, session, "openai_compat", base("openai_compat", fake_upstream))
    seen = []
    with pytest.raises(ProviderError) as info:
        async for item in provider.stream(chat()):
            seen.append(item)
    assert seen == ["alpha", " beta"]
    # OpenAI sends usage only at the end: there is none to put on the error; the runtime
    # counts what was used from the chunks.
    assert info.value.kind == "connection" and info.value.usage is None


async def test_openai_stream_error_chunk_midway(registry, session, fake_upstream):
    fake_upstream.die_after_next(1, error="rate_limit_exceeded")
    provider = make(registry, session, "openai_compat", base("openai_compat", fake_upstream))
    with pytest.raises(ProviderError) as info:
        [item async for item in provider.stream(chat())]
    assert info.value.kind == "rate_limited" and "fake upstream died" in info.value.message


def sse(*frames: str) -> str:
    return "".join(f"{frame}\n\n" for frame in frames)


@pytest.mark.parametrize("plugin, body", [
    ("anthropic", sse('event: message_start\ndata: {"type":"message_start","message":{"usage":'
                      '{"input_tokens":5,"output_tokens":1}}}',
                      'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                      '"delta":{"type":"text_delta","text":"partial answer"}}')),
    ("openai_compat", sse('data: {"choices":[{"index":0,"delta":{"content":"partial answer"}}]}')),
])
async def test_stream_ending_cleanly_before_its_end_marker_died(registry, session, fake_upstream, plugin, body):
    """The connection closed in order, but the answer had not ended (no message_stop; no
    [DONE] nor finish reason): that is a death, not an answer."""
    fake_upstream.fail_next(1, 200, body=body)
    provider = make(registry, session, plugin, base(plugin, fake_upstream))
    with pytest.raises(ProviderError) as info:
        [item async for item in provider.stream(chat())]
    assert info.value.kind == "connection"
    expected = (5, estimate_tokens("partial answer")) if plugin == "anthropic" else None
    assert info.value.usage == expected


async def test_openai_stream_without_usage_is_estimated(registry, session, fake_upstream):
    fake_upstream.fail_next(1, 200, body=sse(
        'data: {"choices":[{"index":0,"delta":{"content":"twelve chars"}}]}',
        'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}', "data: [DONE]"))
    provider = make(registry, session, "openai_compat", base("openai_compat", fake_upstream))
    deltas, result = await collect(provider, chat())
    assert deltas == ["twelve chars"] and result.output_tokens == 3
    assert result.input_tokens == estimate_tokens(request_text(chat()))


async def test_sse_events_are_parsed_as_the_standard_says(session, fake_upstream):
    """Event names, several data lines joined, CRLF line ends, comments skipped, an event
    without its closing blank line at the end of the stream still delivered."""
    fake_upstream.fail_next(1, 200, body=(
        ": a comment\r\n\r\nevent: first\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n"
        "data: {\"b\": 2}\n\nevent: last\ndata: [3]"))
    http = HttpCaller(session, "t", None)
    events = [e async for e in http.post_sse(fake_upstream.url + "/v1/messages", {}, {}, 5)]
    assert [(e.name, e.data, e.done) for e in events] == [
        ("first", {"a": 1}, False), ("message", {"b": 2}, False), ("last", [3], False)]
    fake_upstream.fail_next(1, 200, body=sse('data: {"x": 1}', "data: [DONE]", 'data: {"after": true}'))
    events = [e async for e in http.post_sse(fake_upstream.url + "/v1/messages", {}, {}, 5)]
    assert [(e.data, e.done) for e in events] == [({"x": 1}, False), (None, True)]


# -- offline ----------------------------------------------------------------------------------


async def test_offline_answers_from_the_conversation(registry):
    provider = make(registry, None, "offline")
    a = await provider.complete(CHAT)
    assert a.text.startswith("[offline:m-1] And is that warm? tool call_1: 18C, sunny (id ")
    assert a == await provider.complete(CHAT)  # the same request, the same answer
    # Sampling fields are accepted and ignored: the same text without them.
    assert (await provider.complete(chat(temperature=None, top_p=None, stop=(), user=None,
                                         response_format={"type": "json_object"}))).text == a.text
    other = await provider.complete(chat(messages=CONVERSATION[:2] + (
        Message("user", (ToolResult("call_1", "-40C, blizzard"),)),)))
    assert "tool call_1: -40C, blizzard" in other.text and other.text != a.text
    assert a.input_tokens == estimate_tokens(request_text(CHAT)) and a.tool_calls == ()
    assert a.finish_reason == "stop"


@pytest.mark.parametrize("choice, name", [(ToolChoice("required"), "get_weather"),
                                          (ToolChoice("tool", "clock"), "clock")])
async def test_offline_forced_tool_call(registry, choice, name):
    provider = make(registry, None, "offline")
    result = await provider.complete(chat(tool_choice=choice))
    [call] = result.tool_calls
    assert (call.name, call.arguments, result.finish_reason, result.text) == (name, "{}", "tool_calls", "")
    assert call.id.startswith("call_") and result == await provider.complete(chat(tool_choice=choice))
    # auto and none answer in text, as does a forced choice with no tools to call.
    for text_choice in (ToolChoice("auto"), ToolChoice("none")):
        assert (await provider.complete(chat(tool_choice=text_choice))).tool_calls == ()
    assert (await provider.complete(chat(tool_choice=choice, tools=()))).tool_calls == ()


async def test_offline_agent_call_text_is_unchanged(registry):
    """An agent's call (prompt, no messages) answers exactly as before the conversation
    fields existed: the id hashes model, system text and prompt only."""
    provider = make(registry, None, "offline")
    request = CompletionRequest(model="m", prompt="Summarise the logs", system="sys")
    digest = hashlib.sha256(b"m\0sys\0Summarise the logs").hexdigest()[:12]
    assert (await provider.complete(request)).text == f"[offline:m] Summarise the logs (id {digest})"

