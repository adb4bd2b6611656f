"""Keys as tenants: who may see whose work, and the budgets of keys and projects.

Two small value types every layer shares:

* :class:`Viewer`: the key a request acts as, and whether it sees every key's work (a key
  with ``admin:write`` or ``admin:read``, or any request while authentication is off).  A
  key that sees only its own work gets 404 for another key's ids, never 403, so that ids
  are not confirmed.
* :class:`Allowance`: a budget of a key or a project, ``max_budget`` USD per period of
  ``duration``.  Periods start at ``anchor`` (UTC midnight of the day the budget was set)
  and follow one another without gaps; ``total`` is one period that never ends.  Like the
  daemon's daily budget, it is a hard cap: reserved at spawn, settled at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .request_fields import finite_number

__all__ = ["ADMINS_ONLY", "Allowance", "DURATIONS", "Viewer", "day_start", "parse_allowance"]

# The owner of a record no key owns that only viewers who see all may see: the refusal of a
# request without a valid key (its path names other keys' ids, its address another client).
# No key id looks like it, so Viewer.sees() gives it to sees_all viewers alone.
ADMINS_ONLY = "@admins"

# budget_duration -> seconds per period (None: one period, for ever)
DURATIONS: dict[str, float | None] = {"1d": 86_400.0, "30d": 30 * 86_400.0, "total": None}


def day_start(ts: float) -> float:
    """UTC midnight of the day of ``ts``: where a budget set at ``ts`` starts counting."""
    d = datetime.fromtimestamp(ts, timezone.utc)
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp()


@dataclass(frozen=True, slots=True)
class Viewer:
    """Whose work a request may see.  ``key_id`` is the acting key (``anonymous`` when
    authentication is off); ``sees_all`` lifts the rule."""

    key_id: str
    sees_all: bool = False
    # Changes every key's work (cancel, delete its data, its webhooks): admin:write, or
    # authentication off.  A sees_all viewer without it (admin:read) is refused with a
    # 403 there: it can see the work, so no id is confirmed by the refusal.
    writes_all: bool = False
    # The other keys of its rotation family (keys.rotation_families): a rotated key's work is
    # its successor's own, as its budget is; rotating a token must not hide a key's agents.
    family: tuple[str, ...] = ()

    @property
    def owners(self) -> tuple[str, ...]:
        """The key ids whose work is this viewer's own: its key's and its rotation family's."""
        return (self.key_id, *self.family)

    def sees(self, owner_key: str | None) -> bool:
        """May this viewer see work owned by ``owner_key``?  None: a daemon-wide record
        (a budget alert, a provider's circuit), owned by nobody and shown to everyone."""
        return self.sees_all or owner_key is None or owner_key == self.key_id or owner_key in self.family

    def changes(self, owner_key: str | None) -> bool:
        """May this viewer change work owned by ``owner_key`` (it sees it: check that first)?"""
        return self.writes_all or (owner_key is not None and (owner_key == self.key_id or owner_key in self.family))


@dataclass(frozen=True, slots=True)
class Allowance:
    """A budget above a key's spawns: its own (``scope`` "key") or its project's ("project")."""

    scope: str           # "key" | "project"
    owner_id: str        # the key id or the project id
    max_budget: float    # USD per period
    duration: str        # a DURATIONS name
    anchor: float        # start of the first period
    # A key's budget only: the other keys of its rotation family (the keys it was rotated
    # from or to).  Rotation hands one budget on, it does not mint a second: their spend and
    # reservations count against this budget too (and theirs against it).
    shared: tuple[str, ...] = ()

    def period(self, now: float) -> tuple[float, float | None]:
        """(start, end) of the period ``now`` falls in; end None: ``total``, never resets.
        Before the anchor (a clock set back) the first period is the current one."""
        length = DURATIONS[self.duration]
        if length is None:
            return self.anchor, None
        n = max(0, math.floor((now - self.anchor) / length))
        start = self.anchor + n * length
        return start, start + length


def parse_allowance(max_budget: Any, duration: Any, errors: list[dict[str, str]],
                    prefix: str = "") -> tuple[float | None, str | None]:
    """Check a ``max_budget``/``budget_duration`` pair from a request or the CLI.

    Returns (max_budget, duration); (None, None) when no budget is asked for.  A budget
    without a duration gets ``1d``; a duration without a budget is an error.  Problems are
    appended to ``errors`` as the API's field errors.
    """
    if max_budget is None:
        if duration is not None:
            errors.append({"field": f"{prefix}budget_duration",
                           "message": "budget_duration needs a max_budget"})
        return None, None
    if not finite_number(max_budget) or max_budget < 0 or max_budget > 1_000_000:
        errors.append({"field": f"{prefix}max_budget",
                       "message": "max_budget must be a number of USD from 0 to 1000000"})
        return None, None
    if duration is None:
        duration = "1d"
    if not isinstance(duration, str) or duration not in DURATIONS:
        errors.append({"field": f"{prefix}budget_duration",
                       "message": f"budget_duration must be one of {', '.join(DURATIONS)}"})
        return None, None
    return float(max_budget), duration
