"""Small TTL caches with hit/miss counts (the API reference's v4.1 changelog: model recommendations 30 s,
pricing calculations 5 min; GET /cache/status shows them, POST /cache/invalidate clears)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["TTLCache"]

class TTLCache:
    def __init__(self, ttl: float, maxsize: int = 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.maxsize = maxsize
        self.clock = clock
        self._data: dict[Hashable, tuple[float, Any]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, default: Any = None) -> Any:
        entry = self._data.get(key)
        if entry is not None and self.clock() < entry[0]:
            self.hits += 1
            return entry[1]
        if entry is not None:
            del self._data[key]
        self.misses += 1
        return default

    def put(self, key: Hashable, value: Any) -> Any:
        if len(self._data) >= self.maxsize:  # drop the expired ones, else the oldest
            now = self.clock()
            self._data = {k: v for k, v in self._data.items() if v[0] > now}
            if len(self._data) >= self.maxsize:
                self._data.pop(next(iter(self._data)))
        self._data[key] = (self.clock() + self.ttl, value)
        return value

    def clear(self) -> int:
        count = len(self._data)
        self._data.clear()
        return count

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        lookups = self.hits + self.misses
        return {"entries": sum(1 for expiry, _ in self._data.values() if expiry > now), "hits": self.hits,
                "misses": self.misses, "hit_rate": round(self.hits / lookups, 4) if lookups else 0.0,
                "ttl_seconds": self.ttl}
