"""The usage ledger: the one module that reads and writes the ``usage`` table.

One row per billed provider call (an agent's answer, or a failed call the upstream billed
anyway).  The ledger is the truth about money: the budget is rebuilt from it at start-up,
spend reports and the pricing/orchestrator views read it.  Callers get named operations;
no other module holds SQL on ``usage`` (tests/test_table_owners.py checks that).

Reads are plain functions of a connection, for ``store.read``; the write is a statement for
the caller's unit (the usage row commits with the agent's terminal state).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .store import Statement

__all__ = ["GROUPS", "ModelDay", "Spend", "Totals", "UsageRow", "billed_by_agent", "by_model_since",
           "key_spend_since", "record", "spend", "spend_by_day", "totals", "usage_groups"]

# SQLite allows 32,766 parameters since 3.32 and 999 before: stay well under both.
_CHUNK = 500


def record(ts: float, agent_id: str, api_key: str | None, model: str | None, provider: str | None,
           input_tokens: int | None, output_tokens: int | None, cost: float,
           project_id: str | None = None, *, cut: bool = False) -> Statement:
    """The statement that records one billed call; ``project_id``: the project its key was in
    when the agent was spawned (the spend stays there if the key moves later); ``cut``: a call
    a crash cut, billed at its worst case on top of the agent's reservation."""
    return ("INSERT INTO usage (ts, agent_id, model, provider, input_tokens, output_tokens, cost, api_key, project_id, "
            "cut) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ts, agent_id, model, provider, input_tokens, output_tokens, cost, api_key, project_id, int(cut)))


@dataclass(frozen=True)
class Spend:
    """Settled spend: today and this month (UTC), and this clock hour per API key."""

    today: float
    month: float
    hour_by_key: dict[str, float]


def spend(conn: sqlite3.Connection, now: float) -> Spend:
    """What the budget counts, from the ledger (start-up rebuilds the budget from it)."""
    day_start = now // 86_400 * 86_400
    month_start = datetime.fromtimestamp(now, timezone.utc).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
    hour_start = now // 3600 * 3600
    (today,) = conn.execute("SELECT COALESCE(SUM(cost), 0) FROM usage WHERE ts >= ?", (day_start,)).fetchone()
    (month,) = conn.execute("SELECT COALESCE(SUM(cost), 0) FROM usage WHERE ts >= ?", (month_start,)).fetchone()
    hour = dict(conn.execute("SELECT api_key, SUM(cost) FROM usage WHERE ts >= ? GROUP BY api_key",
                             (hour_start,)).fetchall())
    return Spend(today, month, hour)


def spend_by_day(conn: sqlite3.Connection, since: float) -> list[tuple[str | None, str | None, int, float]]:
    """(api_key, project_id, UTC day number, cost) since ``since``: what key and project
    budgets count (budget.Budget.restore_spend)."""
    return [(k, p, int(d), c) for k, p, d, c in conn.execute(
        "SELECT api_key, project_id, CAST(ts / 86400 AS INTEGER) AS d, SUM(cost) FROM usage WHERE ts >= ? "
        "GROUP BY api_key, project_id, d", (since,))]


def billed_by_agent(conn: sqlite3.Connection, agent_ids: Sequence[str]) -> dict[str, tuple[float, float]]:
    """agent_id -> what its ledger rows sum to, and how much of that is calls a crash cut (for
    a live agent: calls billed although they failed; the cut ones are on top of its reservation)."""
    billed: dict[str, tuple[float, float]] = {}
    for i in range(0, len(agent_ids), _CHUNK):
        chunk = agent_ids[i:i + _CHUNK]
        for agent_id, total, cut in conn.execute(
                f"SELECT agent_id, SUM(cost), SUM(cut * cost) FROM usage "
                f"WHERE agent_id IN ({', '.join('?' * len(chunk))}) GROUP BY agent_id", tuple(chunk)):
            billed[agent_id] = (total or 0.0, cut or 0.0)
    return billed


@dataclass(frozen=True)
class ModelDay:
    """One model's calls since a moment: how many, what they cost, how many tokens."""

    model: str
    calls: int
    cost: float
    tokens: int


def by_model_since(conn: sqlite3.Connection, since: float) -> list[ModelDay]:
    """Per model since ``since``, costliest first (then by name)."""
    return [ModelDay(model, calls, cost, tokens) for model, calls, cost, tokens in conn.execute(
        "SELECT model, COUNT(*), COALESCE(SUM(cost), 0), COALESCE(SUM(input_tokens + output_tokens), 0) "
        "FROM usage WHERE ts >= ? GROUP BY model ORDER BY SUM(cost) DESC, model", (since,))]


@dataclass(frozen=True)
class Totals:
    """Spend over a period [lo, hi): total and broken down (rounded to 6 places, as reported)."""

    cost: float
    calls: int
    input_tokens: int
    output_tokens: int
    by_model: dict[str, float]
    by_day: dict[str, float]
    by_key: dict[str, float] | None


def totals(conn: sqlite3.Connection, lo: float, hi: float, by_key: bool = False,
           api_key: Sequence[str] | None = None) -> Totals:
    """Totals for ``lo <= ts < hi``: by model (costliest first), by UTC day, and by key when
    asked; ``api_key``: those keys' spend only (a key and its rotation family)."""
    where, args = _period_where(lo, hi, api_key)
    cost, calls, tokens_in, tokens_out = conn.execute(
        f"SELECT COALESCE(SUM(cost), 0), COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) "
        f"FROM usage WHERE {where}", args).fetchone()

    def grouped(sql: str) -> dict[Any, float]:
        return {k: round(c, 6) for k, c in conn.execute(sql, args)}

    return Totals(
        round(cost, 6), calls, tokens_in, tokens_out,
        grouped(f"SELECT model, SUM(cost) FROM usage WHERE {where} GROUP BY model ORDER BY SUM(cost) DESC, model"),
        grouped(f"SELECT date(ts, 'unixepoch') AS d, SUM(cost) FROM usage WHERE {where} GROUP BY d ORDER BY d"),
        grouped(f"SELECT api_key, SUM(cost) FROM usage WHERE {where} GROUP BY api_key ORDER BY SUM(cost) DESC")
        if by_key else None)


# -- a key's own figures (for a key that sees only its own work) ----------------------------------
def key_spend_since(conn: sqlite3.Connection, key_ids: Sequence[str], since: float) -> float:
    """What the calls of ``key_ids`` (a key and its rotation family) cost since ``since``
    (GET /agents/active's ``total_cost_today`` for a key that sees only its own work)."""
    (cost,) = conn.execute(f"SELECT COALESCE(SUM(cost), 0) FROM usage WHERE api_key IN ({', '.join('?' * len(key_ids))})"
                           " AND ts >= ?", (*key_ids, since)).fetchone()
    return round(cost, 6)


# -- grouped usage (GET /billing/usage?group_by=...) ------------------------------------------------
# What a report may group by -> (the row's field, the column or expression it groups on).
GROUPS: dict[str, tuple[str, str]] = {
    "key": ("key_id", "api_key"),
    "project": ("project_id", "project_id"),   # the project the spend was made under (stamped at spawn)
    "model": ("model", "model"),
    "day": ("day", "date(ts, 'unixepoch')"),  # the UTC day
    "hour": ("hour", "strftime('%Y-%m-%dT%H:00:00Z', ts, 'unixepoch')"),  # the UTC hour (a day's burn-down)
}


def _period_where(lo: float, hi: float, api_key: Sequence[str] | None) -> tuple[str, tuple[object, ...]]:
    if api_key is None:
        return "ts >= ? AND ts < ?", (lo, hi)
    return f"ts >= ? AND ts < ? AND api_key IN ({', '.join('?' * len(api_key))})", (lo, hi, *api_key)


@dataclass(frozen=True)
class UsageRow:
    """One group's spend: ``group`` maps each GROUPS field (key_id, project_id, model, day) asked for to its value."""

    group: dict[str, Any]
    cost: float
    input_tokens: int
    output_tokens: int
    calls: int


def usage_groups(conn: sqlite3.Connection, lo: float, hi: float, by: Sequence[str],
            api_key: Sequence[str] | None = None) -> list[UsageRow]:
    """Spend for ``lo <= ts < hi`` grouped by the GROUPS names in ``by`` (at least one), costliest
    first, then by the groups' values; ``api_key``: those keys' spend only."""
    where, args = _period_where(lo, hi, api_key)
    exprs = [GROUPS[name][1] for name in by]
    numbers = range(1, len(exprs) + 1)
    sql = (f"SELECT {', '.join(exprs)}, COALESCE(SUM(cost), 0), COALESCE(SUM(input_tokens), 0), "
           f"COALESCE(SUM(output_tokens), 0), COUNT(*) FROM usage WHERE {where} "
           f"GROUP BY {', '.join(map(str, numbers))} ORDER BY SUM(cost) DESC, {', '.join(map(str, numbers))}")
    fields = [GROUPS[name][0] for name in by]
    return [UsageRow(dict(zip(fields, row[:len(by)])), round(row[-4], 6), row[-3], row[-2], row[-1])
            for row in conn.execute(sql, args)]
