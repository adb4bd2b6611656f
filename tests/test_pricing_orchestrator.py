"""/orchestrator/status, /orchestrator/recommend-model and /models through real HTTP.

The status blocks are checked after real spawns (on a fake upstream) have spent money, and the
recommendation against the live budget.
"""

from __future__ import annotations

import pytest

from j1mskyd.app import build_app
from tests.conftest import Clock, wait_status
from tests.test_budget_http import priced_config, spawn_ok, upstream  # noqa: F401  (fixture)
from tests.test_pricing_api import ENCODINGS, SEED_QUOTE, post

SEED_BLOCKS = {"timestamp", "models_active", "usage_summary", "recent_usage", "daily_budget", "today_spend",
               "budget_remaining", "budget_utilization_pct", "budget_alert_level", "operational_flags",
               "model_mix_recommendation", "pricing_policy", "example_task_quote", "quote_decision_preview",
               "quote_portfolio_preview", "portfolio_alert_preview", "weekly_metrics_preview",
               "weekly_comparison_preview", "exception_aging_preview", "exception_alert_preview", "usage_anomalies",
               "monthly_forecast", "provider_usage"}


async def test_status_has_every_seed_block_with_no_spend(client):
    resp = await client.get("/api/orchestrator/status")
    body = await resp.json()
    assert resp.status == 200 and set(body) == SEED_BLOCKS
    assert body["usage_summary"] == {"top_models": [], "total_calls": 0} and body["recent_usage"] == 0
    assert (body["today_spend"], body["budget_utilization_pct"], body["budget_alert_level"]) == (0.0, 0.0, "ok")
    assert body["model_mix_recommendation"]["primary"] == ["k2p5", "sonnet"]
    assert body["pricing_policy"] == {"min_markup": 3.0, "target_markup": 4.0, "max_markup": 5.0,
                                      "complexity_markup": {"low": 3.0, "medium": 4.0, "high": 5.0},
                                      "minimum_price": 0.5}
    assert body["example_task_quote"] == {
        "model": "k2p5", "complexity": "medium", "segment": "mid_market", "estimated_tokens": 2000,
        "internal_cost": 0.002, "base_markup": 4.0, "segment_adjustment": 0.0, "final_markup": 4.0,
        "recommended_price": 0.5, "gross_margin_pct": 99.6, "margin_band": "strong"}
    assert body["quote_decision_preview"]["decision_status"] == "approved"
    assert body["weekly_comparison_preview"]["significant_shifts"] == ["Exception creation up 50.0%"]
    aging = body["exception_aging_preview"]
    assert (aging["open_exceptions"], aging["oldest_days"], aging["at_risk_count"], aging["risk_level"]) == \
        (4, 33, 2, "critical")
    assert body["exception_alert_preview"]["summary"] == "Critical exception risk: 4 open, oldest 33d"
    assert all(body[k]["source"] == "sample" for k in SEED_BLOCKS if k.endswith("_preview"))
    assert body["timestamp"][-6] in "+-"


async def test_status_blocks_after_real_spawns_have_spent_money(aiohttp_client, tmp_path, upstream):  # noqa: F811
    # k2p5 on the fake upstream: $0.10 a spawn (100 output tokens at $1 per 1k, 5 input tokens free).
    client = await aiohttp_client(build_app(priced_config(tmp_path, upstream, daily_budget=0.25)))
    for i in range(2):
        await wait_status(client, await spawn_ok(client, task=f"spend {i}"))
    body = await (await client.get("/api/orchestrator/status")).json()
    assert (body["daily_budget"], body["today_spend"], body["budget_remaining"], body["budget_utilization_pct"],
            body["budget_alert_level"]) == (0.25, 0.2, 0.05, 80.0, "warning")
    assert body["usage_summary"] == {"total_calls": 2, "top_models": [
        {"model": "k2p5", "calls": 2, "tokens": 210, "avg_tokens_per_call": 105.0, "estimated_spend": 0.0002}]}
    assert body["recent_usage"] == 2
    flags = dict(body["operational_flags"])
    assert flags.pop("max_provider_utilization_pct") == 0.0  # 2 calls of 100,000 an hour
    assert flags == {
        "budget_alert_level": "warning", "hot_providers": [], "requires_ops_attention": True,
        "recommended_action": "Shift medium/low-priority tasks to k2p5/minimax and monitor hourly"}
    assert body["model_mix_recommendation"]["strategy"] == "cost-optimized"
    assert body["monthly_forecast"] == {"projected_spend": 6.0, "budget_ceiling": 7.5, "delta_to_budget": 1.5}
    # current: the calls of the last hour, as /rate-limits' "used" (it was the token bucket's
    # level, which refills continuously: about 0 under steady traffic)
    assert body["provider_usage"]["paid"] == {"current": 2, "hourly": 100_000, "remaining": 99_998,
                                              "utilization_pct": 0.0}
    limits = await (await client.get("/api/rate-limits")).json()
    assert limits["limits"]["paid"]["used"] == 2

    # the recommendation respects what is left: 0.05 fits sonnet x 1000 tokens (0.003), not 20000 (0.06)
    rec = await (await client.post("/api/orchestrator/recommend-model",
                                   json={"task_type": "documentation", "estimated_tokens": 1000})).json()
    assert (rec["recommended_model"], rec["budget_available"]) == ("sonnet", True)
    assert (rec["daily_budget"], rec["today_spend"], rec["budget_remaining"]) == (0.25, 0.2, 0.05)
    rec = await (await client.post("/api/orchestrator/recommend-model",
                                   json={"task_type": "documentation", "estimated_tokens": 20000})).json()
    assert (rec["recommended_model"], rec["budget_available"]) == ("k2p5", True)   # 0.02 fits
    rec = await (await client.post("/api/orchestrator/recommend-model",
                                   json={"task_type": "documentation", "estimated_tokens": 60000})).json()
    assert (rec["recommended_model"], rec["budget_available"]) == ("k2p5", False)  # nothing fits: cheapest


async def test_provider_usage_counts_the_hour_s_calls_however_full_the_bucket_is_again(
        aiohttp_client, tmp_path, upstream):  # noqa: F811
    # current was the token bucket's level (limit - remaining), which refills continuously:
    # half an hour after two calls it said 0 where /rate-limits said 2 used.
    clock = Clock(1_764_000_000.0 - 1_764_000_000.0 % 86400 + 36000)  # 10:00 UTC: no midnight in between
    client = await aiohttp_client(build_app(priced_config(tmp_path, upstream), clock=clock))
    for i in range(2):
        await wait_status(client, await spawn_ok(client, task=f"call {i}"))
    clock.t += 1800
    usage = (await (await client.get("/api/orchestrator/status")).json())["provider_usage"]["paid"]
    limits = (await (await client.get("/api/rate-limits")).json())["limits"]["paid"]
    assert (usage["current"], usage["remaining"], limits["used"]) == (2, 99_998, 2)


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_recommend_model_seed_example(client, encoding):
    resp = await post(client, "/api/orchestrator/recommend-model",
                      {"task_type": "coding", "complexity": "medium", "priority": "normal", "estimated_tokens": 2500},
                      encoding)
    body = await resp.json()
    assert resp.status == 200
    assert (body["recommended_model"], body["budget_available"], body["today_spend"]) == ("k2p5", True, 0.0)
    assert body["budget_remaining"] == body["daily_budget"]


async def test_recommend_model_validation(client):
    resp = await post(client, "/api/orchestrator/recommend-model",
                      {"task_type": "coding", "complexity": "huge", "estimated_tokens": "lots"}, "form")
    body = await resp.json()
    assert resp.status == 400 and {d["field"] for d in body["error"]["details"]} == {"complexity", "estimated_tokens"}


async def test_models_catalogue(client):
    body = await (await client.get("/api/models")).json()
    names = [m["name"] for m in body["data"]["models"]]
    assert set(names) == {"opus", "sonnet", "k2p5", "minimax-m2.5", "codex"}
    assert body["data"]["default_model"] == "sonnet" and body["data"]["escalation_model"] == "opus"
    one = (await (await client.get("/api/v1/models/sonnet")).json())["data"]
    assert one["pricing"] == {"input_tokens": 0.003, "output_tokens": 0.015, "blended": 0.003, "per": "1k tokens",
                              "currency": "USD"}
    assert one["fallback_model"] == "k2p5" and "documentation" in one["capabilities"]
    resp = await client.get("/api/models/gpt-9")
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "NOT_FOUND"


async def test_models_select(client):
    resp = await client.post("/api/models/select", json={"task_description": "OAuth2 with SAML",
                                                         "task_type": "implementation"})
    data = (await resp.json())["data"]
    assert resp.status == 200 and data["selected_model"] == "sonnet" and data["fallback_model"] == "k2p5"
    assert data["budget_available"] is True and data["estimated_cost"] == 0.003


# -- caches (v4.1: recommendations 30 s, pricing 5 min) --------------------------------------
async def test_cache_status_counts_hits_and_invalidate_clears(client):
    quote = {"model": "k2p5", "estimated_input": 2000, "estimated_output": 800, "complexity": "medium",
             "segment": "mid_market"}
    first = await (await client.post("/api/pricing/quote", json=quote)).json()
    second = await (await client.post("/api/pricing/quote", json=quote)).json()
    assert first["quote"] == second["quote"]
    rec = {"task_type": "coding", "complexity": "medium", "estimated_tokens": 2000}
    for _ in range(3):
        assert (await client.post("/api/orchestrator/recommend-model", json=rec)).status == 200
    status = await (await client.get("/api/cache/status")).json()
    pricing_stats, rec_stats = status["caches"]["pricing"], status["caches"]["recommendations"]
    assert (pricing_stats["entries"], pricing_stats["hits"], pricing_stats["ttl_seconds"]) == (1, 1, 300)
    assert (rec_stats["hits"], rec_stats["misses"], rec_stats["ttl_seconds"]) == (2, 1, 30)
    assert rec_stats["hit_rate"] == pytest.approx(2 / 3, abs=0.01)
    resp = await client.post("/api/cache/invalidate", json={"cache": "pricing"})
    assert (await resp.json())["cleared"] == {"pricing": 1}
    assert (await (await client.get("/api/cache/status")).json())["caches"]["pricing"]["entries"] == 0
    assert (await client.post("/api/cache/invalidate", json={"cache": "nope"})).status == 400
    for bad in ([], "pricing", 7):  # not an object: refused, nothing cleared
        await client.post("/api/pricing/quote", json=SEED_QUOTE)
        resp = await client.post("/api/cache/invalidate", json=bad)
        assert resp.status == 400, bad
        assert (await (await client.get("/api/cache/status")).json())["caches"]["pricing"]["entries"] == 1
    resp = await client.post("/api/cache/invalidate")
    assert set((await resp.json())["cleared"]) == {"pricing", "recommendations"}


async def test_a_recommendation_is_recomputed_when_a_breaker_changes(client):
    from j1mskyd.api.common import SERVICES
    rec = {"task_type": "coding", "estimated_tokens": 2000}
    first = await (await client.post("/api/orchestrator/recommend-model", json=rec)).json()
    await client.post("/api/orchestrator/recommend-model", json=rec)
    cache = client.app[SERVICES].caches["recommendations"]
    assert (cache.hits, cache.misses) == (1, 1)
    slot = client.app[SERVICES].slots["offline"]
    for _ in range(slot.breaker.threshold):
        slot.breaker.record_failure()
    again = await (await client.post("/api/orchestrator/recommend-model", json=rec)).json()
    assert cache.misses == 2  # recomputed, not the 30-second answer from before the breaker opened
    # Every model is on the open breaker now: nothing is available, so the rule's last resort.
    assert (first["recommended_model"], again["recommended_model"]) == ("k2p5", "sonnet")


async def test_a_recommendation_is_recomputed_when_the_budget_moves(client):
    rec = {"task_type": "coding", "estimated_tokens": 2000}
    await client.post("/api/orchestrator/recommend-model", json=rec)
    spawned = await (await client.post("/api/spawn", json={"model": "k2p5", "task": "spend a little"})).json()
    await wait_status(client, spawned["agent_id"])
    before = (await (await client.get("/api/cache/status")).json())["caches"]["recommendations"]["misses"]
    await client.post("/api/orchestrator/recommend-model", json=rec)
    after = (await (await client.get("/api/cache/status")).json())["caches"]["recommendations"]["misses"]
    assert after == before + 1  # spend changed the budget: not served from the cache


async def test_the_shipped_offline_stand_in_is_never_recommended(aiohttp_client, tmp_path):
    """The shipped config's free `offline` model is for trying the daemon without keys; the budget
    walk must not pick it as the cheapest way to do real work."""
    import dataclasses
    from pathlib import Path

    from j1mskyd.app import build_app
    from j1mskyd.config import load_config
    from tests.conftest import make_config
    shipped = load_config(Path(__file__).parent.parent / "etc" / "j1msky" / "config.toml", env={})
    assert shipped.models["offline"].blended_per_1k == 0  # what makes it tempting
    base = make_config(tmp_path)
    cfg = dataclasses.replace(shipped, server=base.server, security=base.security, limits=base.limits,
                              plugins=base.plugins, budget=dataclasses.replace(shipped.budget, daily_budget=0.001))
    client = await aiohttp_client(build_app(cfg))
    for task in ("coding", "architecture", "anything"):
        resp = await post(client, "/api/orchestrator/recommend-model", {"task_type": task, "estimated_tokens": 50000})
        body = await resp.json()
        assert resp.status == 200 and body["recommended_model"] != "offline", body
        assert body["budget_available"] is False
    models = (await (await client.get("/api/models")).json())["data"]["models"]
    assert {m["name"]: m["status"] for m in models}["offline"] == "available"  # listed as it is


async def test_a_models_live_performance_comes_from_finished_agents(aiohttp_client, tmp_path):
    import dataclasses

    from j1mskyd.app import build_app
    from j1mskyd.providers import ProviderSettings
    from tests.conftest import make_config, route_models
    base = make_config(tmp_path)
    providers = {"good": ProviderSettings(name="good", plugin="offline", max_concurrency=8, options={"delay": 0.05}),
                 "bad": ProviderSettings(name="bad", plugin="offline", options={"fail": "server_error"}),
                 "offline": base.providers["offline"]}
    models = route_models(base, {"k2p5": "good", "sonnet": "bad"})
    models["sonnet"] = dataclasses.replace(models["sonnet"], fallback=None)
    cfg = make_config(tmp_path, providers=providers, models=models, runtime={"max_attempts": 1})
    client = await aiohttp_client(build_app(cfg))
    for model, n in (("k2p5", 3), ("sonnet", 2)):
        for i in range(n):
            resp = await client.post("/api/spawn", json={"task": f"perf {model} {i}", "model": model})
            await wait_status(client, (await resp.json())["agent_id"])

    async def perf(alias):
        return (await (await client.get(f"/api/models/{alias}")).json())["data"]["performance"]

    good = await perf("k2p5")
    assert good["success_rate"] == 100.0 and good["finished_agents"] == 3 and good["window_hours"] == 24
    assert good["average_response_time"] >= 0.05 and good["p95_response_time"] >= good["average_response_time"]
    bad = await perf("sonnet")
    assert bad["success_rate"] == 0.0 and bad["finished_agents"] == 2 and bad["average_response_time"] is None
    idle = await perf("opus")
    assert idle == {"success_rate": None, "average_response_time": None, "p95_response_time": None,
                    "finished_agents": 0, "window_hours": 24}
