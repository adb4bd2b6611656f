"""Key and project budgets in budget.Budget (issue 15): the levels the allowances(key_id) hook
adds, their periods rolling over on the injected clock, a changed allowance summed again from
the days in memory, the spend restored from the ledger, and the refusal naming its level."""

from __future__ import annotations

import pytest

from j1mskyd import ledger
from j1mskyd.budget import Budget, BudgetExceeded, BudgetPolicy, SpawnRefused
from j1mskyd.tenancy import Allowance, day_start
from tests.conftest import Clock

DAY = 86_400.0
T0 = day_start(1_764_000_000.0) + 3_600.0  # 01:00 UTC of some day


def budget_with(clock: Clock, table: dict[str, list[Allowance]], **policy: float) -> Budget:
    policy = {"daily_budget": 1000.0, "monthly_ceiling": 100_000.0, "spike_per_hour": 1000.0, **policy}
    return Budget(BudgetPolicy(**policy), clock, allowances=lambda key_id: table.get(key_id, ()))


def key_budget(key_id: str, amount: float, duration: str = "1d", anchor: float = day_start(T0)) -> Allowance:
    return Allowance("key", key_id, amount, duration, anchor)


def test_a_key_budget_is_a_hard_cap_reserved_at_spawn_and_settled_at_the_end():
    clock = Clock(T0)
    budget = budget_with(clock, {"k": [key_budget("k", 1.0)]})
    budget.reserve("a", "k", 0.6)
    with pytest.raises(BudgetExceeded) as refused:
        budget.reserve("b", "k", 0.5)  # 0.6 reserved + 0.5 > 1.0
    assert refused.value.extra["level"] == "key"
    assert refused.value.extra["budget_remaining"] == pytest.approx(0.4)
    assert "Key budget of $1 per 1d would be exceeded" in refused.value.message
    budget.reserve("b", "k", 0.4)  # exactly at the cap fits
    budget.settle("a", 0.1)  # the agent cost less than its worst case: room comes back
    budget.reserve("c", "k", 0.5)
    assert budget.remaining_for("k") == pytest.approx(0.0)
    budget.reserve("d", "other", 5.0)  # another key is not held by k's budget


def test_the_period_rolls_over_at_its_end_and_total_never_does():
    clock = Clock(T0)
    budget = budget_with(clock, {"daily": [key_budget("daily", 1.0)],
                                 "monthly": [key_budget("monthly", 1.0, "30d")],
                                 "forever": [key_budget("forever", 1.0, "total")]})
    for key in ("daily", "monthly", "forever"):
        budget.reserve(f"{key}-1", key, 1.0)
        budget.settle(f"{key}-1", 1.0)
        with pytest.raises(BudgetExceeded):
            budget.reserve(f"{key}-2", key, 0.01)
    clock.t = day_start(T0) + DAY - 1  # one second before the day's end: still spent
    with pytest.raises(BudgetExceeded):
        budget.reserve("daily-2", "daily", 0.01)
    clock.t = day_start(T0) + DAY  # the next period: the daily key may spend again
    budget.reserve("daily-2", "daily", 1.0)
    for key in ("monthly", "forever"):
        with pytest.raises(BudgetExceeded):
            budget.reserve(f"{key}-2", key, 0.01)
    clock.t = day_start(T0) + 30 * DAY
    budget.reserve("monthly-2", "monthly", 1.0)
    clock.t = day_start(T0) + 400 * DAY
    with pytest.raises(BudgetExceeded):
        budget.reserve("forever-2", "forever", 0.01)
    standing = budget.standing(key_budget("forever", 1.0, "total"))
    assert standing["resets_at"] is None and standing["spend"] == 1.0


def test_a_project_allowance_through_the_hook_caps_its_keys_together():
    clock = Clock(T0)
    project = Allowance("project", "prj_1", 1.0, "1d", day_start(T0))
    budget = budget_with(clock, {"a": [key_budget("a", 0.8), project], "b": [project]})
    budget.reserve_all("a", [("a1", 0.6)], project_id="prj_1")
    with pytest.raises(BudgetExceeded) as refused:
        budget.reserve_all("b", [("b1", 0.5)], project_id="prj_1")  # b has no budget of its own
    assert refused.value.extra["level"] == "project"
    assert refused.value.extra["budget_remaining"] == pytest.approx(0.4)
    assert "project prj_1" in refused.value.message
    budget.reserve_all("b", [("b1", 0.4)], project_id="prj_1")
    budget.settle("a1", 0.2)
    budget.settle("b1", 0.3)  # the project has spent 0.5 now, settled under it
    assert budget.standing(project)["spend"] == pytest.approx(0.5)
    with pytest.raises(BudgetExceeded):
        budget.reserve_all("b", [("b2", 0.6)], project_id="prj_1")
    assert budget.remaining_for("b") == pytest.approx(0.5)
    assert budget.remaining_for("a") == pytest.approx(0.5)  # a's own 0.8 - 0.2 = 0.6, the project's 0.5


def test_a_cap_lowered_below_the_spend_is_not_blamed_on_a_provider_alone():
    # The refusal said "a provider billed more than it was allowed" when an admin had lowered
    # the key's budget below what it had already spent.
    clock = Clock(T0)
    table = {"k": [key_budget("k", 1.0)]}
    budget = budget_with(clock, table)
    budget.reserve("a", "k", 0.5)
    budget.settle("a", 0.5)
    table["k"] = [key_budget("k", 0.1)]
    with pytest.raises(BudgetExceeded) as refused:
        budget.reserve("b", "k", 0.01)
    assert "is exceeded" in refused.value.message
    assert "the cap was lowered below what was already spent" in refused.value.message


def test_a_changed_allowance_counts_the_spend_of_its_new_period_from_memory():
    clock = Clock(T0)
    table = {"k": [key_budget("k", 10.0, "30d", day_start(T0) - 5 * DAY)]}
    budget = budget_with(clock, table)
    budget.restore_spend([("k", None, int((T0 - 2 * DAY) // DAY), 4.0)])  # two days ago, from the ledger
    budget.reserve("a", "k", 1.0)
    budget.settle("a", 1.0)  # today
    assert budget.standing(table["k"][0])["spend"] == pytest.approx(5.0)
    # A new duration starts its period today (as KeyService sets budget_anchor): only today's spend counts.
    table["k"] = [key_budget("k", 10.0, "1d", day_start(T0))]
    assert budget.standing(table["k"][0])["spend"] == pytest.approx(1.0)
    # A new amount alone keeps the period and its spend.
    table["k"] = [key_budget("k", 1.5, "1d", day_start(T0))]
    with pytest.raises(BudgetExceeded):
        budget.reserve("b", "k", 0.6)
    budget.reserve("b", "k", 0.5)


async def test_spend_is_restored_per_owner_and_day_from_the_ledger(store):
    clock = Clock(T0)
    await store.write(ledger.record(T0 - 2 * DAY, "x1", "k", "m", "p", 1, 1, 2.0, "prj_1"),
                      ledger.record(T0 - 40 * DAY, "x2", "k", "m", "p", 1, 1, 9.0, None),  # before the horizon
                      ledger.record(T0 - 60, "x3", "k", "m", "p", 1, 1, 0.25, None),
                      ledger.record(T0 - 60, "x4", "other", "m", "p", 1, 1, 0.5, "prj_1"))
    project = Allowance("project", "prj_1", 100.0, "30d", day_start(T0) - 10 * DAY)
    mine = key_budget("k", 100.0, "30d", day_start(T0) - 10 * DAY)
    since = Budget.spend_horizon([mine, project], T0)
    assert since == day_start(T0) - 10 * DAY  # the earliest period start
    assert Budget.spend_horizon([], T0) == day_start(T0) - DAY  # no budget: yesterday (a change starts today)
    budget = budget_with(clock, {"k": [mine, project]})
    budget.restore_spend(await store.read(lambda conn: ledger.spend_by_day(conn, since)))
    assert budget.standing(mine)["spend"] == pytest.approx(2.25)      # not the 9.0 of 40 days ago
    assert budget.standing(project)["spend"] == pytest.approx(2.5)    # every key's spend in the project
    assert budget.standing(key_budget("k", 1, "1d"))["spend"] == pytest.approx(0.25)


def test_max_live_replaces_the_daemon_wide_count_for_that_key():
    budget = Budget(BudgetPolicy(max_agents_per_key=5), Clock(T0))
    budget.reserve_all("k", [("a", 0.0), ("b", 0.0)], max_live=2)
    with pytest.raises(SpawnRefused) as refused:
        budget.reserve_all("k", [("c", 0.0)], max_live=2)
    assert "limit 2" in refused.value.message
    budget.reserve_all("k", [("c", 0.0)])  # without its own limit: the daemon's 5
    budget.reserve_all("k2", [(f"x{i}", 0.0) for i in range(5)])
    with pytest.raises(SpawnRefused):
        budget.reserve_all("k2", [("x6", 0.0)])


def test_a_live_agent_restored_holds_its_project_reservation():
    clock = Clock(T0)
    project = Allowance("project", "prj_1", 1.0, "1d", day_start(T0))
    budget = budget_with(clock, {"k": [project]})
    budget.restore(0.0, 0.0, {}, live=[("a", "k", 0.7, "prj_1"), ("b", "k", 0.1)])
    with pytest.raises(BudgetExceeded):
        budget.reserve_all("k", [("c", 0.4)], project_id="prj_1")
    budget.settle("a", 0.2)
    budget.reserve_all("k", [("c", 0.4)], project_id="prj_1")
    assert budget.standing(project)["reserved"] == pytest.approx(0.4)
