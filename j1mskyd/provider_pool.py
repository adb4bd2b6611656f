"""Per-provider runtime state: the plugin instance, its concurrency slots and its breaker;
and :class:`SlotMaker`, which makes them at start and again at a config reload."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .breaker import CircuitBreaker, StateChanges
from .plugin_api import Closable, ProviderSettings, StreamingProvider, implements
from .plugins import PluginError, PluginRegistry, bounded, build_provider, off_loop

__all__ = ["ProviderSlot", "Releases", "SlotMaker"]

log = logging.getLogger(__name__)


class Releases:
    """Slots -> the scheduler: called whenever a slot frees room, so queued agents can start.

    Made in app.py before the slots, and given to each of them when they are made; the runtime,
    made later, subscribes its scheduler here (:meth:`subscribe`).  The slots thus know a
    callable, not the runtime, and nobody sets a slot's attributes after construction."""

    def __init__(self) -> None:
        self._listener: Callable[[], None] | None = None

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Once: a second, different listener is a wiring mistake (two runtimes on one pool)."""
        if self._listener is not None and self._listener != listener:
            raise RuntimeError("these provider slots already have a scheduler")
        self._listener = listener

    @property
    def listener(self) -> Callable[[], None] | None:
        return self._listener

    def __call__(self) -> None:
        if self._listener is not None:
            self._listener()


class ProviderSlot:
    """One provider: at most ``limit`` calls in flight, FIFO for those who wait.  ``released``
    is told each time a call gives its room back (shared by all the slots of an app)."""

    def __init__(self, settings: ProviderSettings, client: Any, breaker: CircuitBreaker,
                 error: str | None = None, released: Releases | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        self.client = client          # None when the plugin could not build it
        # Asked once: isinstance against a runtime-checkable Protocol walks its members each
        # time (tens of microseconds), and the client does not change.
        self.streams = client is not None and implements(client, StreamingProvider)
        self.error = error            # why client is None
        self.breaker = breaker
        self.limit = settings.max_concurrency
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.released = released if released is not None else Releases()
        self.calls = 0
        self._idle: asyncio.Event | None = None  # set by retire(): the slot's last call has ended

    @property
    def usable(self) -> bool:
        return self.client is not None

    def has_room(self) -> bool:
        return self.active < self.limit and not self._waiters

    def try_acquire(self) -> bool:
        if self.has_room():
            self.active += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # release() hands its slot over directly, active stays counted
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot arrived just as we were cancelled: pass it on
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.active -= 1
        if self._idle is not None and self.active == 0:
            self._idle.set()
        self.released()

    def resize(self, settings: ProviderSettings) -> None:
        """New settings that need no new client (``max_concurrency``, ``hourly_limit``): a
        larger limit lets those who wait for room in now."""
        self.settings, self.limit = settings, settings.max_concurrency
        while self._waiters and self.active < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)

    async def retire(self, timeout: float) -> None:
        """Out of the configuration (a reload removed or rebuilt it): the calls that hold it
        finish on it, then its client is closed.  Nothing new acquires a retired slot (the
        runtime routes by the new configuration's slots only)."""
        if self.active > 0 or self._waiters:
            self._idle = asyncio.Event()
            await self._idle.wait()
        await self.close(timeout)

    def snapshot(self) -> dict[str, Any]:
        return {"plugin": self.settings.plugin, "active": self.active, "max_concurrency": self.limit,
                "waiting": len(self._waiters), "calls": self.calls, "available": self.usable,
                "error": self.error, "circuit_breaker": self.breaker.snapshot()}

    async def close(self, timeout: float) -> None:
        """The plugin's ``close`` if it has one, for ``timeout`` seconds at most."""
        if implements(self.client, Closable):
            try:
                async with bounded(timeout, lambda: TimeoutError(f"close took over {timeout:g} s")):
                    await self.client.close()
            except Exception:  # a plugin failing at close must not stop shutdown
                log.exception("provider %s failed to close", self.name)


class SlotMaker:
    """Makes provider slots, at start and at a reload: each factory runs on a thread of its
    own for ``[plugins] call_timeout`` seconds at most (plugins.off_loop), so one that hangs
    leaves its provider unavailable instead of holding the start (or the reload).  Every slot
    made shares ``released`` (the runtime's scheduler) and ``changes`` (the breakers' count)."""

    def __init__(self, registry: PluginRegistry, session: Any, changes: StateChanges, call_timeout: float,
                 clock: Callable[[], float] | None = None) -> None:
        self.registry, self.session, self.changes, self.call_timeout = registry, session, changes, call_timeout
        self.released = Releases()  # the runtime's scheduler subscribes to it when it is made
        self._timed = {} if clock is None else {"clock": clock}

    def known(self, plugin: str) -> bool:
        """Is there a provider plugin of this kind?"""
        return plugin in self.registry.provider_kinds()

    async def make(self, providers: Iterable[ProviderSettings], threshold: int,
                   reset_seconds: float) -> dict[str, ProviderSlot]:
        """A slot per provider, by name, the factories run at once."""
        async def slot(settings: ProviderSettings) -> ProviderSlot:
            client, error = None, None
            try:
                client = await off_loop(self.registry, "provider", settings.plugin,
                                        functools.partial(build_provider, self.registry, settings, self.session),
                                        self.call_timeout)
            except PluginError as exc:
                error = str(exc)
                log.error("provider %s unavailable: %s", settings.name, error)
            breaker = CircuitBreaker(threshold, reset_seconds, changes=self.changes, **self._timed)
            return ProviderSlot(settings, client, breaker, error, self.released)

        settings = list(providers)
        built = await asyncio.gather(*(slot(s) for s in settings))
        return {s.name: b for s, b in zip(settings, built)}
