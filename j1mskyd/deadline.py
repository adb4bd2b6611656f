"""``asyncio.timeout`` for the agent runtime's hot path, at about half its cost.

Every running agent sits inside two time limits: its own deadline around the whole run, and the
daemon's bound around each provider call (plugins.bounded).  ``asyncio.timeout`` made those two
about 3.6 % of the instructions an agent costs (measured under callgrind: ~29,000 instructions
for one enter and exit on Python 3.11 with uvloop, of which a timer is ~7,000; the rest is the
``Timeout`` class, its two coroutines and its state machine).  :func:`within` keeps the timer
and the semantics and drops the rest:

* when the time runs out the task is cancelled; the cancellation is turned into ``error()``
  (``TimeoutError`` by default) only if it is this limit's and nobody else asked to cancel the
  task meanwhile (``Task.uncancel`` counts the requests, exactly as ``asyncio.timeout`` does);
* any other cancellation (a cancel by request, a stop) passes through as ``CancelledError``;
* the timer is stopped however the awaitable ends, so it can never fire afterwards.

Beside it, :func:`retrieved`: the done callback of the futures the runtime and the plugin
containment start and do not await.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["retrieved", "within"]

T = TypeVar("T")


class _Limit:
    """One armed limit: the task it cancels, the cancel requests it found on entry, its timer."""

    __slots__ = ("task", "cancelling", "handle", "fired", "mine")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.cancelling = task.cancelling()
        self.handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self.fired = False
        self.mine = False  # the cancellation that ended the awaitable was this limit's

    def fire(self) -> None:
        self.handle = None
        self.fired = True
        self.task.cancel()

    def disarm(self) -> None:
        """Stop the timer; once it fired, take back its cancel request (once) and note whether
        the task's cancellation was this limit's alone (as Timeout.__aexit__ does)."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        elif self.fired:
            self.fired = False
            self.mine = self.task.uncancel() <= self.cancelling


async def within(seconds: float, awaitable: Awaitable[T],
                 error: Callable[[], BaseException] = TimeoutError) -> T:
    """Await ``awaitable``; when ``seconds`` pass first, cancel it and raise ``error()``."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task(loop)
    if task is None:
        raise RuntimeError("within() must be used inside a task")
    limit = _Limit(task)
    limit.handle = loop.call_later(seconds, limit.fire) if seconds > 0 else loop.call_soon(limit.fire)
    try:
        return await awaitable
    except asyncio.CancelledError:
        limit.disarm()
        if limit.mine:
            raise error() from None
        raise
    finally:
        limit.disarm()


def retrieved(fut: asyncio.Future[Any]) -> None:
    """A done callback for a future nobody awaits (a write, a plugin call left behind): its
    outcome is taken, so asyncio never logs "exception was never retrieved"; a failure that
    mattered was logged where it happened."""
    if not fut.cancelled():
        fut.exception()
