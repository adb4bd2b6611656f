"""The contract between the agent runtime and provider plugins.

A provider plugin turns a :class:`CompletionRequest` into a :class:`CompletionResult`
or raises :class:`ProviderError`.  The runtime decides what to do with an error
(retry, fall back, fail) from ``retryable`` and ``kind`` alone, so plugins never
need to know about retries, breakers or budgets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str                 # the upstream model id, e.g. "claude-sonnet-4-6"
    prompt: str                # the agent's task
    max_tokens: int = 1024
    system: str | None = None
    timeout: float = 300.0     # seconds this call may take at most
    agent_id: str = ""


@dataclass(frozen=True, slots=True)
class CompletionResult:
    text: str
    input_tokens: int
    output_tokens: int
    model: str = ""
    finish_reason: str = "stop"


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


class Provider(Protocol):
    """What a provider factory returns.  ``close`` is optional."""

    async def complete(self, request: CompletionRequest) -> CompletionResult: ...


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
