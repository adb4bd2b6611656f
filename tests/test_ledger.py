"""The usage ledger's named operations on a real store: record, spend, per-agent and per-model
sums, period totals."""

from __future__ import annotations

from datetime import datetime, timezone

from j1mskyd import ledger

NOW = datetime(2026, 3, 15, 12, 30, tzinfo=timezone.utc).timestamp()


async def test_spend_counts_today_this_month_and_this_hour_per_key(store):
    await store.write(
        ledger.record(NOW - 60, "a1", "key_a", "k2p5", "p", 10, 5, 1.0),          # this hour
        ledger.record(NOW - 2 * 3600, "a2", "key_b", "k2p5", "p", 10, 5, 2.0),    # today, earlier hour
        ledger.record(NOW - 3 * 86400, "a3", "key_a", "opus", "p", 10, 5, 4.0),   # this month
        ledger.record(NOW - 40 * 86400, "a4", "key_a", "opus", "p", 10, 5, 8.0))  # last month
    spent = await store.read(lambda c: ledger.spend(c, NOW))
    assert (spent.today, spent.month, spent.hour_by_key) == (3.0, 7.0, {"key_a": 1.0})


async def test_billed_by_agent_sums_each_asked_agent_past_the_parameter_chunk(store):
    ids = [f"agt_{i:04d}" for i in range(1200)]  # more than two chunks of parameters
    await store.write(*(ledger.record(NOW, a, "k", "m", "p", 1, 1, 0.5) for a in ids),
                      ledger.record(NOW, ids[-1], "k", "m", "p", 1, 1, 0.25, cut=True),
                      ledger.record(NOW, "not_asked", "k", "m", "p", 1, 1, 9.0))
    billed = await store.read(lambda c: ledger.billed_by_agent(c, ids))
    # (everything billed, of which calls cut by a crash)
    assert len(billed) == 1200 and billed[ids[0]] == (0.5, 0.0) and billed[ids[-1]] == (0.75, 0.25)
    assert "not_asked" not in billed
    assert await store.read(lambda c: ledger.billed_by_agent(c, [])) == {}


async def test_by_model_since_and_period_totals(store):
    await store.write(ledger.record(NOW - 10, "a1", "key_a", "cheap", "p", 100, 50, 0.1),
                      ledger.record(NOW - 20, "a2", "key_b", "dear", "p", 10, 5, 3.0),
                      ledger.record(NOW - 30, "a3", "key_b", "dear", "p", 10, 5, 1.0),
                      ledger.record(NOW - 86400, "a4", "key_a", "cheap", "p", 1, 1, 5.0))  # yesterday
    rows = await store.read(lambda c: ledger.by_model_since(c, NOW - 3600))
    assert [(r.model, r.calls, r.cost, r.tokens) for r in rows] == [("dear", 2, 4.0, 30), ("cheap", 1, 0.1, 150)]
    t = await store.read(lambda c: ledger.totals(c, NOW - 2 * 86400, NOW + 1, by_key=True))
    assert (t.cost, t.calls, t.input_tokens, t.output_tokens) == (9.1, 4, 121, 61)
    assert list(t.by_model.items()) == [("cheap", 5.1), ("dear", 4.0)]
    assert t.by_day == {"2026-03-14": 5.0, "2026-03-15": 4.1}
    assert t.by_key == {"key_a": 5.1, "key_b": 4.0}
    assert (await store.read(lambda c: ledger.totals(c, NOW - 3600, NOW + 1))).by_key is None
