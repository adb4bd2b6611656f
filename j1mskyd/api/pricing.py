"""Pricing endpoints (the J1MSKY API reference's "Pricing Operations"): calculators, status, health, report, webhooks.

The numbers come from j1mskyd/pricing.py and the live state from j1mskyd/pricing_service.py
(PricingService: cached quotes, the recorded history, today's health); this module only reads
requests into request objects (QuoteRequest, DecisionRequest) or checked values, calls one
service or pure function, and shapes responses.  Every POST takes its fields either as a JSON object or as form fields
(application/x-www-form-urlencoded or multipart/form-data); form strings are converted to the
field's type and the same rules apply, with every broken rule reported at once in the one
error envelope (400 VALIDATION_ERROR with ``details``).  Array fields (``scenarios``,
``quotes``) are JSON arrays in a JSON body, and JSON text in a form field.

A quote or decision without ``segment`` uses mid_market and answers with ``Deprecation: true``
(the API reference's v4.1 changelog: quoting without a segment is deprecated).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from .. import jsonx, pricing
from ..errors import BadRequest, NotFound, ValidationFailed
from ..events import PRICING_EVENTS
from ..pricing_history import MAX_DAYS, RESOLUTIONS, PricingHistory, Window
from ..pricing_service import DecisionRequest, PricingService, QuoteRequest
from ..request_fields import finite_number
from ..webhook_request import parse_new
from .common import SERVICES, actor, config_of, json_response, key_id_of, query_params, read_json, viewer

# The handlers (the route table reaches them as this module's attributes), and the field reader
# and limits api/orchestrator.py's handlers and api/openapi.py's schemas share with them.
__all__ = [
    "pricing_quote", "pricing_decision", "pricing_batch_quotes", "pricing_scenario", "pricing_portfolio_alert",
    "pricing_weekly_metrics", "pricing_weekly_comparison", "pricing_experiment_summary", "pricing_exception_alert",
    "pricing_weekly_metrics_history", "pricing_weekly_comparison_history", "pricing_experiment_summary_history",
    "pricing_exception_alert_history", "pricing_exceptions", "pricing_close_exception", "pricing_status",
    "pricing_health", "pricing_report", "pricing_create_webhook", "pricing_list_webhooks", "pricing_delete_webhook",
    "Fields", "experiment_from_history", "read_fields", "MAX_ITEMS", "MAX_SCENARIOS", "MAX_TOKENS", "VARIANTS",
]

MAX_TOKENS = 10_000_000          # per token estimate
MAX_ITEMS = 10_000               # scenarios / quotes per request
MAX_SCENARIOS = 100
DEPRECATION = {"Deprecation": "true"}
VARIANTS = ("control", "test")


def policy_of(request: web.Request) -> pricing.PricingPolicy:
    """The pricing policy: the business rules' defaults with the configuration's [pricing] table over them."""
    return config_of(request).pricing.policy


# ------------------------------------------------------------------------------ request reading

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_FORM_INT = re.compile(r"[+-]?[0-9]+")  # ASCII digits, one sign (int() also takes "1_0" and other scripts' digits)


async def read_fields(request: web.Request) -> tuple[dict[str, Any], bool]:
    """The request's fields and whether they came as form fields (strings to convert)."""
    ctype = request.content_type
    if ctype in FORM_TYPES:
        try:
            form = await request.post()
        # e.g. multipart without a boundary (ValueError, AssertionError) or a part whose headers are
        # not headers (BadHttpMessage)
        except (ValueError, UnicodeDecodeError, AssertionError, BadHttpMessage) as exc:
            raise BadRequest(f"Malformed form body: {exc}") from None
        files = [(name, value) for name, value in form.items() if not isinstance(value, str)]
        for _, value in files:
            if isinstance(value, web.FileField):  # else bytes: a part that is neither text nor a file
                value.file.close()  # aiohttp spooled the upload to a temporary file that nothing else closes
        if files:
            raise ValidationFailed([{"field": name, "message": f"{name} must be a plain form field, not a file"}
                                    for name, _ in files])
        return {name: value for name, value in form.items()}, True  # a repeated field: the last wins
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ValidationFailed([{"field": "body", "message": "Request body must be a JSON object or form fields"}])
    return body, False


class Fields:
    """Typed access to one request's fields, collecting every problem before failing."""

    def __init__(self, data: dict[str, Any], form: bool, prefix: str = "") -> None:
        self.data, self.form, self.prefix = data, form, prefix
        self.details: list[dict[str, str]] = []

    def bad(self, name: str, message: str) -> None:
        self.details.append({"field": self.prefix + name, "message": f"{self.prefix}{name} {message}"})

    def present(self, name: str) -> bool:
        v = self.data.get(name)
        return v is not None and not (self.form and isinstance(v, str) and v.strip() == "")

    def integer(self, name: str, lo: int = 0, hi: int = MAX_TOKENS, default: int | None = None) -> int:
        if not self.present(name):
            if default is None:
                self.bad(name, "is required (an integer)")
            return default or 0
        v = self.data[name]
        if isinstance(v, str) and self.form:
            text = v.strip()
            if not _FORM_INT.fullmatch(text):
                v = None
            elif len(text.lstrip("+-")) > 18:  # past every range here, and int() refuses 4,300+ digits
                self.bad(name, f"must be between {lo} and {hi}")
                return 0
            else:
                v = int(text)
        if type(v) is not int:
            self.bad(name, "must be an integer")
            return 0
        if not lo <= v <= hi:
            self.bad(name, f"must be between {lo} and {hi}")
        return v

    def number(self, name: str, lo: float | None = None, hi: float | None = None) -> float:
        if not self.present(name):
            self.bad(name, "is required (a number)")
            return 0.0
        v = self.data[name]
        if isinstance(v, str) and self.form:
            try:
                v = float(v.strip())
            except ValueError:
                v = None
        if not finite_number(v):
            self.bad(name, "must be a finite number")
            return 0.0
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.bad(name, f"must be between {lo:g} and {hi:g}" if lo is not None and hi is not None
                     else f"must be >= {lo:g}" if lo is not None else f"must be <= {hi:g}")
        return float(v)

    def choice(self, name: str, allowed: Any, default: str | None = None) -> str:
        if not self.present(name):
            if default is None:
                self.bad(name, f"is required (one of: {', '.join(allowed)})")
                return ""
            return default
        v = self.data[name]
        if not isinstance(v, str) or v not in allowed:
            self.bad(name, f"must be one of: {', '.join(allowed)}")
            return ""
        return v

    def text(self, name: str, default: str, max_len: int = 100) -> str:
        if not self.present(name):
            return default
        v = self.data[name]
        if not isinstance(v, str) or not v.strip() or len(v) > max_len:
            self.bad(name, f"must be a non-empty string of at most {max_len} characters")
            return default
        return v.strip()

    def array(self, name: str, max_items: int = MAX_ITEMS, non_empty: bool = False) -> list[Any]:
        if not self.present(name):
            self.bad(name, "is required (a JSON array)")
            return []
        v = self.data[name]
        if isinstance(v, str):  # a form field, or a JSON body that sends the array as text
            try:
                v = jsonx.loads_strict(v)
            except (ValueError, RecursionError) as exc:
                self.bad(name, f"is not valid JSON: {exc}")
                return []
        if not isinstance(v, list):
            self.bad(name, "must be a JSON array")
            return []
        if non_empty and not v:
            self.bad(name, "must be a non-empty JSON array")
        if len(v) > max_items:
            self.bad(name, f"must have at most {max_items} items")
            return []
        return v

    def done(self) -> None:
        if self.details:
            raise ValidationFailed(self.details)


def _model_names(request: web.Request) -> tuple[str, ...]:
    return tuple(config_of(request).models)


def _quote_params(f: Fields, models: tuple[str, ...], policy: pricing.PricingPolicy,
                  with_segment: bool = True) -> dict[str, Any]:
    params = {"model": f.choice("model", models),
              "complexity": f.choice("complexity", tuple(policy.complexity_markup)),
              "estimated_input": f.integer("estimated_input"),
              "estimated_output": f.integer("estimated_output")}
    if with_segment:
        params["segment"] = f.choice("segment", tuple(policy.segment_adjustments), default=policy.default_segment)
    return params


def _quote_request(f: Fields, models: tuple[str, ...], policy: pricing.PricingPolicy,
                   delivery: str | None = None) -> QuoteRequest:
    """One quote's fields as a QuoteRequest (``delivery`` given: the request's delivery type
    applies; else the item's own ``delivery_type``).  The fields are left open for ``done()``."""
    p = _quote_params(f, models, policy)
    if delivery is None:
        delivery = f.choice("delivery_type", tuple(policy.margin_thresholds), default=policy.default_delivery_type)
    return QuoteRequest(p["model"], p["complexity"], p["segment"], p["estimated_input"], p["estimated_output"],
                        delivery, segment_given=f.present("segment"))


def _items(f: Fields, name: str, rows: list[Any]) -> Iterator[Fields]:
    """Each object item as Fields (problems named ``name[i].field``), in order."""
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            f.bad(f"{name}[{i}]", "must be a JSON object")
            continue
        item = Fields(row, False, f"{name}[{i}].")
        item.details = f.details  # one list: every problem in one answer
        yield item


# ------------------------------------------------------------------------------ calculators

def _service(request: web.Request) -> PricingService:
    return request.app[SERVICES].pricing


async def pricing_quote(request: web.Request) -> web.Response:
    """A quote with its margin guardrail (recorded in the pricing history)."""
    f, req = await _read_quote(request)
    f.done()
    r = await _service(request).record_quote(req, key_id_of(request))
    return json_response({"success": True, "quote_id": r.quote_id, "quote": r.quote, "guardrail_check": r.check},
                         headers=_deprecation(req))


def _deprecation(req: QuoteRequest) -> dict[str, str] | None:
    return DEPRECATION if not req.segment_given else None


async def _read_quote(request: web.Request) -> tuple[Fields, QuoteRequest]:
    """One quote request's fields (quote and decision share them).  The fields are left open:
    the caller reads its own, then calls ``done()``."""
    data, form = await read_fields(request)
    f = Fields(data, form)
    return f, _quote_request(f, _model_names(request), policy_of(request))


async def pricing_decision(request: web.Request) -> web.Response:
    """An approve/escalate decision packet for one quote; an escalation opens a deal-desk exception.

    Optional ``variant`` (control|test) and ``experiment`` tag the decision for experiment summaries.
    """
    f, quote = await _read_quote(request)
    req = DecisionRequest(quote, approver=f.text("approver", "ops-auto"),
                          variant=f.choice("variant", VARIANTS, default="") or None,
                          experiment=f.text("experiment", "", max_len=64) or None)
    f.done()
    r = await _service(request).decide(req, key_id_of(request))
    out = {"success": True, "quote_id": r.quote_id, "decision": r.decision, "quote": r.quote,
           "guardrail_check": r.check}
    if r.exception_id is not None:
        out["exception_id"] = r.exception_id
    return json_response(out, headers=_deprecation(quote))


async def pricing_batch_quotes(request: web.Request) -> web.Response:
    """A quote per customer segment, with the comparison."""
    policy = policy_of(request)
    data, form = await read_fields(request)
    f = Fields(data, form)
    p = _quote_params(f, _model_names(request), policy, with_segment=False)
    delivery = f.choice("delivery_type", tuple(policy.margin_thresholds), default=policy.default_delivery_type)
    f.done()
    out = pricing.batch_quotes(p["model"], config_of(request).models[p["model"]], p["complexity"], delivery,
                               p["estimated_input"], p["estimated_output"], policy)
    return json_response({"success": True, "input_params": {**p, "delivery_type": delivery}, **out})


async def pricing_scenario(request: web.Request) -> web.Response:
    """Quotes for several scenarios and their compliance rollup."""
    policy = policy_of(request)
    data, form = await read_fields(request)
    f = Fields(data, form)
    delivery = f.choice("delivery_type", tuple(policy.margin_thresholds), default=policy.default_delivery_type)
    rows = f.array("scenarios", MAX_SCENARIOS, non_empty=True)
    models = _model_names(request)
    reqs = [_quote_request(item, models, policy, delivery) for item in _items(f, "scenarios", rows)]
    f.done()
    results = []
    for req in reqs:
        q, check = _service(request).quote(req)
        results.append({"quote": q, "guardrail_check": check})
    headers = DEPRECATION if not all(req.segment_given for req in reqs) else None
    return json_response({"success": True, "delivery_type": delivery, **pricing.rollup(results, policy),
                          "results": results}, headers=headers)


async def pricing_portfolio_alert(request: web.Request) -> web.Response:
    """A portfolio compliance rollup and its alert."""
    policy = policy_of(request)
    data, form = await read_fields(request)
    f = Fields(data, form)
    n = f.integer("scenario_count", 0, MAX_ITEMS)
    c = f.integer("compliant_count", 0, MAX_ITEMS)
    margin = f.number("average_margin_pct", -1_000_000, 100)
    if c > n and not f.details:
        f.bad("compliant_count", "must not exceed scenario_count")
    f.done()
    summary = pricing.portfolio_summary(n, c, margin, policy)
    summary.pop("needs_escalation")  # not part of the API reference's portfolio_summary
    return json_response({"success": True, "portfolio_summary": summary,
                          "portfolio_alert": pricing.portfolio_alert({**summary}, policy)})


def _decision_rows(f: Fields, rows: list[Any], variant: bool = False) -> list[dict[str, Any]]:
    out = []
    for item in _items(f, "quotes", rows):
        row: dict[str, Any] = {}
        if variant:
            row["variant"] = item.choice("variant", VARIANTS)
        row["decision_status"] = item.choice("decision_status", ("approved", "escalated"))
        row["gross_margin_pct"] = item.number("gross_margin_pct", -1_000_000, 100)
        if not variant:
            for flag in ("exception_created", "exception_closed"):
                v = item.data.get(flag)
                if v is not None and not isinstance(v, bool):
                    item.bad(flag, "must be true or false")
                row[flag] = v is True
        out.append(row)
    return out


async def pricing_weekly_metrics(request: web.Request) -> web.Response:
    """Weekly metrics over quote decisions."""
    data, form = await read_fields(request)
    f = Fields(data, form)
    rows = _decision_rows(f, f.array("quotes"))
    f.done()
    return json_response({"success": True, "weekly_metrics": pricing.weekly_metrics(rows)})


async def pricing_weekly_comparison(request: web.Request) -> web.Response:
    """Week-over-week changes and significant shifts."""
    data, form = await read_fields(request)
    f = Fields(data, form)
    weeks = {}
    for week in ("current", "prev"):
        weeks[week] = {"total_quotes": f.integer(f"{week}_total_quotes", 0, 1_000_000_000),
                       "approval_rate": f.number(f"{week}_approval_rate", 0.0, 1.0),
                       "avg_margin_pct": f.number(f"{week}_avg_margin_pct", -1_000_000, 100),
                       "exceptions_created": f.integer(f"{week}_exceptions_created", 0, 1_000_000_000)}
    f.done()
    return json_response({"success": True, **pricing.weekly_comparison(weeks["current"], weeks["prev"])})


async def pricing_experiment_summary(request: web.Request) -> web.Response:
    """Control versus test, with a rollout recommendation."""
    data, form = await read_fields(request)
    f = Fields(data, form)
    rows = _decision_rows(f, f.array("quotes"), variant=True)
    f.done()
    return json_response({"success": True, **pricing.experiment_summary(rows)})


async def pricing_exception_alert(request: web.Request) -> web.Response:
    """Exception-aging risk and its alert."""
    data, form = await read_fields(request)
    f = Fields(data, form)
    n = f.integer("open_exceptions", 0, 1_000_000)
    oldest = f.integer("oldest_days", 0, 100_000)
    at_risk = f.integer("at_risk_count", 0, 1_000_000)
    if at_risk > n and not f.details:
        f.bad("at_risk_count", "must not exceed open_exceptions")
    f.done()
    return json_response({"success": True, **pricing.exception_aging(n, oldest, at_risk)})


# ------------------------------------------------------------------------------ from the recorded history
# GET forms of the rollups above: the same functions over what /pricing/quote and /pricing/decision
# recorded, over the last ``days`` (default 7; the comparison sets the window before it beside it).

def _history_query(request: web.Request, default_days: int) -> tuple[Fields, int]:
    f = Fields(query_params(request), True)
    return f, f.integer("days", 1, MAX_DAYS, default=default_days)


def _period(window: Window, days: int) -> dict[str, Any]:
    def iso(t: float) -> str:
        return pricing.iso_now(datetime.fromtimestamp(t, timezone.utc))
    return {"source": "history", "period": {"from": iso(window.start), "to": iso(window.end), "days": days}}


def _history(request: web.Request) -> PricingHistory:
    return request.app[SERVICES].pricing_history


async def pricing_weekly_metrics_history(request: web.Request) -> web.Response:
    """Weekly metrics over the recorded decisions of the last ``days`` (default 7)."""
    f, days = _history_query(request, 7)
    f.done()
    history = _history(request)
    window = Window.last_days(history.clock(), days)
    [metrics] = await history.weekly_metrics(window)
    return json_response({"success": True, "weekly_metrics": metrics,
                          **_period(window, days)})


async def pricing_weekly_comparison_history(request: web.Request) -> web.Response:
    """The last ``days`` (default 7) of recorded decisions against the ``days`` before them."""
    f, days = _history_query(request, 7)
    f.done()
    history = _history(request)
    now = history.clock()
    previous_window = Window.last_days(now, days, back=1)
    current, previous = await history.weekly_metrics(Window.last_days(now, days), previous_window)
    return json_response({"success": True, **pricing.weekly_comparison(current, previous),
                          "current": current, "previous": previous,
                          **_period(Window(previous_window.start, now), days * 2)})


async def pricing_experiment_summary_history(request: web.Request) -> web.Response:
    """Control versus test over the recorded decisions tagged with a variant (``experiment`` filters
    by the experiment label; ``days`` defaults to 30)."""
    f, days = _history_query(request, 30)
    experiment = f.text("experiment", "", max_len=64) or None
    f.done()
    return json_response({"success": True, **await experiment_from_history(request, experiment, days)})


async def experiment_from_history(request: web.Request, experiment: str | None, days: int) -> dict[str, Any]:
    """The experiment summary over the decisions of the last ``days`` tagged with a variant (and
    with ``experiment``, when given), with the label and the period it covers."""
    history = _history(request)
    window = Window.last_days(history.clock(), days)
    rows = await history.decisions(window, experiment=experiment, variants_only=True)
    return {**pricing.experiment_summary(rows), "experiment": experiment, **_period(window, days)}


async def pricing_exception_alert_history(request: web.Request) -> web.Response:
    """Exception-aging risk and its alert from the open deal-desk exceptions."""
    Fields(query_params(request), True).done()
    ages = await _history(request).open_exception_ages()
    return json_response({"success": True, **pricing.exception_aging_from_ages(ages), "source": "history"})


async def pricing_exceptions(request: web.Request) -> web.Response:
    """Deal-desk exceptions (``status`` open, closed or all; oldest open first)."""
    f = Fields(query_params(request), True)
    status = f.choice("status", ("open", "closed", "all"), default="open")
    limit = f.integer("limit", 1, 1000, default=100)
    f.done()
    rows = await _history(request).exceptions(status, limit)
    return json_response({"success": True, "exceptions": rows, "count": len(rows), "status": status})


async def pricing_close_exception(request: web.Request) -> web.Response:
    """Close an open exception with its resolution (approved, rejected or withdrawn)."""
    data, form = await read_fields(request)
    f = Fields(data, form)
    resolution = f.choice("resolution", RESOLUTIONS)
    closed_by = f.text("closed_by", key_id_of(request) or "ops-auto")
    f.done()
    exception = await _history(request).close_exception(request.match_info["exception_id"], resolution, closed_by)
    return json_response({"success": True, "exception": exception})


# ------------------------------------------------------------------------------ status, health, report

async def pricing_status(request: web.Request) -> web.Response:
    """The pricing policy, example quotes and a guardrail check."""
    return json_response({"success": True, **_service(request).status()})


async def pricing_health(request: web.Request) -> web.Response:
    """Today's pricing health: cost, budget use, cost per task, by model."""
    return json_response({"success": True, "health": await _service(request).health()})


async def pricing_report(request: web.Request) -> web.Response:
    """The daily pricing report."""
    return json_response({"success": True, "report": await _service(request).report()})


# ------------------------------------------------------------------------------ webhooks

def _is_pricing(hook: Any) -> bool:
    return hook.agent_id is None and bool(hook.events) and all(e.startswith("pricing.") for e in hook.events)


def _view(hook: Any) -> dict[str, Any]:
    v = hook.view()
    return {"webhook_id": hook.webhook_id, "url": hook.url, "events": list(hook.events),
            "created_at": v["created_at"], "status": hook.status}


async def pricing_create_webhook(request: web.Request) -> web.Response:
    """Register a webhook for pricing events."""
    data, form = await read_fields(request)
    events = data.get("events", ["pricing.quote_generated"])
    if form and isinstance(events, str):  # a form field: JSON text or a comma-separated list
        try:
            events = json.loads(events)
        except ValueError:
            events = [e.strip() for e in events.split(",") if e.strip()]
    if not isinstance(events, list) or not events or any(e not in PRICING_EVENTS for e in events):
        raise ValidationFailed([{"field": "events",
                                 "message": f"events must be a non-empty list of: {', '.join(PRICING_EVENTS)}"}])
    body = {"url": data.get("url"), "events": events}
    if data.get("secret") is not None:
        body["secret"] = data["secret"]
    services = request.app[SERVICES]
    req = parse_new(body, services.webhooks.sink_kinds())
    hook, generated = await services.webhooks.create(req, key_id_of(request),
                                                       writes_all=viewer(request).writes_all)
    services.audit.record("config.change", actor(request), resource_type="webhook", resource_id=hook.webhook_id,
                          details={"action": "create", "url": hook.url, "events": list(hook.events)})
    out: dict[str, Any] = {"success": True, "webhook_id": hook.webhook_id, "url": hook.url,
                           "events": list(hook.events), "message": "Pricing webhook registered"}
    headers = None
    if generated is not None:
        out["secret"] = generated
        headers = {"Cache-Control": "no-store"}
    return json_response(out, status=201, headers=headers)


async def pricing_list_webhooks(request: web.Request) -> web.Response:
    """The webhooks registered for pricing events."""
    hooks = [_view(h) for h in request.app[SERVICES].webhooks.hooks.values() if _is_pricing(h)]
    return json_response({"success": True, "webhooks": hooks, "count": len(hooks)})


async def pricing_delete_webhook(request: web.Request) -> web.Response:
    """Remove a pricing webhook."""
    webhook_id = request.match_info["webhook_id"]
    services = request.app[SERVICES]
    hook = services.webhooks.hooks.get(webhook_id)
    if hook is None or not _is_pricing(hook):
        raise NotFound(f"Pricing webhook '{webhook_id}' not found")
    await services.webhooks.delete(webhook_id, viewer(request))
    services.audit.record("config.change", actor(request), resource_type="webhook", resource_id=webhook_id,
                          details={"action": "delete"})
    return json_response({"success": True, "message": f"Pricing webhook {webhook_id} removed"})

