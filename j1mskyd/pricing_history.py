"""Recorded pricing history: the quotes and decisions the daemon priced, and the deal-desk
exceptions that escalated decisions open.

``POST /pricing/quote`` and ``POST /pricing/decision`` record what they answered; the
calculators over posted data (batch quotes, scenarios, the weekly and experiment rollups)
record nothing.  From this history come the ``GET`` forms of weekly metrics, the weekly
comparison, the experiment summary and the exception alert, and the orchestrator's
previews.  The numbers are computed by the pure functions of :mod:`j1mskyd.pricing`, the
same ones that serve posted data.

Writes are returned as statements so that a record and the events announcing it commit
in one transaction (see :meth:`j1mskyd.events.EventLog.statements`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import pricing, settings
from .errors import Conflict, NotFound
from .store import Statement

__all__ = ["DAY", "MAX_DAYS", "POLICY_SETTING", "PricingHistory", "RESOLUTIONS", "Window", "new_quote_id"]

DAY = 86400.0
MAX_DAYS = 366        # the longest window the GET rollups take
RESOLUTIONS = ("approved", "rejected", "withdrawn")
POLICY_SETTING = "pricing_policy"


@dataclass(frozen=True, slots=True)
class Window:
    """A time range (start, end] in unix seconds: a record made "now" is in the window ending now,
    and two adjacent windows never both count one record."""

    start: float
    end: float

    @classmethod
    def last_days(cls, now: float, days: float, back: int = 0) -> "Window":
        """The ``days`` before ``now``, shifted ``back`` whole windows into the past."""
        end = now - back * days * DAY
        return cls(end - days * DAY, end)


def new_quote_id() -> str:
    return "quote_" + secrets.token_hex(6)


def _exception_view(row: sqlite3.Row | tuple, now: float) -> dict[str, Any]:
    (exception_id, quote_id, opened_at, closed_at, closed_by, resolution, model, segment, delivery_type,
     price, margin, approver) = row
    end = closed_at if closed_at is not None else now
    return {"exception_id": exception_id, "quote_id": quote_id, "status": "open" if closed_at is None else "closed",
            "opened_at": opened_at, "age_days": int(max(end - opened_at, 0) // DAY),
            "closed_at": closed_at, "closed_by": closed_by, "resolution": resolution,
            "model": model, "segment": segment, "delivery_type": delivery_type,
            "recommended_price": price, "gross_margin_pct": margin, "approver": approver}


_EXCEPTION_SELECT = (
    "SELECT e.exception_id, e.quote_id, e.opened_at, e.closed_at, e.closed_by, e.resolution, q.model, q.segment, "
    "q.delivery_type, q.recommended_price, q.gross_margin_pct, q.approver "
    "FROM pricing_exceptions e JOIN pricing_quotes q ON q.quote_id = e.quote_id")


def _decisions(c: sqlite3.Connection, window: Window, experiment: str | None = None,
               variants_only: bool = False) -> list[dict[str, Any]]:
    """Decision records in the window, in the shape the weekly and experiment rollups take
    (``exception_created`` / ``exception_closed`` flags, ``variant``)."""
    sql = ("SELECT q.decision_status, q.gross_margin_pct, q.variant, e.exception_id IS NOT NULL, "
           "e.closed_at IS NOT NULL FROM pricing_quotes q LEFT JOIN pricing_exceptions e "
           "ON e.quote_id = q.quote_id WHERE q.decision_status IS NOT NULL "
           "AND q.created_at > ? AND q.created_at <= ?")
    args: list[Any] = [window.start, window.end]
    if variants_only:
        sql += " AND q.variant IS NOT NULL"
    if experiment is not None:
        sql += " AND q.experiment = ?"
        args.append(experiment)
    return [{"decision_status": status, "gross_margin_pct": margin, "variant": variant,
             "exception_created": bool(created), "exception_closed": bool(closed)}
            for status, margin, variant, created, closed in c.execute(sql + " ORDER BY q.created_at", args)]


def _weekly(c: sqlite3.Connection, window: Window) -> dict[str, Any]:
    """Weekly metrics over the window's decisions; ``exceptions_closed`` counts exceptions
    closed inside the window, whenever they were opened."""
    closed = c.execute("SELECT COUNT(*) FROM pricing_exceptions WHERE closed_at > ? AND closed_at <= ?",
                       (window.start, window.end)).fetchone()[0]
    return {**pricing.weekly_metrics(_decisions(c, window)), "exceptions_closed": closed}


def _quotes(c: sqlite3.Connection, window: Window) -> list[dict[str, Any]]:
    """Every recorded quote in the window as ``{quote, guardrail_check}`` (the rollup's input)."""
    rows = c.execute("SELECT gross_margin_pct, is_compliant, delivery_type FROM pricing_quotes "
                     "WHERE created_at > ? AND created_at <= ?", (window.start, window.end))
    return [{"quote": {"gross_margin_pct": margin},
             "guardrail_check": {"is_compliant": bool(ok), "delivery_type": delivery}}
            for margin, ok, delivery in rows]


def _latest(c: sqlite3.Connection) -> dict[str, Any] | None:
    row = c.execute("SELECT quote_id, created_at, decision_status, approver, delivery_type, gross_margin_pct "
                    "FROM pricing_quotes WHERE decision_status IS NOT NULL "
                    "ORDER BY created_at DESC, rowid DESC LIMIT 1").fetchone()
    if row is None:
        return None
    quote_id, created_at, status, approver, delivery, margin = row
    return {"quote_id": quote_id, "created_at": created_at, "decision_status": status, "approver": approver,
            "delivery_type": delivery, "gross_margin_pct": margin}


def _open_ages(c: sqlite3.Connection, now: float) -> list[int]:
    """Whole days each open exception has been open."""
    return [int(max(now - t, 0) // DAY)
            for (t,) in c.execute("SELECT opened_at FROM pricing_exceptions WHERE closed_at IS NULL")]


class PricingHistory:
    def __init__(self, store: Any, keep_days: float = 365.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.keep_days = keep_days
        self.clock = clock

    def set_keep_days(self, days: float) -> None:
        """``[pricing] history_days`` of a reloaded configuration (the next purge uses it)."""
        self.keep_days = days

    # -- writing ----------------------------------------------------------------------------
    def record(self, quote_id: str, quote: Mapping[str, Any], check: Mapping[str, Any], *,
               decision: Mapping[str, Any] | None = None, variant: str | None = None,
               experiment: str | None = None, api_key_id: str | None = None) -> tuple[str | None, list[Statement]]:
        """Statements recording a quote (and its decision); an escalated decision also opens an
        exception, whose id is returned."""
        now = self.clock()
        stmts: list[Statement] = [(
            "INSERT INTO pricing_quotes (quote_id, created_at, model, complexity, segment, delivery_type, "
            "estimated_input, estimated_output, internal_cost, recommended_price, gross_margin_pct, is_compliant, "
            "decision_status, approver, variant, experiment, api_key_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (quote_id, now, quote["model"], quote["complexity"], quote["segment"], check["delivery_type"],
             quote.get("estimated_input_tokens", 0), quote.get("estimated_output_tokens", 0),
             quote["internal_cost"], quote["recommended_price"], quote["gross_margin_pct"],
             int(bool(check["is_compliant"])),
             decision["decision_status"] if decision else None, decision["approver"] if decision else None,
             variant, experiment, api_key_id))]
        exception_id = None
        if decision is not None and decision["decision_status"] == "escalated":
            exception_id = "exc_" + secrets.token_hex(6)
            stmts.append(("INSERT INTO pricing_exceptions (exception_id, quote_id, opened_at) VALUES (?, ?, ?)",
                          (exception_id, quote_id, now)))
        return exception_id, stmts

    async def close_exception(self, exception_id: str, resolution: str, closed_by: str) -> dict[str, Any]:
        """Close an open exception; 404 when unknown, 409 when already closed."""
        found = await self.exception(exception_id)
        if found is None:
            raise NotFound(f"Pricing exception '{exception_id}' not found")
        if found["status"] == "closed":
            raise Conflict(f"Pricing exception '{exception_id}' is already closed")
        now = self.clock()
        # The WHERE makes a racing second close a no-op rather than a rewrite of the first, and
        # what is stored then tells which one closed it: the other answered 200 with the first's
        # resolution.
        await self.store.write(("UPDATE pricing_exceptions SET closed_at = ?, closed_by = ?, resolution = ? "
                                "WHERE exception_id = ? AND closed_at IS NULL",
                                (now, closed_by, resolution, exception_id)), fail_fast=True)
        closed = await self.exception(exception_id)
        if closed is not None and (closed["closed_at"], closed["closed_by"], closed["resolution"]) != (
                now, closed_by, resolution):
            raise Conflict(f"Pricing exception '{exception_id}' is already closed")
        assert closed is not None
        return closed

    async def purge(self) -> None:
        """Drop records older than ``keep_days`` (``[pricing] history_days``); an open exception
        and its quote are kept whatever their age (aging is what they are for)."""
        cutoff = self.clock() - self.keep_days * DAY
        await self.store.write(
            ("DELETE FROM pricing_exceptions WHERE closed_at IS NOT NULL AND closed_at < ?", (cutoff,)),
            ("DELETE FROM pricing_quotes WHERE created_at < ? AND quote_id NOT IN "
             "(SELECT quote_id FROM pricing_exceptions)", (cutoff,)))

    # -- reading ----------------------------------------------------------------------------
    # Each answer is one trip to the store's reader thread, however many queries it needs.
    async def decisions(self, window: Window, experiment: str | None = None,
                        variants_only: bool = False) -> list[dict[str, Any]]:
        return await self.store.read(lambda c: _decisions(c, window, experiment, variants_only))

    async def weekly_metrics(self, *windows: Window) -> list[dict[str, Any]]:
        """Weekly metrics of each window (see :func:`_weekly`)."""
        return await self.store.read(lambda c: [_weekly(c, w) for w in windows])

    async def open_exception_ages(self) -> list[int]:
        now = self.clock()
        return await self.store.read(lambda c: _open_ages(c, now))

    async def previews(self, now: float, days: float) -> dict[str, Any] | None:
        """What the orchestrator's previews are built from, or None before anything is recorded:
        the latest decision, the last ``days`` of quotes, that window's and the one before's
        weekly metrics, and the open exceptions' ages."""
        window = Window.last_days(now, days)

        def read(c: sqlite3.Connection) -> dict[str, Any] | None:
            if c.execute("SELECT NOT EXISTS (SELECT 1 FROM pricing_quotes)").fetchone()[0]:
                return None
            return {"latest": _latest(c), "quotes": _quotes(c, window), "current": _weekly(c, window),
                    "previous": _weekly(c, Window.last_days(now, days, back=1)), "ages": _open_ages(c, now)}
        return await self.store.read(read)

    async def exception(self, exception_id: str) -> dict[str, Any] | None:
        row = await self.store.read(lambda c: c.execute(
            _EXCEPTION_SELECT + " WHERE e.exception_id = ?", (exception_id,)).fetchone())
        return _exception_view(row, self.clock()) if row is not None else None

    async def exceptions(self, status: str, limit: int) -> list[dict[str, Any]]:
        """Exceptions, oldest open first (``status``: open, closed or all)."""
        where = {"open": " WHERE e.closed_at IS NULL", "closed": " WHERE e.closed_at IS NOT NULL", "all": ""}[status]
        rows = await self.store.read(lambda c: c.execute(
            _EXCEPTION_SELECT + where + " ORDER BY e.closed_at IS NOT NULL, e.opened_at LIMIT ?",
            (limit,)).fetchall())
        now = self.clock()
        return [_exception_view(r, now) for r in rows]

    # -- the policy ---------------------------------------------------------------------------
    async def policy_change(self, policy: pricing.PricingPolicy) -> tuple[dict[str, Any] | None, list[Statement]]:
        """(change, statements): the statements remember the policy in force (none when it is the
        one the daemon last ran with); the change, when there was a previous policy, is
        ``{previous, current, policy_hash}``, the pricing.policy_changed event's data, to be
        written in the same unit so that a crash cannot keep the new policy and lose the event."""
        current = policy.as_dict()
        text = json.dumps(current, sort_keys=True, separators=(",", ":"))
        stored = await self.store.read(lambda c: settings.get(c, POLICY_SETTING))
        if stored == text:
            return None, []
        upsert: list[Statement] = [settings.put(POLICY_SETTING, text, self.clock())]
        if stored is None:
            return None, upsert  # the first start: nothing changed
        return {"previous": json.loads(stored), "current": current,
                "policy_hash": hashlib.sha256(text.encode()).hexdigest()[:16]}, upsert
