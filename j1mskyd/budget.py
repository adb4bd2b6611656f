"""Daily budget, monthly ceiling, cost-spike limit and per-key concurrency.

Every money level is a hard cap.  A *level* is a cap and what counts against it in its
current period: the daily budget (today, UTC), the monthly ceiling (this month) and the
cost-spike limit (this key, this clock hour).  At spawn an agent's worst case (see
:mod:`j1mskyd.worstcase`) is *reserved* at every level at once: a spawn whose reservation
would take any level's settled spend + open reservations past its cap is refused (402 for
the budget and the ceiling, 429 for the spike limit, which passes with the hour).  When
the agent ends, its reservation is *settled*: released, and the real cost counted.
Everything runs on the event loop with no await between check and reserve, so racing
spawns can never overspend together.

A provider that bills more than it was allowed (it ignored ``max_tokens``) is still
counted at its true cost; :meth:`Budget.settle` then reports each level whose settled
spend passed its cap, once per period, and that level refuses every spawn until its
period ends.

The truth about money is the usage ledger in sqlite; :meth:`Budget.restore` rebuilds
today's and this month's spend and the open reservations from it at start, which is
how the daily budget context survives restarts.

Keys and projects may have budgets of their own (tenancy.Allowance: ``max_budget`` per
``1d``, ``30d`` or ``total``), given by the ``allowances(key_id)`` callable: the key's own,
then its project's.  Each is one more level of a spawn by that key, checked with the
others in the same synchronous step.  What counts against it is the settled spend of its
owner (the key with its rotation family, or the project the spend was made under) since the start of its
current period, plus the owner's open reservations.  Periods start at UTC midnights, so the spend
is kept per owner and UTC day (:meth:`Budget.restore_spend` loads it from the ledger at
start, settle() adds to it): a period that rolls over, or an allowance that changes (a
PATCH, the CLI from another process), is summed again from those days at its next
check, in memory, with no await that a racing spawn could slip through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import ApiError, RateLimited
from .tenancy import Allowance

__all__ = ["ALERT_LEVELS", "Budget", "BudgetExceeded", "BudgetPolicy", "Level", "SpawnRefused", "alert_level"]

ALERT_LEVELS = (("critical", 90.0), ("warning", 70.0), ("notice", 50.0))


# Settled spend reaches a cap in two ways only (reservations keep spawns under it): a provider
# billed more than it was allowed, or the cap was lowered (a key's PATCH, a reload) below what
# was already spent.  The refusal cannot tell which, so it names both.
_WHY_EXCEEDED = "a provider billed more than it was allowed, or the cap was lowered below what was already spent"


class BudgetExceeded(ApiError):
    status = 402
    type = "BUDGET_EXCEEDED"


class SpawnRefused(RateLimited):
    """Too many live agents for a key, or its cost-spike block."""


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    daily_budget: float = 50.0
    monthly_ceiling: float = 1500.0
    spike_per_hour: float = 100.0     # per key; above it the key is blocked until the hour ends
    max_agents_per_key: int = 50      # live (queued or running) agents per key


def alert_level(utilization_pct: float) -> str:
    for level, threshold in ALERT_LEVELS:
        if utilization_pct >= threshold:
            return level
    return "ok"


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def _month(ts: float) -> str:
    return _day(ts)[:7]


@dataclass(frozen=True, slots=True)
class Level:
    """One cap and what counts against it in its current period."""
    name: str         # "daily", "monthly", "hourly"; "key", "project" (an allowance's scope)
    cap: float
    settled: float    # spend counted in this period
    reserved: float   # open reservations counted at this level
    period: str       # the day, the month, the key and the hour, or the owner and its period's start
    allowance: Allowance | None = None  # a key's or a project's budget
    ends: float | None = None           # an allowance's period end (None: total, or not an allowance)

    @property
    def remaining(self) -> float:
        return round(max(self.cap - self.committed, 0.0), 4)

    @property
    def committed(self) -> float:
        return self.settled + self.reserved

    @property
    def exceeded(self) -> bool:
        return self.settled > self.cap + _EPSILON


_EPSILON = 1e-9  # float sums of exact reservations may land a hair above a cap they fit
_DAY = 86_400.0
Owner = tuple[str, str]  # ("key", key id) or ("project", project id): whose budget a spend counts against


def _no_allowances(key_id: str) -> Sequence[Allowance]:
    return ()


class Budget:
    """``on_level_change(old, new)`` hears of every change of the alert level (ok, notice,
    warning, critical), synchronously, from the call that changed it."""

    def __init__(self, policy: BudgetPolicy, clock: Callable[[], float] = time.time, *,
                 on_level_change: Callable[[str, str], None] | None = None,
                 allowances: Callable[[str], Sequence[Allowance]] = _no_allowances) -> None:
        """``allowances(key_id)``: the budgets above that key's spawns besides the daemon's
        (its own, then its project's), asked at every check: memory only, and cheap."""
        self.policy = policy
        self.clock = clock
        self.allowances = allowances
        self._by_day: dict[Owner, dict[int, float]] = {}     # settled spend per owner and UTC day number
        self._tally: dict[Owner, list[float]] = {}           # owner -> [first day of its period, spend since]
        self._reserved_project: dict[str, float] = {}        # project id -> its open reservations
        self._day = _day(clock())
        self._month = _month(clock())
        self.spent_today = 0.0
        self.spent_month = 0.0
        self._reserved: dict[str, tuple[str, str | None, float]] = {}  # hold id -> (key_id, project_id, amount)
        self.reserved = 0.0
        self._reserved_key: dict[str, float] = {}           # key_id -> its open reservations
        self._live_per_key: dict[str, int] = {}
        self._hour = int(clock() // 3600)
        self._spent_hour: dict[str, float] = {}             # key_id -> spend this clock hour
        self._exceeded: set[tuple[str, str]] = set()        # (level, period) already reported
        self.on_level_change: Callable[[str, str], None] = on_level_change or (lambda old, new: None)
        self.version = 0  # changes whenever spend or reservations change (cache keys use it)
        self._level = "ok"

    # -- state ------------------------------------------------------------------------
    def _roll(self) -> None:
        now = self.clock()
        hour = int(now // 3600)
        if hour == self._hour:  # called twice an agent: the day's name only when the hour changes
            return
        day, month = _day(now), _month(now)
        if day != self._day:
            self._day, self.spent_today = day, 0.0
            self.version += 1
        if month != self._month:
            self._month, self.spent_month = month, 0.0
        if hour != self._hour:
            self._hour, self._spent_hour = hour, {}
            self._exceeded = {(name, period) for name, period in self._exceeded if name != "hourly"}

    def levels(self, key_id: str) -> list[Level]:
        """Every cap a spawn by ``key_id`` must fit under: the key's hour, its own budget and
        its project's (when it has them), the day and the month."""
        p = self.policy  # the key's own level first: its refusal (429) is the more specific
        levels = [Level("hourly", p.spike_per_hour, self._spent_hour.get(key_id, 0.0),
                        self._reserved_key.get(key_id, 0.0), f"{key_id}@{self._hour}")]
        for allowance in self.allowances(key_id):
            levels.append(self.allowance_level(allowance))
        levels.append(Level("daily", p.daily_budget, self.spent_today, self.reserved, self._day))
        levels.append(Level("monthly", p.monthly_ceiling, self.spent_month, self.reserved, self._month))
        return levels

    def allowance_level(self, allowance: Allowance) -> Level:
        """A key's or a project's budget as a level: its owner's spend in the current period
        and its owner's open reservations."""
        start, end = allowance.period(self.clock())
        held = self._reserved_key if allowance.scope == "key" else self._reserved_project
        owners = (allowance.owner_id, *allowance.shared)  # a rotated key's family shares one budget
        settled = sum(self._spent_since((allowance.scope, owner_id), start) for owner_id in owners)
        reserved = sum(held.get(owner_id, 0.0) for owner_id in owners)
        return Level(allowance.scope, allowance.max_budget, settled, reserved,
                     f"{allowance.owner_id}@{int(start)}", allowance, end)

    def _spent_since(self, owner: Owner, start: float) -> float:
        """The owner's settled spend since ``start`` (a period's start: a UTC midnight; any
        other moment counts its whole day, the safe side).  Cached per owner for its current
        period; a new period or another start (an allowance that changed) sums the days again."""
        first = int(start // _DAY)
        tally = self._tally.get(owner)
        if tally is None or tally[0] != first:
            spent = sum(v for day, v in self._by_day.get(owner, {}).items() if day >= first)
            tally = self._tally[owner] = [first, spent]
        return tally[1]

    def _count_spend(self, owner: Owner, cost: float) -> None:
        today = int(self.clock() // _DAY)
        days = self._by_day.setdefault(owner, {})
        days[today] = days.get(today, 0.0) + cost
        tally = self._tally.get(owner)
        if tally is not None and today >= tally[0]:
            tally[1] += cost

    def remaining_for(self, key_id: str) -> float:
        """The most ``key_id`` could reserve now by its money levels that have no hour in them:
        the smallest remaining of its own budget, its project's and the daemon's day
        (X-Budget-Remaining).  Memory only."""
        self._roll()
        remaining = self.remaining
        for allowance in self.allowances(key_id):
            remaining = min(remaining, self.allowance_level(allowance).remaining)
        return remaining

    def standing(self, allowance: Allowance) -> dict[str, Any]:
        """A budget's standing for GET /keys/{key_id} (and a project's): spend and open
        reservations in its current period, what remains, when the period started and ends."""
        from .agent_record import iso
        self._roll()
        level = self.allowance_level(allowance)
        start, end = allowance.period(self.clock())
        return {"max_budget": allowance.max_budget, "budget_duration": allowance.duration,
                "spend": round(level.settled, 6), "reserved": round(level.reserved, 6),
                "budget_remaining": level.remaining, "period_start": iso(start), "resets_at": iso(end)}

    @staticmethod
    def spend_horizon(allowances: Iterable[Allowance], now: float) -> float:
        """From when restore_spend() needs the ledger: the earliest start of the current
        periods of ``allowances`` (every budget there is: the keys' and the projects'), and
        yesterday's UTC midnight at the latest.  A budget set or given a new duration later
        starts today (yesterday, when another process set it just before midnight); a period
        that rolls over later starts on a day settle() counted in memory."""
        return min([now // _DAY * _DAY - _DAY, *(a.period(now)[0] for a in allowances)]) // _DAY * _DAY

    def restore_spend(self, rows: Iterable[tuple[str | None, str | None, int, float]]) -> None:
        """Settled spend per owner and UTC day from the ledger: (api_key, project_id, day
        number, cost) rows (ledger.spend_by_day)."""
        self._by_day.clear()
        self._tally.clear()
        for key_id, project_id, day, cost in rows:
            for scope, owner_id in (("key", key_id), ("project", project_id)):
                if owner_id is not None:
                    days = self._by_day.setdefault((scope, owner_id), {})
                    days[day] = days.get(day, 0.0) + cost

    def restore(self, spent_today: float, spent_month: float, spent_hour_by_key: dict[str, float],
                live: Sequence[tuple[str, str, float] | tuple[str, str, float, str | None]]) -> None:
        """Rebuild from the ledger: settled spend, and (hold, key, reservation[, project]) for
        live agents.  A level already past its cap was announced when it happened: not again."""
        self._roll()
        self.spent_today, self.spent_month = spent_today, spent_month
        self._spent_hour = dict(spent_hour_by_key)
        self._reserved.clear()
        self._reserved_key.clear()
        self._reserved_project.clear()
        self._live_per_key.clear()
        self.reserved = 0.0
        for agent_id, key_id, amount, *project in live:
            self._hold(agent_id, key_id, amount, project[0] if project else None)
        for key_id in {"", *self._spent_hour}:
            self._exceeded.update((lv.name, lv.period) for lv in self.levels(key_id) if lv.exceeded)
        self._level = self.level

    @property
    def committed_today(self) -> float:
        return self.spent_today + self.reserved

    @property
    def remaining(self) -> float:
        return round(max(self.policy.daily_budget - self.committed_today, 0.0), 4)

    @property
    def utilization_pct(self) -> float:
        if self.policy.daily_budget <= 0:
            return 0.0
        return round(self.spent_today / self.policy.daily_budget * 100, 2)

    @property
    def level(self) -> str:
        return alert_level(self.utilization_pct)

    # -- reserve / settle ----------------------------------------------------------------
    def live_limit(self, max_live: int | None = None) -> int:
        """How many agents a key may have live: ``max_live``, its own limit, or else
        [budget] max_agents_per_key."""
        return self.policy.max_agents_per_key if max_live is None else max_live

    def check(self, key_id: str, amount: float, count: int = 1, *, max_live: int | None = None) -> None:
        """Raise if ``count`` agents reserving ``amount`` in all may not start now.
        ``max_live``: the key's own limit of live agents (None: [budget] max_agents_per_key)."""
        self._roll()
        most = self.live_limit(max_live)
        if self._live_per_key.get(key_id, 0) + count > most:
            raise SpawnRefused(f"Too many agents in flight for this key (limit {most}); "
                               "wait for some to finish", retry_after=5, headers={"Retry-After": "5"})
        if self._fits(key_id, amount):
            return
        for level in self.levels(key_id):
            if level.committed + amount > level.cap:
                raise self._refusal(level, amount)

    def _fits(self, key_id: str, amount: float) -> bool:
        """Does ``amount`` fit under every level of ``key_id`` (what the loop over
        :meth:`levels` in :meth:`check` finds, in the same float arithmetic)?  The usual answer,
        worked out without making the levels: a spawn checked three Level objects it did not
        need (a refusal builds them to say which level refused)."""
        p = self.policy
        if self._spent_hour.get(key_id, 0.0) + self._reserved_key.get(key_id, 0.0) + amount > p.spike_per_hour:
            return False
        for allowance in self.allowances(key_id):
            level = self.allowance_level(allowance)
            if level.committed + amount > level.cap:
                return False
        return (self.spent_today + self.reserved + amount <= p.daily_budget
                and self.spent_month + self.reserved + amount <= p.monthly_ceiling)

    def _refusal(self, level: Level, amount: float) -> ApiError:
        figures = f"spent {level.settled:.4f}, reserved {level.reserved:.4f}, this spawn {amount:.4f}"
        allowance = level.allowance
        if allowance is not None:
            from .agent_record import iso
            what = f"{allowance.scope.capitalize()} budget of ${level.cap:g} per {allowance.duration}"
            if allowance.scope == "project":
                what += f" (project {allowance.owner_id})"
            until = "it never resets" if level.ends is None else f"it resets at {iso(level.ends)}"
            if level.exceeded:
                return BudgetExceeded(f"{what} is exceeded ({figures}): {_WHY_EXCEEDED}; {until}",
                                      budget_remaining=level.remaining, level=allowance.scope)
            return BudgetExceeded(f"{what} would be exceeded ({figures}); {until}",
                                  budget_remaining=level.remaining, level=allowance.scope)
        if level.name in ("daily", "monthly"):
            what = "Daily budget" if level.name == "daily" else "Monthly ceiling"
            if level.exceeded:
                period = "UTC day" if level.name == "daily" else "month"
                return BudgetExceeded(f"{what} of ${level.cap:g} is exceeded ({figures}): {_WHY_EXCEEDED}; "
                                      f"spawns are refused until the {period} ends",
                                      budget_remaining=self.remaining)
            return BudgetExceeded(f"{what} of ${level.cap:g} would be exceeded ({figures})",
                                  budget_remaining=self.remaining)
        if level.settled + amount > level.cap:  # only the hour's end makes room
            wait, when = int(3600 - self.clock() % 3600) + 1, "new spawns resume when the hour ends"
        else:  # room comes back as this key's agents in flight settle below their reservations
            wait, when = 5, "wait for this key's agents in flight to finish"
        return SpawnRefused(f"Cost spike protection: this key's spend this hour would pass "
                            f"${level.cap:g} ({figures}); {when}", retry_after=wait,
                            headers={"Retry-After": str(wait)})

    def reserve(self, agent_id: str, key_id: str, amount: float) -> None:
        """check() then hold; no await may come between the two (see module doc)."""
        self.reserve_all(key_id, [(agent_id, amount)])

    def reserve_all(self, key_id: str, items: list[tuple[str, float]], *, project_id: str | None = None,
                    max_live: int | None = None) -> None:
        """Reserve for several agents at once (a batch): all of them, or none.  ``project_id``:
        the project the key belongs to now (its reservations and spend count there);
        ``max_live``: the key's own limit of live agents."""
        self.check(key_id, sum(amount for _, amount in items), count=len(items), max_live=max_live)
        for agent_id, amount in items:
            self._hold(agent_id, key_id, amount, project_id)

    def _hold(self, agent_id: str, key_id: str, amount: float, project_id: str | None = None) -> None:
        self.version += 1
        self._reserved[agent_id] = (key_id, project_id, amount)
        self.reserved += amount
        self._reserved_key[key_id] = self._reserved_key.get(key_id, 0.0) + amount
        if project_id is not None:
            self._reserved_project[project_id] = self._reserved_project.get(project_id, 0.0) + amount
        self._live_per_key[key_id] = self._live_per_key.get(key_id, 0) + 1

    def holds(self, hold_id: str) -> bool:
        """Is that reservation still open (not settled yet)?"""
        return hold_id in self._reserved

    def settle(self, hold_id: str, actual_cost: float | None, *, part: float | None = None) -> list[Level]:
        """Count what was really spent (None: nothing) and release the reservation.

        With ``part``, only that much of the hold is released and the hold stays open (a
        team member ending inside its lead's reservation).  Returns the levels whose settled
        spend this pushed past their cap for the first time in their period (a provider
        billed more than it was allowed).
        """
        self._roll()
        self.version += 1
        key_id, project_id, held = self._reserved.get(hold_id, ("", None, 0.0))
        released = held if part is None else min(part, held)
        if key_id:
            self.reserved = max(self.reserved - released, 0.0)
            self._reserved_key[key_id] = max(self._reserved_key.get(key_id, 0.0) - released, 0.0)
            if project_id is not None:
                self._reserved_project[project_id] = max(self._reserved_project.get(project_id, 0.0) - released, 0.0)
            if part is not None:
                self._reserved[hold_id] = (key_id, project_id, held - released)
            else:
                del self._reserved[hold_id]
                if self._reserved_key[key_id] <= 0.0:
                    del self._reserved_key[key_id]
                if project_id is not None and self._reserved_project[project_id] <= 0.0:
                    del self._reserved_project[project_id]
                left = self._live_per_key.get(key_id, 1) - 1
                if left > 0:
                    self._live_per_key[key_id] = left
                else:
                    self._live_per_key.pop(key_id, None)
        exceeded: list[Level] = []
        if actual_cost:
            self.spent_today += actual_cost
            self.spent_month += actual_cost
            self._spent_hour[key_id] = self._spent_hour.get(key_id, 0.0) + actual_cost
            if key_id:
                self._count_spend(("key", key_id), actual_cost)
            if project_id is not None:
                self._count_spend(("project", project_id), actual_cost)
            if self._passed_a_cap(key_id):
                for level in self.levels(key_id):
                    if level.exceeded and (level.name, level.period) not in self._exceeded:
                        self._exceeded.add((level.name, level.period))
                        exceeded.append(level)
        current = self.level
        if current != self._level:
            old, self._level = self._level, current
            self.on_level_change(old, current)
        return exceeded

    def _passed_a_cap(self, key_id: str) -> bool:
        """Is any level of ``key_id`` past its cap (``Level.exceeded`` of one of :meth:`levels`)?
        Asked after every settled cost, where the answer is nearly always no: the levels are
        made only when it is yes."""
        p = self.policy
        if (self._spent_hour.get(key_id, 0.0) > p.spike_per_hour + _EPSILON
                or self.spent_today > p.daily_budget + _EPSILON or self.spent_month > p.monthly_ceiling + _EPSILON):
            return True
        return any(self.allowance_level(allowance).exceeded for allowance in self.allowances(key_id))

    def set_policy(self, policy: BudgetPolicy) -> None:
        """New ``[budget]`` caps (a config reload): they bind from the next check on; what is
        spent and reserved stays.  A new daily budget can move the alert level: announced as
        a change of spend would be."""
        self.policy = policy
        self.version += 1
        current = self.level
        if current != self._level:
            old, self._level = self._level, current
            self.on_level_change(old, current)

    def snapshot(self) -> dict[str, Any]:
        self._roll()
        p = self.policy
        return {"daily_budget": p.daily_budget, "today_spend": round(self.spent_today, 6),
                "reserved": round(self.reserved, 6), "budget_remaining": self.remaining,
                "budget_utilization_pct": self.utilization_pct, "budget_alert_level": self.level,
                "monthly_ceiling": p.monthly_ceiling, "month_spend": round(self.spent_month, 6)}
