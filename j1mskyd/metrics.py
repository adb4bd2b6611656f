"""Metrics kept in memory: requests by route and status class (counts, latency histograms and a
ring of recent samples for percentiles), rate-limit hits, and what finished agents used.

Everything here is on the hot path of every request or agent, so recording is a few list and
dict operations: a histogram observation is a bisect and two additions, without a lock (one
event loop writes them all) and without allocating.  Latency percentiles for ``GET /api/metrics``
come from a fixed ring of recent samples per route, so memory stays bounded and they describe
recent behaviour; Prometheus gets the histograms (cumulative since start), which it can
aggregate and turn into quantiles itself.  The text format is rendered by :func:`prometheus`
(no client library: the format is small and stable).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

__all__ = ["AGENT_BUCKETS", "AgentMetrics", "Family", "FinishedAgent", "HTTP_BUCKETS", "Histogram", "Metrics", "RING", "RouteStats",
           "TTFT_BUCKETS", "percentile", "prometheus"]

RING = 1024
# Upper bounds (seconds) of the buckets.  A request on a Pi takes about a millisecond, so the
# HTTP buckets start below it; an agent's duration spans an offline answer (ms) to its timeout.
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
AGENT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil without floats
    return sorted_values[int(rank) - 1]


class Histogram:
    """Counts per bucket (not cumulative: one increment per observation) and the sum.
    ``counts[i]`` holds the observations in (bounds[i-1], bounds[i]]; the last, those above
    every bound (the +Inf bucket's own share)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, as Prometheus' "le" (less than or equal) wants.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, observations <= le) for every bucket, "+Inf" last."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts):
            running += n
            out.append((_num(float(bound)), running))
        return out


class RouteStats:
    """One route's answers: a latency histogram per status class (1xx-5xx; 6xx-9xx, which
    aiohttp allows, count as 5xx), and the ring of recent latencies."""

    __slots__ = ("classes", "_ring", "_pos")

    def __init__(self) -> None:
        # Index status // 100; made at the class's first answer (most routes see two classes).
        self.classes: list[Histogram | None] = [None] * 10
        self._ring: list[float] = []
        self._pos = 0

    def record(self, status: int, seconds: float) -> None:
        hist = self.classes[status // 100] or self._new_class(status // 100)
        # Histogram.observe, inline: this runs for every request, and a call costs more than it does.
        hist.counts[bisect_left(hist.bounds, seconds)] += 1
        hist.sum += seconds
        if len(self._ring) < RING:
            self._ring.append(seconds)
        else:
            self._ring[self._pos] = seconds
            self._pos = (self._pos + 1) % RING

    def _new_class(self, index: int) -> Histogram:
        """The histogram of a class at its first answer; 5xx-9xx share one (the 5xx)."""
        if index < 5:
            hist = self.classes[index] = Histogram(HTTP_BUCKETS)
            return hist
        hist = self.classes[5] or Histogram(HTTP_BUCKETS)
        for i in range(5, 10):
            self.classes[i] = hist
        return hist

    def by_class(self) -> list[tuple[str, Histogram]]:
        """("2xx", its histogram) for each class answered so far."""
        return [(STATUS_CLASSES[i - 1], h) for i, h in enumerate(self.classes[1:6], 1) if h is not None]

    @property
    def count(self) -> int:
        return sum(h.count for _, h in self.by_class())

    @property
    def client_errors(self) -> int:
        return self.classes[4].count if self.classes[4] is not None else 0

    @property
    def server_errors(self) -> int:
        return self.classes[5].count if self.classes[5] is not None else 0

    def samples(self) -> list[float]:
        return self._ring


class FinishedAgent(Protocol):
    """What AgentMetrics and timeseries.Rollups read of an agent at its end (agent_record.Agent);
    read-only, so the record's narrower types (its status and kind literals) fit."""

    @property
    def kind(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def served_model(self) -> str | None: ...

    @property
    def provider(self) -> str | None: ...

    @property
    def api_key(self) -> str: ...

    @property
    def created_at(self) -> float: ...

    @property
    def started_at(self) -> float | None: ...

    @property
    def completed_at(self) -> float | None: ...

    @property
    def first_token_at(self) -> float | None: ...

    @property
    def input_tokens(self) -> int | None: ...

    @property
    def output_tokens(self) -> int | None: ...

    @property
    def cost(self) -> float | None: ...


class AgentMetrics:
    """What agents used, told of each agent once its final state is on disk (a runtime listener).

    Labels are bounded by the config and the keys: the model alias that answered (else the one
    asked for), the provider, and the key *id* (never its token).  A team agent counts in
    ``finished`` only: its members count their own time, tokens and spend.  These cumulative
    figures are also what the dashboard's series are rolled up from (timeseries.Rollups takes
    their differences once a minute), so an agent's end is counted once, here."""

    def __init__(self) -> None:
        self.finished: dict[str, int] = {}  # final status -> agents
        self.duration: dict[str, Histogram] = {}  # model -> created..completed
        self.ttft: dict[str, Histogram] = {}  # model -> created..first token (chat agents)
        self.run: dict[str, Histogram] = {}  # provider -> started..completed, completed agents
        # (model, provider, key) -> [input tokens, output tokens, usd, agents that used something]
        self.usage: dict[tuple[str, str, str], list[float]] = {}

    def observe(self, agent: FinishedAgent) -> None:
        status = agent.status
        self.finished[status] = self.finished.get(status, 0) + 1
        if agent.kind == "team":
            return
        model = agent.served_model or agent.model
        end = agent.completed_at
        if end is not None:
            _observe(self.duration, model, AGENT_BUCKETS, end - agent.created_at)
            if status == "completed" and agent.started_at is not None and agent.provider:
                _observe(self.run, agent.provider, AGENT_BUCKETS, end - agent.started_at)
        if agent.first_token_at is not None:
            _observe(self.ttft, model, TTFT_BUCKETS, agent.first_token_at - agent.created_at)
        if agent.input_tokens or agent.output_tokens or agent.cost:
            key = (model, agent.provider or "", agent.api_key)
            used = self.usage.get(key)
            if used is None:
                used = self.usage[key] = [0, 0, 0.0, 0]
            used[0] += agent.input_tokens or 0
            used[1] += agent.output_tokens or 0
            used[2] += agent.cost or 0.0
            used[3] += 1


def _observe(table: dict[str, Histogram], label: str, bounds: Sequence[float], seconds: float) -> None:
    """Observe ``seconds`` (0 if the clock went back) in the label's histogram, made at its first use."""
    hist = table.get(label)
    if hist is None:
        hist = table[label] = Histogram(bounds)
    if seconds < 0.0:
        seconds = 0.0
    hist.counts[bisect_left(bounds, seconds)] += 1
    hist.sum += seconds


class Metrics:
    def __init__(self) -> None:
        self.routes: dict[str, RouteStats] = {}
        self.rate_limit_hits = 0
        self.agents = AgentMetrics()

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
        routes = {route: (s.count, s.client_errors, s.server_errors, s) for route, s in sorted(self.routes.items())}
        total = sum(r[0] for r in routes.values())
        server = sum(r[2] for r in routes.values())
        everything = [x for s in self.routes.values() for x in s.samples()]
        return {
            "requests_total": total,
            "errors": {"client": sum(r[1] for r in routes.values()), "server": server},
            "error_rate": round(server / total, 4) if total else 0.0,
            "latency": self.latency(everything),
            "rate_limit_hits": self.rate_limit_hits,
            "endpoints": {
                route: {"requests": n, "client_errors": client, "server_errors": srv,
                        "error_rate": round(srv / n, 4) if n else 0.0, **self.latency(s.samples())}
                for route, (n, client, srv, s) in routes.items()
            },
        }


# One metric family: (name, type, help, [(labels, value), ...]); a histogram's values are Histograms.
Family = tuple[str, str, str, Iterable[tuple[dict[str, str], Any]]]


def prometheus(families: Iterable[Family]) -> str:
    """Render families in the Prometheus text format 0.0.4: HELP and TYPE once per family, label
    values escaped, a histogram as its cumulative ``_bucket`` series (``le``, +Inf last), ``_sum``
    and ``_count``."""
    lines: list[str] = []
    for name, kind, help_text, samples in families:
        lines.append(f"# HELP {name} {_escape_help(help_text)}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            if kind != "histogram":
                lines.append(f"{name}{{{body}}} {_num(value)}" if body else f"{name} {_num(value)}")
                continue
            sep = "," if body else ""
            running = 0
            for le, running in value.cumulative():
                lines.append(f'{name}_bucket{{{body}{sep}le="{le}"}} {running}')
            labelled = f"{{{body}}}" if body else ""
            lines.append(f"{name}_sum{labelled} {_num(value.sum)}")
            lines.append(f"{name}_count{labelled} {running}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _num(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
