"""Token buckets (capacity = limit, refill = limit / window) and their persistence.

Buckets are keyed by strings such as ``provider:anthropic``, ``key:<key_id>:spawn`` or
``ip:192.0.2.7:spawn``.  They live in memory; :class:`BucketFile` writes them to a
JSON file in the state dir (temp file, fsync, rename) every few seconds *when
something changed* and at shutdown, and reads them back at start, so a restart keeps
the counters and a kill -9 loses at most one interval.

Time is wall-clock (``time.time``) on purpose: a bucket saved before a reboot must
refill by the time that really passed while the daemon was down.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import NamedTuple

from .durable import fsync_dir

__all__ = ["BucketFile", "Buckets", "Decision", "ENDPOINT_CLASSES", "Limit", "RequestLimiter", "iso_second"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Limit:
    limit: int          # bucket capacity, and requests per window
    window: float       # seconds

    @property
    def rate(self) -> float:
        return self.limit / self.window


class Decision(NamedTuple):
    """A bucket's answer.  A named tuple (immutable, like the frozen dataclass it was): three
    are made per agent (its request, its provider's bucket taken and looked at), and a frozen
    dataclass's __init__ sets each field through object.__setattr__ (~9,000 instructions
    against ~2,000)."""

    allowed: bool
    limit: int
    remaining: int
    reset: float        # unix time at which the bucket is full again
    retry_after: float  # seconds until one token is available (0 when allowed)

    @property
    def reset_at(self) -> str:
        return iso_second(math.ceil(self.reset))


_new_tuple = tuple.__new__
_ISO_CACHE: dict[int, str] = {}


def iso_second(ts: int) -> str:
    """ISO 8601 of a whole second, cached: every API response carries one (hot path)."""
    text = _ISO_CACHE.get(ts)
    if text is None:
        if len(_ISO_CACHE) > 4096:
            _ISO_CACHE.clear()
        text = _ISO_CACHE[ts] = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return text


CALL_SLOTS = 60  # a window's call count is kept in this many slots (a minute each for an hour)


class Buckets:
    """All token buckets of the daemon, each ``key -> [tokens, updated_at]``."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._state: dict[str, list[float]] = {}
        self.changed = False
        self.hits = 0  # refusals, for /metrics
        # Bumped whenever tokens are spent or loaded: only then can a bucket hold fewer
        # tokens than a moment ago (a cache of a full bucket's headers keys on it).
        self.spends = 0
        # Calls let through per bucket, counted in slots of 1/CALL_SLOTS of its window: what
        # "used" means to a reader (calls in the last window), where the bucket's level is only
        # what may be sent now.  In memory only: a restart starts the count again.
        self._calls: dict[str, dict[int, int]] = {}

    def _refill(self, key: str, limit: Limit, now: float) -> list[float]:
        state = self._state.get(key)
        if state is None:
            state = self._state[key] = [float(limit.limit), now]
            return state
        tokens, updated = state
        capacity = float(limit.limit)
        if now > updated:
            # limit.limit / limit.window is limit.rate, without the property's call (hot path)
            state[0] = min(capacity, tokens + (now - updated) * (limit.limit / limit.window))
            state[1] = now
        state[0] = min(state[0], capacity)  # the configured limit may have shrunk
        return state

    def _decision(self, allowed: bool, state: list[float], limit: Limit, now: float) -> Decision:
        tokens = state[0]
        rate = limit.limit / limit.window
        reset = now + (limit.limit - tokens) / rate
        retry = 0.0 if allowed else (1.0 - tokens) / rate
        # tuple.__new__ directly: Decision(...) goes through the named tuple's Python __new__.
        return _new_tuple(Decision, (allowed, limit.limit, max(int(tokens), 0), reset, retry))

    def _count(self, key: str, limit: Limit, now: float) -> None:
        """One more call let through ``key``'s bucket (for calls())."""
        width = limit.window / CALL_SLOTS
        slots = self._calls.get(key)
        if slots is None:  # not setdefault(key, {}): that makes a dict per call
            slots = self._calls[key] = {}
        slot = int(now // width)
        slots[slot] = slots.get(slot, 0) + 1
        if len(slots) > CALL_SLOTS + 1:  # bounded: drop the slots older than the window
            for old in [s for s in slots if s <= slot - CALL_SLOTS]:
                del slots[old]

    def calls(self, key: str, limit: Limit) -> int:
        """Calls let through ``key``'s bucket in the last window of ``limit`` (to a slot: the
        window is counted in CALL_SLOTS slots)."""
        slots = self._calls.get(key)
        if not slots:
            return 0
        current = int(self.clock() // (limit.window / CALL_SLOTS))
        return sum(n for s, n in slots.items() if s > current - CALL_SLOTS)

    def used(self, key: str, limit: Limit) -> int:
        """Calls in the last window: the count, and after a restart (counts are not saved) at
        least what the saved bucket still lacks, which no more calls than that window's
        can explain (the bucket refills whole within one window)."""
        return max(self.calls(key, limit), limit.limit - self.peek(key, limit).remaining)

    def take(self, key: str, limit: Limit, cost: float = 1.0) -> Decision:
        """Spend ``cost`` tokens if there are enough; say what is left either way."""
        now = self.clock()
        state = self._refill(key, limit, now)
        allowed = state[0] >= cost
        if allowed:
            state[0] -= cost
            self.changed = True
            self.spends += 1
            self._count(key, limit, now)
        else:
            self.hits += 1
        return self._decision(allowed, state, limit, now)

    def take_all(self, keys: tuple[str, ...], limit: Limit) -> Decision:
        """One token from every bucket in ``keys``, or from none; the tightest answer."""
        return self.take_each(tuple((k, limit) for k in keys))

    def take_each(self, buckets: tuple[tuple[str, Limit], ...]) -> Decision:
        """take_all() for buckets of their own limits (a key's own beside its address's): the
        answer describes the bucket with the fewest tokens, in its own limit."""
        now = self.clock()
        # One loop, no comprehension, min() or lambda: this runs for every API request.
        states = []
        tightest: list[float] | None = None
        limit = None
        for key, each in buckets:
            state = self._refill(key, each, now)
            states.append(state)
            if tightest is None or state[0] < tightest[0]:  # the first of equals, as min() takes
                tightest, limit = state, each
        if tightest is None or limit is None:
            raise ValueError("take_each() of no bucket")
        if tightest[0] < 1.0:
            self.hits += 1
            return self._decision(False, tightest, limit, now)
        for state, (key, each) in zip(states, buckets):
            state[0] -= 1.0
            self._count(key, each, now)
        self.changed = True
        self.spends += 1
        return self._decision(True, tightest, limit, now)

    def peek_all(self, keys: tuple[str, ...], limit: Limit) -> Decision:
        """What take_all() would answer, spending nothing and storing nothing."""
        return self.peek_each(tuple((k, limit) for k in keys))

    def peek_each(self, buckets: tuple[tuple[str, Limit], ...]) -> Decision:
        """What take_each() would answer, spending nothing and storing nothing."""
        now = self.clock()
        best: tuple[float, Limit] | None = None
        for key, limit in buckets:
            tokens = self._level(key, limit, now)
            if best is None or tokens < best[0]:
                best = (tokens, limit)
        assert best is not None  # never asked about no bucket
        tokens, limit = best
        return self._decision(tokens >= 1.0, [tokens, now], limit, now)

    def peek(self, key: str, limit: Limit) -> Decision:
        """peek_each() of one bucket, without its tuples and loop: the runtime asks about its
        provider's bucket at every spawn (runtime.provider_tokens)."""
        now = self.clock()
        tokens = self._level(key, limit, now)
        return self._decision(tokens >= 1.0, [tokens, now], limit, now)

    def _level(self, key: str, limit: Limit, now: float) -> float:
        """The tokens ``key``'s bucket holds at ``now``, refilled, without storing anything."""
        state = self._state.get(key)
        if state is None:
            return float(limit.limit)
        return min(state[0] + max(now - state[1], 0.0) * limit.rate, float(limit.limit))

    def prune(self, limits: Callable[[str], Limit | None]) -> int:
        """Forget buckets that have refilled completely: they equal a fresh one.

        Keeps memory bounded when many client IPs pass by.
        """
        now = self.clock()
        gone = []
        for key, (tokens, updated) in self._state.items():
            limit = limits(key)
            if limit is None or tokens + (now - updated) * limit.rate >= limit.limit:
                gone.append(key)
        for key in gone:
            del self._state[key]
        # A full bucket may still have calls in its window: their count goes once the window passed.
        for key in [k for k in self._calls if k not in self._state]:
            limit = limits(key)
            if limit is None or not self.calls(key, limit):
                del self._calls[key]
        # Not a change worth a write: a full bucket and a missing one behave the same
        # after a reload, and an SD card should not be rewritten for housekeeping.
        return len(gone)

    def __len__(self) -> int:
        return len(self._state)


    # -- persistence ------------------------------------------------------------------
    def dump(self) -> dict[str, list[float]]:
        """A snapshot of every bucket.  BucketFile calls this from an executor thread while the
        event loop keeps adding buckets: copy first (dict.copy and tuple() run under the GIL,
        without Python code in between), never iterate the live dict, which would raise
        "dictionary changed size during iteration" and kill the saver."""
        snapshot = [(k, tuple(v)) for k, v in self._state.copy().items()]
        return {k: [round(v[0], 6), round(v[1], 3)] for k, v in snapshot}

    def load(self, data: object) -> int:
        if not isinstance(data, dict):
            return 0
        loaded = 0
        now = self.clock()
        self.spends += 1
        for key, value in data.items():
            if (isinstance(key, str) and isinstance(value, list) and len(value) == 2
                    and all(isinstance(x, (int, float)) and math.isfinite(x) for x in value)):
                # A time stamp from the future (saved under a clock that was ahead, e.g. a Pi
                # without RTC) would freeze the bucket until then: refill from now instead.
                self._state[key] = [max(float(value[0]), 0.0), min(float(value[1]), now)]
                loaded += 1
        return loaded


class BucketFile:
    """Atomic JSON persistence of :class:`Buckets`; writes only when they changed."""

    VERSION = 1
    TEMP_PREFIX = ".ratelimits."  # save_if_changed's temp files; one left behind means a kill mid-save

    def __init__(self, path: str, buckets: Buckets) -> None:
        self.path = path
        self.buckets = buckets
        self.writes = 0

    def load(self) -> int:
        """Read the counters back (at start, with the state dir's lock held: no save can be
        under way), after removing the temp files of saves that a kill -9 interrupted."""
        self.remove_orphans()
        try:
            with open(self.path, "rb") as fh:
                data = json.loads(fh.read())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            # A damaged file must not keep the daemon down; limits start full.
            log.warning("ignoring unreadable rate-limit state %s: %s", self.path, exc)
            return 0
        if not isinstance(data, dict) or data.get("version") != self.VERSION:
            log.warning("ignoring rate-limit state %s: unknown format", self.path)
            return 0
        return self.buckets.load(data.get("buckets"))

    def remove_orphans(self) -> int:
        directory = os.path.dirname(self.path) or "."
        removed = 0
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith(self.TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        continue
                    removed += 1
        if removed:
            log.info("removed %d temp files of interrupted rate-limit saves in %s", removed, directory)
        return removed

    def save_if_changed(self) -> bool:
        if not self.buckets.changed:
            return False
        self.buckets.changed = False  # before the snapshot: a change made meanwhile is saved next time
        try:
            payload = json.dumps({"version": self.VERSION, "saved_at": round(self.buckets.clock(), 3),
                                  "buckets": self.buckets.dump()}, separators=(",", ":")).encode()
        except BaseException:
            self.buckets.changed = True
            raise
        directory = os.path.dirname(self.path) or "."
        fd, tmp = tempfile.mkstemp(prefix=self.TEMP_PREFIX, dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            self.buckets.changed = True
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        fsync_dir(directory)  # the rename itself: a power cut right after could otherwise undo it
        self.writes += 1
        return True


# Endpoint classes of the J1MSKY API reference's "Rate Limits" table; the HTTP layer maps routes to them.
ENDPOINT_CLASSES = ("spawn", "agent_read", "agents_list", "system", "other")


class RequestLimiter:
    """Per-key and per-IP request limits by endpoint class, on the shared :class:`Buckets`.

    A key may have limits of its own (``own``: {class: requests per window}, the key's
    ``limits``): its bucket in such a class is ``key:<id>:<class>@<n>`` with capacity n, over
    the same window; its address's bucket keeps the class's limit.  A new limit of its own
    starts a new, full bucket."""

    def __init__(self, buckets: Buckets, limits: dict[str, Limit], per_ip: bool = True) -> None:
        self.buckets = buckets
        self.limits = limits
        self.per_ip = per_ip

    def set_limits(self, limits: dict[str, Limit], per_ip: bool) -> None:
        """The ``[limits]`` of a reloaded configuration.  The counters stay: a bucket keeps
        what it used and refills at the new rate up to the new capacity."""
        self.limits, self.per_ip = limits, per_ip
        self.buckets.spends += 1  # headers cached for full buckets (RateHeaders) show the old limit

    def limit_for(self, bucket_key: str) -> Limit | None:
        """The limit of a ``key:...:<class>[@n]`` or ``ip:...:<class>`` bucket (for pruning)."""
        if bucket_key.startswith(("key:", "ip:")):
            cls, _, own = bucket_key.rsplit(":", 1)[1].partition("@")
            limit = self.limits.get(cls)
            if limit is not None and own.isdigit():
                return Limit(int(own), limit.window)
            return limit
        return None

    def _buckets(self, endpoint_class: str, key_id: str, ip: str | None,
                 own: Mapping[str, int] | None) -> tuple[tuple[str, Limit], ...]:
        limit = self.limits[endpoint_class]
        n = own.get(endpoint_class) if own else None
        if n is None:
            key = ((f"key:{key_id}:{endpoint_class}", limit),)
        else:
            key = ((f"key:{key_id}:{endpoint_class}@{n}", Limit(n, limit.window)),)
        if self.per_ip and ip:
            return (*key, (f"ip:{ip}:{endpoint_class}", limit))
        return key

    def check(self, endpoint_class: str, key_id: str, ip: str | None,
              own: Mapping[str, int] | None = None) -> Decision:
        """Spend one request from the key's bucket and the IP's, only if both allow it.

        The answer describes the tighter of the two, so the headers never promise more
        than the client really has.  ``own``: the key's own limits by class.
        """
        return self.buckets.take_each(self._buckets(endpoint_class, key_id, ip, own))

    def peek(self, endpoint_class: str, key_id: str, ip: str | None,
             own: Mapping[str, int] | None = None) -> Decision:
        """The same answer as check() would give, without spending anything."""
        return self.buckets.peek_each(self._buckets(endpoint_class, key_id, ip, own))

    def status(self, key_id: str, own: Mapping[str, int] | None = None) -> dict[str, dict[str, object]]:
        """What the key has left in each class (for GET /rate-limits), in its own limits."""
        out = {}
        for cls in self.limits:
            (bucket, limit), *_ = self._buckets(cls, key_id, None, own)
            d = self.buckets.peek(bucket, limit)
            out[cls] = {"used": self.buckets.used(bucket, limit), "limit": limit.limit, "remaining": d.remaining,
                        "reset_at": d.reset_at}
        return out
