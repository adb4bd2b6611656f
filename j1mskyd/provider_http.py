"""HTTP plumbing shared by the HTTP provider plugins: one POST, errors mapped to
:class:`ProviderError` kinds, Retry-After parsing, token estimates.

Every message built here is scrubbed of the API key, because upstreams and
exception texts are not ours to trust.
"""

from __future__ import annotations

import asyncio
import math
import time
from email.utils import parsedate_to_datetime
from typing import Any, AsyncIterator, TypeGuard

import aiohttp

from . import jsonx
from .plugin_api import ProviderError

_MAX_DETAIL = 300


def billed_usage(usage: Any, input_key: str, output_key: str) -> tuple[int, int] | None:
    """The token counts of a ``usage`` object when the upstream reported both (it billed them)."""
    if not isinstance(usage, dict):
        return None
    billed_in, billed_out = usage.get(input_key), usage.get(output_key)
    if _is_count(billed_in) and _is_count(billed_out):
        return billed_in, billed_out
    return None


def _is_count(n: object) -> TypeGuard[int]:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def estimate_tokens(text: str) -> int:
    """A rough count (about four characters a token) for upstreams that report none."""
    return max(1, math.ceil(len(text) / 4))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is always GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


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

    async def post_sse(self, url: str, body: dict, headers: dict[str, str], timeout: float) -> AsyncIterator[Any]:
        """POST ``body`` and yield each decoded ``data:`` event of a server-sent-event stream
        until ``[DONE]`` or end of stream."""
        try:
            async with self._post(url, body, headers, timeout) as resp:
                if not 200 <= resp.status <= 299:
                    raise self._status_error(resp, await resp.read())
                async for line in resp.content:
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue  # comments, event: lines, blank separators
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        return
                    try:
                        yield jsonx.loads(payload)
                    except _json_errors() + (UnicodeDecodeError,):
                        message = "stream event is not JSON"
                        raise self.error(message, kind="invalid_response", status=resp.status) from None
        except ProviderError:
            raise
        except Exception as exc:
            raise self._transport_error(exc) from None

    def _post(self, url: str, body: dict, headers: dict[str, str], timeout: float) -> Any:
        return self.session.post(
            url,
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
