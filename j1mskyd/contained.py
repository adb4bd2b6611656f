"""A drop-in plugin's calls, each in a task of its own that the daemon can walk away from.

Every plugin call has a timeout on the daemon's side (plugins.bounded, deadline.within), which
cancels the call and then waits for it to end.  A plugin that catches the cancellation and goes
on (``except CancelledError: pass`` around a sleep) held its agent, the agent's cancel and the
daemon's stop for ever.  So a drop-in plugin's ``complete``, ``stream``, ``deliver`` and
``close`` run in a task of their own: when the caller is cancelled (its timeout, a cancel, a
stop) that task is cancelled too and waited for :data:`ABANDON_AFTER` seconds at most, then
left behind, logged, and the caller goes on.  ``SystemExit`` and ``KeyboardInterrupt`` raised
by a plugin become :class:`PluginCrash`, a plugin bug like any other exception, where they
stopped the daemon (and the agent that raised them stopped each restart again).

The built-in plugins are called directly (plugins.build_provider wraps drop-ins only): a task
per call would be a cost on every agent for code the daemon ships and tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from .plugin_api import Closable, CompletionRequest, CompletionResult, StreamingProvider, implements

__all__ = ["ABANDON_AFTER", "ContainedProvider", "ContainedSink", "PluginCrash", "contained", "contained_provider"]

log = logging.getLogger(__name__)
T = TypeVar("T")

ABANDON_AFTER = 1.0  # seconds a cancelled plugin call has to end before the daemon goes on without it
_END = object()  # a stream's end, returned from its task (StopAsyncIteration cannot cross one)


class PluginCrash(Exception):
    """A plugin raised SystemExit or KeyboardInterrupt: a plugin bug, not the daemon's end."""


async def _guarded(call: Awaitable[T]) -> T:
    try:
        return await call
    except (SystemExit, KeyboardInterrupt) as exc:
        raise PluginCrash(f"the plugin raised {type(exc).__name__}") from None


async def _next(iterator: Any) -> Any:
    try:
        return await _guarded(iterator.__anext__())
    except StopAsyncIteration:
        return _END


async def contained(call: Awaitable[T], what: str) -> T:
    """``await call``, in a task of its own (see the module's docstring)."""
    task = asyncio.ensure_future(_guarded(call))
    task.add_done_callback(_retrieve)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        try:
            await asyncio.wait((task,), timeout=ABANDON_AFTER)
        finally:
            if not task.done():
                log.error("%s went on after it was cancelled; left behind after %g s (it may still hold "
                          "what it opened)", what, ABANDON_AFTER)
                _close(task)
        raise


def _close(task: asyncio.Task[Any]) -> None:
    """Close the left-behind call's coroutine where it waits (GeneratorExit, which a plugin that
    catches CancelledError lets through): its task then ends at its next wake-up or cancel, so
    the daemon's exit, which cancels every task left and waits for them, is not held for ever."""
    coro = task.get_coro()
    if coro is not None and hasattr(coro, "close"):
        try:
            coro.close()
        except RuntimeError:  # it caught GeneratorExit too (a bare except): nothing more to do
            log.error("a plugin call ignores GeneratorExit as well; the daemon's exit may wait for it")


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Its outcome was the caller's, or nobody's once abandoned: never 'exception not retrieved'."""
    if not task.cancelled():
        task.exception()


class ContainedProvider:
    """A drop-in provider; ``close`` does nothing when the plugin has none."""

    def __init__(self, inner: Any, name: str) -> None:
        self._inner = inner
        self._what = f"provider {name!r}"

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        return await contained(self._inner.complete(request), self._what)

    async def close(self) -> None:
        if implements(self._inner, Closable):
            await contained(self._inner.close(), self._what + " close()")


class _ContainedStreaming(ContainedProvider):
    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | CompletionResult]:
        iterator = self._inner.stream(request).__aiter__()
        try:
            while (item := await contained(_next(iterator), self._what)) is not _END:
                yield item
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await contained(aclose(), self._what)


def contained_provider(inner: Any, name: str) -> ContainedProvider:
    return _ContainedStreaming(inner, name) if implements(inner, StreamingProvider) else ContainedProvider(inner, name)


class ContainedSink:
    def __init__(self, inner: Any, kind: str) -> None:
        self._inner = inner
        self._what = f"sink {kind!r}"

    async def deliver(self, payload: dict[str, Any], *, delivery_id: str, event: str) -> None:
        await contained(self._inner.deliver(payload, delivery_id=delivery_id, event=event), self._what)

    async def close(self) -> None:
        if implements(self._inner, Closable):
            await contained(self._inner.close(), self._what + " close()")
