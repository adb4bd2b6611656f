"""What runs by itself while the daemon serves: the periodic jobs the lifecycle starts
(app.py, _agents_and_workers) and cancels at the stop.  Each survives its own failures."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from .keys import KeyService
from .ratelimit import BucketFile, RequestLimiter
from .runtime import AgentRuntime

__all__ = ["every", "maintain_hourly", "refresh_keys", "save_counters"]

log = logging.getLogger(__name__)
_PRUNE_EVERY = 60.0  # seconds between sweeps of full (forgettable) rate-limit buckets
_MAINTENANCE_EVERY = 3600.0


async def save_counters(interval: float, limiter: RequestLimiter, bucket_file: BucketFile,
                        runtime: AgentRuntime) -> None:
    """Save the rate-limit counters every few seconds when they changed; prune now and then."""
    loop = asyncio.get_running_loop()
    last_prune = loop.time()
    failing = False
    while True:
        await asyncio.sleep(interval)
        if loop.time() - last_prune >= _PRUNE_EVERY:
            last_prune = loop.time()
            limiter.buckets.prune(lambda key: limiter.limit_for(key) or runtime.limit_for(key))
        if not limiter.buckets.changed:
            continue  # idle: no thread hop, no write
        try:
            await loop.run_in_executor(None, bucket_file.save_if_changed)
        except OSError as exc:  # a full disk must not stop the daemon; the next round retries
            # Said once per outage, not every few seconds into a log on the same full disk.
            log.log(logging.DEBUG if failing else logging.ERROR, "could not save rate-limit counters: %s "
                    "(retried every %g s)", exc, interval)
            failing = True
        else:
            if failing:
                log.info("rate-limit counters saved again")
            failing = False


async def maintain_hourly(purges: Sequence[Callable[[], Awaitable[object]]]) -> None:
    """Hourly: each retention job (expired agent data, audit entries, events...) in turn."""
    while True:
        for job in purges:
            try:
                await job()
            except Exception:  # noqa: BLE001 - retried next hour; never stops the daemon
                log.exception("maintenance job %s failed", getattr(job, "__qualname__", job))
        await asyncio.sleep(_MAINTENANCE_EVERY)


async def every(interval: float, job: Callable[[], Awaitable[object]], *, aligned: bool = False) -> None:
    """``job`` every ``interval`` seconds (the dashboard series' flush); ``aligned``: on the wall
    clock's multiples of it (on the minute).  A failure is logged and retried at the next round."""
    while True:
        await asyncio.sleep(interval - time.time() % interval if aligned else interval)
        try:
            await job()
        except Exception:  # noqa: BLE001 - retried next round; never stops the daemon
            log.exception("periodic job %s failed", getattr(job, "__qualname__", job))


async def refresh_keys(keys: KeyService, also: Sequence[Callable[[], Awaitable[object]]] = ()) -> None:
    """Pick up keys created or revoked by `j1mskyd keys ...`; write last-use times in batches.
    ``also``: more of the CLI's changes looked for at the same pace (the projects')."""
    while True:
        await keys.wait_refresh()  # faster while live streams watch their keys
        for refresh in (keys.refresh, *also):
            try:
                await refresh()
            except Exception:  # noqa: BLE001 - a failed refresh is retried; requests keep the last view
                log.exception("refreshing %s failed", getattr(refresh, "__qualname__", refresh))
