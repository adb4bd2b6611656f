"""The plugin contract: everything a plugin may rely on, in one module.

A plugin is one ``*.py`` file with a top-level literal ``J1MSKY_PLUGIN_API = 1`` (read from
the source before any of it runs) and a plain ``register(registry)`` function.  ``registry``
is a :class:`Registrar`: the plugin adds provider and/or sink *kinds* to it, each with a
factory.

- A **provider factory** ``factory(settings: ProviderSettings, session)`` returns a
  :class:`Provider`; one that can stream is a :class:`StreamingProvider`; one holding
  resources may also be :class:`Closable`.  ``session`` is the daemon's shared
  ``aiohttp.ClientSession`` for upstream calls.
- A **sink factory** ``factory(settings: SinkSettings, session)`` returns a :class:`Sink`
  (``session`` is the webhook session, whose resolver applies the webhook target policy).
  Helpers for HTTP sinks are in ``j1mskyd.sinks``, for HTTP providers in
  ``j1mskyd.provider_http``.

What a plugin may do: raise in a factory to refuse its settings (the provider is then
unavailable, the webhook refused, with the message); raise :class:`ProviderError` or
:class:`SinkError` from a call to report a failure; log; use the session it is given.

What a plugin may not do, and what the daemon does instead:

- block the event loop (no ``requests``, no ``time.sleep``; file I/O in an executor);
- retry, back off, break circuits, fall back, pace or count costs: the runtime and the
  webhook worker do that from the error alone;
- send anywhere but the configured URL, or follow redirects (a sink);
- log or return the API key or the webhook secret;
- rely on finishing a call: every call is bounded on the daemon's side (a provider call by
  ``request.timeout`` plus :data:`TIMEOUT_GRACE`, a sink delivery and a ``close`` by
  ``[plugins] call_timeout``) and cancelled when the bound passes;
- use the event loop in a factory: a factory runs on a thread of its own (it cannot block the
  loop), is awaited for ``[plugins] call_timeout`` seconds and then abandoned, its provider
  unavailable or its webhook refused; it builds its object and returns (a plain function or
  class, not ``async def``).

The guards of the loader keep untrusted writers out; they are not a sandbox: plugin code
runs with the daemon's privileges.  Hooks (the methods of the Protocols below) are listed in
docs/plugins.md; tests/test_plugin_api.py fails when one is added without a doc entry and a
test named ``test_hook_<protocol>_<method>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Literal, Protocol, NotRequired, TypedDict, Union, runtime_checkable

from .frozen import built_in_place

__all__ = [
    "J1MSKY_PLUGIN_API", "TIMEOUT_GRACE", "ERROR_KINDS", "RETRYABLE_KINDS",
    "TextBlock", "ToolCall", "ToolResult", "Block", "Message", "Tool", "ToolChoice", "conversation",
    "CompletionRequest", "CompletionResult", "ProviderError", "ProviderSettings", "SinkError", "SinkSettings",
    "Provider", "StreamingProvider", "Closable", "Sink", "Registrar", "ProviderFactory", "SinkFactory", "implements",
]

#: The one API version this daemon speaks; a plugin declaring another is refused unloaded.
J1MSKY_PLUGIN_API = 1

#: Seconds the daemon waits past ``request.timeout`` before it cancels a provider call
#: itself, so a plugin that honours the timeout reports it in its own words first.
TIMEOUT_GRACE = 1.0


# -- providers: what they get and return ---------------------------------------------------------

# A conversation, in one shape whatever wire format it came in (OpenAI's chat completions or
# Anthropic's messages at the front door) and whatever format the provider speaks upstream.
# Anthropic's shape is the model: the system text apart, two roles, each message a list of
# blocks; OpenAI's ``tool`` messages are a user message's ToolResult blocks.

@built_in_place
@dataclass(frozen=True, slots=True)
class TextBlock:
    text: str


@built_in_place
@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model asked for (an assistant block).  ``arguments`` is the JSON text of the
    arguments object as the model wrote it (OpenAI's form; Anthropic's ``input`` object is
    written compactly as JSON), so a round trip gives back the model's own words."""

    id: str
    name: str
    arguments: str = "{}"


@built_in_place
@dataclass(frozen=True, slots=True)
class ToolResult:
    """What the caller's tool answered to the call ``tool_call_id`` (a user block)."""

    tool_call_id: str
    content: str
    is_error: bool = False


Block = Union[TextBlock, ToolCall, ToolResult]


@built_in_place
@dataclass(frozen=True, slots=True)
class Message:
    role: Literal["user", "assistant"]
    content: tuple[Block, ...]

    @property
    def text(self) -> str:
        """The message's text blocks, joined."""
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; ``parameters`` is its JSON Schema (an object schema)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@built_in_place
@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``auto``: the model decides; ``none``: no tool; ``required``: some tool; ``tool``: the tool ``name``."""

    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None


@built_in_place
@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """One provider call.  An agent's call sets ``prompt`` (its task) and leaves ``messages``
    empty; a call through the OpenAI/Anthropic front door sets ``messages`` (the whole
    conversation) and also ``prompt``, the conversation's text flattened, so a plugin written
    before ``messages`` existed still answers something sensible.  Read the conversation with
    :func:`conversation`.  The optional sampling fields are None/empty when the caller did not
    set them: send the upstream nothing for them then.  A plugin that cannot honour a field that
    is set raises ``ProviderError(kind="bad_request")`` naming it, rather than ignore it."""

    model: str                 # the upstream model id, e.g. "claude-sonnet-4-6"
    prompt: str                # the agent's task
    max_tokens: int = 1024
    system: str | None = None
    timeout: float = 300.0     # seconds this call may take at most
    agent_id: str = ""
    messages: tuple[Message, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    # OpenAI's {"type": "text" | "json_object" | "json_schema", "json_schema": {...}}.
    response_format: dict[str, Any] | None = None
    user: str | None = None    # an end-user id the caller passes on (OpenAI ``user``, Anthropic metadata.user_id)


def conversation(request: CompletionRequest) -> tuple[Message, ...]:
    """The request's messages; an agent's call is one user message, its prompt."""
    return request.messages or (Message("user", (TextBlock(request.prompt),)),)


@built_in_place
@dataclass(frozen=True, slots=True)
class CompletionResult:
    """An answer.  ``finish_reason`` uses OpenAI's words: ``stop``, ``length`` (max_tokens
    reached), ``tool_calls`` (the answer asks for ``tool_calls``), ``content_filter``; another
    upstream word passes through as it is."""

    text: str
    input_tokens: int
    output_tokens: int
    model: str = ""
    finish_reason: str = "stop"
    tool_calls: tuple[ToolCall, ...] = ()


# ProviderError.kind values.  Retryable kinds count as provider failures for the
# circuit breaker; "auth" is not retried but makes the runtime fall back, since a
# provider that refuses our key is as good as down; "bad_request" fails the agent.
RETRYABLE_KINDS = frozenset({"rate_limited", "server_error", "timeout", "connection"})
ERROR_KINDS = RETRYABLE_KINDS | {"auth", "bad_request", "invalid_response"}


class ProviderError(Exception):
    """An upstream call failed.  ``status`` is the upstream HTTP status if any."""

    def __init__(
        self,
        message: str,
        *,
        kind: str = "server_error",
        status: int | None = None,
        retry_after: float | None = None,
        usage: tuple[int, int] | None = None,
    ) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown ProviderError kind {kind!r}")
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        # (input_tokens, output_tokens) the upstream reported for a call it billed although
        # the answer is unusable (a 2xx without content): the runtime records that cost and
        # gives later attempts only what is left of the agent's reservation.
        self.usage = usage

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS

    def __repr__(self) -> str:
        return f"ProviderError({self.message!r}, kind={self.kind!r}, status={self.status!r})"


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """What a provider factory is given (built from ``[providers.<name>]`` in config).

    ``api_key`` is resolved from the environment or the secrets file at load time and
    must never be logged or returned by the API.
    """

    name: str
    plugin: str
    base_url: str = ""
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 120.0
    max_concurrency: int = 4
    hourly_limit: int = 100
    options: dict[str, Any] = field(default_factory=dict)


# -- sinks: what they get and raise ---------------------------------------------------------------

class SinkSettings(TypedDict):
    """What a sink factory is given, once per webhook (a plain dict)."""

    webhook_id: str
    url: str
    secret: str      # signs the body (the http sink); never logged
    # The webhook's custom headers (POST /webhooks "headers"), to send with each delivery; their
    # values may be tokens for the receiver: never logged.  Absent from an older daemon.
    headers: NotRequired[dict[str, str]]
    # Opens a local file to append to, as the daemon's [webhooks] file_sink_dirs allow, and returns
    # its descriptor (PermissionError with the reason anywhere else): a sink that writes local
    # files opens them only through this.  Absent from a daemon before it.
    open_file: NotRequired[Callable[[str], int]]


class SinkError(Exception):
    """A delivery failed; ``status`` is the receiver's HTTP status if any.  The worker
    retries with backoff (so does it for any other exception)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# -- the hooks ----------------------------------------------------------------------------------
# runtime_checkable: the loader and the runtime ask ``isinstance(obj, Protocol)`` for a
# capability (methods present) instead of probing with getattr.

@runtime_checkable
class Provider(Protocol):
    """What a provider factory returns."""

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        """One attempt: the answer, or :class:`ProviderError` (anything else counts as a
        plugin bug and is retried like a server error)."""
        ...


@runtime_checkable
class StreamingProvider(Provider, Protocol):
    """A provider that can also stream; used instead of ``complete`` while a live reader
    wants ``agent.output``."""

    def stream(self, request: CompletionRequest) -> AsyncIterator[str | CompletionResult]:
        """Text deltas as they come, then exactly one :class:`CompletionResult` (the whole
        text again, and any ``tool_calls``: those are not streamed)."""
        ...


@runtime_checkable
class Closable(Protocol):
    """A plugin object holding resources: ``close`` is awaited once at shutdown."""

    async def close(self) -> None:
        ...


@runtime_checkable
class Sink(Protocol):
    """What a sink factory returns."""

    async def deliver(self, payload: dict[str, Any], *, delivery_id: str, event: str) -> None:
        """Deliver one event: return on success, raise (:class:`SinkError`) on failure."""
        ...


ProviderFactory = Callable[[ProviderSettings, Any], Provider]
SinkFactory = Callable[[SinkSettings, Any], Sink]


class Registrar(Protocol):
    """What ``register(registry)`` is given.  Registrations take effect only if the whole
    plugin loads; a kind is ``^[a-z][a-z0-9_]*$`` and may be provided once per daemon."""

    api_version: int

    def add_provider(self, kind: str, factory: ProviderFactory) -> None:
        ...

    def add_sink(self, kind: str, factory: SinkFactory) -> None:
        ...


def implements(obj: Any, protocol: type) -> bool:
    """``isinstance`` against a runtime-checkable Protocol, and each of its hooks callable
    (``isinstance`` alone only checks that the attributes exist)."""
    return isinstance(obj, protocol) and all(callable(getattr(obj, name)) for name in hooks(protocol))


_PROTOCOL: Any = Protocol  # typing's special form, as the object that stands in every Protocol's MRO


def hooks(protocol: type) -> list[str]:
    """The hook (method) names a Protocol declares, its bases' included."""
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass is _PROTOCOL or klass is object or not getattr(klass, "_is_protocol", False):
            continue
        names |= {n for n, v in vars(klass).items() if callable(v) and not n.startswith("_")}
    return sorted(names)
