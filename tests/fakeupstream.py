"""A real loopback HTTP server speaking both upstream wire formats, for tests.

``POST /v1/chat/completions`` answers in OpenAI's shape; ``POST /v1/messages`` answers in
Anthropic's shape and insists on a key (``x-api-key``, or ``Authorization`` as the official SDK
sends it of late) and ``anthropic-version`` like the real API.
Both stream with ``"stream": true`` the way the real APIs do: OpenAI's ``data:`` chunks
(a final usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``);
Anthropic's named events (``event:`` lines) ``message_start`` (with usage),
``content_block_start``/``content_block_delta`` (``text_delta``, ``input_json_delta``)/
``content_block_stop``, a ``ping``, ``message_delta`` (stop_reason and usage) and
``message_stop``.  Text streams a word a chunk, tool arguments a few characters a chunk.

Every request is recorded in ``calls`` (path, decoded JSON body, lower-cased header
names); ``bodies`` is just the bodies.  What the next calls answer is scripted, in order:

- ``fail_next``: an error status before the first byte (streamed or not);
- ``malformed_next``, ``billed_empty_next``: broken 200 answers;
- ``reply_next`` / ``tool_calls_next``: an answer with other text, tool calls (OpenAI
  ``tool_calls`` with JSON-text arguments and finish_reason ``tool_calls``; Anthropic
  ``tool_use`` blocks with the arguments as ``input`` and stop_reason ``tool_use``) or
  another stop reason, streamed or not as the request asks;
- ``die_after_next``: a stream that sends a number of delta chunks and then closes the
  connection, with no usage and no end marker (optionally an in-stream error event first).

Unscripted calls answer ``reply_text`` with ``input_tokens``/``output_tokens``.  ``delay``
waits before answering; ``chunk_delay`` (default ``delay / 10``) between stream chunks.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_denied",
                 404: "not_found", 429: "rate_limit_exceeded"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    500: "api_error", 529: "overloaded_error"}
# The stop words of each format for a plain answer and for one that asks for tool calls.
_STOP = {"openai": ("stop", "tool_calls"), "anthropic": ("end_turn", "tool_use")}
_ARGUMENT_CHUNK = 7  # characters of tool arguments a stream chunk


@dataclass(frozen=True)
class Reply:
    """One scripted answer.  ``text`` None: ``reply_text``; ``stop_reason`` None: the
    format's own word (``tool_calls``/``tool_use`` when there are tool calls, else
    ``stop``/``end_turn``); ``die_after``: stream only that many delta chunks, then drop
    the connection (``error``: after an in-stream error event of that type)."""

    text: str | None = None
    tool_calls: tuple[tuple[str, str], ...] = ()  # (name, arguments as JSON text)
    stop_reason: str | None = None
    die_after: int | None = None
    error: str | None = None


class _Died(Exception):
    """A scripted stream death: drop the connection now."""


class FakeUpstream:
    def __init__(self) -> None:
        self.url = ""
        self.calls: list[dict[str, Any]] = []
        self.delay = 0.0
        self.chunk_delay: float | None = None
        self.hangups = 0  # streams the caller closed before their end
        self.reply_text = "fake reply"
        self.input_tokens = 11
        self.output_tokens = 7
        # True: report as many output tokens as the request allowed (its max_tokens), as an
        # upstream that writes until it is cut off would; False: always ``output_tokens``.
        self.bill_max_tokens = False
        self._script: list[tuple[str, Any]] = []  # queued ("fail", ...) / ("malformed", None) / ("reply", Reply)
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()

    @property
    def bodies(self) -> list[Any]:
        """The JSON body of every call so far, in order."""
        return [call["json"] for call in self.calls]

    def fail_next(
        self, n: int, status: int, *, retry_after: float | str | None = None, body: str | None = None
    ) -> None:
        """The next ``n`` calls answer ``status`` with that wire format's error body
        (or ``body`` verbatim); ``retry_after`` may be seconds or an HTTP-date string.
        A streamed call gets the same, before any byte of a stream."""
        self._script += [("fail", (status, retry_after, body))] * n

    def malformed_next(self, n: int) -> None:
        self._script += [("malformed", None)] * n

    def billed_empty_next(self, n: int, output_tokens: int) -> None:
        """The next ``n`` calls answer 200 with a usage block (billed: ``input_tokens`` and
        ``output_tokens``) but no content, as an upstream whose answer was filtered away."""
        self._script += [("billed_empty", output_tokens)] * n

    def reply_next(
        self, n: int = 1, *, text: str | None = None, tool_calls: list[tuple[str, str]] | None = None,
        stop_reason: str | None = None,
    ) -> None:
        """The next ``n`` calls answer ``text`` (default ``reply_text``; "" for none) and
        ``tool_calls`` ((name, JSON text) pairs), with ``stop_reason`` in the wire format's
        own word if given."""
        reply = Reply(text=text, tool_calls=tuple(tool_calls or ()), stop_reason=stop_reason)
        self._script += [("reply", reply)] * n

    def tool_calls_next(self, calls: list[tuple[str, str]], *, text: str = "", n: int = 1) -> None:
        """The next ``n`` calls ask for ``calls`` ((name, arguments JSON text) pairs), after
        ``text`` if any; ids are ``call_fake_<i>`` (OpenAI) or ``toolu_fake_<i>`` (Anthropic)."""
        self.reply_next(n, text=text, tool_calls=calls)

    def die_after_next(self, chunks: int, *, n: int = 1, error: str | None = None,
                       tool_calls: list[tuple[str, str]] | None = None) -> None:
        """The next ``n`` calls, streamed (a call that is not streamed uses the script entry up
        and answers in full), send ``chunks`` delta chunks (text words, then tool
        argument pieces; Anthropic's ``message_start`` with its usage goes first, as the real
        API sends it) and then close the connection: no usage, no finish, no end marker.
        ``error`` (e.g. ``"overloaded_error"``) sends the format's in-stream error event first."""
        reply = Reply(tool_calls=tuple(tool_calls or ()), die_after=chunks, error=error)
        self._script += [("reply", reply)] * n

    async def wait_calls(self, n: int, timeout: float = 10.0) -> None:
        """Until ``n`` calls have come in (bounded): a call is recorded as it arrives, before
        its ``delay``, so this is the moment the caller's request is in flight."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(self.calls) < n:
            if loop.time() > end:
                raise AssertionError(f"the upstream got {len(self.calls)} calls, not {n}")
            await asyncio.sleep(0.01)

    async def start(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, host="127.0.0.1", port=0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def close(self) -> None:
        self._closing.set()  # wake handlers sleeping on ``delay`` so shutdown is quick
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            try:
                await asyncio.wait_for(self._closing.wait(), seconds)
            except asyncio.TimeoutError:
                pass

    async def _begin(self, request: web.Request) -> tuple[Any, web.Response | None]:
        """Record the call, wait ``delay``, and return (json, scripted answer or None).
        A scripted reply is left for the handler (``_reply``)."""
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        self.calls.append({"path": request.path, "json": payload,
                           "headers": {k.lower(): v for k, v in request.headers.items()}})
        await self._pause(self.delay)
        if not self._script or self._script[0][0] == "reply":
            return payload, None
        what, arg = self._script.pop(0)
        if what == "malformed":
            return payload, web.Response(text="<html>not json", content_type="application/json")
        if what == "billed_empty":
            if request.path == "/v1/messages":
                body = {"type": "message", "usage": {"input_tokens": self.input_tokens, "output_tokens": arg}}
            else:
                body = {"object": "chat.completion", "choices": [],
                        "usage": {"prompt_tokens": self.input_tokens, "completion_tokens": arg}}
            return payload, web.json_response(body)
        status, retry_after, body = arg
        headers = {} if retry_after is None else {"Retry-After": _retry_after_text(retry_after)}
        if body is None:
            body = json.dumps(self._error_body(request.path, status))
        return payload, web.Response(status=status, text=body, content_type="application/json", headers=headers)

    def _reply(self) -> Reply:
        """The scripted reply for this call, or the default one."""
        if self._script and self._script[0][0] == "reply":
            return self._script.pop(0)[1]
        return Reply()

    def _billed_output(self, payload: dict[str, Any]) -> int:
        return payload.get("max_tokens") if self.bill_max_tokens else self.output_tokens

    @staticmethod
    def _error_body(path: str, status: int) -> dict[str, Any]:
        message = f"fake upstream error {status}"
        if path == "/v1/messages":
            etype = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
            return {"type": "error", "error": {"type": etype, "message": message}}
        etype = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return {"error": {"message": message, "type": etype, "code": status}}

    def _parts(self, reply: Reply, fmt: str) -> tuple[str, str]:
        """(text, stop word) of a reply in format ``fmt``."""
        text = self.reply_text if reply.text is None else reply.text
        stop = reply.stop_reason or _STOP[fmt][1 if reply.tool_calls else 0]
        return text, stop

    # -- OpenAI ------------------------------------------------------------------------------

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        payload, scripted = await self._begin(request)
        if scripted is not None:
            return scripted
        if not isinstance(payload, dict):
            return web.json_response(self._error_body(request.path, 400), status=400)
        reply = self._reply()
        if payload.get("stream"):
            return await self._openai_stream(request, payload, reply)
        text, stop = self._parts(reply, "openai")
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_fake_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
                for i, (name, arguments) in enumerate(reply.tool_calls)]
        return web.json_response({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": payload.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": stop}],
            "usage": {"prompt_tokens": self.input_tokens, "completion_tokens": self._billed_output(payload),
                      "total_tokens": self.input_tokens + self._billed_output(payload)},
        })

    async def _openai_stream(self, request: web.Request, payload: dict[str, Any], reply: Reply) -> web.StreamResponse:
        text, stop = self._parts(reply, "openai")
        head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": payload.get("model")}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        deltas = [chunk({"content": word}) for word in _words(text)]
        for i, (name, arguments) in enumerate(reply.tool_calls):
            deltas.append(chunk({"tool_calls": [{"index": i, "id": f"call_fake_{i}", "type": "function",
                                                 "function": {"name": name, "arguments": ""}}]}))
            deltas += [chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                       for piece in _pieces(arguments)]
        if deltas:
            deltas[0]["choices"][0]["delta"]["role"] = "assistant"
        tail = [chunk({}, stop)]
        if (payload.get("stream_options") or {}).get("include_usage"):  # OpenAI's final usage chunk
            usage = {"prompt_tokens": self.input_tokens, "completion_tokens": self._billed_output(payload)}
            tail.append({**head, "choices": [], "usage": usage})
        error = {"error": {"message": "fake upstream died", "type": reply.error}} if reply.error else None
        frames = [(f"data: {json.dumps(c)}\n\n", True) for c in deltas]
        frames += [(f"data: {json.dumps(c)}\n\n", False) for c in tail] + [("data: [DONE]\n\n", False)]
        return await self._stream(request, frames, reply, f"data: {json.dumps(error)}\n\n" if error else "")

    # -- Anthropic ---------------------------------------------------------------------------

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        payload, scripted = await self._begin(request)
        if scripted is not None:
            return scripted
        if not request.headers.get("x-api-key") and not request.headers.get("authorization"):
            # (the official SDK of late sends its key as ``Authorization: Bearer``, which the real API takes)
            return web.json_response(self._error_body(request.path, 401), status=401)
        if not request.headers.get("anthropic-version") or not isinstance(payload, dict):
            return web.json_response(self._error_body(request.path, 400), status=400)
        reply = self._reply()
        if payload.get("stream"):
            return await self._anthropic_stream(request, payload, reply)
        text, stop = self._parts(reply, "anthropic")
        content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text or not reply.tool_calls else []
        content += [{"type": "tool_use", "id": f"toolu_fake_{i}", "name": name, "input": json.loads(arguments)}
                    for i, (name, arguments) in enumerate(reply.tool_calls)]
        return web.json_response({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": payload.get("model"),
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self._billed_output(payload)},
        })

    async def _anthropic_stream(
        self, request: web.Request, payload: dict[str, Any], reply: Reply
    ) -> web.StreamResponse:
        text, stop = self._parts(reply, "anthropic")
        start = {"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": payload.get("model"),
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 1}}}
        # (event, is a delta chunk): only deltas count towards ``die_after``.
        events: list[tuple[dict[str, Any], bool]] = [(start, False)]
        blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        if text or not reply.tool_calls:
            blocks.append(({"type": "text", "text": ""},
                           [{"type": "text_delta", "text": word} for word in _words(text)]))
        for i, (name, arguments) in enumerate(reply.tool_calls):
            blocks.append(({"type": "tool_use", "id": f"toolu_fake_{i}", "name": name, "input": {}},
                           [{"type": "input_json_delta", "partial_json": p} for p in _pieces(arguments)]))
        for index, (block, deltas) in enumerate(blocks):
            events.append(({"type": "content_block_start", "index": index, "content_block": block}, False))
            if index == 0:
                events.append(({"type": "ping"}, False))
            events += [({"type": "content_block_delta", "index": index, "delta": d}, True) for d in deltas]
            events.append(({"type": "content_block_stop", "index": index}, False))
        usage = {"output_tokens": self._billed_output(payload)}
        events.append(({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                        "usage": usage}, False))
        events.append(({"type": "message_stop"}, False))
        error = {"type": "error", "error": {"type": reply.error, "message": "fake upstream died"}}
        return await self._stream(request, [(_named(e), d) for e, d in events], reply,
                                  _named(error) if reply.error else "")

    # -- both --------------------------------------------------------------------------------

    async def _stream(self, request: web.Request, frames: list[tuple[str, bool]], reply: Reply,
                      error: str) -> web.StreamResponse:
        """Write ``frames`` ((SSE frame, is a delta chunk) pairs) as a stream, ``chunk_delay``
        apart.  With ``reply.die_after``: stop before the delta chunk past that many, write
        ``error`` if any, and drop the connection (the chunked body never ends)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        pause = self.delay / 10 if self.chunk_delay is None else self.chunk_delay
        sent = 0
        try:
            for i, (frame, is_delta) in enumerate(frames):
                if reply.die_after is not None and is_delta and sent == reply.die_after:
                    break
                if i:
                    await self._pause(pause)
                await resp.write(frame.encode())
                sent += is_delta
            if reply.die_after is not None:
                if error:
                    await resp.write(error.encode())
                _drop(request)
                return resp
            await resp.write_eof()
        except ConnectionResetError:
            # The daemon hung up (its client went away, or it cancelled the call): the end a
            # real upstream sees too.  Caught here, because on aiohttp 3.8 an exception left in
            # the handler's task is only logged when the garbage collector finds it, at a
            # random later moment of another test.
            self.hangups += 1
        return resp


def _drop(request: web.Request) -> None:
    """Close the connection under a response that has not ended (its chunked body unfinished)."""
    transport = request.transport
    if transport is not None:
        transport.close()


def _named(event: dict[str, Any]) -> str:
    """An Anthropic SSE frame: the ``event:`` line names the event's type, as the real API does."""
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


def _words(text: str) -> list[str]:
    """Text as stream deltas: a word each, the space before it included."""
    return [word if i == 0 else " " + word for i, word in enumerate(text.split(" "))] if text else []


def _pieces(text: str) -> list[str]:
    return [text[i:i + _ARGUMENT_CHUNK] for i in range(0, len(text), _ARGUMENT_CHUNK)] or [""]


def _retry_after_text(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


@pytest.fixture
async def fake_upstream():
    upstream = await FakeUpstream().start()
    try:
        yield upstream
    finally:
        await upstream.close()
