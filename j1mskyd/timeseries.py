"""The series the dashboard draws (``GET /api/metrics/timeseries``), rolled up in the store so a
restart does not empty the charts: the one module that reads and writes ``metric_points``.

What is kept, per bucket of an hour or a UTC day (``granularity``), for each finished agent
(a runtime listener, like the Prometheus counters of metrics.py):

- ``agents``: agents ended, by final status (``completed``, ``failed``, ``cancelled``);
- ``spend_usd``: the cost recorded for them, by model (count: the agents that cost something);
- ``latency_seconds``: completed agents' run time (start to end), by provider, hourly only: the
  count, the sum and the counts per bucket of metrics.AGENT_BUCKETS, for p50/p95.

Kind to an SD card: observations add up in memory and are written at most once a minute (only
when an agent ended), one upsert per touched row in one transaction, and once more at the stop.
Bounded: hourly rows are kept for 7 days, daily ones for 400 (an hourly purge); at most
``(3 statuses + models + providers x 18) x 168`` hourly rows and ``(3 + models) x 400`` daily ones.
A crash loses at most the last minute's observations, like a power cut in ``normal`` mode.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import ValidationFailed
from .metrics import AGENT_BUCKETS, FinishedAgent
from .store import Statement, Store

__all__ = ["FLUSH_EVERY", "GRANULARITIES", "KEEP", "METRICS", "Query", "Rollups", "parse_query"]

HOUR, DAY = 3600, 86_400
GRANULARITIES = {"hour": HOUR, "day": DAY}
KEEP = {HOUR: 7 * DAY, DAY: 400 * DAY}  # seconds of history per granularity
DEFAULT_PERIOD = {HOUR: "48h", DAY: "30d"}
METRICS = {"agents": (HOUR, DAY), "spend_usd": (HOUR, DAY), "latency_seconds": (HOUR,)}  # -> granularities kept
FLUSH_EVERY = 60.0  # seconds between writes of what agents added (only when something did)
_COMPACT_AT = 4096  # observations kept as they came before they are added up
_PERIOD = re.compile(r"^([1-9][0-9]{0,4})([hd])$")
_LE = tuple(repr(float(b)) for b in AGENT_BUCKETS) + ("+Inf",)
_UPSERT = ("INSERT INTO metric_points (metric, granularity, bucket, label, le, count, sum) "
           "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (metric, granularity, bucket, label, le) "
           "DO UPDATE SET count = count + excluded.count, sum = sum + excluded.sum")

Row = tuple[str, int, int, str, str]  # metric, granularity, bucket start, label, le ('' for count/sum)


@dataclass(frozen=True)
class Query:
    metric: str
    granularity: int
    period: str
    seconds: int


def parse_query(params: Mapping[str, str]) -> Query:
    """``metric`` (required), ``granularity`` (hour, day; default hour), ``period`` (``<n>h`` or
    ``<n>d``, at least one bucket, at most what is kept); every problem in one 400."""
    errors = []
    metric = params.get("metric", "")
    if metric not in METRICS:
        errors.append({"field": "metric", "message": f"metric must be one of: {', '.join(METRICS)}"})
    name = params.get("granularity", "hour")
    granularity = GRANULARITIES.get(name)
    if granularity is None:
        errors.append({"field": "granularity", "message": f"granularity must be one of: {', '.join(GRANULARITIES)}"})
    elif metric in METRICS and granularity not in METRICS[metric]:
        errors.append({"field": "granularity", "message": f"{metric} is kept per hour only"})
    period = params.get("period") or DEFAULT_PERIOD[granularity or HOUR]
    m = _PERIOD.match(period)
    seconds = int(m.group(1)) * (HOUR if m.group(2) == "h" else DAY) if m else 0
    if not m:
        errors.append({"field": "period", "message": "period must be a number of hours or days: 48h, 30d"})
    elif granularity is not None and not granularity <= seconds <= KEEP[granularity]:
        errors.append({"field": "period", "message": f"with granularity {name}, period must be from 1 {name} "
                       f"to {KEEP[granularity] // DAY}d (what is kept)"})
    if errors:
        raise ValidationFailed(errors)
    assert granularity is not None
    return Query(metric, granularity, period, seconds)


class Rollups:
    """The observations not yet written, and the reads that merge them with the store's rows.

    On the hot path (every agent's end) an observation is one tuple appended to a list; they are
    added up into rows (:meth:`_compact`) when they are written or read, or every 4096 agents."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.recent: list[tuple[Any, ...]] = []  # one per agent ended since the last compaction
        self.pending: dict[Row, list[float]] = {}  # -> [count, sum]: added up, not yet written

    def observe(self, agent: FinishedAgent) -> None:
        """A runtime listener: ``agent`` ended (its final state is on disk)."""
        self.recent.append((agent.completed_at, agent.status, agent.kind, agent.served_model or agent.model,
                            agent.cost, agent.provider, agent.started_at))
        if len(self.recent) >= _COMPACT_AT:
            self._compact()

    def _compact(self) -> None:
        """Add the recent observations into their rows.  A team counts in ``agents`` only; its
        members count their own spend and time.  Run time: completed agents' start to end."""
        recent, self.recent = self.recent, []
        now = self.clock()
        for completed_at, status, kind, model, cost, provider, started in recent:
            at = completed_at if completed_at is not None else now
            hour, day = int(at // HOUR * HOUR), int(at // DAY * DAY)
            self._add(("agents", HOUR, hour, status, ""), 1, 0.0)
            self._add(("agents", DAY, day, status, ""), 1, 0.0)
            if kind == "team":
                continue
            if cost:
                self._add(("spend_usd", HOUR, hour, model, ""), 1, cost)
                self._add(("spend_usd", DAY, day, model, ""), 1, cost)
            if status == "completed" and provider and started is not None and completed_at is not None:
                seconds = max(completed_at - started, 0.0)
                self._add(("latency_seconds", HOUR, hour, provider, ""), 1, seconds)
                self._add(("latency_seconds", HOUR, hour, provider, _LE[_bucket(seconds)]), 1, 0.0)

    def _add(self, row: Row, count: int, value: float) -> None:
        cell = self.pending.get(row)
        if cell is None:
            cell = self.pending[row] = [0, 0.0]
        cell[0] += count
        cell[1] += value

    async def flush(self) -> None:
        """Write what was observed since the last flush (nothing when nothing was)."""
        self._compact()
        if not self.pending:
            return
        taken, self.pending = self.pending, {}
        try:
            await self.store.submit([(_UPSERT, (*row, int(c), s)) for row, (c, s) in taken.items()])
        except BaseException:
            for row, (c, s) in taken.items():  # kept for the next try, added to what came since
                self._add(row, int(c), s)
            raise

    async def purge(self) -> None:
        """Drop the rows older than what is kept (hourly, with the other retention jobs)."""
        now = self.clock()
        await self.store.submit([("DELETE FROM metric_points WHERE granularity = ? AND bucket < ?",
                                  (g, int(now - keep))) for g, keep in KEEP.items()])

    async def series(self, query: Query) -> dict[str, Any]:
        """The query's buckets (every one, oldest first, empty ones as zeros) and one series per
        label: ``count`` and ``sum`` per bucket, and for latency ``p50``/``p95`` (estimated from
        the buckets by linear interpolation, as Prometheus' histogram_quantile; null when empty)."""
        g = query.granularity
        end = int(self.clock() // g * g)
        start = end - (query.seconds // g - 1) * g
        rows = await self.store.read(lambda conn: _rows(conn, query.metric, g, start))
        self._compact()
        cells: dict[tuple[str, int, str], list[float]] = {}
        for label, bucket, le, count, total in rows:
            cells[(label, bucket, le)] = [count, total]
        for (metric, gran, bucket, label, le), (count, total) in self.pending.items():  # not written yet
            if metric == query.metric and gran == g and bucket >= start:
                cell = cells.setdefault((label, bucket, le), [0, 0.0])
                cell[0] += count
                cell[1] += total
        buckets = list(range(start, end + 1, g))
        index = {b: i for i, b in enumerate(buckets)}
        series: dict[str, dict[str, list[Any]]] = {}
        hists: dict[str, list[list[int]]] = {}
        for (label, bucket, le), (count, total) in sorted(cells.items()):
            if bucket not in index:
                continue
            s = series.setdefault(label, {"count": [0] * len(buckets), "sum": [0.0] * len(buckets)})
            i = index[bucket]
            if le:
                hist = hists.setdefault(label, [[0] * len(_LE) for _ in buckets])
                if le in _LE:
                    hist[i][_LE.index(le)] += int(count)
                continue
            s["count"][i] += int(count)
            s["sum"][i] = round(s["sum"][i] + total, 8)
        out = []
        for label, s in sorted(series.items()):
            entry: dict[str, Any] = {"label": label, **s}
            if query.metric == "latency_seconds":
                counts = hists.get(label, [[0] * len(_LE) for _ in buckets])
                entry["p50"] = [_quantile(0.5, c) for c in counts]
                entry["p95"] = [_quantile(0.95, c) for c in counts]
            out.append(entry)
        return {"metric": query.metric, "granularity": "hour" if g == HOUR else "day", "period": query.period,
                "buckets": [_iso(b) for b in buckets], "series": out}


def _rows(conn: sqlite3.Connection, metric: str, granularity: int, start: int) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT label, bucket, le, count, sum FROM metric_points "
                        "WHERE metric = ? AND granularity = ? AND bucket >= ?",
                        (metric, granularity, start)).fetchall()


def _bucket(seconds: float) -> int:
    for i, bound in enumerate(AGENT_BUCKETS):
        if seconds <= bound:
            return i
    return len(AGENT_BUCKETS)


def _quantile(q: float, counts: list[int]) -> float | None:
    """The q-quantile of per-bucket counts, interpolated within its bucket (0 as the first
    bucket's lower bound; the last finite bound for what lies above every bound)."""
    total = sum(counts)
    if not total:
        return None
    rank, seen, lower = q * total, 0, 0.0
    for i, n in enumerate(counts):
        upper = AGENT_BUCKETS[i] if i < len(AGENT_BUCKETS) else AGENT_BUCKETS[-1]
        if n and seen + n >= rank:
            return round(lower + (upper - lower) * (rank - seen) / n, 6)
        seen += n
        lower = upper
    return AGENT_BUCKETS[-1]


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
