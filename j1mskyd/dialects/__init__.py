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

from .. import jsonx
from ..chat_request import ChatOutcome, ChatRequest
from ..config import ModelConfig
from ..errors import ApiError, NotFound

__all__ = ["MAX_TOKENS", "Dialect", "ModelNotFound", "StreamEncoder", "TextFrame", "model_alias", "retry_headers"]

# The most max_tokens either dialect takes: a larger number is a 400, not a value sqlite cannot store.
MAX_TOKENS = 2**31 - 1


class ModelNotFound(NotFound):
    """A model that is not a configured alias (both dialects: 404, naming the ones there are)."""

    type = "MODEL_NOT_FOUND"

    def __init__(self, name: str, models: Mapping[str, ModelConfig]) -> None:
        super().__init__(f"The model {name!r} does not exist here; the models are: {', '.join(sorted(models))}",
                         param="model")


def model_alias(name: str, models: Mapping[str, ModelConfig]) -> str:
    """``name`` when it is a configured alias; ModelNotFound otherwise."""
    if name not in models:
        raise ModelNotFound(name, models)
    return name


# Refusals that no retry can pass: a spent budget (the day or month must end first) and an
# Idempotency-Key reused with another body.  The official SDKs of both dialects retry 409 and
# 429 by themselves unless the answer says ``x-should-retry: false``.
_FINAL = frozenset({402, 409})


def retry_headers(error: ApiError) -> dict[str, str]:
    """Headers to send with ``error`` on a front-door route, beside its own."""
    return {"x-should-retry": "false"} if error.status in _FINAL else {}


class TextFrame:
    """The frame of one streamed text delta, the one frame a stream sends per token: its bytes
    around the text are the same for every delta of a block, so they are cut once from the
    frame of an empty text and the text's JSON goes between them.  The bytes are those of the
    whole frame encoded each time (tests/test_dialect_frames.py); building them so costs about
    a quarter of the time (OpenAI's chunk: ~8 us -> ~2 us a delta, micro-benchmark).

    ``empty``: the frame with the text ``""``; ``key``: the text's key as it stands before it
    (``b'"content":'``).  The last ``key""`` in the frame is the text's: inside a JSON string
    every quote is escaped, so none of the frame's other strings can hold it."""

    __slots__ = ("head", "tail")

    def __init__(self, empty: bytes, key: bytes) -> None:
        head, found, tail = empty.rpartition(key + b'""')
        if not found:
            raise ValueError(f"no empty {key!r} text in the frame")
        self.head, self.tail = head + key, tail

    def __call__(self, text: str) -> bytes:
        return self.head + jsonx.dumps(text).encode() + self.tail


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


