"""Daily budget, monthly ceiling, cost-spike protection and per-key concurrency.

At spawn an agent's estimated cost is *reserved*: a spawn whose reservation would take
today's spend (settled + reserved) past the daily budget, or this month's past the
monthly ceiling, is refused with 402.  When the agent ends, its reservation is
*settled*: the estimate is released and the real cost counted.  Everything runs on
the event loop with no await between check and reserve, so racing spawns can never
overspend together.

The truth about money is the usage ledger in sqlite; :meth:`Budget.restore` rebuilds
today's and this month's spend and the open reservations from it at start, which is
how the daily budget context survives restarts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from .errors import ApiError, RateLimited

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


class Budget:
    def __init__(self, policy: BudgetPolicy, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.clock = clock
        self._day = _day(clock())
        self._month = _month(clock())
        self.spent_today = 0.0
        self.spent_month = 0.0
        self._reserved: dict[str, tuple[str, float]] = {}   # agent_id -> (key_id, amount)
        self.reserved = 0.0
        self._live_per_key: dict[str, int] = {}
        self._hour = int(clock() // 3600)
        self._spent_hour: dict[str, float] = {}             # key_id -> spend this clock hour
        self.on_level_change: Callable[[str, str], None] = lambda old, new: None
        self.version = 0  # changes whenever spend or reservations change (cache keys use it)
        self._level = "ok"

    # -- state ------------------------------------------------------------------------
    def _roll(self) -> None:
        now = self.clock()
        day, month, hour = _day(now), _month(now), int(now // 3600)
        if day != self._day:
            self._day, self.spent_today = day, 0.0
            self.version += 1
        if month != self._month:
            self._month, self.spent_month = month, 0.0
        if hour != self._hour:
            self._hour, self._spent_hour = hour, {}

    def restore(self, spent_today: float, spent_month: float, spent_hour_by_key: dict[str, float],
                live: list[tuple[str, str, float]]) -> None:
        """Rebuild from the ledger: settled spend, and (agent, key, estimate) for live agents."""
        self._roll()
        self.spent_today, self.spent_month = spent_today, spent_month
        self._spent_hour = dict(spent_hour_by_key)
        self._reserved.clear()
        self._live_per_key.clear()
        self.reserved = 0.0
        for agent_id, key_id, amount in live:
            self._hold(agent_id, key_id, amount)
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
        """Raise if ``count`` agents costing ``amount`` in all may not start now."""
        self._roll()
        p = self.policy
        if self._live_per_key.get(key_id, 0) + count > p.max_agents_per_key:
            raise SpawnRefused(f"Too many agents in flight for this key (limit {p.max_agents_per_key}); "
                               "wait for some to finish", retry_after=5, headers={"Retry-After": "5"})
        if self._spent_hour.get(key_id, 0.0) > p.spike_per_hour:
            wait = int(3600 - self.clock() % 3600) + 1
            raise SpawnRefused(f"Cost spike protection: this key spent more than ${p.spike_per_hour:g} this "
                               "hour; new spawns resume when the hour ends", retry_after=wait,
                               headers={"Retry-After": str(wait)})
        if self.committed_today + amount > p.daily_budget:
            raise BudgetExceeded(f"Daily budget of ${p.daily_budget:g} would be exceeded "
                                 f"(spent {self.spent_today:.4f}, reserved {self.reserved:.4f}, "
                                 f"this spawn {amount:.4f})", budget_remaining=self.remaining)
        if self.spent_month + self.reserved + amount > p.monthly_ceiling:
            raise BudgetExceeded(f"Monthly ceiling of ${p.monthly_ceiling:g} would be exceeded",
                                 budget_remaining=self.remaining)

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
        self._live_per_key[key_id] = self._live_per_key.get(key_id, 0) + 1

    def settle(self, agent_id: str, actual_cost: float | None) -> None:
        """Release the reservation and count what was really spent (None: nothing)."""
        self._roll()
        self.version += 1
        key_id, amount = self._reserved.pop(agent_id, ("", 0.0))
        if key_id:
            self.reserved = max(self.reserved - amount, 0.0)
            left = self._live_per_key.get(key_id, 1) - 1
            if left > 0:
                self._live_per_key[key_id] = left
            else:
                self._live_per_key.pop(key_id, None)
        if actual_cost:
            self.spent_today += actual_cost
            self.spent_month += actual_cost
            self._spent_hour[key_id] = self._spent_hour.get(key_id, 0.0) + actual_cost
        level = self.level
        if level != self._level:
            old, self._level = self._level, level
            self.on_level_change(old, level)

    def snapshot(self) -> dict[str, object]:
        self._roll()
        p = self.policy
        return {"daily_budget": p.daily_budget, "today_spend": round(self.spent_today, 6),
                "reserved": round(self.reserved, 6), "budget_remaining": self.remaining,
                "budget_utilization_pct": self.utilization_pct, "budget_alert_level": self.level,
                "monthly_ceiling": p.monthly_ceiling, "month_spend": round(self.spent_month, 6)}
