"""The fake upstream itself speaks both wire formats as the real APIs do, so the provider and
front-door tests built on it test something real: tool calls, Anthropic's named stream
events, slow streams, failures before the first byte and deaths mid-stream."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.fakeupstream import FakeUpstream, fake_upstream  # noqa: F401 - fixture

OPENAI = ("/v1/chat/completions", {})
ANTHROPIC = ("/v1/messages", {"x-api-key": "k", "anthropic-version": "2023-06-01"})


async def read_sse(resp: aiohttp.ClientResponse) -> list[tuple[str | None, object]]:
    """(event name or None, decoded data) per SSE frame."""
    frames, name = [], None
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
            frames.append((name, data if data == "[DONE]" else json.loads(data)))
            name = None
    return frames


async def test_tool_call_replies_in_both_formats(fake_upstream):
    fake_upstream.tool_calls_next([("get_weather", '{"city": "Paris"}')], text="Let me look.", n=2)
    async with aiohttp.ClientSession() as session:
        async with session.post(fake_upstream.url + OPENAI[0], json={"model": "m"}) as resp:
            openai = await resp.json()
        async with session.post(fake_upstream.url + ANTHROPIC[0], json={"model": "m"}, headers=ANTHROPIC[1]) as resp:
            anthropic = await resp.json()
    choice = openai["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look."
    assert choice["message"]["tool_calls"] == [{"id": "call_fake_0", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert anthropic["stop_reason"] == "tool_use"
    assert anthropic["content"] == [{"type": "text", "text": "Let me look."}, {
        "type": "tool_use", "id": "toolu_fake_0", "name": "get_weather", "input": {"city": "Paris"}}]
    assert fake_upstream.bodies == [{"model": "m"}, {"model": "m"}]
    # The script is used up: the next answer is plain again.
    async with aiohttp.ClientSession() as session:
        async with session.post(fake_upstream.url + OPENAI[0], json={"model": "m"}) as resp:
            assert (await resp.json())["choices"][0]["finish_reason"] == "stop"


async def test_anthropic_stream_has_the_real_event_sequence(fake_upstream):
    fake_upstream.tool_calls_next([("lookup", '{"q": "tides at dawn"}')], text="one two")
    async with aiohttp.ClientSession() as session:
        async with session.post(fake_upstream.url + ANTHROPIC[0], json={"model": "m", "stream": True},
                                headers=ANTHROPIC[1]) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            frames = await read_sse(resp)
    names = [name for name, _ in frames]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in frames)  # every event: line names its data
    assert frames[0][1]["message"]["usage"]["input_tokens"] == 11
    text = "".join(d["delta"]["text"] for _, d in frames if d.get("delta", {}).get("type") == "text_delta")
    arguments = "".join(d["delta"]["partial_json"] for _, d in frames
                        if d.get("delta", {}).get("type") == "input_json_delta")
    assert (text, json.loads(arguments)) == ("one two", {"q": "tides at dawn"})
    assert len([n for n in names if n == "content_block_delta"]) > 3  # the arguments come in pieces
    assert frames[-2][1]["delta"]["stop_reason"] == "tool_use" and frames[-2][1]["usage"]["output_tokens"] == 7


async def test_openai_stream_tool_call_deltas_and_usage(fake_upstream):
    fake_upstream.tool_calls_next([("a", '{"x": 1}'), ("b", "{}")])
    async with aiohttp.ClientSession() as session:
        async with session.post(fake_upstream.url + OPENAI[0], json={
                "model": "m", "stream": True, "stream_options": {"include_usage": True}}) as resp:
            frames = await read_sse(resp)
    assert frames[-1] == (None, "[DONE]")
    chunks = [data for _, data in frames[:-1]]
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 7}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    calls: dict[int, dict] = {}
    for chunk in chunks[:-2]:
        for tc in chunk["choices"][0]["delta"].get("tool_calls", []):
            entry = calls.setdefault(tc["index"], {"arguments": ""})
            entry.update({k: v for k, v in tc.items() if k in ("id",)})
            entry.setdefault("name", tc.get("function", {}).get("name"))
            entry["arguments"] += tc["function"].get("arguments", "")
    assert calls == {0: {"id": "call_fake_0", "name": "a", "arguments": '{"x": 1}'},
                     1: {"id": "call_fake_1", "name": "b", "arguments": "{}"}}


@pytest.mark.parametrize("path, headers", [OPENAI, ANTHROPIC])
async def test_death_mid_stream_drops_the_connection_without_usage(fake_upstream, path, headers):
    fake_upstream.reply_text = "one two three four"
    fake_upstream.die_after_next(2)
    frames = []
    async with aiohttp.ClientSession() as session:
        async with session.post(fake_upstream.url + path, json={
                "model": "m", "stream": True, "stream_options": {"include_usage": True}}, headers=headers) as resp:
            with pytest.raises(aiohttp.ClientPayloadError):
                async for raw in resp.content:
                    frames.append(raw)
    text = b"".join(frames).decode()
    assert '"one"' in text and '" two"' in text and "three" not in text
    assert "[DONE]" not in text and "message_stop" not in text and "completion_tokens" not in text
    assert "message_delta" not in text


@pytest.mark.parametrize("path, headers", [OPENAI, ANTHROPIC])
async def test_failure_before_the_first_byte_of_a_stream(fake_upstream, path, headers):
    fake_upstream.fail_next(1, 503)
    async with aiohttp.ClientSession() as session:
        async with session.post(fake_upstream.url + path, json={"model": "m", "stream": True},
                                headers=headers) as resp:
            assert resp.status == 503 and "fake upstream error 503" in await resp.text()


async def test_stop_reason_script_on_a_slow_stream(fake_upstream):
    fake_upstream.reply_next(text="cut", stop_reason="max_tokens")
    fake_upstream.chunk_delay = 0.05
    async with aiohttp.ClientSession() as session:
        async with session.post(fake_upstream.url + ANTHROPIC[0], json={"model": "m", "stream": True},
                                headers=ANTHROPIC[1]) as resp:
            first = await resp.content.readline()
            rest = await resp.content.read()
    assert first == b"event: message_start\n"
    assert b'"stop_reason": "max_tokens"' in rest


async def test_the_official_sdks_read_the_fake_as_the_real_api():
    """The official SDKs (PyPI stack) parse the fake's answers and streams, tool calls included:
    the fake speaks the formats as the SDKs know them, not only as our plugins read them."""
    anthropic = pytest.importorskip("anthropic", reason="the official anthropic SDK is in the test extra (PyPI)")
    openai = pytest.importorskip("openai", reason="the official openai SDK is in the test extra (PyPI)")
    upstream = await FakeUpstream().start()
    try:
        upstream.tool_calls_next([("get_weather", '{"city": "Paris"}')], text="Let me look.", n=2)
        claude = anthropic.AsyncAnthropic(base_url=upstream.url, api_key="k", max_retries=0)
        async with claude.messages.stream(model="m", max_tokens=64,
                                          messages=[{"role": "user", "content": "hi"}]) as stream:
            text = "".join([t async for t in stream.text_stream])
            message = await stream.get_final_message()
        assert text == "Let me look." and message.stop_reason == "tool_use"
        assert message.content[1].input == {"city": "Paris"} and message.usage.output_tokens == 7
        gpt = openai.AsyncOpenAI(base_url=upstream.url + "/v1", api_key="k", max_retries=0)
        chunks = [c async for c in await gpt.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True})]
        arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments
                            for c in chunks if c.choices and c.choices[0].delta.tool_calls)
        assert arguments == '{"city": "Paris"}' and chunks[-1].usage.completion_tokens == 7
        await claude.close()
        await gpt.close()
    finally:
        await upstream.close()
