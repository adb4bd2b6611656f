"""The orchestrator's view (seed 000): status and budget-aware model recommendation; and the
Kyros document's model catalogue (GET /models, GET /models/{name}, POST /models/select).

Numbers and rules are in j1mskyd/pricing.py; this module gathers live state for them:
the budget (spend today), the provider hourly token buckets, the breakers and today's
usage ledger.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from .. import pricing
from ..errors import NotFound, ValidationFailed
from .common import CONFIG, SERVICES, json_response, read_json_object
from .pricing import MAX_TOKENS, STATUS_SAMPLES, Fields, policy_of, read_fields

PRIORITIES = ("low", "normal", "high", "critical")


def _available(request: web.Request):
    """alias -> can it start work now (provider usable, breaker closed, hourly tokens left)."""
    services = request.app[SERVICES]
    models = request.app[CONFIG].models

    def available(alias: str) -> bool:
        m = models.get(alias)
        slot = services.slots.get(m.provider) if m is not None else None
        if slot is None or not slot.usable or not slot.breaker.available():
            return False
        return services.runtime.provider_tokens(slot.name).allowed
    return available


def _recommendable(request: web.Request):
    """Available, and not a stand-in: a model outside the business catalogue that the offline
    plugin serves (the shipped config's free ``offline`` model) answers with canned text, so it
    is never the cheapest way to do real work.  A free local model (Ollama, llama.cpp) is."""
    config = request.app[CONFIG]
    available = _available(request)

    def recommendable(alias: str) -> bool:
        m = config.models.get(alias)
        provider = config.providers.get(m.provider) if m is not None else None
        if alias not in pricing.COST_ORDER and provider is not None and provider.plugin == "offline":
            return False
        return available(alias)
    return recommendable


def _recommend(request: web.Request, task_type: str, tokens: int) -> tuple[str, bool, dict[str, Any]]:
    """From the 30-second recommendation cache while the budget has not moved."""
    services = request.app[SERVICES]
    snap = services.budget.snapshot()
    # What the answer depends on: the budget (its version moves with every reserve and settle)
    # and which models are usable (breaker state changes; the hourly quota is left to the TTL).
    key = (task_type, tokens, services.budget.version, services.breaker_changes.count)
    cached = services.caches["recommendations"].get(key)
    if cached is None:
        committed = float(snap["today_spend"]) + float(snap["reserved"])  # what spawn admission counts
        cached = services.caches["recommendations"].put(key, pricing.recommend_model(
            task_type, tokens, committed, float(snap["daily_budget"]), request.app[CONFIG].models,
            _recommendable(request)))
    model, fits = cached
    return model, fits, snap


async def cache_status(request: web.Request) -> web.Response:
    """Entries, hits, misses and hit rate of each cache."""
    caches = request.app[SERVICES].caches
    return json_response({"caches": {name: cache.stats() for name, cache in caches.items()}})


async def cache_invalidate(request: web.Request) -> web.Response:
    """Clear one cache (``{"cache": "pricing"}``) or all of them."""
    caches = request.app[SERVICES].caches
    name = (await read_json_object(request, optional=True)).get("cache")
    if name is not None and (not isinstance(name, str) or name not in caches):  # a list/dict is unhashable
        raise ValidationFailed([{"field": "cache", "message": f"cache must be one of: {', '.join(caches)}"}])
    cleared = {n: c.clear() for n, c in caches.items() if name is None or n == name}
    return json_response({"success": True, "cleared": cleared})


async def recommend_model(request: web.Request) -> web.Response:
    """A model for a task within the daily budget."""
    data, form = await read_fields(request)
    f = Fields(data, form)
    task_type = f.text("task_type", "general", max_len=64)
    complexity = f.choice("complexity", pricing.COMPLEXITIES, default="medium")
    priority = f.choice("priority", PRIORITIES, default="normal")
    tokens = f.integer("estimated_tokens", 0, MAX_TOKENS, default=1000)
    f.done()
    model, fits, snap = _recommend(request, task_type, tokens)
    price = request.app[CONFIG].models.get(model)
    return json_response({"recommended_model": model, "budget_available": fits,
                          "daily_budget": snap["daily_budget"], "today_spend": round(float(snap["today_spend"]), 4),
                          "budget_remaining": snap["budget_remaining"], "task_type": task_type,
                          "complexity": complexity, "priority": priority, "estimated_tokens": tokens,
                          "estimated_cost": round(pricing.blended_cost(price, tokens), 4) if price else None})


# ------------------------------------------------------------------------------ status

def _day_start(now: float) -> float:
    return datetime.fromtimestamp(now, timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


PREVIEW_DAYS = 7


async def _previews(request: web.Request, example: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The pricing previews: from the recorded pricing history once there is any (source
    "history": the last 7 days, that week against the one before, the open exceptions), else
    from sample inputs (source "sample")."""
    history = request.app[SERVICES].pricing_history
    found = await history.previews(now.timestamp(), PREVIEW_DAYS)
    if found is None:
        return _sample_previews(request, example, now)
    policy = policy_of(request)
    src = {"source": "history"}
    latest = found["latest"]
    if latest is not None:
        check = {"is_compliant": latest["decision_status"] == "approved", "delivery_type": latest["delivery_type"]}
        decision = {**pricing.decision(check, latest["approver"], datetime.fromtimestamp(latest["created_at"],
                                                                                         timezone.utc)),
                    "quote_id": latest["quote_id"], **src}
    else:
        decision = {**_sample_decision(request, example, now), "source": "sample"}
    results = found["quotes"]
    deliveries = {r["guardrail_check"]["delivery_type"] for r in results}
    portfolio = {"delivery_type": deliveries.pop() if len(deliveries) == 1 else
                 "mixed" if deliveries else policy.default_delivery_type, **pricing.rollup(results, policy)}
    current, previous = found["current"], found["previous"]
    aging = pricing.exception_aging_from_ages(found["ages"])
    return {
        "quote_decision_preview": decision,
        "quote_portfolio_preview": {**portfolio, **src},
        "portfolio_alert_preview": {**pricing.portfolio_alert(portfolio, policy), **src},
        "weekly_metrics_preview": {**current, **src},
        "weekly_comparison_preview": {**pricing.weekly_comparison(current, previous), **src},
        "exception_aging_preview": {**aging["exception_aging"], **src},
        "exception_alert_preview": {**aging["exception_alert"], **src},
    }


def _sample_decision(request: web.Request, example: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The decision for the example task quote."""
    policy = policy_of(request)
    check = pricing.guardrail(example["gross_margin_pct"], policy.default_delivery_type, policy)
    return pricing.decision(check, "ops-auto", now)


def _sample_previews(request: web.Request, example: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The previews from sample inputs (no quote history is recorded yet), marked source "sample"."""
    policy = policy_of(request)
    models = request.app[CONFIG].models
    delivery = policy.default_delivery_type
    decision = _sample_decision(request, example, now)
    results = []
    for segment, (model, complexity, tin, tout) in STATUS_SAMPLES.items():
        if model in models and segment in policy.segment_adjustments:
            q = pricing.quote(model, models[model], complexity, segment, tin, tout, policy)
            results.append({"quote": q, "guardrail_check": pricing.guardrail(q["gross_margin_pct"], delivery, policy)})
    portfolio = {"delivery_type": delivery, **pricing.rollup(results, policy)}
    decisions = [{**decision, "gross_margin_pct": example["gross_margin_pct"]},
                 {"decision_status": "escalated", "gross_margin_pct": 42.0, "exception_created": True}]
    comparison = pricing.weekly_comparison(
        {"total_quotes": 50, "approval_rate": 0.84, "avg_margin_pct": 77.3, "exceptions_created": 3},
        {"total_quotes": 45, "approval_rate": 0.88, "avg_margin_pct": 72.5, "exceptions_created": 2})
    aging = pricing.exception_aging_from_ages([33, 15, 6, 2])
    sample = {"source": "sample"}
    return {
        "quote_decision_preview": {**decision, **sample},
        "quote_portfolio_preview": {**portfolio, **sample},
        "portfolio_alert_preview": {**pricing.portfolio_alert(portfolio, policy), **sample},
        "weekly_metrics_preview": {**pricing.weekly_metrics(decisions), **sample},
        "weekly_comparison_preview": {**comparison, **sample},
        "exception_aging_preview": {**aging["exception_aging"], **sample},
        "exception_alert_preview": {**aging["exception_alert"], **sample},
    }


async def orchestrator_status(request: web.Request) -> web.Response:
    """Live budget, usage, provider and pricing state for the orchestrator."""
    services = request.app[SERVICES]
    config = request.app[CONFIG]
    policy = policy_of(request)
    now = services.runtime.clock()
    lo = _day_start(now)
    rows = await services.store.read(lambda conn: conn.execute(
        "SELECT model, COUNT(*), COALESCE(SUM(input_tokens + output_tokens), 0) FROM usage WHERE ts >= ? "
        "GROUP BY model", (lo,)).fetchall())
    usage = {model: (calls, tokens) for model, calls, tokens in rows}
    total_calls = sum(calls for calls, _ in usage.values())
    top = pricing.top_models(usage, config.models, limit=5)
    snap = services.budget.snapshot()
    daily_budget, spend = snap["daily_budget"], round(float(snap["today_spend"]), 4)
    budget = pricing.budget_block(daily_budget, spend)
    providers = {}
    for name, slot in services.slots.items():
        d = services.runtime.provider_tokens(name)
        providers[name] = pricing.provider_usage(d.limit - d.remaining, d.limit)
    flags = pricing.operational_flags(budget["budget_alert_level"], providers)
    available = _available(request)
    example_model, _, _ = _recommend(request, "coding", 2000)
    example = pricing.quote_from_estimate(example_model, config.models[example_model], "medium",
                                          policy.default_segment, 2000, policy)
    when = datetime.fromtimestamp(now, timezone.utc)
    body = {
        "timestamp": pricing.iso_now(when),
        "models_active": sum(1 for alias in config.models if available(alias)),
        "usage_summary": {"top_models": top, "total_calls": total_calls},
        "recent_usage": total_calls,
        **budget,
        "operational_flags": flags,
        "model_mix_recommendation": pricing.model_mix(budget["budget_alert_level"],
                                                      pricing.top_models(usage, config.models, limit=3)),
        "pricing_policy": policy.orchestrator_block(),
        "example_task_quote": example,
        **await _previews(request, example, when),
        "usage_anomalies": pricing.usage_anomalies(pricing.top_models(usage, config.models, limit=10)),
        "monthly_forecast": pricing.monthly_forecast(daily_budget, spend),
        "provider_usage": providers,
    }
    return json_response(body)


# ------------------------------------------------------------------------------ models (Kyros document)

def _capabilities(alias: str) -> list[str]:
    return [task for task, prefs in pricing.TASK_PREFERENCES.items() if alias in prefs]


def _model_view(request: web.Request, alias: str, full: bool) -> dict[str, Any]:
    config = request.app[CONFIG]
    m = config.models[alias]
    caps = _capabilities(alias)
    view: dict[str, Any] = {"name": alias, "provider": m.provider, "upstream_model": m.upstream,
                            "status": "available" if _available(request)(alias) else "unavailable",
                            "recommended_usage": caps[0] if caps else "general_purpose"}
    if full:
        provider = config.providers.get(m.provider)
        view.update({
            "capabilities": caps, "fallback_model": m.fallback,
            "limits": {"max_tokens": m.max_tokens,
                       "requests_per_hour": provider.hourly_limit if provider is not None else None},
            "pricing": {"input_tokens": m.input_per_1k, "output_tokens": m.output_per_1k,
                        "blended": m.blended_per_1k, "per": "1k tokens", "currency": "USD"}})
    return view


PERFORMANCE_WINDOW = 86400.0


async def _performance(request: web.Request, alias: str) -> dict[str, Any]:
    """Live figures from the agents this model finished in the last 24 h: success rate (completed
    of completed + failed, %), average and p95 response time (s, run start to finish of the
    completed ones).  null when it finished none; no quality score (nothing measures one)."""
    services = request.app[SERVICES]
    since = services.runtime.clock() - PERFORMANCE_WINDOW
    rows = await services.store.read(lambda conn: conn.execute(
        "SELECT status, completed_at - COALESCE(started_at, created_at) FROM agents "
        "WHERE kind != 'team' AND status IN ('completed', 'failed') AND completed_at >= ? "
        "AND COALESCE(served_model, model) = ?", (since, alias)).fetchall())
    times = sorted(t for status, t in rows if status == "completed" and t is not None)
    finished = len(rows)
    return {"success_rate": round(len(times) / finished * 100, 2) if finished else None,
            "average_response_time": round(sum(times) / len(times), 3) if times else None,
            "p95_response_time": round(times[min(len(times) - 1, int(0.95 * len(times)))], 3) if times else None,
            "finished_agents": finished, "window_hours": PERFORMANCE_WINDOW / 3600}


async def list_models(request: web.Request) -> web.Response:
    """The configured models."""
    config = request.app[CONFIG]
    models = [_model_view(request, alias, False) for alias in config.models]
    data = {"models": models, "default_model": pricing.DEFAULT_MODEL if pricing.DEFAULT_MODEL in config.models
            else next(iter(config.models), None),
            "escalation_model": "opus" if "opus" in config.models else None}
    return json_response({"success": True, "data": data})


async def get_model(request: web.Request) -> web.Response:
    """One model: provider, limits, pricing, capabilities, live performance."""
    name = request.match_info["name"]
    if name not in request.app[CONFIG].models:
        raise NotFound(f"Model '{name}' not found")
    view = _model_view(request, name, True)
    view["performance"] = await _performance(request, name)
    return json_response({"success": True, "data": view})


async def select_model(request: web.Request) -> web.Response:
    """A model for a task (budget-aware)."""
    data, form = await read_fields(request)
    f = Fields(data, form)
    task_type = f.text("task_type", "general", max_len=64)
    tokens = f.integer("estimated_tokens", 0, MAX_TOKENS, default=1000)
    f.done()
    model, fits, snap = _recommend(request, task_type, tokens)
    m = request.app[CONFIG].models.get(model)
    preferred = [p for p in pricing.TASK_PREFERENCES.get(task_type, (pricing.DEFAULT_MODEL,))]
    return json_response({"success": True, "data": {
        "selected_model": model, "fallback_model": m.fallback if m is not None else None,
        "estimated_cost": round(pricing.blended_cost(m, tokens), 4) if m is not None else None,
        "budget_available": fits,
        "reasoning": {"task_type": task_type, "preferred_models": preferred, "estimated_tokens": tokens,
                      "budget_remaining": snap["budget_remaining"],
                      "rule": "first available preferred model; the cheapest that fits when over budget"}}})
