"""Request metrics kept in memory: counts by route, errors, latency percentiles, rate-limit hits.

Latencies live in a fixed ring of recent samples per route, so memory stays bounded
and percentiles describe recent behaviour, which is what an operator looking at a
Pi wants.  Recording costs a few dict and list operations per request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["Family", "Metrics", "RING", "RouteStats", "percentile", "prometheus"]

RING = 1024


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil without floats
    return sorted_values[int(rank) - 1]


class RouteStats:
    __slots__ = ("count", "client_errors", "server_errors", "_ring", "_pos")

    def __init__(self) -> None:
        self.count = 0
        self.client_errors = 0
        self.server_errors = 0
        self._ring: list[float] = []
        self._pos = 0

    def record(self, status: int, seconds: float) -> None:
        self.count += 1
        if status >= 500:
            self.server_errors += 1
        elif status >= 400:
            self.client_errors += 1
        if len(self._ring) < RING:
            self._ring.append(seconds)
        else:
            self._ring[self._pos] = seconds
            self._pos = (self._pos + 1) % RING

    def samples(self) -> list[float]:
        return self._ring


class Metrics:
    def __init__(self) -> None:
        self.routes: dict[str, RouteStats] = {}
        self.rate_limit_hits = 0

    def stats_for(self, route: str) -> RouteStats:
        """The route's counters; the request pipeline keeps this and records into it directly."""
        stats = self.routes.get(route)
        if stats is None:
            stats = self.routes[route] = RouteStats()
        return stats

    @property
    def requests(self) -> int:
        return sum(s.count for s in self.routes.values())

    @property
    def server_errors(self) -> int:
        return sum(s.server_errors for s in self.routes.values())

    @property
    def error_rate(self) -> float:
        total = self.requests
        return round(self.server_errors / total, 4) if total else 0.0

    @staticmethod
    def latency(samples: Iterable[float]) -> dict[str, float]:
        ordered = sorted(samples)
        return {f"p{p}_ms": round(percentile(ordered, p) * 1000, 3) for p in (50, 95, 99)}

    def snapshot(self) -> dict[str, Any]:
        total = self.requests
        client = sum(s.client_errors for s in self.routes.values())
        everything = [x for s in self.routes.values() for x in s.samples()]
        return {
            "requests_total": total,
            "errors": {"client": client, "server": self.server_errors},
            "error_rate": self.error_rate,
            "latency": self.latency(everything),
            "rate_limit_hits": self.rate_limit_hits,
            "endpoints": {
                route: {"requests": s.count, "client_errors": s.client_errors, "server_errors": s.server_errors,
                        "error_rate": round(s.server_errors / s.count, 4) if s.count else 0.0,
                        **self.latency(s.samples())}
                for route, s in sorted(self.routes.items())
            },
        }


# One metric family: (name, type, help, [(labels, value), ...]).
Family = tuple[str, str, str, Iterable[tuple[dict[str, str], float]]]


def prometheus(families: Iterable[Family]) -> str:
    """Render ``(name, type, help, [(labels, value), ...])`` in the Prometheus text format 0.0.4."""
    lines: list[str] = []
    for name, kind, help_text, samples in families:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                lines.append(f"{name}{{{body}}} {_num(value)}")
            else:
                lines.append(f"{name} {_num(value)}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))
