"""Spend reports from the usage ledger (GET /billing/usage)."""

from __future__ import annotations

import re
import sqlite3
from datetime import date, datetime, timedelta, timezone
from typing import Any

from .errors import ValidationFailed

# date.fromisoformat alone is too lenient on 3.11 ("20260201", "2026-W05-1" pass): say the format.
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


def _parse_day(name: str, text: str | None, default: date) -> tuple[date, list[dict[str, str]]]:
    if not text:
        return default, []
    try:
        if not _DAY.fullmatch(text):
            raise ValueError(text)
        day = date.fromisoformat(text)
        if day == date.max:  # a report runs to the end of its last day, which must exist
            raise ValueError(text)
        return day, []
    except ValueError:
        return default, [{"field": name, "message": f"{name} must be a date as YYYY-MM-DD"}]


def period(params: dict[str, str], now: float) -> tuple[date, date]:
    """``from``/``to`` (inclusive days, UTC); default: this month so far."""
    today = datetime.fromtimestamp(now, timezone.utc).date()
    start, e1 = _parse_day("from", params.get("from"), today.replace(day=1))
    end, e2 = _parse_day("to", params.get("to"), today)
    errors = e1 + e2
    if not errors and start > end:
        errors.append({"field": "from", "message": "from must not be after to"})
    if not errors and (end - start).days > 366:
        errors.append({"field": "from", "message": "a report spans at most 366 days"})
    if errors:
        raise ValidationFailed(errors)
    return start, end


def _ts(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()


def usage_report(conn: sqlite3.Connection, start: date, end: date, by_key: bool) -> dict[str, Any]:
    lo, hi = _ts(start), _ts(end + timedelta(days=1))
    where = "ts >= ? AND ts < ?"
    total, calls, tokens_in, tokens_out = conn.execute(
        f"SELECT COALESCE(SUM(cost), 0), COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) "
        f"FROM usage WHERE {where}", (lo, hi)).fetchone()
    by_model = {m: round(c, 6) for m, c in conn.execute(
        f"SELECT model, SUM(cost) FROM usage WHERE {where} GROUP BY model ORDER BY SUM(cost) DESC, model", (lo, hi))}
    by_day = {d: round(c, 6) for d, c in conn.execute(
        f"SELECT date(ts, 'unixepoch') AS d, SUM(cost) FROM usage WHERE {where} GROUP BY d ORDER BY d", (lo, hi))}
    report: dict[str, Any] = {
        "period": f"{start.isoformat()} to {end.isoformat()}",
        "total_cost": round(total, 6),
        "by_model": by_model,
        "by_day": by_day,
        "calls": calls,
        "tokens": {"input": tokens_in, "output": tokens_out},
    }
    if by_key:
        report["by_key"] = {k: round(c, 6) for k, c in conn.execute(
            f"SELECT api_key, SUM(cost) FROM usage WHERE {where} GROUP BY api_key ORDER BY SUM(cost) DESC", (lo, hi))}
    return report
