"""The series the dashboard draws (``GET /api/metrics/timeseries``), rolled up in the store so a
restart does not empty the charts: the one module that reads and writes ``metric_points``.

What is kept, per bucket of an hour or a UTC day (``granularity``), from the counters of
finished agents that /metrics exposes (metrics.AgentMetrics):

- ``agents``: agents ended, by final status (``completed``, ``failed``, ``cancelled``);
- ``spend_usd``: the cost recorded for them, by model (count: the agents that reported usage);
- ``latency_seconds``: completed agents' run time (start to end), by provider, hourly only: the
  count, the sum and the counts per bucket of metrics.AGENT_BUCKETS, for p50/p95.

Kind to an SD card and to the CPU: no work per agent beyond those counters; once a minute what
they gained is written (only when an agent ended), one upsert per touched row in one transaction,
and once more at the stop.
Bounded: hourly rows are kept for 7 days, daily ones for 400 (an hourly purge); at most
``(3 statuses + models + providers x 18) x 168`` hourly rows and ``(3 + models) x 400`` daily ones.
A crash loses at most the last minute's observations, like a power cut in ``normal`` mode.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import ValidationFailed
from .metrics import AGENT_BUCKETS, AgentMetrics
from .store import Store

__all__ = ["FLUSH_EVERY", "GRANULARITIES", "KEEP", "METRICS", "Query", "Rollups", "parse_query"]

HOUR, DAY = 3600, 86_400
GRANULARITIES = {"hour": HOUR, "day": DAY}
KEEP = {HOUR: 7 * DAY, DAY: 400 * DAY}  # seconds of history per granularity
DEFAULT_PERIOD = {HOUR: "48h", DAY: "30d"}
METRICS = {"agents": (HOUR, DAY), "spend_usd": (HOUR, DAY), "latency_seconds": (HOUR,)}  # -> granularities kept
FLUSH_EVERY = 60.0  # seconds between writes of what agents added (only when something did), on the minute
_PERIOD = re.compile(r"^([1-9][0-9]{0,4})([hd])$")
_LE = tuple(repr(float(b)) for b in AGENT_BUCKETS) + ("+Inf",)
_UPSERT = ("INSERT INTO metric_points (metric, granularity, bucket, label, le, count, sum) "
           "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (metric, granularity, bucket, label, le) "
           "DO UPDATE SET count = count + excluded.count, sum = sum + excluded.sum")

Row = tuple[str, int, int, str, str]  # metric, granularity, bucket start, label, le ('' for count/sum)

# Which flush last committed: a row of its own (granularity 0: never a series, never purged) whose
# count is that flush's token, written in the flush's transaction and read in the same statement as
# a series.  A read then knows whether the rows of the latest flush are in what it read: a flush
# takes them out of memory before its commit, so without it a read in between lost them.
_FLUSHED = "flushed"
_MARK = ("INSERT INTO metric_points (metric, granularity, bucket, label, le, count, sum) "
         f"VALUES ('{_FLUSHED}', 0, 0, '', '', ?, 0) ON CONFLICT (metric, granularity, bucket, label, le) "
         "DO UPDATE SET count = excluded.count")


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
    """The rows not yet written, and the reads that merge them with the store's.

    Nothing is done per agent here: the figures are metrics.AgentMetrics' cumulative ones (which
    the agents' ends update anyway, for /metrics), and what they gained since the last look is
    added to the rows of the bucket it happened in, once a minute (:meth:`flush`, aligned to the
    wall clock's minutes, so a minute's gain lies in one hour) and when the series are read."""

    def __init__(self, store: Store, agents: AgentMetrics, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.agents = agents
        self.clock = clock
        self._seen: dict[tuple[str, str, str], tuple[float, float]] = {}  # totals at the last look
        self._since = clock()  # when that was: the gain since then happened after it
        self.pending: dict[Row, list[float]] = {}  # -> [count, sum]: taken, not yet written
        self._last: tuple[int | None, dict[Row, list[float]]] = (None, {})  # the latest flush: token, rows

    def _totals(self) -> dict[tuple[str, str, str], tuple[float, float]]:
        """(metric, label, le) -> (count, sum) since start.  ``spend_usd``: per model, the agents
        that reported usage and what they cost; ``latency_seconds``: per provider, the completed
        agents' run time and its histogram buckets."""
        out: dict[tuple[str, str, str], tuple[float, float]] = {
            ("agents", status, ""): (n, 0.0) for status, n in self.agents.finished.items()}
        for (model, _, _), used in self.agents.usage.items():
            count, total = out.get(("spend_usd", model, ""), (0, 0.0))
            out[("spend_usd", model, "")] = (count + used[3], total + used[2])
        for provider, hist in self.agents.run.items():
            out[("latency_seconds", provider, "")] = (hist.count, hist.sum)
            for le, n in zip(_LE, hist.counts):
                if n:
                    out[("latency_seconds", provider, le)] = (n, 0.0)
        return out

    def _gain(self) -> tuple[dict[Row, list[float]], dict[tuple[str, str, str], tuple[float, float]], float]:
        """The rows of what was counted since the last look, the totals now, and now."""
        now, at = self.clock(), self._since
        buckets = {HOUR: int(at // HOUR * HOUR), DAY: int(at // DAY * DAY)}
        totals = self._totals()
        rows: dict[Row, list[float]] = {}
        for (metric, label, le), (count, total) in totals.items():
            before = self._seen.get((metric, label, le), (0, 0.0))
            gained, added = count - before[0], total - before[1]
            if gained or added:
                for g in METRICS[metric]:
                    rows[(metric, g, buckets[g], label, le)] = [gained, added]
        return rows, totals, now

    def _take(self) -> None:
        """Move the gain since the last look into ``pending``."""
        rows, self._seen, self._since = self._gain()
        for row, (count, total) in rows.items():
            cell = self.pending.setdefault(row, [0, 0.0])
            cell[0] += count
            cell[1] += total

    async def flush(self) -> None:
        """Write what was counted since the last flush (nothing when nothing was)."""
        self._take()
        if not self.pending:
            return
        taken, self.pending = self.pending, {}
        token = secrets.randbits(62)
        self._last = (token, taken)
        try:
            await self.store.submit([*((_UPSERT, (*row, int(c), s)) for row, (c, s) in taken.items()),
                                     (_MARK, (token,))])
        except BaseException:
            self._last = (None, {})
            for row, (c, s) in taken.items():  # kept for the next try, added to what came since
                cell = self.pending.setdefault(row, [0, 0.0])
                cell[0] += c
                cell[1] += s
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
        cells: dict[tuple[str, int, str], list[float]] = {}
        flushed = None
        for label, bucket, le, count, total in rows:
            if label == _FLUSHED and bucket == 0:
                flushed = count
                continue
            cells[(label, bucket, le)] = [count, total]
        unwritten = list(self.pending.items()) + list(self._gain()[0].items())
        token, last = self._last
        if last and flushed != token:  # the latest flush's rows are not in what was read
            unwritten += last.items()
        for (metric, gran, bucket, label, le), (count, total) in unwritten:  # not written yet
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
    """The series' rows and, in the same statement (one snapshot), the flush marker's as
    (``flushed``, 0, '', token, 0)."""
    return conn.execute("SELECT label, bucket, le, count, sum FROM metric_points "
                        "WHERE metric = ? AND granularity = ? AND bucket >= ? "
                        "UNION ALL SELECT metric, bucket, le, count, sum FROM metric_points "
                        "WHERE metric = ? AND granularity = 0",
                        (metric, granularity, start, _FLUSHED)).fetchall()


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
