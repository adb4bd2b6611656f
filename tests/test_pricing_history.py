"""Recorded pricing history: quotes and decisions are stored, escalations open exceptions, and
the GET rollups and the orchestrator's previews are computed from that history.

Time is moved by replacing the history's clock (the only clock the records and windows read),
so "8 days ago" and "33 days open" are real rows with real timestamps, not stubs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from j1mskyd import pricing
from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.config import PricingConfig
from tests.conftest import Clock, make_config
from tests.test_pricing_api import SEED_QUOTE, ok

DAY = 86400.0
# 2.0 x cost with the price above the minimum: margin 50.0 %, below the task threshold (55).
ESCALATING = {"model": "opus", "estimated_input": 15000, "estimated_output": 2000, "complexity": "low",
              "segment": "startup"}


@pytest.fixture
def clock(client) -> Clock:
    c = Clock(time.time())
    client.app[SERVICES].pricing_history.clock = c
    return c


async def decide(client, fields, **extra):
    _, body = await ok(client, "/api/pricing/decision", {**fields, **extra})
    return body


async def get(client, path, status=200):
    resp = await client.get(path)
    body = await resp.json()
    assert resp.status == status, body
    return body


async def count_rows(client, table: str) -> int:
    return await client.app[SERVICES].store.read(lambda c: c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


async def test_quotes_and_decisions_are_recorded(client, clock):
    quote = await (await client.post("/api/pricing/quote", json=SEED_QUOTE)).json()
    approved = await decide(client, SEED_QUOTE, approver="alice")
    escalated = await decide(client, ESCALATING)
    assert "exception_id" not in approved and escalated["exception_id"].startswith("exc_")
    assert escalated["decision"]["decision_status"] == "escalated"
    rows = await client.app[SERVICES].store.read(lambda c: c.execute(
        "SELECT quote_id, model, segment, delivery_type, recommended_price, gross_margin_pct, is_compliant, "
        "decision_status, approver FROM pricing_quotes ORDER BY created_at, rowid").fetchall())
    assert [tuple(r) for r in rows] == [
        (quote["quote_id"], "sonnet", "enterprise", "task", 0.5, 94.6, 1, None, None),
        (approved["quote_id"], "sonnet", "enterprise", "task", 0.5, 94.6, 1, "approved", "alice"),
        (escalated["quote_id"], "opus", "startup", "task", 0.75, 50.0, 0, "escalated", "ops-auto")]
    assert await count_rows(client, "pricing_exceptions") == 1


async def test_the_calculators_over_posted_data_record_nothing(client):
    await ok(client, "/api/pricing/batch-quotes", {k: v for k, v in SEED_QUOTE.items() if k != "segment"})
    await ok(client, "/api/pricing/scenario", {"scenarios": [SEED_QUOTE]})
    await ok(client, "/api/pricing/weekly-metrics", {"quotes": [{"decision_status": "approved",
                                                                 "gross_margin_pct": 70}]})
    assert await count_rows(client, "pricing_quotes") == 0


async def test_weekly_metrics_from_history(client, clock):
    for _ in range(3):
        await decide(client, SEED_QUOTE)
    first = await decide(client, ESCALATING)
    await decide(client, ESCALATING)
    await ok(client, f"/api/pricing/exceptions/{first['exception_id']}/close", {"resolution": "approved"})
    clock.t -= 8 * DAY  # last week: outside the default 7-day window
    await decide(client, ESCALATING)
    clock.t += 8 * DAY

    body = await get(client, "/api/pricing/weekly-metrics")
    assert body["source"] == "history" and body["period"]["days"] == 7
    assert body["weekly_metrics"] == {"total_quotes": 5, "approved_count": 3, "escalated_count": 2,
                                      "approval_rate": 0.6, "avg_margin_pct": round((3 * 94.6 + 2 * 50.0) / 5, 2),
                                      "exceptions_created": 2, "exceptions_closed": 1}
    wider = await get(client, "/api/pricing/weekly-metrics?days=14")
    assert wider["weekly_metrics"]["total_quotes"] == 6 and wider["weekly_metrics"]["exceptions_created"] == 3


async def test_weekly_comparison_from_history_matches_the_rule(client, clock):
    now = clock.t
    clock.t = now - 10 * DAY           # the week before: 2 decisions, 1 exception
    await decide(client, SEED_QUOTE)
    await decide(client, ESCALATING)
    clock.t = now - 1 * DAY            # this week: 3 decisions, 2 exceptions
    await decide(client, SEED_QUOTE)
    await decide(client, ESCALATING)
    await decide(client, ESCALATING)
    clock.t = now
    body = await get(client, "/api/pricing/weekly-comparison")
    current = {"total_quotes": 3, "approval_rate": 0.33, "avg_margin_pct": round((94.6 + 100) / 3, 2),
               "exceptions_created": 2}
    previous = {"total_quotes": 2, "approval_rate": 0.5, "avg_margin_pct": round((94.6 + 50) / 2, 2),
                "exceptions_created": 1}
    expected = pricing.weekly_comparison(current, previous)
    assert body["week_over_week_changes"] == expected["week_over_week_changes"]
    assert body["significant_shifts"] == expected["significant_shifts"] and body["requires_review"] is True
    assert "Exception creation up 100.0%" in body["significant_shifts"]
    assert body["current"]["total_quotes"] == 3 and body["previous"]["total_quotes"] == 2
    assert body["source"] == "history" and body["period"]["days"] == 14


async def record_markup_5(client) -> None:
    """Experiment "markup-5": control 3 approved (94.6 %) and 1 escalated (50 %), test 2 approved;
    one test decision of experiment "other", and one decision with no variant."""
    for _ in range(3):
        await decide(client, SEED_QUOTE, variant="control", experiment="markup-5")
    await decide(client, ESCALATING, variant="control", experiment="markup-5")
    for _ in range(2):
        await decide(client, SEED_QUOTE, variant="test", experiment="markup-5")
    await decide(client, ESCALATING, variant="test", experiment="other")
    await decide(client, SEED_QUOTE)  # no variant: not part of any experiment


async def test_experiment_summary_from_history(client, clock):
    await record_markup_5(client)

    body = await get(client, "/api/pricing/experiment-summary?experiment=markup-5")
    assert body["status"] == "complete" and body["experiment"] == "markup-5" and body["source"] == "history"
    assert body["control"] == {"count": 4, "approval_rate": 0.75, "avg_margin_pct": round((3 * 94.6 + 50) / 4, 2)}
    assert body["test"] == {"count": 2, "approval_rate": 1.0, "avg_margin_pct": 94.6}
    assert body["recommendation"] == "roll_out"
    everything = await get(client, "/api/pricing/experiment-summary")
    assert everything["test"]["count"] == 3 and everything["experiment"] is None
    none = await get(client, "/api/pricing/experiment-summary?experiment=nope")
    assert none["status"] == "no_data" and none["recommendation"] == "inconclusive"


async def test_exception_aging_from_history_reproduces_the_seed_example(client, clock):
    now = clock.t
    for age in (33, 15, 6, 2):
        clock.t = now - age * DAY - 60
        await decide(client, ESCALATING)
    clock.t = now - 40 * DAY           # an old one, closed: not open, not aging
    closed = await decide(client, ESCALATING)
    await ok(client, f"/api/pricing/exceptions/{closed['exception_id']}/close", {"resolution": "rejected"})
    clock.t = now
    body = await get(client, "/api/pricing/exception-alert")
    # Seed 000: 4 open, oldest 33d, 2 at risk -> critical, schedule_executive_review.
    assert body["exception_aging"] == {"open_exceptions": 4, "oldest_days": 33, "at_risk_count": 2,
                                       "requires_exec_followup": True, "risk_level": "critical",
                                       "next_action": "schedule_executive_review"}
    assert body["exception_alert"]["summary"] == "Critical exception risk: 4 open, oldest 33d"


async def test_exception_alert_with_no_exceptions(client):
    body = await get(client, "/api/pricing/exception-alert")
    assert body["exception_aging"]["risk_level"] == "none"
    assert body["exception_alert"] == {"level": "none", "summary": "No open quote exceptions",
                                       "recommended_action": "no_action"}


async def test_exceptions_list_and_close(client, clock):
    a = await decide(client, ESCALATING)
    clock.t += DAY
    b = await decide(client, ESCALATING)
    listed = await get(client, "/api/pricing/exceptions")
    assert [e["exception_id"] for e in listed["exceptions"]] == [a["exception_id"], b["exception_id"]]
    assert listed["exceptions"][0]["age_days"] == 1 and listed["exceptions"][0]["status"] == "open"
    assert listed["exceptions"][0]["quote_id"] == a["quote_id"] and listed["exceptions"][0]["gross_margin_pct"] == 50.0

    _, body = await ok(client, f"/api/pricing/exceptions/{a['exception_id']}/close",
                       {"resolution": "approved", "closed_by": "deal-desk"})
    assert body["exception"]["status"] == "closed" and body["exception"]["closed_by"] == "deal-desk"
    assert body["exception"]["resolution"] == "approved"
    assert [e["exception_id"] for e in (await get(client, "/api/pricing/exceptions"))["exceptions"]] == \
        [b["exception_id"]]
    assert (await get(client, "/api/pricing/exceptions?status=closed"))["count"] == 1
    assert (await get(client, "/api/pricing/exceptions?status=all&limit=1"))["count"] == 1


async def test_racing_closes_of_one_exception_close_it_once(client):
    # Each racing close read it open, wrote a no-op and answered 200 with the first's resolution.
    a = await decide(client, ESCALATING)
    path = f"/api/pricing/exceptions/{a['exception_id']}/close"
    asked = ["approved", "rejected", "withdrawn"] * 4
    answers = await asyncio.gather(*(client.post(path, json={"resolution": r}) for r in asked))
    statuses = [resp.status for resp in answers]
    assert sorted(statuses) == [200] + [409] * 11, statuses
    [(won, resp)] = [(r, resp) for r, resp in zip(asked, answers) if resp.status == 200]
    assert (await resp.json())["exception"]["resolution"] == won
    closed = (await get(client, "/api/pricing/exceptions?status=closed"))["exceptions"]
    assert [e["resolution"] for e in closed] == [won]


async def test_exception_close_failures_change_nothing(client):
    a = await decide(client, ESCALATING)
    path = f"/api/pricing/exceptions/{a['exception_id']}/close"
    resp = await client.post(path, json={"resolution": "maybe"})
    assert resp.status == 400 and (await resp.json())["error"]["details"][0]["field"] == "resolution"
    resp = await client.post(path, json={})
    assert resp.status == 400
    resp = await client.post("/api/pricing/exceptions/exc_nope/close", json={"resolution": "approved"})
    assert resp.status == 404
    assert (await get(client, "/api/pricing/exceptions"))["count"] == 1  # still open
    await ok(client, path, {"resolution": "withdrawn"}, "form")
    resp = await client.post(path, json={"resolution": "approved"})
    assert resp.status == 409
    closed = (await get(client, "/api/pricing/exceptions?status=closed"))["exceptions"][0]
    assert closed["resolution"] == "withdrawn"  # the second close did not rewrite the first


@pytest.mark.parametrize("query", ["days=0", "days=367", "days=abc", "days=1.5"])
async def test_history_queries_are_validated(client, query):
    for path in ("weekly-metrics", "weekly-comparison", "experiment-summary"):
        resp = await client.get(f"/api/pricing/{path}?{query}")
        body = await resp.json()
        assert resp.status == 400 and body["error"]["details"][0]["field"] == "days", (path, body)


async def test_bad_listing_queries(client):
    for query in ("status=pending", "limit=0", "limit=1001"):
        assert (await client.get(f"/api/pricing/exceptions?{query}")).status == 400


async def test_a_refused_decision_records_nothing(client):
    for bad in ({**SEED_QUOTE, "variant": "blue"}, {**SEED_QUOTE, "experiment": ""},
                {**SEED_QUOTE, "model": "nope"}, {**ESCALATING, "approver": "x" * 101}):
        resp = await client.post("/api/pricing/decision", json=bad)
        assert resp.status == 400, bad
    assert await count_rows(client, "pricing_quotes") == 0
    assert await count_rows(client, "pricing_exceptions") == 0


async def test_every_problem_of_a_decision_is_reported_at_once(client):
    resp = await client.post("/api/pricing/decision", json={**SEED_QUOTE, "model": "nope", "variant": "blue"})
    fields = {d["field"] for d in (await resp.json())["error"]["details"]}
    assert fields == {"model", "variant"}


async def test_exception_created_event_is_in_the_same_unit(client):
    _, hook = await ok(client, "/api/pricing/webhook", {"url": "https://hooks.invalid/p",
                                                        "events": ["pricing.exception_created"]}, status=201)
    d = await decide(client, ESCALATING)
    store = client.app[SERVICES].store
    rows = await store.read(lambda c: c.execute(
        "SELECT e.type, e.id FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.webhook_id = ?",
        (hook["webhook_id"],)).fetchall())
    assert [r[0] for r in rows] == ["pricing.exception_created"]
    event = await client.app[SERVICES].events.get(rows[0][1])
    assert event.data["exception_id"] == d["exception_id"] and event.data["quote_id"] == d["quote_id"]


async def test_retention_keeps_open_exceptions(client, clock):
    history = client.app[SERVICES].pricing_history
    history.keep_days = 30
    now = clock.t
    clock.t = now - 100 * DAY
    await decide(client, SEED_QUOTE)                       # old, no exception: purged
    old_open = await decide(client, ESCALATING)            # old, open: kept
    old_closed = await decide(client, ESCALATING)          # old, closed long ago: purged
    await ok(client, f"/api/pricing/exceptions/{old_closed['exception_id']}/close", {"resolution": "rejected"})
    clock.t = now
    recent = await decide(client, SEED_QUOTE)
    await history.purge()
    ids = await client.app[SERVICES].store.read(lambda c: [r[0] for r in c.execute(
        "SELECT quote_id FROM pricing_quotes ORDER BY created_at").fetchall()])
    assert ids == [old_open["quote_id"], recent["quote_id"]]
    assert [e["exception_id"] for e in (await get(client, "/api/pricing/exceptions?status=all"))["exceptions"]] \
        == [old_open["exception_id"]]


# -- the orchestrator's previews ----------------------------------------------------------------

PREVIEWS = ("quote_decision_preview", "quote_portfolio_preview", "portfolio_alert_preview", "weekly_metrics_preview",
            "weekly_comparison_preview", "exception_aging_preview", "exception_alert_preview")


async def test_previews_are_samples_until_there_is_history(client):
    status = await get(client, "/api/orchestrator/status")
    assert {status[p]["source"] for p in PREVIEWS} == {"sample"}


async def test_previews_come_from_history(client, clock):
    now = clock.t
    clock.t = now - 20 * DAY
    await decide(client, ESCALATING)                       # an exception 20 days open: at risk
    clock.t = now - 9 * DAY
    await decide(client, SEED_QUOTE)                       # last week: one approval
    clock.t = now - 60
    await ok(client, "/api/pricing/quote", SEED_QUOTE)     # a quote without decision: in the portfolio
    await decide(client, SEED_QUOTE, approver="bob", delivery_type="subscription")
    last = await decide(client, ESCALATING, approver="carol")
    clock.t = now
    status = await get(client, "/api/orchestrator/status")
    assert {status[p]["source"] for p in PREVIEWS} == {"history"}
    d = status["quote_decision_preview"]
    assert d["quote_id"] == last["quote_id"], (d, last)
    assert d["decision_status"] == "escalated" and d["approver"] == "carol"
    assert d["next_step"] == "route_to_deal_desk" and d["delivery_type"] == "task"
    portfolio = status["quote_portfolio_preview"]
    assert (portfolio["scenario_count"], portfolio["compliant_count"]) == (3, 2)
    assert portfolio["delivery_type"] == "mixed" and portfolio["requires_executive_review"] is False
    assert status["portfolio_alert_preview"]["level"] == "warning"
    weekly = status["weekly_metrics_preview"]
    assert (weekly["total_quotes"], weekly["approved_count"], weekly["exceptions_created"]) == (2, 1, 1)
    assert status["weekly_comparison_preview"]["week_over_week_changes"]["total_quotes_change"] == 100.0
    aging = status["exception_aging_preview"]
    assert (aging["open_exceptions"], aging["oldest_days"], aging["at_risk_count"]) == (2, 20, 1)
    assert aging["risk_level"] == "warning" and status["exception_alert_preview"]["level"] == "warning"


# -- the [pricing] policy -----------------------------------------------------------------------

def _with_policy(tmp_path, **changes):
    base = make_config(tmp_path)
    policy = dataclasses.replace(base.pricing.policy, **changes)
    return dataclasses.replace(base, pricing=PricingConfig(policy, base.pricing.history_days))


async def test_the_configured_policy_prices_quotes(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(_with_policy(tmp_path, minimum_price=1.0)))
    _, body = await ok(client, "/api/pricing/quote", SEED_QUOTE)
    assert body["quote"]["recommended_price"] == 1.0 and body["quote"]["gross_margin_pct"] == 97.3
    status = await get(client, "/api/pricing/status")
    assert status["pricing_policy"]["minimum_price"] == 1.0


async def test_a_changed_policy_is_announced_at_start(aiohttp_client, tmp_path):
    async def policy_events(cfg):
        client = await aiohttp_client(build_app(cfg))
        events = await get(client, "/api/events?types=pricing.policy_changed")
        await client.close()
        return events["data"]

    assert await policy_events(make_config(tmp_path)) == []          # first start
    assert await policy_events(make_config(tmp_path)) == []          # same policy
    events = await policy_events(_with_policy(tmp_path, minimum_price=0.75))
    assert len(events) == 1
    data = events[0]["data"]
    assert data["previous"]["minimum_price"] == 0.5 and data["current"]["minimum_price"] == 0.75
