"""The optional fields a model call carries besides its messages and tools: ``temperature``,
``top_p``, ``stop``, ``response_format`` and ``user``, named the same on a front-door
``ChatRequest`` and on a provider's ``CompletionRequest``.  One place writes them into a JSON
body, each only when it is set: the upstream's body (``openai_compat``) and the chat call's
canonical record (``chat_service.canonical_json``)."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["put_sampling_fields"]


class _Sampled(Protocol):
    @property
    def temperature(self) -> float | None: ...
    @property
    def top_p(self) -> float | None: ...
    @property
    def stop(self) -> tuple[str, ...]: ...
    @property
    def response_format(self) -> dict[str, Any] | None: ...
    @property
    def user(self) -> str | None: ...


def put_sampling_fields(body: dict[str, Any], request: _Sampled) -> None:
    """Add the fields ``request`` sets to ``body``, in this order (``stop`` as a list).  One by
    one rather than a dict filtered: this runs on every call's way upstream and to its insert."""
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = list(request.stop)
    if request.response_format is not None:
        body["response_format"] = request.response_format
    if request.user is not None:
        body["user"] = request.user
