"""The pricing service behind /pricing/*: quotes from the pricing cache, quotes and decisions
recorded in the pricing history with the events announcing them, today's pricing health.

The numbers come from j1mskyd/pricing.py (pure functions); this module gathers what they need
(configured prices, the budget, the usage ledger, the history) and writes what must be kept.
Handlers (j1mskyd/api/pricing.py) parse a request into one of the request objects below,
call one method and shape the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from j1msky.ttlcache import TTLCache

from . import ledger, pricing
from .budget import Budget
from .events import EventLog
from .pricing_history import PricingHistory, new_quote_id
from .store import Store

__all__ = ["DecisionRequest", "PricingService", "QuoteRequest", "REPORT_SAMPLE", "STATUS_SAMPLES"]

# The sample inputs of the status and report quotes (the smb one is chosen to reproduce the
# published example's 99.4 % margin).
STATUS_SAMPLES = {"mid_market": ("k2p5", "medium", 1200, 600), "enterprise": ("sonnet", "high", 2000, 1000),
                  "smb": ("k2p5", "low", 3000, 1000)}
REPORT_SAMPLE = ("k2p5", "medium", 1500, 600)
_SHORT = ("model", "complexity", "segment", "final_markup", "recommended_price", "gross_margin_pct")
_EXAMPLE = ("model", "complexity", "segment", "base_markup", "segment_adjustment", "final_markup",
            "recommended_price", "gross_margin_pct", "margin_band")


@dataclass(frozen=True)
class QuoteRequest:
    """A quote's inputs, checked: a configured model, known complexity, segment and delivery type."""

    model: str
    complexity: str
    segment: str
    estimated_input: int
    estimated_output: int
    delivery_type: str
    segment_given: bool = True  # False: the default segment (the answer says Deprecation: true)

    def params(self) -> dict[str, Any]:
        return {"model": self.model, "complexity": self.complexity, "estimated_input": self.estimated_input,
                "estimated_output": self.estimated_output, "segment": self.segment}


@dataclass(frozen=True)
class DecisionRequest:
    """A quote to decide on, who decides, and the experiment it belongs to (if any)."""

    quote: QuoteRequest
    approver: str
    variant: str | None = None
    experiment: str | None = None


@dataclass(frozen=True)
class Recorded:
    """A recorded quote (and decision): its id, the quote, its guardrail check, the decision packet
    and the deal-desk exception an escalation opened."""

    quote_id: str
    quote: dict[str, Any]
    check: dict[str, Any]
    decision: dict[str, Any] | None = None
    exception_id: str | None = None


class PricingService:
    def __init__(self, models: Mapping[str, Any], policy: pricing.PricingPolicy, store: Store, events: EventLog,
                 webhooks: Any, history: PricingHistory, budget: Budget, clock: Callable[[], float],
                 cache: TTLCache) -> None:
        self.models, self.policy, self.store, self.events = models, policy, store, events
        self.webhooks, self.history, self.budget, self.clock, self.cache = webhooks, history, budget, clock, cache

    def set_prices(self, models: Mapping[str, Any], policy: pricing.PricingPolicy) -> None:
        """The models' prices and the pricing policy of a reloaded configuration; the quotes
        cached at the old ones go."""
        self.models, self.policy = models, policy
        self.cache.clear()

    # -- quotes ------------------------------------------------------------------------------
    def quote(self, req: QuoteRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        """The quote (from the 5-minute pricing cache when the same inputs were priced lately) and
        its margin guardrail check."""
        key = (req.model, req.complexity, req.segment, req.estimated_input, req.estimated_output)
        cached = self.cache.get(key)
        if cached is None:
            cached = self.cache.put(key, pricing.quote(req.model, self.models[req.model], req.complexity, req.segment,
                                                       req.estimated_input, req.estimated_output, self.policy))
        q = dict(cached)  # callers may add fields: never to the cached one
        return q, pricing.guardrail(q["gross_margin_pct"], req.delivery_type, self.policy)

    async def record_quote(self, req: QuoteRequest, api_key_id: str | None) -> Recorded:
        """A quote with its guardrail check, recorded in the pricing history."""
        q, check = self.quote(req)
        quote_id, _ = await self._record(q, check, api_key_id)
        return Recorded(quote_id, q, check)

    async def decide(self, req: DecisionRequest, api_key_id: str | None) -> Recorded:
        """An approve/escalate decision packet for one quote, recorded; an escalation opens a
        deal-desk exception."""
        q, check = self.quote(req.quote)
        d = pricing.decision(check, req.approver, datetime.now(timezone.utc))
        quote_id, exception_id = await self._record(q, check, api_key_id, decision=d, variant=req.variant,
                                                    experiment=req.experiment)
        return Recorded(quote_id, q, check, d, exception_id)

    async def _record(self, quote: dict[str, Any], check: dict[str, Any], api_key_id: str | None, *,
                      decision: dict[str, Any] | None = None, variant: str | None = None,
                      experiment: str | None = None) -> tuple[str, str | None]:
        """Record a quote (and its decision) in the pricing history, with the events announcing it
        in the same transaction.  Returns (quote id, id of the exception an escalation opened)."""
        quote_id = new_quote_id()
        exception_id, stmts = self.history.record(
            quote_id, quote, check, decision=decision, variant=variant, experiment=experiment, api_key_id=api_key_id)
        published = []
        for type_, event_data in _quote_events(quote_id, quote, check, decision, exception_id):
            # Stored only when a webhook or a live listener wants it (the history row is the record).
            wanted = self.events.statements_if_wanted(type_, event_data)
            if wanted is not None:
                published.append(wanted[0])
                stmts.extend(wanted[1])
        await self.store.write(*stmts, fail_fast=True)
        self.events.published(published)
        return quote_id, exception_id

    def sample(self, sample: tuple[str, str, int, int], segment: str) -> dict[str, Any] | None:
        """A quote for sample inputs; None when this configuration lacks the model, complexity or segment."""
        model, complexity, tin, tout = sample
        price = self.models.get(model)
        if price is None or complexity not in self.policy.complexity_markup \
                or segment not in self.policy.segment_adjustments:
            return None
        return pricing.quote(model, price, complexity, segment, tin, tout, self.policy)

    # -- status, health, report ----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The pricing policy, example quotes and a guardrail check."""
        policy = self.policy
        examples = {}
        for segment, sample in STATUS_SAMPLES.items():
            q = self.sample(sample, segment)
            if q is not None:
                examples[segment] = {k: q[k] for k in _EXAMPLE}
        first = examples.get(policy.default_segment) or next(iter(examples.values()), None)
        check = (pricing.guardrail(first["gross_margin_pct"], policy.default_delivery_type, policy)
                 if first is not None else None)
        return {"pricing_policy": policy.status_block(), "example_quotes": examples, "guardrail_check": check}

    async def health(self) -> dict[str, Any]:
        """Today's pricing health; announces pricing.budget_warning above 80 % of the daily budget,
        pricing.budget_critical above 95 % (each at most once a minute)."""
        h = await self._health()
        self._budget_events(h)
        return h

    async def _health(self) -> dict[str, Any]:
        """Today's cost, budget use, cost per task, by model."""
        snap = self.budget.snapshot()
        day_start = datetime.fromtimestamp(self.clock(), timezone.utc).replace(
            hour=0, minute=0, second=0, microsecond=0).timestamp()
        rows = await self.store.read(lambda conn: ledger.by_model_since(conn, day_start))
        by_model = {r.model: (r.cost, r.calls) for r in rows}
        tasks = sum(r.calls for r in rows)
        return pricing.pricing_health(float(snap["today_spend"]), float(snap["daily_budget"]), tasks, by_model,
                                      self.policy)

    def _budget_events(self, h: dict[str, Any]) -> None:
        pct = h["budget_utilization_pct"]
        for type_, threshold in (("pricing.budget_critical", 95.0), ("pricing.budget_warning", 80.0)):
            if pct > threshold:
                data = {"daily_cost": h["daily_cost"], "daily_budget": h["daily_budget"],
                        "budget_utilization_pct": pct}
                if self.webhooks.route(type_, data) or self.events.wants(type_):
                    self.events.emit_soon(type_, data, throttle_key=type_, every=60.0)
                break

    async def report(self) -> dict[str, Any]:
        """The daily pricing report."""
        h = await self._health()
        by_model = h.pop("by_model")
        samples = {}
        for segment in self.policy.segment_adjustments:
            q = self.sample(REPORT_SAMPLE, segment)
            if q is not None:
                samples[segment] = {k: q[k] for k in _SHORT}
        return {"generated_at": pricing.iso_now(datetime.now(timezone.utc)), "period": "daily", "health": h,
                "by_model": by_model, "sample_quotes_by_segment": samples,
                "pricing_policy": self.policy.status_block()}


def _quote_events(quote_id: str, quote: dict[str, Any], check: dict[str, Any], decision: dict[str, Any] | None,
                  exception_id: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The events a recorded quote announces: generated, a margin alert, the decision, the exception."""
    data = {"quote_id": quote_id, "model": quote["model"], "segment": quote["segment"],
            "complexity": quote["complexity"], "recommended_price": quote["recommended_price"],
            "gross_margin_pct": quote["gross_margin_pct"]}
    events: list[tuple[str, dict[str, Any]]] = [("pricing.quote_generated", data)]
    if not check["is_compliant"]:
        events.append(("pricing.margin_alert", {**data, "delivery_type": check["delivery_type"],
                                                "minimum_margin_pct": check["minimum_margin_pct"]}))
    if decision is not None:
        events.append(("pricing.quote_" + decision["decision_status"], {"quote_id": quote_id, **decision,
                       **{k: data[k] for k in ("model", "segment", "recommended_price", "gross_margin_pct")}}))
    if exception_id is not None:
        events.append(("pricing.exception_created", {"exception_id": exception_id, "quote_id": quote_id,
                                                     "delivery_type": check["delivery_type"],
                                                     "minimum_margin_pct": check["minimum_margin_pct"], **data}))
    return events
