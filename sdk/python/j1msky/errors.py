"""The SDK's errors, and how an error answer of the daemon becomes one.

The daemon answers every refusal in one envelope (``{"success": false, "error": {"code",
"type", "message", "request_id", "details"}}``; a 429 adds ``retry_after`` and a
``Retry-After`` header); the API reference's older validation example sends the message
as a plain string (``{"error": "Task cannot be empty"}``).  Both become a J1MSKYError.
"""

from __future__ import annotations

import json
from typing import Any

from .backoff import parse_retry_after

__all__ = ["J1MSKYError", "RateLimitError", "WaitTimeout", "error_from_response"]


class J1MSKYError(Exception):
    """An API error: ``message``, ``status`` (HTTP; None when no answer came), ``type``
    (e.g. VALIDATION_ERROR), ``request_id`` (quote it when reporting), ``details``."""

    def __init__(self, message: str, *, status: int | None = None, request_id: str | None = None,
                 type: str | None = None, details: Any = None) -> None:  # noqa: A002 - the API's field name
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id
        self.type = type
        self.details = details
        self.body: Any = None  # the error answer's JSON, when it had one

    def __str__(self) -> str:
        if not self.status:
            return self.message
        if self.message == f"HTTP {self.status}" and not self.request_id:  # no envelope: said once
            return self.message
        request = f", request {self.request_id}" if self.request_id else ""
        return f"{self.message} (HTTP {self.status}{request})"


class RateLimitError(J1MSKYError):
    """A 429 that outlasted the retries: ``retry_after`` is the seconds the daemon asked to wait."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class WaitTimeout(J1MSKYError, TimeoutError):
    """``wait_for_completion`` ran out of time: the agent is still ``state``.  A TimeoutError
    too, so ``except TimeoutError`` catches it as well as ``except J1MSKYError``."""

    def __init__(self, agent_id: str, state: str, timeout: float) -> None:
        super().__init__(f"agent {agent_id} still {state} after {timeout:g} s")
        self.agent_id = agent_id
        self.state = state


def error_from_response(status: int, body: bytes, headers: Any) -> J1MSKYError:
    """The J1MSKYError (a RateLimitError for 429) for an error answer (``headers``: anything
    with ``.get(name)``: urllib's message, aiohttp's multidict, a dict)."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    header_id = headers.get("X-Request-Id")
    type_: str | None = None
    details: Any = None
    envelope_retry: Any = None
    if isinstance(err, dict):
        message = str(err.get("message") or f"HTTP {status}")
        request_id = err.get("request_id") or header_id
        type_, details, envelope_retry = err.get("type"), err.get("details"), err.get("retry_after")
    else:
        message = err if isinstance(err, str) and err else f"HTTP {status}"
        request_id = header_id
    if status == 429:
        retry = parse_retry_after(headers.get("Retry-After"))
        if retry is None and isinstance(envelope_retry, (int, float)) and not isinstance(envelope_retry, bool):
            retry = float(envelope_retry)
        error: J1MSKYError = RateLimitError(message, retry_after=retry, status=status, request_id=request_id,
                                            type=type_, details=details)
    else:
        error = J1MSKYError(message, status=status, request_id=request_id, type=type_, details=details)
    error.body = data  # the answer as sent: a 503 from /health is its health document, not an envelope
    return error
