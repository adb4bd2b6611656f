"""Pricing rules as pure functions: quotes, guardrails, decisions and the rollups built on them.

Every number and rule is from the J1MSKY pricing business rules; "round(x, n)" there is
Python's round, used here the same way.  Nothing in this module does I/O or reads a clock: the
caller passes the policy, the model prices and (for decisions) the time.

The policy numbers are the defaults of :class:`PricingPolicy`; the ``[pricing]`` table of the
configuration overrides them (j1mskyd/config.py builds the policy the handlers use).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol

from .budget import alert_level

__all__ = ["APPROVAL_SHIFT_PCT", "AT_RISK_DAYS", "COMPLEXITIES", "COST_ORDER", "DEFAULT_MODEL", "DEFAULT_POLICY",
           "DELIVERY_TYPES", "DISCARD_APPROVAL_FACTOR", "DISCARD_MARGIN_FACTOR", "EXCEPTION_SHIFT_PCT",
           "EXEC_FOLLOWUP_AT_RISK", "EXEC_FOLLOWUP_DAYS", "HIGH_CALLS", "HIGH_TOKENS_PER_CALL", "MARGIN_SHIFT_PCT",
           "ModelInfo", "ModelPrice", "PricingPolicy", "ROLL_OUT_APPROVAL_FACTOR", "SEGMENTS", "TASK_PREFERENCES",
           "batch_quotes", "blended_cost", "budget_block", "decision", "exception_aging", "exception_aging_from_ages",
           "experiment_recommendation", "experiment_summary", "guardrail", "iso_now", "margin_band", "model_mix",
           "monthly_forecast", "operational_flags", "pct_change", "portfolio_alert", "portfolio_summary",
           "preferred_model", "price_from_cost", "pricing_health", "provider_usage", "quote", "quote_from_estimate",
           "recommend_model", "rollup", "token_cost", "top_models", "usage_anomalies", "variant_stats",
           "weekly_comparison", "weekly_metrics"]

SEGMENTS = ("enterprise", "mid_market", "smb", "startup")   # the batch order, too
COMPLEXITIES = ("low", "medium", "high")
DELIVERY_TYPES = ("task", "subscription", "enterprise")


def _frozen(d: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class PricingPolicy:
    complexity_markup: Mapping[str, float] = field(
        default_factory=lambda: _frozen({"low": 3.0, "medium": 4.0, "high": 5.0}))
    min_markup: float = 3.0
    target_markup: float = 4.0
    max_markup: float = 5.0
    minimum_price: float = 0.50
    segment_adjustments: Mapping[str, float] = field(
        default_factory=lambda: _frozen({"enterprise": 0.5, "mid_market": 0.0, "smb": -0.5, "startup": -1.0}))
    margin_thresholds: Mapping[str, float] = field(
        default_factory=lambda: _frozen({"task": 55.0, "subscription": 50.0, "enterprise": 45.0}))
    default_delivery_type: str = "task"
    default_segment: str = "mid_market"
    strong_margin_pct: float = 70.0        # margin_band: >= strong -> strong, >= healthy -> healthy, else at_risk
    healthy_margin_pct: float = 55.0
    executive_review_ratio: float = 0.67   # compliance_ratio below this -> executive review
    elevated_cost_per_task: float = 0.10   # pricing health: avg cost per task above this -> warning
    health_warning_pct: float = 80.0       # pricing health: utilisation above this -> warning
    health_critical_pct: float = 100.0     # pricing health: utilisation at or above this -> critical

    def as_dict(self) -> dict[str, Any]:
        """Every setting, as plain JSON values."""
        return {f.name: dict(v) if isinstance(v, Mapping) else v
                for f in fields(self) for v in (getattr(self, f.name),)}

    def status_block(self) -> dict[str, Any]:
        """The ``pricing_policy`` block of /pricing/status and /pricing/report."""
        return {"complexity_markup": dict(self.complexity_markup),
                "segment_adjustments": dict(self.segment_adjustments),
                "minimum_price": self.minimum_price,
                "margin_thresholds": dict(self.margin_thresholds)}

    def orchestrator_block(self) -> dict[str, Any]:
        """The ``pricing_policy`` block of /orchestrator/status."""
        return {"min_markup": self.min_markup, "target_markup": self.target_markup,
                "max_markup": self.max_markup, "complexity_markup": dict(self.complexity_markup),
                "minimum_price": self.minimum_price}


DEFAULT_POLICY = PricingPolicy()


class ModelPrice(Protocol):
    # Read-only properties: a frozen ModelConfig (config.py) qualifies, not only a mutable class.
    @property
    def input_per_1k(self) -> float: ...
    @property
    def output_per_1k(self) -> float: ...
    @property
    def blended_per_1k(self) -> float: ...


# ------------------------------------------------------------------------------ cost and quote

def token_cost(price: ModelPrice, input_tokens: int, output_tokens: int) -> float:
    """Unrounded cost of input and output tokens at the per-direction prices."""
    return input_tokens / 1000 * price.input_per_1k + output_tokens / 1000 * price.output_per_1k


def blended_cost(price: ModelPrice, tokens: int) -> float:
    """Unrounded cost of a single ``estimated_tokens`` figure at the blended price."""
    return tokens / 1000 * price.blended_per_1k


def margin_band(margin_pct: float, policy: PricingPolicy = DEFAULT_POLICY) -> str:
    if margin_pct >= policy.strong_margin_pct:
        return "strong"
    if margin_pct >= policy.healthy_margin_pct:
        return "healthy"
    return "at_risk"


def price_from_cost(cost: float, complexity: str, segment: str,
                    policy: PricingPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    """Markups, price, margin and band for an internal cost (rounded to 4 places first)."""
    internal_cost = round(cost, 4)
    base = policy.complexity_markup[complexity]
    adjustment = policy.segment_adjustments[segment]
    final = round(base + adjustment, 2)          # not clamped to min/max: the API reference shows 5.5 and 2.5
    price = round(max(internal_cost * final, policy.minimum_price), 2)
    margin = round((price - internal_cost) / price * 100, 2) if price > 0 else 0.0
    return {"internal_cost": internal_cost, "base_markup": base, "segment_adjustment": adjustment,
            "final_markup": final, "recommended_price": price, "gross_margin_pct": margin,
            "margin_band": margin_band(margin, policy)}


def quote(model: str, price: ModelPrice, complexity: str, segment: str, input_tokens: int, output_tokens: int,
          policy: PricingPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    """A quote from input and output token estimates (the /pricing/quote shape)."""
    return {"model": model, "complexity": complexity, "segment": segment,
            "estimated_input_tokens": input_tokens, "estimated_output_tokens": output_tokens,
            **price_from_cost(token_cost(price, input_tokens, output_tokens), complexity, segment, policy)}


def quote_from_estimate(model: str, price: ModelPrice, complexity: str, segment: str, estimated_tokens: int,
                        policy: PricingPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    """A quote from one token figure at the blended price (the orchestrator's example_task_quote shape)."""
    return {"model": model, "complexity": complexity, "segment": segment, "estimated_tokens": estimated_tokens,
            **price_from_cost(blended_cost(price, estimated_tokens), complexity, segment, policy)}


def guardrail(margin_pct: float, delivery_type: str, policy: PricingPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    minimum = policy.margin_thresholds[delivery_type]
    compliant = margin_pct >= minimum
    return {"delivery_type": delivery_type, "minimum_margin_pct": minimum, "actual_margin_pct": margin_pct,
            "is_compliant": compliant, "action": "approve_quote" if compliant else "escalate_deal_desk"}


def iso_now(now: datetime) -> str:
    """ISO 8601 with the local offset, to the second (e.g. 2026-02-20T08:35:00-05:00)."""
    return now.astimezone().isoformat(timespec="seconds")


def decision(guardrail_check: Mapping[str, Any], approver: str, now: datetime) -> dict[str, Any]:
    approved = bool(guardrail_check["is_compliant"])
    return {"decision_status": "approved" if approved else "escalated", "approver": approver,
            "delivery_type": guardrail_check["delivery_type"],
            "next_step": "send_quote" if approved else "route_to_deal_desk", "generated_at": iso_now(now)}


# ------------------------------------------------------------------------------ batch and portfolio

def batch_quotes(model: str, price: ModelPrice, complexity: str, delivery_type: str, input_tokens: int,
                 output_tokens: int, policy: PricingPolicy = DEFAULT_POLICY,
                 segments: Sequence[str] = SEGMENTS) -> dict[str, Any]:
    """A quote and guardrail per segment, and the comparison.

    best value = lowest price, ties to the later segment (the API reference names startup among three at
    0.50); highest margin = highest margin, ties to the first segment.
    """
    by_segment: dict[str, Any] = {}
    best_value = highest = None
    for seg in segments:
        q = quote(model, price, complexity, seg, input_tokens, output_tokens, policy)
        by_segment[seg] = {"quote": q, "guardrail_check": guardrail(q["gross_margin_pct"], delivery_type, policy)}
        if best_value is None or q["recommended_price"] <= by_segment[best_value]["quote"]["recommended_price"]:
            best_value = seg
        if highest is None or q["gross_margin_pct"] > by_segment[highest]["quote"]["gross_margin_pct"]:
            highest = seg
    comparison = {"best_value_segment": best_value,
                  "best_value_price": by_segment[best_value]["quote"]["recommended_price"] if best_value else 0.0,
                  "highest_margin_segment": highest,
                  "highest_margin_pct": by_segment[highest]["quote"]["gross_margin_pct"] if highest else 0.0}
    return {"quotes_by_segment": by_segment, "comparison": comparison}


def portfolio_summary(scenario_count: int, compliant_count: int, average_margin_pct: float,
                      policy: PricingPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    """The rollup from counts: ratio rounded to 2 places, executive review on the rounded ratio."""
    if scenario_count <= 0:
        return {"scenario_count": 0, "compliant_count": 0, "compliance_ratio": 0.0, "needs_escalation": False,
                "requires_executive_review": False, "average_margin_pct": 0.0}
    ratio = round(compliant_count / scenario_count, 2)
    return {"scenario_count": scenario_count, "compliant_count": compliant_count, "compliance_ratio": ratio,
            "needs_escalation": compliant_count < scenario_count,
            "requires_executive_review": ratio < policy.executive_review_ratio,
            "average_margin_pct": round(average_margin_pct, 2)}


def rollup(results: Iterable[Mapping[str, Any]], policy: PricingPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    """Scenario / portfolio rollup over ``[{quote, guardrail_check}]``."""
    items = list(results)
    if not items:
        return portfolio_summary(0, 0, 0.0, policy)
    compliant = sum(1 for r in items if r["guardrail_check"]["is_compliant"])
    mean = sum(r["quote"]["gross_margin_pct"] for r in items) / len(items)
    return portfolio_summary(len(items), compliant, mean, policy)


def portfolio_alert(summary: Mapping[str, Any], policy: PricingPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    n, c, r = summary["scenario_count"], summary["compliant_count"], summary["compliance_ratio"]
    if n <= 0:
        return {"level": "ok", "summary": "No portfolio scenarios to evaluate", "recommended_action": "no_action"}
    if summary["requires_executive_review"]:
        return {"level": "critical", "summary": f"Portfolio executive review required: {c}/{n} compliant, ratio {r}",
                "recommended_action": "route_to_executive_review"}
    if r < 1.0:
        return {"level": "warning", "summary": f"Portfolio needs attention: {c}/{n} compliant",
                "recommended_action": "proceed_with_caution"}
    return {"level": "ok", "summary": f"Portfolio healthy: {c}/{n} compliant, margin {summary['average_margin_pct']}%",
            "recommended_action": "send_proposal"}


# ------------------------------------------------------------------------------ weekly and experiments

def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 2) if values else 0.0


def weekly_metrics(decisions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Over decision records ``{decision_status, gross_margin_pct, exception_created?, exception_closed?}``."""
    total = len(decisions)
    approved = sum(1 for d in decisions if d.get("decision_status") == "approved")
    return {"total_quotes": total, "approved_count": approved, "escalated_count": total - approved,
            "approval_rate": round(approved / total, 2) if total else 0.0,
            "avg_margin_pct": _mean([float(d.get("gross_margin_pct") or 0.0) for d in decisions]),
            "exceptions_created": sum(1 for d in decisions if d.get("exception_created") is True),
            "exceptions_closed": sum(1 for d in decisions if d.get("exception_closed") is True)}


def pct_change(current: float, previous: float) -> float | None:
    """round((cur - prev) / prev x 100, 2); 0.0 when both are 0; None (unbounded) when only prev is 0."""
    if previous == 0:
        return 0.0 if current == 0 else None
    return round((current - previous) / previous * 100, 2)


APPROVAL_SHIFT_PCT = 15.0    # |change| above this is significant
MARGIN_SHIFT_PCT = 10.0      # |change| above this is significant
EXCEPTION_SHIFT_PCT = 50.0   # change at or above this is significant (the API reference lists 50.0)


def weekly_comparison(current: Mapping[str, float], previous: Mapping[str, float]) -> dict[str, Any]:
    """Each mapping has total_quotes, approval_rate, avg_margin_pct, exceptions_created."""
    changes = {
        "total_quotes_change": pct_change(current["total_quotes"], previous["total_quotes"]),
        "approval_rate_change": pct_change(current["approval_rate"], previous["approval_rate"]),
        "avg_margin_change": pct_change(current["avg_margin_pct"], previous["avg_margin_pct"]),
        "exceptions_created_change": pct_change(current["exceptions_created"], previous["exceptions_created"]),
    }
    shifts: list[str] = []
    a, m, e = changes["approval_rate_change"], changes["avg_margin_change"], changes["exceptions_created_change"]
    if a is None:
        shifts.append(f"Approval rate shifted from 0 to {current['approval_rate']}")
    elif abs(a) > APPROVAL_SHIFT_PCT:
        shifts.append(f"Approval rate shifted {a}%")
    if m is None:
        shifts.append(f"Average margin shifted from 0 to {current['avg_margin_pct']}%")
    elif abs(m) > MARGIN_SHIFT_PCT:
        shifts.append(f"Average margin shifted {m}%")
    if e is None:
        shifts.append(f"Exception creation up from 0 to {current['exceptions_created']}")
    elif e >= EXCEPTION_SHIFT_PCT:
        shifts.append(f"Exception creation up {e}%")
    return {"week_over_week_changes": changes, "significant_shifts": shifts, "requires_review": bool(shifts)}


ROLL_OUT_APPROVAL_FACTOR = 0.85   # test approval >= this x control (the reference's 0.75 vs 0.84 rolls out)
DISCARD_APPROVAL_FACTOR = 0.8     # test approval < this x control -> discard
DISCARD_MARGIN_FACTOR = 0.9       # test margin < this x control -> discard


def variant_stats(quotes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(quotes)
    approved = sum(1 for q in quotes if q.get("decision_status") == "approved")
    return {"count": n, "approval_rate": round(approved / n, 2) if n else 0.0,
            "avg_margin_pct": _mean([float(q.get("gross_margin_pct") or 0.0) for q in quotes])}


def experiment_recommendation(control: Mapping[str, Any], test: Mapping[str, Any]) -> str:
    if not control["count"] or not test["count"]:
        return "inconclusive"
    # The products are rounded to 6 places so that 0.9 x 70 is 63.0, not 63.00000000000001.
    if (test["avg_margin_pct"] > control["avg_margin_pct"]
            and test["approval_rate"] >= round(ROLL_OUT_APPROVAL_FACTOR * control["approval_rate"], 6)):
        return "roll_out"
    if test["approval_rate"] < round(DISCARD_APPROVAL_FACTOR * control["approval_rate"], 6):
        return "discard"
    if test["avg_margin_pct"] < round(DISCARD_MARGIN_FACTOR * control["avg_margin_pct"], 6):
        return "discard"
    return "inconclusive"


def experiment_summary(quotes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Over ``{variant: control|test, decision_status, gross_margin_pct}``; other variants are ignored."""
    control = variant_stats([q for q in quotes if q.get("variant") == "control"])
    test = variant_stats([q for q in quotes if q.get("variant") == "test"])
    have = (control["count"] > 0) + (test["count"] > 0)
    status = "complete" if have == 2 else "in_progress" if have == 1 else "no_data"
    return {"status": status, "control": control, "test": test,
            "recommendation": experiment_recommendation(control, test)}


# ------------------------------------------------------------------------------ exceptions

AT_RISK_DAYS = 14
EXEC_FOLLOWUP_DAYS = 30
EXEC_FOLLOWUP_AT_RISK = 2


def exception_aging(open_exceptions: int, oldest_days: int, at_risk_count: int) -> dict[str, Any]:
    """Risk classification and alert from the posted counts."""
    exec_followup = oldest_days >= EXEC_FOLLOWUP_DAYS or at_risk_count >= EXEC_FOLLOWUP_AT_RISK
    if open_exceptions <= 0:
        level, action, summary = "none", "no_action", "No open quote exceptions"
    elif exec_followup:
        level, action = "critical", "schedule_executive_review"
        summary = f"Critical exception risk: {open_exceptions} open, oldest {oldest_days}d"
    elif at_risk_count >= 1:
        level, action = "warning", "manager_followup"
        summary = f"Warning exception risk: {open_exceptions} open, oldest {oldest_days}d"
    else:
        level, action, summary = "ok", "continue_recovery_plan", f"Exceptions under control: {open_exceptions} open"
    return {"exception_aging": {"open_exceptions": open_exceptions, "oldest_days": oldest_days,
                                "at_risk_count": at_risk_count, "requires_exec_followup": exec_followup,
                                "risk_level": level, "next_action": action},
            "exception_alert": {"level": level, "summary": summary, "recommended_action": action}}


def exception_aging_from_ages(ages_days: Sequence[int]) -> dict[str, Any]:
    """The same from the ages (in whole days) of the open exceptions."""
    return exception_aging(len(ages_days), max(ages_days, default=0),
                           sum(1 for a in ages_days if a >= AT_RISK_DAYS))


# ------------------------------------------------------------------------------ pricing health

def pricing_health(daily_cost: float, daily_budget: float, tasks_completed: int,
                   by_model: Mapping[str, tuple[float, int]], policy: PricingPolicy = DEFAULT_POLICY
                   ) -> dict[str, Any]:
    """/pricing/health: ``by_model`` maps a model to (cost, calls) for today.

    critical when the day's cost is at or above the budget, warning above 80 % or when the average
    cost per task is above ``elevated_cost_per_task``; a budget of 0 means no budget (utilisation 0).
    """
    utilization = round(daily_cost / daily_budget * 100, 2) if daily_budget > 0 else 0.0
    avg_per_task = round(daily_cost / max(tasks_completed, 1), 4)
    issues: list[str] = []
    status = "healthy"
    # Compared as shown (rounded to 2 places), so that 0.2 of 0.25 is 80.0 and not 80.00000000000001.
    if daily_budget > 0 and utilization > policy.health_warning_pct:
        issues.append(f"High daily cost: ${daily_cost:.2f}")
        status = "warning"
    if avg_per_task > policy.elevated_cost_per_task:
        issues.append(f"High avg cost per task: ${avg_per_task}")
        status = "warning"
    if daily_budget > 0 and utilization >= policy.health_critical_pct:
        status = "critical"
    models = {m: {"cost": round(cost, 4), "calls": calls, "avg_per_call": round(cost / max(calls, 1), 4)}
              for m, (cost, calls) in by_model.items()}
    return {"status": status, "daily_cost": round(daily_cost, 4), "daily_budget": float(daily_budget),
            "budget_utilization_pct": utilization, "tasks_completed": tasks_completed,
            "avg_cost_per_task": avg_per_task, "issues": issues, "by_model": models}


# ------------------------------------------------------------------------------ model recommendation

TASK_PREFERENCES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "architecture": ("opus", "k2p5"), "strategy": ("opus",), "complex_reasoning": ("opus",),
    "implementation": ("sonnet", "minimax-m2.5"), "documentation": ("sonnet",),
    "coding": ("k2p5", "minimax-m2.5", "codex"), "fast_coding": ("minimax-m2.5", "k2p5"),
    "api_integration": ("codex", "k2p5"), "specialized_coding": ("codex",),
    "ui_design": ("sonnet", "minimax-m2.5"), "business_analysis": ("opus", "sonnet")})
DEFAULT_MODEL = "sonnet"
COST_ORDER = ("k2p5", "minimax-m2.5", "sonnet", "codex", "opus")


class ModelInfo(ModelPrice, Protocol):
    @property
    def fallback(self) -> str | None: ...


def preferred_model(task_type: str, models: Mapping[str, ModelInfo], available: Callable[[str], bool]) -> str:
    """The first preferred model that is available; else the first available fallback of one; else sonnet."""
    preferred = [m for m in TASK_PREFERENCES.get(task_type, (DEFAULT_MODEL,)) if m in models]
    for m in preferred:
        if available(m):
            return m
    for m in preferred:
        fb = models[m].fallback
        if fb is not None and fb in models and available(fb):
            return fb
    return DEFAULT_MODEL


def recommend_model(task_type: str, estimated_tokens: int, committed_spend: float, daily_budget: float,
                    models: Mapping[str, ModelInfo], available: Callable[[str], bool]) -> tuple[str, bool]:
    """(model, budget_available) for a task.

    A model fits when committed_spend + blended x estimated_tokens / 1000 <= daily_budget.  When the
    preferred model does not fit, the cost order is walked for the first available model that fits;
    when none fits, the cheapest available one is returned with budget_available false.
    """
    def fits(m: str) -> bool:
        return committed_spend + blended_cost(models[m], estimated_tokens) <= daily_budget

    first = preferred_model(task_type, models, available)
    if first in models and fits(first):
        return first, True
    order = [m for m in COST_ORDER if m in models] + [m for m in models if m not in COST_ORDER]
    for m in order:
        if available(m) and fits(m):
            return m, True
    for m in order:
        if available(m):
            return m, False
    # Nothing available: name the preferred model if it is configured, else any configured one.
    return (first if first in models else next(iter(models))), False


# ------------------------------------------------------------------------------ orchestrator blocks

budget_alert_level = alert_level  # the budget's own levels: >= 90 critical, >= 70 warning, >= 50 notice


def budget_block(daily_budget: float, today_spend: float) -> dict[str, Any]:
    utilization = round(today_spend / daily_budget * 100, 2) if daily_budget > 0 else 0.0
    return {"daily_budget": daily_budget, "today_spend": today_spend,
            "budget_remaining": round(max(daily_budget - today_spend, 0), 4),
            "budget_utilization_pct": utilization, "budget_alert_level": budget_alert_level(utilization)}


def monthly_forecast(daily_budget: float, today_spend: float, days: int = 30) -> dict[str, Any]:
    projected = round(today_spend * days, 4)
    ceiling = daily_budget * days
    return {"projected_spend": projected, "budget_ceiling": ceiling, "delta_to_budget": round(ceiling - projected, 4)}


def provider_usage(current: int, hourly: int) -> dict[str, Any]:
    return {"current": current, "hourly": hourly, "remaining": max(hourly - current, 0),
            "utilization_pct": round(current / hourly * 100, 2) if hourly > 0 else 0.0}


def top_models(usage: Mapping[str, tuple[int, int]], prices: Mapping[str, ModelPrice], limit: int = 5
               ) -> list[dict[str, Any]]:
    """``usage`` maps a model to (calls, tokens); sorted by calls, descending (then by name)."""
    rows = sorted(usage.items(), key=lambda kv: (-kv[1][0], kv[0]))[:limit]
    out = []
    for model, (calls, tokens) in rows:
        price = prices.get(model)
        out.append({"model": model, "calls": calls, "tokens": tokens,
                    "avg_tokens_per_call": round(tokens / calls, 2) if calls else 0.0,
                    "estimated_spend": round(blended_cost(price, tokens), 4) if price is not None else 0.0})
    return out


def operational_flags(alert_level: str, providers: Mapping[str, Mapping[str, Any]], hot_pct: float = 80.0
                      ) -> dict[str, Any]:
    hot = [name for name, u in providers.items() if u["utilization_pct"] >= hot_pct]
    max_util = round(max((u["utilization_pct"] for u in providers.values()), default=0.0), 2)
    if alert_level == "critical":
        action = "Pause non-critical workloads and force cheapest model routing"
    elif alert_level == "warning":
        action = "Shift medium/low-priority tasks to k2p5/minimax and monitor hourly"
    elif hot:
        action = "Throttle traffic for: " + ", ".join(hot)
    else:
        action = "No action required"
    return {"budget_alert_level": alert_level, "max_provider_utilization_pct": max_util, "hot_providers": hot,
            "requires_ops_attention": alert_level in ("warning", "critical") or bool(hot),
            "recommended_action": action}


def model_mix(alert_level: str, top: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    if alert_level in ("warning", "critical"):
        return {"strategy": "cost-optimized", "primary": ["k2p5", "minimax-m2.5"], "secondary": ["sonnet"],
                "restricted": ["opus"], "reason": "Budget pressure detected"}
    primary = [t["model"] for t in top[:3]] or ["k2p5", "sonnet"]
    return {"strategy": "balanced", "primary": primary, "secondary": ["codex"], "restricted": [],
            "reason": "Normal operating range"}


HIGH_CALLS = 100
HIGH_TOKENS_PER_CALL = 5000


def usage_anomalies(top: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Over the top 10 models by calls."""
    anomalies = []
    for t in top[:10]:
        if t["calls"] >= HIGH_CALLS:
            anomalies.append({"type": "high_call_volume", "model": t["model"], "value": t["calls"]})
        if t["avg_tokens_per_call"] >= HIGH_TOKENS_PER_CALL:
            anomalies.append({"type": "high_tokens_per_call", "model": t["model"], "value": t["avg_tokens_per_call"]})
    if len(anomalies) >= 2:
        severity = "critical"
    elif any(a["type"] == "high_call_volume" for a in anomalies):
        severity = "warning"
    else:
        severity = "none"
    return {"has_anomalies": bool(anomalies), "anomalies": anomalies, "count": len(anomalies), "severity": severity}
