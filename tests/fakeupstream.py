"""A real loopback HTTP server speaking both upstream wire formats, for tests.

``POST /v1/chat/completions`` answers in OpenAI's shape (``"stream": true`` gets an
SSE stream of word deltas); ``POST /v1/messages`` answers in Anthropic's shape and
insists on ``x-api-key`` and ``anthropic-version`` like the real API.  Recorded
header names are lower-cased.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_denied",
                 404: "not_found", 429: "rate_limit_exceeded"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    500: "api_error", 529: "overloaded_error"}


class FakeUpstream:
    def __init__(self) -> None:
        self.url = ""
        self.calls: list[dict[str, Any]] = []
        self.delay = 0.0
        self.reply_text = "fake reply"
        self.input_tokens = 11
        self.output_tokens = 7
        # True: report as many output tokens as the request allowed (its max_tokens), as an
        # upstream that writes until it is cut off would; False: always ``output_tokens``.
        self.bill_max_tokens = False
        self._script: list[tuple[str, Any]] = []  # queued ("fail", ...) / ("malformed", None)
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()

    def fail_next(
        self, n: int, status: int, *, retry_after: float | str | None = None, body: str | None = None
    ) -> None:
        """The next ``n`` calls answer ``status`` with that wire format's error body
        (or ``body`` verbatim); ``retry_after`` may be seconds or an HTTP-date string."""
        self._script += [("fail", (status, retry_after, body))] * n

    def malformed_next(self, n: int) -> None:
        self._script += [("malformed", None)] * n

    def billed_empty_next(self, n: int, output_tokens: int) -> None:
        """The next ``n`` calls answer 200 with a usage block (billed: ``input_tokens`` and
        ``output_tokens``) but no content, as an upstream whose answer was filtered away."""
        self._script += [("billed_empty", output_tokens)] * n

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

    async def _begin(self, request: web.Request) -> tuple[Any, web.Response | None]:
        """Record the call, wait ``delay``, and return (json, scripted answer or None)."""
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        self.calls.append({"path": request.path, "json": payload,
                           "headers": {k.lower(): v for k, v in request.headers.items()}})
        if self.delay:
            try:
                await asyncio.wait_for(self._closing.wait(), self.delay)
            except asyncio.TimeoutError:
                pass
        if not self._script:
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

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        payload, scripted = await self._begin(request)
        if scripted is not None:
            return scripted
        if not isinstance(payload, dict):
            return web.json_response(self._error_body(request.path, 400), status=400)
        if payload.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for i, word in enumerate(self.reply_text.split(" ")):
                chunk = {"choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word}}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if self.delay:
                    await asyncio.sleep(self.delay / 10)
            if (payload.get("stream_options") or {}).get("include_usage"):  # OpenAI's final usage chunk
                usage = {"prompt_tokens": self.input_tokens, "completion_tokens": self._billed_output(payload)}
                await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.json_response({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": payload.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.reply_text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": self.input_tokens, "completion_tokens": self._billed_output(payload),
                      "total_tokens": self.input_tokens + self._billed_output(payload)},
        })

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        payload, scripted = await self._begin(request)
        if scripted is not None:
            return scripted
        if not request.headers.get("x-api-key"):
            return web.json_response(self._error_body(request.path, 401), status=401)
        if not request.headers.get("anthropic-version") or not isinstance(payload, dict):
            return web.json_response(self._error_body(request.path, 400), status=400)
        return web.json_response({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": payload.get("model"),
            "content": [{"type": "text", "text": self.reply_text}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self._billed_output(payload)},
        })


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
