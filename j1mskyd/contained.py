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

from .deadline import retrieved
from .plugin_api import Closable, CompletionRequest, CompletionResult, StreamingProvider, implements

__all__ = ["ABANDON_AFTER", "ContainedProvider", "ContainedSink", "PluginCrash", "contained", "contained_provider"]

log = logging.getLogger(__name__)
T = TypeVar("T")

ABANDON_AFTER = 1.0  # seconds a cancelled plugin call has to end before the daemon goes on without it


class PluginCrash(Exception):
    """A plugin raised SystemExit or KeyboardInterrupt: a plugin bug, not the daemon's end."""


async def _guarded(call: Awaitable[T]) -> T:
    try:
        return await call
    except (SystemExit, KeyboardInterrupt) as exc:
        raise PluginCrash(f"the plugin raised {type(exc).__name__}") from None


async def contained(call: Awaitable[T], what: str) -> T:
    """``await call``, in a task of its own (see the module's docstring)."""
    task = asyncio.ensure_future(_guarded(call))
    task.add_done_callback(retrieved)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await _leave(task, what)
        raise


async def _leave(task: asyncio.Task[Any], what: str) -> None:
    """Cancel ``task`` and give it :data:`ABANDON_AFTER` seconds to end; then leave it behind:
    its coroutine closed where it waits (GeneratorExit, which a plugin that catches
    CancelledError lets through) and the task out of asyncio's list, so that the daemon's exit,
    which cancels every task left and waits for them, is not held by it.  Whatever the
    plugin's cleanup raises is logged: the caller's own outcome (its CancelledError) goes on."""
    task.cancel()
    try:
        await asyncio.wait((task,), timeout=ABANDON_AFTER)
    finally:
        if not task.done():
            log.error("%s went on after it was cancelled; left behind after %g s (it may still hold "
                      "what it opened)", what, ABANDON_AFTER)
            coro = task.get_coro()
            try:
                if coro is not None and hasattr(coro, "close"):
                    coro.close()
            except BaseException:  # noqa: BLE001 - a plugin's finally raising, or ignoring GeneratorExit
                log.exception("a left-behind plugin call failed as it was closed")
            unregister = getattr(asyncio.tasks, "_unregister_task", None)
            if unregister is not None:
                unregister(task)


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
        """The plugin's whole stream is read by a task of its own into a queue, which this
        reads: when the reader is cancelled or stops early, that task is cancelled and, if it
        goes on, left behind like any other call (its generator with it, never closed from here:
        a generator left "running" cannot be, and its aclose() raised in place of the cancel)."""
        queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()

        async def pump() -> None:
            async for item in self._inner.stream(request):
                queue.put_nowait((True, item))

        reader = asyncio.ensure_future(_guarded(pump()))
        reader.add_done_callback(lambda t: queue.put_nowait((False, t)))
        reader.add_done_callback(retrieved)
        try:
            while True:
                more, item = await queue.get()
                if not more:
                    item.result()  # the plugin's exception, if it raised
                    return
                yield item
        finally:
            if not reader.done():  # cancelled, or the reader stopped early
                await _leave(reader, self._what)


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
