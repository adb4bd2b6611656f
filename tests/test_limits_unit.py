"""Token buckets, their persistence, and the budget's reserve/settle arithmetic."""

from __future__ import annotations

import json
import os
import stat

import pytest

from j1mskyd.api.rate_headers import decision_headers
from j1mskyd.budget import Budget, BudgetExceeded, BudgetPolicy, SpawnRefused, alert_level
from j1mskyd.ratelimit import BucketFile, Buckets, Limit
from tests.conftest import Clock



def test_bucket_spends_then_refuses_then_refills_at_limit_over_window():
    clock = Clock()
    buckets = Buckets(clock)
    limit = Limit(limit=4, window=3600)  # one token per 900 s
    decisions = [buckets.take("k", limit) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, True, False]
    assert [d.remaining for d in decisions[:4]] == [3, 2, 1, 0]
    refused = decisions[-1]
    assert refused.retry_after == pytest.approx(900)
    assert refused.reset == pytest.approx(clock.t + 3600)
    clock.t += 899
    assert not buckets.take("k", limit).allowed
    clock.t += 1
    assert buckets.take("k", limit).allowed
    clock.t += 10 * 3600  # refill never exceeds the capacity
    assert buckets.peek("k", limit).remaining == 4
    assert buckets.hits == 2


def test_take_each_answers_for_the_tightest_bucket_and_spends_all_or_none():
    clock = Clock(1000.0)
    buckets = Buckets(clock)
    minute, hour = Limit(10, 60.0), Limit(10, 3600.0)
    # Equal levels: the first bucket's answer (its refill rate sets Reset).
    d = buckets.take_each((("a", minute), ("b", hour)))
    assert (d.allowed, d.limit, d.remaining) == (True, 10, 9)
    assert d.reset == pytest.approx(1000.0 + 6.0)
    assert buckets.take_each((("b", hour), ("a", minute))).reset == pytest.approx(1000.0 + 720.0)
    # The emptier bucket answers, in its own limit; a refusal spends from neither.
    tight = Limit(1, 60.0)
    assert buckets.take_each((("a", minute), ("t", tight))).limit == 1
    refused = buckets.take_each((("a", minute), ("t", tight)))
    assert (refused.allowed, refused.limit, refused.remaining) == (False, 1, 0)
    assert refused.retry_after == pytest.approx(60.0)
    assert buckets.peek("a", minute).remaining == 7
    assert buckets.hits == 1
    with pytest.raises(ValueError):
        buckets.take_each(())


def test_decision_headers():
    clock = Clock(1000.2)
    d = Buckets(clock).take("k", Limit(10, 100))
    h = decision_headers(d)
    assert h["X-RateLimit-Limit"] == "10" and h["X-RateLimit-Remaining"] == "9"
    assert h["X-RateLimit-Reset"] == "1011"  # full again after 10 s, rounded up
    assert h["X-RateLimit-Reset-At"] == "1970-01-01T00:16:51Z"


def test_prune_forgets_only_full_buckets():
    clock = Clock()
    buckets = Buckets(clock)
    limit = Limit(2, 10)
    buckets.take("a", limit)
    buckets.take("b", limit)
    clock.t += 3
    buckets.take("b", limit)
    clock.t += 2  # a: full again; b: not yet
    assert buckets.prune(lambda key: limit) == 1
    assert len(buckets) == 1


def test_bucket_file_round_trip_is_atomic_and_skips_when_unchanged(tmp_path):
    path = str(tmp_path / "ratelimits.json")
    clock = Clock()
    buckets = Buckets(clock)
    f = BucketFile(path, buckets)
    assert f.save_if_changed() is False and not os.path.exists(path)
    limit = Limit(100, 3600)
    for _ in range(30):
        buckets.take("provider:anthropic", limit)
    assert f.save_if_changed() is True
    assert f.save_if_changed() is False  # nothing changed since: no write
    assert f.writes == 1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".ratelimits.")]

    again = Buckets(clock)
    assert BucketFile(path, again).load() == 1
    assert again.peek("provider:anthropic", limit).remaining == 70
    clock.t += 36  # one token per 36 s: wall-clock time while down counts
    assert again.peek("provider:anthropic", limit).remaining == 71


@pytest.mark.parametrize("content", [b"{not json", b"[]", json.dumps({"version": 99}).encode(),
                                     json.dumps({"version": 1, "buckets": {"k": ["x", 1]}}).encode()])
def test_damaged_state_file_is_ignored(tmp_path, content):
    path = tmp_path / "ratelimits.json"
    path.write_bytes(content)
    buckets = Buckets(Clock())
    assert BucketFile(str(path), buckets).load() == 0
    assert len(buckets) == 0


@pytest.mark.parametrize("pct,level", [(0, "ok"), (49.99, "ok"), (50, "notice"), (69.99, "notice"), (70, "warning"),
                                       (89.99, "warning"), (90, "critical"), (150, "critical")])
def test_alert_levels_at_their_thresholds(pct, level):
    assert alert_level(pct) == level


def test_reserve_refuses_what_would_exceed_the_daily_budget():
    budget = Budget(BudgetPolicy(daily_budget=1.0, monthly_ceiling=30.0), Clock())
    budget.reserve("a", "key", 0.6)
    with pytest.raises(BudgetExceeded) as err:
        budget.reserve("b", "key", 0.5)
    assert err.value.status == 402 and err.value.extra["budget_remaining"] == 0.4
    budget.reserve("b", "key", 0.4)  # exactly at the budget is allowed
    budget.settle("a", 0.1)          # actual cost below the estimate frees the rest
    assert budget.spent_today == pytest.approx(0.1) and budget.reserved == pytest.approx(0.4)
    budget.reserve("c", "key", 0.5)
    assert budget.remaining == 0.0


def test_monthly_ceiling_and_day_rollover():
    clock = Clock(1_764_028_800.0)  # 2025-11-25T00:00:00Z
    budget = Budget(BudgetPolicy(daily_budget=10.0, monthly_ceiling=12.0), clock)
    budget.restore(spent_today=0.0, spent_month=11.5, spent_hour_by_key={}, live=[])
    with pytest.raises(BudgetExceeded, match="Monthly"):
        budget.reserve("a", "key", 1.0)
    budget.reserve("a", "key", 0.4)
    budget.settle("a", 0.4)
    assert budget.spent_today == pytest.approx(0.4)
    clock.t += 86_400  # next day: today's spend starts again, the month's does not
    assert budget.snapshot()["today_spend"] == 0.0
    assert budget.spent_month == pytest.approx(11.9)


def test_cost_spike_blocks_the_key_until_the_hour_ends():
    clock = Clock(1_764_028_800.0 + 600)  # ten minutes into an hour
    budget = Budget(BudgetPolicy(daily_budget=1000.0, monthly_ceiling=30000.0, spike_per_hour=5.0), clock)
    budget.reserve("a", "k1", 5.0)  # a hard cap: exactly at it fits
    budget.settle("a", 5.0)
    with pytest.raises(SpawnRefused) as err:
        budget.reserve("b", "k1", 0.01)
    assert err.value.status == 429 and err.value.extra["retry_after"] == 3001
    budget.reserve("c", "k2", 0.01)  # other keys are not blocked
    clock.t += 3000
    budget.reserve("d", "k1", 0.01)


def test_per_key_concurrency():
    budget = Budget(BudgetPolicy(max_agents_per_key=2), Clock())
    budget.reserve("a", "k", 0.0)
    budget.reserve("b", "k", 0.0)
    with pytest.raises(SpawnRefused, match="Too many agents"):
        budget.reserve("c", "k", 0.0)
    budget.reserve("c", "other", 0.0)
    budget.settle("a", None)
    budget.reserve("c2", "k", 0.0)


def test_restore_rebuilds_reservations_and_level_changes_are_announced():
    budget = Budget(BudgetPolicy(daily_budget=10.0), Clock())
    changes = []
    budget.on_level_change = lambda old, new: changes.append((old, new))
    budget.restore(spent_today=4.0, spent_month=4.0, spent_hour_by_key={}, live=[("a", "k", 1.5), ("b", "k", 1.0)])
    assert budget.reserved == pytest.approx(2.5) and budget.remaining == 3.5
    budget.settle("a", 1.2)
    assert changes == [("ok", "notice")]
    assert budget.snapshot()["budget_alert_level"] == "notice"
