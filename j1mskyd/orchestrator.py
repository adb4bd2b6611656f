"""The orchestrator's view behind /orchestrator/* and /models/*: budget-aware model
recommendation, the live status (budget, usage, providers, pricing previews) and each model's
recent performance.

Numbers and rules are in j1mskyd/pricing.py; this service gathers the live state they need:
the budget (spend today), the provider hourly token buckets, the breakers, today's usage
ledger, the agents a model finished and the pricing history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from j1msky.ttlcache import TTLCache

from . import ledger, pricing
from .agents import AgentService
from .breaker import StateChanges
from .budget import Budget
from .config import Config
from .pricing_history import PricingHistory
from .pricing_service import STATUS_SAMPLES, PricingService
from .provider_pool import ProviderSlot
from .runtime import AgentRuntime
from .store import Store

__all__ = ["PERFORMANCE_WINDOW", "PREVIEW_DAYS", "PRIORITIES", "ModelRequest", "Orchestrator", "Recommendation"]

PRIORITIES = ("low", "normal", "high", "critical")
PERFORMANCE_WINDOW = 86400.0
PREVIEW_DAYS = 7


@dataclass(frozen=True)
class ModelRequest:
    """A task to choose a model for (POST /orchestrator/recommend-model, POST /models/select)."""

    task_type: str = "general"
    estimated_tokens: int = 1000
    complexity: str = "medium"
    priority: str = "normal"


@dataclass(frozen=True)
class Recommendation:
    """The chosen model, whether it fits the daily budget, and the budget it was chosen against."""

    model: str
    fits: bool
    budget: dict[str, Any]


class Orchestrator:
    def __init__(self, config: Config, store: Store, budget: Budget, runtime: AgentRuntime,
                 slots: Mapping[str, ProviderSlot], agents: AgentService, history: PricingHistory,
                 pricing_service: PricingService, cache: TTLCache, breaker_changes: StateChanges) -> None:
        self.config, self.store, self.budget, self.runtime, self.slots = config, store, budget, runtime, slots
        self.agents, self.history, self.pricing, self.cache = agents, history, pricing_service, cache
        self.breaker_changes = breaker_changes  # moves when a breaker opens or closes: recommendations go stale

    def apply_config(self, config: Config) -> None:
        """A reloaded configuration (reload.py); ``slots`` is the runtime's, changed in place.
        The cached recommendations were made with the old models and prices: they go."""
        self.config = config
        self.cache.clear()

    # -- availability and recommendation ---------------------------------------------------------
    def available(self, alias: str) -> bool:
        """Can this model start work now: provider usable, breaker closed, hourly tokens left."""
        m = self.config.models.get(alias)
        slot = self.slots.get(m.provider) if m is not None else None
        if slot is None or not slot.usable or not slot.breaker.available():
            return False
        return self.runtime.provider_tokens(slot.name).allowed

    def recommendable(self, alias: str) -> bool:
        """Available, and not a stand-in: a model outside the business catalogue that the offline
        plugin serves (the shipped config's free ``offline`` model) answers with canned text, so it
        is never the cheapest way to do real work.  A free local model (Ollama, llama.cpp) is."""
        m = self.config.models.get(alias)
        provider = self.config.providers.get(m.provider) if m is not None else None
        if alias not in pricing.COST_ORDER and provider is not None and provider.plugin == "offline":
            return False
        return self.available(alias)

    def recommend(self, task_type: str, tokens: int) -> Recommendation:
        """From the 30-second recommendation cache while the budget has not moved."""
        snap = self.budget.snapshot()
        # What the answer depends on: the budget (its version moves with every reserve and settle)
        # and which models are usable (breaker state changes; the hourly quota is left to the TTL).
        key = (task_type, tokens, self.budget.version, self.breaker_changes.count)
        cached = self.cache.get(key)
        if cached is None:
            committed = float(snap["today_spend"]) + float(snap["reserved"])  # what spawn admission counts
            cached = self.cache.put(key, pricing.recommend_model(
                task_type, tokens, committed, float(snap["daily_budget"]), self.config.models, self.recommendable))
        model, fits = cached
        return Recommendation(model, fits, snap)

    # -- models ------------------------------------------------------------------------------------
    async def performance(self, alias: str) -> dict[str, Any]:
        """Live figures from the agents this model finished in the last 24 h: success rate (completed
        of completed + failed, %), average and p95 response time (s, run start to finish of the
        completed ones).  null when it finished none; no quality score (nothing measures one)."""
        rows = await self.agents.run_times(alias, self.runtime.clock() - PERFORMANCE_WINDOW)
        times = sorted(t for status, t in rows if status == "completed" and t is not None)
        finished = len(rows)
        return {"success_rate": round(len(times) / finished * 100, 2) if finished else None,
                "average_response_time": round(sum(times) / len(times), 3) if times else None,
                "p95_response_time": round(times[min(len(times) - 1, int(0.95 * len(times)))], 3) if times else None,
                "finished_agents": finished, "window_hours": PERFORMANCE_WINDOW / 3600}

    # -- status ------------------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        """Live budget, usage, provider and pricing state."""
        config, policy = self.config, self.config.pricing.policy
        now = self.runtime.clock()
        day_start = datetime.fromtimestamp(now, timezone.utc).replace(
            hour=0, minute=0, second=0, microsecond=0).timestamp()
        rows = await self.store.read(lambda conn: ledger.by_model_since(conn, day_start))
        usage = {r.model: (r.calls, r.tokens) for r in rows}
        total_calls = sum(calls for calls, _ in usage.values())
        snap = self.budget.snapshot()
        daily_budget, spend = snap["daily_budget"], round(float(snap["today_spend"]), 4)
        budget = pricing.budget_block(daily_budget, spend)
        providers = {}
        for name in self.slots:
            # current: the calls of the last hour, as /rate-limits' "used" (the bucket's level
            # refills continuously, so it understated steady traffic).
            providers[name] = pricing.provider_usage(self.runtime.provider_calls(name),
                                                     self.runtime.provider_tokens(name).limit)
        flags = pricing.operational_flags(budget["budget_alert_level"], providers)
        example_model = self.recommend("coding", 2000).model
        example = pricing.quote_from_estimate(example_model, config.models[example_model], "medium",
                                              policy.default_segment, 2000, policy)
        when = datetime.fromtimestamp(now, timezone.utc)
        return {
            "timestamp": pricing.iso_now(when),
            "models_active": sum(1 for alias in config.models if self.available(alias)),
            "usage_summary": {"top_models": pricing.top_models(usage, config.models, limit=5),
                              "total_calls": total_calls},
            "recent_usage": total_calls,
            **budget,
            "operational_flags": flags,
            "model_mix_recommendation": pricing.model_mix(budget["budget_alert_level"],
                                                          pricing.top_models(usage, config.models, limit=3)),
            "pricing_policy": policy.orchestrator_block(),
            "example_task_quote": example,
            **await self._previews(example, when),
            "usage_anomalies": pricing.usage_anomalies(pricing.top_models(usage, config.models, limit=10)),
            "monthly_forecast": pricing.monthly_forecast(daily_budget, spend),
            "provider_usage": providers,
        }

    async def _previews(self, example: dict[str, Any], now: datetime) -> dict[str, Any]:
        """The pricing previews: from the recorded pricing history once there is any (source
        "history": the last 7 days, that week against the one before, the open exceptions), else
        from sample inputs (source "sample")."""
        found = await self.history.previews(now.timestamp(), PREVIEW_DAYS)
        if found is None:
            return self._sample_previews(example, now)
        policy = self.config.pricing.policy
        src = {"source": "history"}
        latest = found["latest"]
        if latest is not None:
            check = {"is_compliant": latest["decision_status"] == "approved", "delivery_type": latest["delivery_type"]}
            decision = {**pricing.decision(check, latest["approver"], datetime.fromtimestamp(latest["created_at"],
                                                                                             timezone.utc)),
                        "quote_id": latest["quote_id"], **src}
        else:
            decision = {**self._sample_decision(example, now), "source": "sample"}
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

    def _sample_decision(self, example: dict[str, Any], now: datetime) -> dict[str, Any]:
        """The decision for the example task quote."""
        policy = self.config.pricing.policy
        check = pricing.guardrail(example["gross_margin_pct"], policy.default_delivery_type, policy)
        return pricing.decision(check, "ops-auto", now)

    def _sample_previews(self, example: dict[str, Any], now: datetime) -> dict[str, Any]:
        """The previews from sample inputs (no quote history is recorded yet), marked source "sample"."""
        policy = self.config.pricing.policy
        delivery = policy.default_delivery_type
        decision = self._sample_decision(example, now)
        results = []
        for segment, sample in STATUS_SAMPLES.items():
            q = self.pricing.sample(sample, segment)
            if q is not None:
                results.append({"quote": q,
                                "guardrail_check": pricing.guardrail(q["gross_margin_pct"], delivery, policy)})
        portfolio = {"delivery_type": delivery, **pricing.rollup(results, policy)}
        decisions = [{**decision, "gross_margin_pct": example["gross_margin_pct"]},
                     {"decision_status": "escalated", "gross_margin_pct": 42.0, "exception_created": True}]
        comparison = pricing.weekly_comparison(
            {"total_quotes": 50, "approval_rate": 0.84, "avg_margin_pct": 77.3, "exceptions_created": 3},
            {"total_quotes": 45, "approval_rate": 0.88, "avg_margin_pct": 72.5, "exceptions_created": 2})
        aging = pricing.exception_aging_from_ages([33, 15, 6, 2])
        sample_src = {"source": "sample"}
        return {
            "quote_decision_preview": {**decision, **sample_src},
            "quote_portfolio_preview": {**portfolio, **sample_src},
            "portfolio_alert_preview": {**pricing.portfolio_alert(portfolio, policy), **sample_src},
            "weekly_metrics_preview": {**pricing.weekly_metrics(decisions), **sample_src},
            "weekly_comparison_preview": {**comparison, **sample_src},
            "exception_aging_preview": {**aging["exception_aging"], **sample_src},
            "exception_alert_preview": {**aging["exception_alert"], **sample_src},
        }
