"""Spend reports from the usage ledger (GET /billing/usage)."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

from . import ledger
from .errors import ValidationFailed
from .store import Store
from .tenancy import Viewer

__all__ = ["Billing", "group_by", "period"]

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


def group_by(params: dict[str, str]) -> tuple[str, ...] | None:
    """``group_by``: any comma-separated combination of ledger.GROUPS (``key,model``); None
    when absent (the report of old)."""
    text = params.get("group_by")
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if not names or not all(n in ledger.GROUPS for n in names):
        raise ValidationFailed([{"field": "group_by", "message": "group_by must be a comma-separated list of: "
                                 f"{', '.join(ledger.GROUPS)}"}])
    return tuple(dict.fromkeys(names))


def _ts(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()


class Billing:
    """GET /billing/usage: spend reports over the usage ledger."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def usage_report(self, start: date, end: date, by_key: bool, viewer: Viewer) -> dict[str, Any]:
        """Spend from ``start`` to ``end`` (inclusive UTC days), by model and day (and key);
        a viewer that does not see all keys' work gets its own key's spend only."""
        lo, hi = _ts(start), _ts(end + timedelta(days=1))
        own = None if viewer.sees_all else viewer.owners
        t = await self.store.read(lambda conn: ledger.totals(conn, lo, hi, by_key, own))
        report: dict[str, Any] = {
            "period": f"{start.isoformat()} to {end.isoformat()}",
            "total_cost": t.cost,
            "by_model": t.by_model,
            "by_day": t.by_day,
            "calls": t.calls,
            "tokens": {"input": t.input_tokens, "output": t.output_tokens},
        }
        if t.by_key is not None:
            report["by_key"] = t.by_key
        return report

    async def grouped_report(self, start: date, end: date, by: tuple[str, ...], viewer: Viewer) -> dict[str, Any]:
        """Spend from ``start`` to ``end`` grouped by ``by`` (GET /billing/usage?group_by=...):
        a row per group with its cost, tokens and calls; a viewer that does not see all keys'
        work gets its own key's rows only."""
        lo, hi = _ts(start), _ts(end + timedelta(days=1))
        own = None if viewer.sees_all else viewer.owners
        rows = await self.store.read(lambda conn: ledger.usage_groups(conn, lo, hi, by, own))
        return {
            "period": f"{start.isoformat()} to {end.isoformat()}",
            "group_by": list(by),
            "rows": [{**r.group, "cost": r.cost, "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                      "calls": r.calls} for r in rows],
            "count": len(rows),
            "total_cost": round(sum(r.cost for r in rows), 6),
        }
