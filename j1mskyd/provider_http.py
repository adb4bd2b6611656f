"""HTTP plumbing shared by the HTTP provider plugins: one POST, a server-sent-event stream,
errors mapped to :class:`ProviderError` kinds, Retry-After parsing, token estimates, and the
pieces both wire formats need to build an answer (tool calls assembled from stream deltas,
a stream's state so far, the checks of a request's tool choice).

Every message built here is scrubbed of the API key, because upstreams and
exception texts are not ours to trust.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable, TypeGuard

import aiohttp
from j1msky.backoff import parse_retry_after  # one home, shared with the SDK (re-exported)
from yarl import URL

from . import jsonx
from .frozen import built_in_place
from .plugin_api import (
    CompletionRequest,
    CompletionResult,
    ProviderError,
    TextBlock,
    ToolCall,
    conversation,
)

# The kit of an HTTP provider plugin (the built-in ones and drop-ins alike).
__all__ = [
    "HttpCaller", "SseEvent", "StreamState", "ToolCallAssembler",
    "arguments_text", "as_object", "billed_usage", "completion", "error_detail", "estimate_tokens",
    "kind_for_error_type", "kind_for_status", "parse_retry_after", "redact", "request_text",
    "tool_choice_problem",
]

_MAX_DETAIL = 300
_URLS_KEPT = 16  # a provider POSTs to one or two URLs; a plugin that builds them per call just misses


def billed_usage(usage: Any, input_key: str, output_key: str) -> tuple[int, int] | None:
    """The token counts of a ``usage`` object when the upstream reported both (it billed them)."""
    if not isinstance(usage, dict):
        return None
    billed_in, billed_out = usage.get(input_key), usage.get(output_key)
    if _is_count(billed_in) and _is_count(billed_out):
        return billed_in, billed_out
    return None


def as_object(value: Any) -> dict[str, Any]:
    """A decoded JSON value when it is an object, else an empty one (upstream answers are not
    ours to trust: a field of the wrong type reads as absent)."""
    return value if isinstance(value, dict) else {}


def _is_count(n: object) -> TypeGuard[int]:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def estimate_tokens(text: str) -> int:
    """A rough count (about four characters a token) for upstreams that report none."""
    return max(1, math.ceil(len(text) / 4))


def request_text(request: CompletionRequest) -> str:
    """Everything of a request the model reads, as one text (for estimates): the system text,
    each block of the conversation (tool calls' names and arguments, tool results), and the
    tools' definitions.  An agent's call is its system text and prompt."""
    parts = [request.system or ""]
    for message in conversation(request):
        for block in message.content:
            if isinstance(block, TextBlock):
                parts.append(block.text)
            elif isinstance(block, ToolCall):
                parts += (block.name, block.arguments)
            else:
                parts.append(block.content)
    parts += (jsonx.dumps([t.name, t.description, t.parameters]) for t in request.tools)
    return "".join(parts)


def arguments_text(arguments: Any) -> str:
    """A tool call's arguments as JSON text: text as the upstream wrote it, an object (as
    Anthropic's ``input``, or an upstream that decodes OpenAI's text) written compactly."""
    return arguments if isinstance(arguments, str) else jsonx.dumps(arguments)


def completion(
    request: CompletionRequest, text: str, tool_calls: Iterable[ToolCall], *, input_tokens: Any,
    output_tokens: Any, model: Any, finish: Any,
) -> CompletionResult:
    """The answer: token counts as the upstream reported them, estimated where it did not
    (input from :func:`request_text`, output from the text and tool arguments); ``finish``
    already in OpenAI's words, ``stop`` if missing, and ``tool_calls`` when the answer asks
    for tool calls although the upstream said ``stop`` (some OpenAI-compatible servers do)."""
    calls = tuple(tool_calls)
    if not _is_count(input_tokens):
        input_tokens = estimate_tokens(request_text(request))
    if not _is_count(output_tokens):
        output_tokens = estimate_tokens(text + "".join(c.name + c.arguments for c in calls))
    finish = finish if isinstance(finish, str) and finish else "stop"
    if calls and finish == "stop":
        finish = "tool_calls"
    return CompletionResult(text=text, input_tokens=input_tokens, output_tokens=output_tokens,
                            model=str(model or request.model), finish_reason=finish, tool_calls=calls)


def tool_choice_problem(request: CompletionRequest) -> str | None:
    """Why the request's tool choice cannot be sent (it needs tools the request does not
    define; an upstream would refuse it in its own words), or None.  The plugins refuse such a
    request as ``bad_request``."""
    choice = request.tool_choice
    if choice is None or choice.mode in ("auto", "none"):
        return None
    names = [t.name for t in request.tools]
    if not names:
        return f"tool_choice {choice.mode!r} needs tools, and the request has none"
    if choice.mode == "tool" and choice.name not in names:
        return f"tool_choice names the tool {choice.name!r}, which is not among the tools {names}"
    return None


class ToolCallAssembler:
    """Tool calls put together from stream deltas, by the index the upstream gives each call
    (OpenAI's ``tool_calls[].index``, Anthropic's content block index): the id and name come
    once, the arguments in pieces."""

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments so far]

    def add(self, index: int, *, id: Any = None, name: Any = None, arguments: Any = None) -> None:
        call = self._calls.setdefault(index, ["", "", ""])
        if isinstance(id, str) and id:
            call[0] = id
        if isinstance(name, str) and name:
            call[1] = name
        if isinstance(arguments, str):
            call[2] += arguments

    def __contains__(self, index: int) -> bool:
        return index in self._calls

    def calls(self) -> tuple[ToolCall, ...]:
        """The calls in index order; arguments never streamed are ``{}``."""
        return tuple(ToolCall(id=c[0], name=c[1], arguments=c[2] or "{}")
                     for _, c in sorted(self._calls.items()))


class StreamState:
    """What one streamed answer said so far: text, tool calls, the usage and stop word the
    upstream reported.  It turns into the final :class:`CompletionResult`, or, when the stream
    fails after it began, gives the error the usage seen so far (output at least as much as
    the streamed text is estimated to be), so the runtime bills what the upstream did."""

    def __init__(self, request: CompletionRequest, http: HttpCaller) -> None:
        self.request = request
        self.http = http
        self.parts: list[str] = []
        self.tools = ToolCallAssembler()
        self.input_tokens: Any = None
        self.output_tokens: Any = None
        self.model: Any = None
        self.finish: Any = None

    def text(self, delta: Any) -> str | None:
        """Keep a text delta; return it when there is one to yield."""
        if isinstance(delta, str) and delta:
            self.parts.append(delta)
            return delta
        return None

    def result(self) -> CompletionResult:
        return completion(self.request, "".join(self.parts), self.tools.calls(), input_tokens=self.input_tokens,
                          output_tokens=self.output_tokens, model=self.model, finish=self.finish)

    def usage(self) -> tuple[int, int] | None:
        """(input, output) so far; None when the upstream reported nothing yet."""
        if not _is_count(self.input_tokens) and not _is_count(self.output_tokens):
            return None
        estimated = completion(self.request, "".join(self.parts), self.tools.calls(), input_tokens=self.input_tokens,
                               output_tokens=None, model=None, finish=None)
        return estimated.input_tokens, max(estimated.output_tokens, _count_or_zero(self.output_tokens))

    def failed(self, message: str, *, kind: str, status: int | None = None) -> ProviderError:
        return self.http.error(message, kind=kind, status=status, usage=self.usage())

    async def events(self, source: AsyncIterator[SseEvent]) -> AsyncIterator[SseEvent]:
        """``source``'s events; an error raised by it carries the usage seen so far."""
        try:
            async for event in source:
                yield event
        except ProviderError as exc:
            if exc.usage is None:
                exc.usage = self.usage()
            raise


def _count_or_zero(n: Any) -> int:
    return n if _is_count(n) else 0


# The error ``type`` words of OpenAI's and Anthropic's error objects (as sent inside a stream,
# where there is no HTTP status to go by).
_ERROR_TYPE_KINDS = {
    "rate_limit_error": "rate_limited", "rate_limit_exceeded": "rate_limited",
    "overloaded_error": "server_error", "api_error": "server_error", "server_error": "server_error",
    "timeout_error": "timeout",
    "authentication_error": "auth", "permission_error": "auth", "invalid_api_key": "auth",
    "invalid_request_error": "bad_request", "not_found_error": "bad_request", "request_too_large": "bad_request",
}


def kind_for_error_type(etype: Any) -> str:
    """The ProviderError kind for an error object's ``type`` (``server_error`` if unknown)."""
    return _ERROR_TYPE_KINDS.get(etype, "server_error") if isinstance(etype, str) else "server_error"


@built_in_place  # one per streamed chunk: see frozen.py
@dataclass(frozen=True, slots=True)
class SseEvent:
    """One server-sent event: ``name`` is its ``event:`` field (``message`` when it has none,
    as the SSE standard says), ``data`` its decoded JSON; ``done`` marks OpenAI's
    ``data: [DONE]`` (then ``data`` is None)."""

    name: str
    data: Any
    done: bool = False


def kind_for_status(status: int) -> str:
    """The ProviderError kind for a non-2xx upstream status."""
    if status == 429:
        return "rate_limited"
    if status == 408:
        return "timeout"
    if status in (401, 403):
        return "auth"
    if 500 <= status <= 599:  # includes Anthropic's 529 "overloaded"
        return "server_error"
    if 400 <= status <= 499:
        return "bad_request"
    return "invalid_response"  # 1xx/3xx: we do not follow redirects on an API POST


def error_detail(body: bytes) -> str:
    """The upstream's own words from an error body: OpenAI's and Anthropic's
    ``{"error": {"type", "message"}}``, Ollama's ``{"error": "..."}``, or raw text."""
    try:
        data = jsonx.loads(body)
    except _json_errors() + (UnicodeDecodeError,):
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or "")
            etype = err.get("type")
            return _clip(f"{etype}: {message}" if etype and message else message or str(etype or ""))
        if isinstance(err, str):
            return _clip(err)
        if isinstance(data.get("message"), str):
            return _clip(data["message"])
    return _clip(body.decode("utf-8", "replace").strip())


def _json_errors() -> tuple[type[Exception], ...]:
    errs = jsonx.JSONDecodeError
    return errs if isinstance(errs, tuple) else (errs,)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "[redacted]") if secret else text


class HttpCaller:
    """POSTs JSON for one provider; ``label`` prefixes every error message."""

    def __init__(self, session: aiohttp.ClientSession, label: str, secret: str | None) -> None:
        self.session = session
        self.label = label
        self.secret = secret
        self._urls: dict[str, URL | str] = {}

    def _target(self, url: str) -> URL | str:
        """``url`` parsed once and kept: aiohttp parses a URL given as text on every request
        (on bookworm's yarl 1.8 that includes an ``ipaddress`` parse of the host), and takes a
        ``URL`` as it is.  Text that does not parse is passed on as text, so that aiohttp
        refuses it with its own ``InvalidURL`` as before."""
        target = self._urls.get(url)
        if target is None:
            try:
                target = URL(url)
            except ValueError:
                target = url
            if len(self._urls) >= _URLS_KEPT:
                self._urls.clear()
            self._urls[url] = target
        return target

    def error(
        self, message: str, *, kind: str, status: int | None = None, retry_after: float | None = None,
        usage: tuple[int, int] | None = None,
    ) -> ProviderError:
        message = redact(f"{self.label}: {message}", self.secret)
        return ProviderError(message, kind=kind, status=status, retry_after=retry_after, usage=usage)

    async def post_json(self, url: str, body: dict, headers: dict[str, str], timeout: float) -> dict[str, Any]:
        """POST ``body``; return the decoded JSON object of a 2xx answer or raise ProviderError."""
        try:
            async with self._post(url, body, headers, timeout) as resp:
                raw = await resp.read()
                if not 200 <= resp.status <= 299:
                    raise self._status_error(resp, raw)
        except ProviderError:
            raise
        except Exception as exc:
            raise self._transport_error(exc) from None
        try:
            data = jsonx.loads(raw)
        except _json_errors() + (UnicodeDecodeError,):
            message = f"HTTP {resp.status} with a body that is not JSON"
            raise self.error(message, kind="invalid_response", status=resp.status) from None
        if not isinstance(data, dict):
            raise self.error("JSON answer is not an object", kind="invalid_response", status=resp.status)
        return data

    async def post_sse(
        self, url: str, body: dict, headers: dict[str, str], timeout: float
    ) -> AsyncIterator[SseEvent]:
        """POST ``body`` and yield each event of a server-sent-event stream (the ``data:``
        lines of one event joined) until ``data: [DONE]`` (yielded, ``done``) or the end of
        the stream.  Events without data (comments, keep-alives) are skipped."""
        try:
            async with self._post(url, body, headers, timeout) as resp:
                if not 200 <= resp.status <= 299:
                    raise self._status_error(resp, await resp.read())
                name, data = "message", []
                async for raw in resp.content:
                    line = raw.rstrip(b"\r\n")
                    if line:
                        field, _, value = line.partition(b":")
                        value = value[1:] if value.startswith(b" ") else value
                        if field == b"event":
                            name = value.decode("utf-8", "replace")
                        elif field == b"data":
                            data.append(value)
                        continue
                    if data:  # a blank line ends the event
                        event = self._event(name, b"\n".join(data), resp.status)
                        yield event
                        if event.done:
                            return
                    name, data = "message", []
                if data:  # the last event, without its blank line
                    yield self._event(name, b"\n".join(data), resp.status)
        except ProviderError:
            raise
        except aiohttp.ClientPayloadError as exc:  # the body ended before the chunked stream did
            raise self.error(f"the stream broke off: {exc}", kind="connection") from None
        except Exception as exc:
            raise self._transport_error(exc) from None

    def _event(self, name: str, payload: bytes, status: int) -> SseEvent:
        if payload.strip() == b"[DONE]":
            return SseEvent(name, None, done=True)
        try:
            return SseEvent(name, jsonx.loads(payload))
        except _json_errors() + (UnicodeDecodeError,):
            raise self.error("stream event is not JSON", kind="invalid_response", status=status) from None

    def _post(self, url: str, body: dict, headers: dict[str, str], timeout: float) -> Any:
        return self.session.post(
            self._target(url),
            data=jsonx.dumps(body).encode(),
            headers={"Content-Type": "application/json", **headers},
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        )

    def _status_error(self, resp: aiohttp.ClientResponse, raw: bytes) -> ProviderError:
        status = resp.status
        kind = kind_for_status(status)
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        detail = error_detail(raw)
        if 300 <= status <= 399:
            detail = f"redirect to {resp.headers.get('Location', '?')} not followed (check base_url)"
        message = f"HTTP {status}" + (f": {detail}" if detail else "")
        return self.error(message, kind=kind, status=status, retry_after=retry_after)

    def _transport_error(self, exc: Exception) -> ProviderError:
        # Order matters: asyncio.TimeoutError is an OSError, and aiohttp's
        # ServerTimeoutError is both a timeout and a connection error.
        if isinstance(exc, asyncio.TimeoutError):
            return self.error("timed out", kind="timeout")
        if isinstance(exc, (aiohttp.ClientConnectionError, OSError)):
            return self.error(f"connection failed: {type(exc).__name__}: {exc}", kind="connection")
        if isinstance(exc, aiohttp.InvalidURL):
            return self.error(f"invalid URL: {exc}", kind="bad_request")
        if isinstance(exc, aiohttp.ClientError):  # payload/protocol errors
            return self.error(f"bad HTTP answer: {type(exc).__name__}: {exc}", kind="invalid_response")
        raise exc
