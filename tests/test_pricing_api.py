"""The /pricing endpoints through real HTTP: both encodings, validation, Deprecation, live status.

Each calculator is driven with the seed's request as a JSON body, as urlencoded form fields and
as multipart form fields; the three answers must be identical and carry the seed's numbers
(the rules' numbers where business-rules.md calls the example illustrative; see
tests/test_pricing_rules.py for the list).
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from j1mskyd.app import build_app
from tests.conftest import wait_status
from tests.test_budget_http import priced_config, spawn_ok, upstream  # noqa: F401  (fixture)

ENCODINGS = ("json", "form", "multipart")


def _form_value(v):
    return json.dumps(v) if isinstance(v, (list, dict, bool)) else str(v)


async def post(client, path: str, fields: dict, encoding: str = "json"):
    if encoding == "json":
        return await client.post(path, json=fields)
    if encoding == "form":
        return await client.post(path, data={k: _form_value(v) for k, v in fields.items()})
    form = aiohttp.FormData()
    for k, v in fields.items():
        form.add_field(k, _form_value(v))
    form._is_multipart = True  # force multipart/form-data even without files
    return await client.post(path, data=form)


async def ok(client, path, fields, encoding="json", status=200):
    resp = await post(client, path, fields, encoding)
    body = await resp.json()
    assert resp.status == status, body
    return resp, body


SEED_QUOTE = {"model": "sonnet", "estimated_input": 3000, "estimated_output": 1200, "complexity": "high",
              "delivery_type": "task", "segment": "enterprise"}


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_quote_seed_example_in_every_encoding(client, encoding):
    resp, body = await ok(client, "/api/pricing/quote", SEED_QUOTE, encoding)
    assert "Deprecation" not in resp.headers
    assert body["quote"] == {"model": "sonnet", "complexity": "high", "segment": "enterprise",
                             "estimated_input_tokens": 3000, "estimated_output_tokens": 1200, "internal_cost": 0.027,
                             "base_markup": 5.0, "segment_adjustment": 0.5, "final_markup": 5.5,
                             "recommended_price": 0.5, "gross_margin_pct": 94.6, "margin_band": "strong"}
    assert body["guardrail_check"] == {"delivery_type": "task", "minimum_margin_pct": 55.0, "actual_margin_pct": 94.6,
                                       "is_compliant": True, "action": "approve_quote"}
    assert body["success"] is True and body["quote_id"].startswith("quote_")


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_missing_segment_defaults_to_mid_market_with_deprecation(client, encoding):
    fields = {k: v for k, v in SEED_QUOTE.items() if k != "segment"}
    resp, body = await ok(client, "/api/pricing/quote", fields, encoding)
    assert resp.headers["Deprecation"] == "true"
    assert body["quote"]["segment"] == "mid_market" and body["quote"]["final_markup"] == 5.0
    resp, body = await ok(client, "/api/v1/pricing/decision", fields, encoding)
    assert resp.headers["Deprecation"] == "true" and body["quote"]["segment"] == "mid_market"


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_validation_is_the_same_in_every_encoding(client, encoding):
    bad = {"model": "gpt-9", "estimated_input": "2.5" if encoding != "json" else 2.5, "estimated_output": -1,
           "complexity": "extreme", "delivery_type": "gift", "segment": "whales"}
    resp = await post(client, "/api/pricing/quote", bad, encoding)
    assert resp.status == 400
    body = await resp.json()
    assert body["success"] is False and body["error"]["type"] == "VALIDATION_ERROR"
    assert body["error"]["request_id"].startswith("req_")
    assert {d["field"] for d in body["error"]["details"]} == {
        "model", "estimated_input", "estimated_output", "complexity", "delivery_type", "segment"}


@pytest.mark.parametrize("missing", ["model", "complexity", "estimated_input", "estimated_output"])
async def test_required_quote_fields(client, missing):
    fields = {k: v for k, v in SEED_QUOTE.items() if k != missing}
    resp = await post(client, "/api/pricing/quote", fields, "form")
    body = await resp.json()
    assert resp.status == 400 and [d["field"] for d in body["error"]["details"]] == [missing]


async def test_bad_bodies(client):
    resp = await client.post("/api/pricing/quote", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "INVALID_JSON"
    resp = await client.post("/api/pricing/quote", json=[1, 2])
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "VALIDATION_ERROR"
    resp = await client.post("/api/pricing/quote", json={**SEED_QUOTE, "estimated_input": True})
    assert resp.status == 400 and (await resp.json())["error"]["details"][0]["field"] == "estimated_input"


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_batch_quotes_seed_request_rules_win(client, encoding):
    fields = {"model": "k2p5", "estimated_input": 2000, "estimated_output": 800, "complexity": "medium",
              "delivery_type": "task"}
    resp, body = await ok(client, "/api/pricing/batch-quotes", fields, encoding)
    assert body["input_params"] == {"model": "k2p5", "complexity": "medium", "estimated_input": 2000,
                                    "estimated_output": 800, "delivery_type": "task"}
    assert list(body["quotes_by_segment"]) == ["enterprise", "mid_market", "smb", "startup"]
    # illustrative in the seed (0.75 / 98.5 for enterprise, mid_market highest): the rules win
    assert body["comparison"] == {"best_value_segment": "startup", "best_value_price": 0.5,
                                  "highest_margin_segment": "enterprise", "highest_margin_pct": 99.56}


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_decision_seed_example(client, encoding):
    fields = {"model": "k2p5", "estimated_input": 1000, "estimated_output": 1000, "complexity": "medium",
              "delivery_type": "task", "segment": "mid_market"}
    resp, body = await ok(client, "/api/pricing/decision", fields, encoding)
    d = body["decision"]
    assert (d["decision_status"], d["approver"], d["delivery_type"], d["next_step"]) == (
        "approved", "ops-auto", "task", "send_quote")
    assert d["generated_at"][-6] in "+-"
    assert (body["quote"]["gross_margin_pct"], body["quote"]["margin_band"]) == (99.6, "strong")
    assert body["guardrail_check"]["action"] == "approve_quote"


async def test_decision_escalated_with_approver(client):
    fields = {"model": "opus", "estimated_input": 100000, "estimated_output": 0, "complexity": "low",
              "segment": "startup", "approver": "dana"}
    _, body = await ok(client, "/api/pricing/decision", fields, "form")
    assert body["decision"]["decision_status"] == "escalated" and body["decision"]["next_step"] == "route_to_deal_desk"
    assert body["decision"]["approver"] == "dana" and body["quote"]["gross_margin_pct"] == 50.0
    _, body = await ok(client, "/api/pricing/decision", {**fields, "delivery_type": "subscription"})
    assert body["decision"]["decision_status"] == "approved"  # 50.0 is at the subscription minimum


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_scenario_rollup(client, encoding):
    scenarios = [{"model": "k2p5", "estimated_input": 1000, "estimated_output": 1000, "complexity": "medium",
                  "segment": "mid_market"},
                 {"model": "k2p5", "estimated_input": 3000, "estimated_output": 1000, "complexity": "low",
                  "segment": "smb"},
                 {"model": "opus", "estimated_input": 100000, "estimated_output": 0, "complexity": "low",
                  "segment": "startup"}]
    resp, body = await ok(client, "/api/pricing/scenario", {"delivery_type": "task", "scenarios": scenarios}, encoding)
    assert "Deprecation" not in resp.headers
    assert {k: body[k] for k in ("delivery_type", "scenario_count", "compliant_count", "compliance_ratio",
                                 "needs_escalation", "requires_executive_review", "average_margin_pct")} == {
        "delivery_type": "task", "scenario_count": 3, "compliant_count": 2, "compliance_ratio": 0.67,
        "needs_escalation": True, "requires_executive_review": False, "average_margin_pct": 83.0}
    assert [r["guardrail_check"]["action"] for r in body["results"]] == [
        "approve_quote", "approve_quote", "escalate_deal_desk"]


async def test_scenario_validation_names_the_item(client):
    resp = await post(client, "/api/pricing/scenario", {"scenarios": [
        {"model": "k2p5", "estimated_input": 1, "estimated_output": 1, "complexity": "low"},
        {"model": "nope", "estimated_input": 1, "estimated_output": 1, "complexity": "low"}, 7]}, "form")
    body = await resp.json()
    assert resp.status == 400
    assert [d["field"] for d in body["error"]["details"]] == ["scenarios[1].model", "scenarios[2]"]
    for bad in ([], "not json", {"a": 1}):
        resp = await post(client, "/api/pricing/scenario", {"scenarios": bad}, "form")
        assert resp.status == 400 and (await resp.json())["error"]["details"][0]["field"] == "scenarios"


async def test_scenario_item_without_segment_is_deprecated(client):
    resp, _ = await ok(client, "/api/pricing/scenario", {"scenarios": [
        {"model": "k2p5", "estimated_input": 1, "estimated_output": 1, "complexity": "low"}]})
    assert resp.headers["Deprecation"] == "true"


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_portfolio_alert_seed_example(client, encoding):
    _, body = await ok(client, "/api/pricing/portfolio-alert",
                       {"scenario_count": 3, "compliant_count": 3, "average_margin_pct": 88.13}, encoding)
    assert body == {"success": True,
                    "portfolio_summary": {"scenario_count": 3, "compliant_count": 3, "compliance_ratio": 1.0,
                                          "requires_executive_review": False, "average_margin_pct": 88.13},
                    "portfolio_alert": {"level": "ok", "summary": "Portfolio healthy: 3/3 compliant, margin 88.13%",
                                        "recommended_action": "send_proposal"}}


async def test_portfolio_alert_validation(client):
    resp = await post(client, "/api/pricing/portfolio-alert",
                      {"scenario_count": 2, "compliant_count": 3, "average_margin_pct": 50}, "form")
    assert resp.status == 400 and (await resp.json())["error"]["details"][0]["field"] == "compliant_count"
    resp = await post(client, "/api/pricing/portfolio-alert",
                      {"scenario_count": "x", "compliant_count": 1, "average_margin_pct": "nan"}, "form")
    assert {d["field"] for d in (await resp.json())["error"]["details"]} == {"scenario_count", "average_margin_pct"}


def seed_week():
    rows = [{"decision_status": "approved" if i < 38 else "escalated", "gross_margin_pct": 70.0 if i % 2 else 75.0,
             "exception_created": i < 3, "exception_closed": i < 2} for i in range(44)]
    return rows + [{"decision_status": "escalated", "gross_margin_pct": 72.5}]


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_weekly_metrics_seed_example(client, encoding):
    _, body = await ok(client, "/api/pricing/weekly-metrics", {"quotes": seed_week()}, encoding)
    assert body["weekly_metrics"] == {"total_quotes": 45, "approved_count": 38, "escalated_count": 7,
                                      "approval_rate": 0.84, "avg_margin_pct": 72.5, "exceptions_created": 3,
                                      "exceptions_closed": 2}


async def test_weekly_metrics_validation(client):
    resp = await post(client, "/api/pricing/weekly-metrics", {"quotes": [
        {"decision_status": "maybe", "gross_margin_pct": 1}, {"decision_status": "approved"},
        {"decision_status": "approved", "gross_margin_pct": 1, "exception_created": "yes"}]})
    assert [d["field"] for d in (await resp.json())["error"]["details"]] == [
        "quotes[0].decision_status", "quotes[1].gross_margin_pct", "quotes[2].exception_created"]
    _, body = await ok(client, "/api/pricing/weekly-metrics", {"quotes": []}, "form")
    assert body["weekly_metrics"]["total_quotes"] == 0


WEEKS = {"current_total_quotes": 50, "current_approval_rate": 0.84, "current_avg_margin_pct": 77.3,
         "current_exceptions_created": 3, "prev_total_quotes": 45, "prev_approval_rate": 0.88,
         "prev_avg_margin_pct": 72.5, "prev_exceptions_created": 2}


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_weekly_comparison_seed_example_exact(client, encoding):
    _, body = await ok(client, "/api/pricing/weekly-comparison", WEEKS, encoding)
    assert body == {"success": True,
                    "week_over_week_changes": {"total_quotes_change": 11.11, "approval_rate_change": -4.55,
                                               "avg_margin_change": 6.62, "exceptions_created_change": 50.0},
                    "significant_shifts": ["Exception creation up 50.0%"], "requires_review": True}


async def test_weekly_comparison_validation_and_zero_previous(client):
    resp = await post(client, "/api/pricing/weekly-comparison", {**WEEKS, "current_approval_rate": 1.5}, "form")
    assert (await resp.json())["error"]["details"][0]["field"] == "current_approval_rate"
    _, body = await ok(client, "/api/pricing/weekly-comparison", {**WEEKS, "prev_exceptions_created": 0})
    assert body["week_over_week_changes"]["exceptions_created_change"] is None and body["requires_review"] is True


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_experiment_summary_seed_example(client, encoding):
    def rows(variant, n, approved, margins):
        return [{"variant": variant, "decision_status": "approved" if i < approved else "escalated",
                 "gross_margin_pct": margins[i % len(margins)]} for i in range(n)]
    quotes = rows("control", 44, 38, [70.0, 75.0]) + rows("control", 1, 0, [72.5]) + rows("test", 12, 9, [76.0, 80.0])
    _, body = await ok(client, "/api/pricing/experiment-summary", {"quotes": quotes}, encoding)
    assert body == {"success": True, "status": "complete",
                    "control": {"count": 45, "approval_rate": 0.84, "avg_margin_pct": 72.5},
                    "test": {"count": 12, "approval_rate": 0.75, "avg_margin_pct": 78.0}, "recommendation": "roll_out"}


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_exception_alert_seed_example(client, encoding):
    _, body = await ok(client, "/api/pricing/exception-alert",
                       {"open_exceptions": 4, "oldest_days": 33, "at_risk_count": 2}, encoding)
    assert body == {"success": True,
                    "exception_aging": {"open_exceptions": 4, "oldest_days": 33, "at_risk_count": 2,
                                        "requires_exec_followup": True, "risk_level": "critical",
                                        "next_action": "schedule_executive_review"},
                    "exception_alert": {"level": "critical", "summary": "Critical exception risk: 4 open, oldest 33d",
                                        "recommended_action": "schedule_executive_review"}}


async def test_exception_alert_validation(client):
    resp = await post(client, "/api/pricing/exception-alert",
                      {"open_exceptions": 1, "oldest_days": -1, "at_risk_count": 0}, "form")
    assert (await resp.json())["error"]["details"][0]["field"] == "oldest_days"
    resp = await post(client, "/api/pricing/exception-alert",
                      {"open_exceptions": 1, "oldest_days": 3, "at_risk_count": 2}, "form")
    assert (await resp.json())["error"]["details"][0]["field"] == "at_risk_count"


async def test_status_matches_the_seed_where_it_is_exact(client):
    resp = await client.get("/api/pricing/status")
    body = await resp.json()
    assert resp.status == 200
    assert body["pricing_policy"] == {
        "complexity_markup": {"low": 3.0, "medium": 4.0, "high": 5.0},
        "segment_adjustments": {"enterprise": 0.5, "mid_market": 0.0, "smb": -0.5, "startup": -1.0},
        "minimum_price": 0.5, "margin_thresholds": {"task": 55.0, "subscription": 50.0, "enterprise": 45.0}}
    assert body["example_quotes"]["mid_market"] == {
        "model": "k2p5", "complexity": "medium", "segment": "mid_market", "base_markup": 4.0, "segment_adjustment": 0.0,
        "final_markup": 4.0, "recommended_price": 0.5, "gross_margin_pct": 99.7, "margin_band": "strong"}
    assert body["example_quotes"]["smb"]["gross_margin_pct"] == 99.4
    assert body["example_quotes"]["enterprise"]["gross_margin_pct"] == 95.8   # seed's 96.8 / 0.85: illustrative
    assert body["guardrail_check"] == {"delivery_type": "task", "minimum_margin_pct": 55.0, "actual_margin_pct": 99.7,
                                       "is_compliant": True, "action": "approve_quote"}


async def test_health_and_report_with_no_spend(client):
    body = await (await client.get("/api/pricing/health")).json()
    assert body["health"] == {"status": "healthy", "daily_cost": 0.0, "daily_budget": body["health"]["daily_budget"],
                              "budget_utilization_pct": 0.0, "tasks_completed": 0, "avg_cost_per_task": 0.0,
                              "issues": [], "by_model": {}}
    report = (await (await client.get("/api/v1/pricing/report")).json())["report"]
    assert report["period"] == "daily" and report["by_model"] == {} and "by_model" not in report["health"]
    assert {s: (q["final_markup"], q["recommended_price"], q["gross_margin_pct"])
            for s, q in report["sample_quotes_by_segment"].items()} == {
        "enterprise": (4.5, 0.5, 99.68), "mid_market": (4.0, 0.5, 99.68), "smb": (3.5, 0.5, 99.68),
        "startup": (3.0, 0.5, 99.68)}


async def test_health_after_real_spawns_have_spent_money(aiohttp_client, tmp_path, upstream):  # noqa: F811
    # k2p5 at $1 per 1k output tokens, 100 output tokens per answer: each spawn costs $0.10.
    client = await aiohttp_client(build_app(priced_config(tmp_path, upstream, daily_budget=0.25)))
    for i in range(2):
        await wait_status(client, await spawn_ok(client, task=f"spend {i}"))
    h = (await (await client.get("/api/pricing/health")).json())["health"]
    assert (h["daily_cost"], h["daily_budget"], h["budget_utilization_pct"], h["tasks_completed"]) == \
        (0.2, 0.25, 80.0, 2)
    assert h["avg_cost_per_task"] == 0.1 and h["status"] == "healthy"       # 80 % and 0.10: both at, not above
    assert h["by_model"] == {"k2p5": {"cost": 0.2, "calls": 2, "avg_per_call": 0.1}}
    report = (await (await client.get("/api/pricing/report")).json())["report"]
    assert report["by_model"] == h["by_model"] and report["health"]["daily_cost"] == 0.2


async def test_pricing_webhooks_register_list_delete(client):
    resp, body = await ok(client, "/api/pricing/webhook",
                          {"url": "https://hooks.invalid/hooks/pricing",
                           "events": ["pricing.quote_generated", "pricing.exception_created"],
                           "secret": "your_webhook_secret"}, status=201)
    assert body["message"] == "Pricing webhook registered" and body["url"] == "https://hooks.invalid/hooks/pricing"
    wid = body["webhook_id"]
    listed = await (await client.get("/api/pricing/webhooks")).json()
    assert listed["count"] == 1 and listed["webhooks"][0]["webhook_id"] == wid
    assert listed["webhooks"][0]["events"] == ["pricing.quote_generated", "pricing.exception_created"]
    assert "secret" not in listed["webhooks"][0]
    resp = await client.post("/api/pricing/webhook", json={"url": "https://hooks.invalid", "events": ["agent.completed"]})
    assert resp.status == 400 and (await resp.json())["error"]["details"][0]["field"] == "events"
    resp = await client.delete(f"/api/pricing/webhook/{wid}")
    assert (await resp.json()) == {"success": True, "message": f"Pricing webhook {wid} removed"}
    resp = await client.delete(f"/api/pricing/webhook/{wid}")
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "NOT_FOUND"


async def test_pricing_webhook_form_fields_and_default_event(client):
    _, body = await ok(client, "/api/pricing/webhook", {"url": "https://hooks.invalid/p"}, "form", status=201)
    assert body["events"] == ["pricing.quote_generated"] and body["secret"]


async def test_quote_events_reach_the_durable_outbox(client):
    from j1mskyd.api.common import SERVICES
    _, hook = await ok(client, "/api/pricing/webhook",
                       {"url": "https://hooks.invalid/p", "events": ["pricing.quote_generated", "pricing.margin_alert",
                                                                   "pricing.quote_escalated"]}, status=201)
    await ok(client, "/api/pricing/decision", {"model": "opus", "estimated_input": 100000, "estimated_output": 0,
                                               "complexity": "low", "segment": "startup"})
    store = client.app[SERVICES].store
    rows = await store.read(lambda c: c.execute(
        "SELECT e.type FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.webhook_id = ? ORDER BY e.id",
        (hook["webhook_id"],)).fetchall())
    assert [r[0] for r in rows] == ["pricing.quote_generated", "pricing.margin_alert", "pricing.quote_escalated"]


# -- found by schemathesis: never a 500 ---------------------------------------------------------
async def test_malformed_form_bodies_are_400(client):
    for path in ("/api/pricing/quote", "/api/orchestrator/recommend-model", "/api/models/select"):
        resp = await client.post(path, data=b"x=1", headers={"Content-Type": "multipart/form-data"})
        assert resp.status == 400, path  # a multipart body without a boundary


async def test_orchestrator_status_when_the_default_model_is_not_configured(aiohttp_client, tmp_path):
    import dataclasses

    from j1mskyd.app import build_app
    from tests.conftest import make_config
    base = make_config(tmp_path)
    only_k2p5 = {"k2p5": dataclasses.replace(base.models["k2p5"], fallback=None)}
    cfg = dataclasses.replace(base, models=only_k2p5, teams={})
    client = await aiohttp_client(build_app(cfg))
    resp = await client.get("/api/orchestrator/status")
    assert resp.status == 200, await resp.text()
