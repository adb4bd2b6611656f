"""A chat call through the OpenAI/Anthropic front door, in the daemon's own terms.

The dialects (``j1mskyd/dialects/``) parse a wire body into a :class:`ChatRequest`; the chat
service (``chat_service.py``) runs it as an agent of kind ``chat`` (queued, budgeted, retried,
recorded like any agent) and hands back a :class:`ChatCall`: the text as it streams, then the
:class:`ChatOutcome`, or a :class:`ChatFailed` that the dialect turns into its own error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Literal, Protocol

from .errors import ApiError
from .frozen import built_in_place
from .plugin_api import Message, Tool, ToolCall, ToolChoice

__all__ = ["ChatRequest", "ChatOutcome", "ChatFailed", "ChatCall", "ClientGone", "FailureKind", "WATCH"]

# Seconds between looks at a waiting caller's connection (``gone`` below): neither aiohttp 3.8 nor
# the daemon's default on later versions cancels a handler whose client left.
WATCH = 1.0


@built_in_place
@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    """One call, checked: ``model`` is a configured alias, ``messages`` is not empty and
    alternates as the upstreams need (the dialect merged what had to be merged)."""

    model: str
    messages: tuple[Message, ...]
    system: str | None = None
    max_tokens: int | None = None      # None: the model's configured max_tokens; more than that: capped to it
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # the caller's labels; kept with the call
    dialect: Literal["openai", "anthropic"] = "openai"
    stream: bool = False
    # OpenAI's stream_options.include_usage: the stream ends with a usage chunk.  (Anthropic's
    # stream always reports usage, in message_delta.)
    include_usage: bool = False


@built_in_place
@dataclass(frozen=True, slots=True, kw_only=True)
class ChatOutcome:
    """A completed call, as the agent record has it."""

    agent_id: str
    model: str                 # the alias asked for
    served_model: str          # the alias that answered (after any fallback)
    provider: str
    upstream_model: str        # the model id the upstream reported (or was sent)
    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str         # OpenAI's words (plugin_api.CompletionResult)
    input_tokens: int
    output_tokens: int
    cost: float
    created_at: float


FailureKind = Literal["bad_request", "upstream", "timeout", "cancelled", "interrupted"]
_STATUS: dict[str, int] = {"bad_request": 400, "upstream": 502, "timeout": 504, "cancelled": 499, "interrupted": 503}


class ChatFailed(ApiError):
    """The call ended without an answer.  ``kind``: ``bad_request`` (the provider refused the
    request, or a feature it cannot translate: 400), ``upstream`` (every provider of the
    fallback chain failed: 502), ``timeout`` (504), ``cancelled`` (the client went away),
    ``interrupted`` (the daemon stopped)."""

    type = "CHAT_FAILED"

    def __init__(self, kind: FailureKind, message: str, *, agent_id: str) -> None:
        super().__init__(message, agent_id=agent_id)
        self.kind = kind
        self.agent_id = agent_id
        self.status = _STATUS[kind]


class ClientGone(ConnectionResetError):
    """A waiting caller's ``gone`` said it left (:meth:`ChatCall.outcome`, :meth:`ChatCall.deltas`)."""


class ChatCall(Protocol):
    """A chat call under way (what ChatService.start returns)."""

    agent_id: str
    created_at: float

    def deltas(self, gone: Callable[[], bool] | None = None) -> AsyncIterator[str]:
        """The answer's text as it comes; ends when the call ends, well or not.  A provider
        that cannot stream gives the whole text as one delta at the end.  ``gone``: as for
        :meth:`outcome`, while waiting for each delta."""
        ...

    async def outcome(self, gone: Callable[[], bool] | None = None) -> ChatOutcome:
        """The completed call; raises :class:`ChatFailed` otherwise.  ``gone``: looked at every
        :data:`WATCH` seconds while waiting; once it says the caller left, :class:`ClientGone`."""
        ...

    async def cancel(self) -> None:
        """The client went away: cancel the upstream call (what it used is billed)."""
        ...
