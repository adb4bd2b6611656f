"""Built-in plugin ``offline``: a deterministic provider that never touches the network.

The answer is ``[offline:<model>] <first words of the prompt> (id <sha256 prefix>)``,
so the same request always gives the same text and it is obvious nothing real
answered.  Tokens are estimated as ``ceil(len(text) / 4)``, at least 1.

Options: ``delay`` (seconds to sleep per call, to simulate a slow upstream in
tests and benchmarks); ``fail`` (a ProviderError kind such as ``"server_error"``:
every call raises that error, to exercise retries and fallback).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from j1mskyd.plugin_api import (
    ERROR_KINDS,
    CompletionRequest,
    CompletionResult,
    ProviderError,
    ProviderSettings,
    Registrar,
)

J1MSKY_PLUGIN_API = 1

_SUMMARY_WORDS = 12


def _tokens(text: str) -> int:
    return max(1, -(-len(text) // 4))  # ceil without floats


class OfflineProvider:
    def __init__(self, settings: ProviderSettings, session: Any = None) -> None:
        delay = settings.options.get("delay", 0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            raise ValueError("options.delay must be a number of seconds >= 0")
        fail = settings.options.get("fail")
        if fail is not None and fail not in ERROR_KINDS:
            raise ValueError(f"options.fail must be one of {sorted(ERROR_KINDS)}")
        self._delay = float(delay)
        self._fail = fail
        self._name = settings.name

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._fail:
            raise ProviderError(f"{self._name} (offline): configured to fail with {self._fail}", kind=self._fail)
        words = request.prompt.split(None, _SUMMARY_WORDS)
        summary = " ".join(words[:_SUMMARY_WORDS]) + (" …" if len(words) > _SUMMARY_WORDS else "")
        digest = hashlib.sha256(f"{request.model}\0{request.system or ''}\0{request.prompt}".encode()).hexdigest()
        text = f"[offline:{request.model}] {summary} (id {digest[:12]})"
        finish = "stop"
        if _tokens(text) > request.max_tokens:  # honour max_tokens like a real model would
            text, finish = text[: max(1, request.max_tokens) * 4], "length"
        return CompletionResult(
            text=text,
            input_tokens=_tokens(request.prompt),
            output_tokens=_tokens(text),
            model=request.model,
            finish_reason=finish,
        )


def register(registry: Registrar) -> None:
    registry.add_provider("offline", OfflineProvider)
