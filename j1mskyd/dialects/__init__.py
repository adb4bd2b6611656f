"""The wire formats of the front door: OpenAI's chat completions and Anthropic's messages.

A dialect is pure translation (no aiohttp, no I/O): it parses a request body into a
:class:`~j1mskyd.chat_request.ChatRequest`, renders a :class:`~j1mskyd.chat_request.ChatOutcome`
as its answer body or as its stream's frames, and renders any refusal (an
:class:`~j1mskyd.errors.ApiError`) in its own error shape and status, so that each official SDK
raises its own exception class.  The handlers in ``j1mskyd/api/frontdoor.py`` are the same
for both dialects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ..chat_request import ChatOutcome, ChatRequest
from ..config import ModelConfig
from ..errors import ApiError

__all__ = ["Dialect", "StreamEncoder"]


class StreamEncoder(Protocol):
    """The server-sent-event frames of one streamed answer (bytes ready to write)."""

    def start(self) -> bytes:
        """Sent once, just before the first text delta (or the end, when none comes)."""
        ...

    def delta(self, text: str) -> bytes:
        ...

    def finish(self, outcome: ChatOutcome) -> bytes:
        """The tool calls, the finish reason, the usage and the stream's end."""
        ...

    def fail(self, error: ApiError) -> bytes:
        """The stream's end when the call failed after its first frame (the HTTP status is sent)."""
        ...


class Dialect(Protocol):
    name: str  # "openai" | "anthropic"

    def parse(self, body: Any, models: Mapping[str, ModelConfig]) -> ChatRequest:
        """The request, or an ApiError (400 naming the parameter, 404 for an unknown model)."""
        ...

    def render(self, outcome: ChatOutcome) -> dict[str, Any]:
        """The non-streamed answer body."""
        ...

    def encoder(self, request: ChatRequest, agent_id: str, created_at: float) -> StreamEncoder:
        ...

    def error(self, error: ApiError) -> tuple[int, dict[str, Any]]:
        """The status and body this dialect answers ``error`` with (ChatFailed included)."""
        ...


