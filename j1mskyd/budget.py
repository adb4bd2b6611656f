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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import ApiError, RateLimited

__all__ = ["ALERT_LEVELS", "Budget", "BudgetExceeded", "BudgetPolicy", "Level", "SpawnRefused", "alert_level"]

ALERT_LEVELS = (("critical", 90.0), ("warning", 70.0), ("notice", 50.0))


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
    name: str         # "daily", "monthly", "hourly"
    cap: float
    settled: float    # spend counted in this period
    reserved: float   # open reservations counted at this level
    period: str       # the day, the month, or the key and the hour

    @property
    def committed(self) -> float:
        return self.settled + self.reserved

    @property
    def exceeded(self) -> bool:
        return self.settled > self.cap + _EPSILON


_EPSILON = 1e-9  # float sums of exact reservations may land a hair above a cap they fit


class Budget:
    """``on_level_change(old, new)`` hears of every change of the alert level (ok, notice,
    warning, critical), synchronously, from the call that changed it."""

    def __init__(self, policy: BudgetPolicy, clock: Callable[[], float] = time.time, *,
                 on_level_change: Callable[[str, str], None] | None = None) -> None:
        self.policy = policy
        self.clock = clock
        self._day = _day(clock())
        self._month = _month(clock())
        self.spent_today = 0.0
        self.spent_month = 0.0
        self._reserved: dict[str, tuple[str, float]] = {}   # hold id (agent or team) -> (key_id, amount)
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
        """Every cap a spawn by ``key_id`` must fit under (a per-key budget would be one more)."""
        p = self.policy  # the key's own level first: its refusal (429) is the more specific
        return [Level("hourly", p.spike_per_hour, self._spent_hour.get(key_id, 0.0),
                      self._reserved_key.get(key_id, 0.0), f"{key_id}@{self._hour}"),
                Level("daily", p.daily_budget, self.spent_today, self.reserved, self._day),
                Level("monthly", p.monthly_ceiling, self.spent_month, self.reserved, self._month)]

    def restore(self, spent_today: float, spent_month: float, spent_hour_by_key: dict[str, float],
                live: list[tuple[str, str, float]]) -> None:
        """Rebuild from the ledger: settled spend, and (hold, key, reservation) for live agents.
        A level already past its cap was announced when it happened: not again."""
        self._roll()
        self.spent_today, self.spent_month = spent_today, spent_month
        self._spent_hour = dict(spent_hour_by_key)
        self._reserved.clear()
        self._reserved_key.clear()
        self._live_per_key.clear()
        self.reserved = 0.0
        for agent_id, key_id, amount in live:
            self._hold(agent_id, key_id, amount)
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
    def check(self, key_id: str, amount: float, count: int = 1) -> None:
        """Raise if ``count`` agents reserving ``amount`` in all may not start now."""
        self._roll()
        p = self.policy
        if self._live_per_key.get(key_id, 0) + count > p.max_agents_per_key:
            raise SpawnRefused(f"Too many agents in flight for this key (limit {p.max_agents_per_key}); "
                               "wait for some to finish", retry_after=5, headers={"Retry-After": "5"})
        for level in self.levels(key_id):
            if level.committed + amount > level.cap:
                raise self._refusal(level, amount)

    def _refusal(self, level: Level, amount: float) -> ApiError:
        figures = f"spent {level.settled:.4f}, reserved {level.reserved:.4f}, this spawn {amount:.4f}"
        if level.name in ("daily", "monthly"):
            what = "Daily budget" if level.name == "daily" else "Monthly ceiling"
            if level.exceeded:  # only an overbilling provider gets spend past a cap
                period = "UTC day" if level.name == "daily" else "month"
                return BudgetExceeded(f"{what} of ${level.cap:g} is exceeded ({figures}): a provider billed more "
                                      f"than it was allowed; spawns are refused until the {period} ends",
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

    def reserve_all(self, key_id: str, items: list[tuple[str, float]]) -> None:
        """Reserve for several agents at once (a batch): all of them, or none."""
        self.check(key_id, sum(amount for _, amount in items), count=len(items))
        for agent_id, amount in items:
            self._hold(agent_id, key_id, amount)

    def _hold(self, agent_id: str, key_id: str, amount: float) -> None:
        self.version += 1
        self._reserved[agent_id] = (key_id, amount)
        self.reserved += amount
        self._reserved_key[key_id] = self._reserved_key.get(key_id, 0.0) + amount
        self._live_per_key[key_id] = self._live_per_key.get(key_id, 0) + 1

    def settle(self, hold_id: str, actual_cost: float | None, *, part: float | None = None) -> list[Level]:
        """Count what was really spent (None: nothing) and release the reservation.

        With ``part``, only that much of the hold is released and the hold stays open (a
        team member ending inside its lead's reservation).  Returns the levels whose settled
        spend this pushed past their cap for the first time in their period (a provider
        billed more than it was allowed).
        """
        self._roll()
        self.version += 1
        key_id, held = self._reserved.get(hold_id, ("", 0.0))
        released = held if part is None else min(part, held)
        if key_id:
            self.reserved = max(self.reserved - released, 0.0)
            self._reserved_key[key_id] = max(self._reserved_key.get(key_id, 0.0) - released, 0.0)
            if part is not None:
                self._reserved[hold_id] = (key_id, held - released)
            else:
                del self._reserved[hold_id]
                if self._reserved_key[key_id] <= 0.0:
                    del self._reserved_key[key_id]
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
            for level in self.levels(key_id):
                if level.exceeded and (level.name, level.period) not in self._exceeded:
                    self._exceeded.add((level.name, level.period))
                    exceeded.append(level)
        current = self.level
        if current != self._level:
            old, self._level = self._level, current
            self.on_level_change(old, current)
        return exceeded

    def snapshot(self) -> dict[str, Any]:
        self._roll()
        p = self.policy
        return {"daily_budget": p.daily_budget, "today_spend": round(self.spent_today, 6),
                "reserved": round(self.reserved, 6), "budget_remaining": self.remaining,
                "budget_utilization_pct": self.utilization_pct, "budget_alert_level": self.level,
                "monthly_ceiling": p.monthly_ceiling, "month_spend": round(self.spent_month, 6)}
