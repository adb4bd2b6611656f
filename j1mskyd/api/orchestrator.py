"""The orchestrator's view: status and budget-aware model recommendation; and the model
catalogue (GET /models, GET /models/{name}, POST /models/select).

The live state and the rules are in j1mskyd/orchestrator.py (the Orchestrator service); this
module reads requests into ModelRequest and shapes the answers.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import pricing
from ..config import ModelConfig
from ..errors import NotFound, ValidationFailed
from ..orchestrator import PRIORITIES, ModelRequest, Orchestrator
from .common import CONFIG, SERVICES, json_response, read_json_object, usable
from ..pricing_history import MAX_DAYS
from .pricing import MAX_TOKENS, Fields, experiment_from_history, read_fields

__all__ = ["cache_invalidate", "cache_status", "experiment_results", "get_model", "list_models", "model_detail",
           "models_catalogue", "orchestrator_status", "recommend_model", "select_model"]


def _service(request: web.Request) -> Orchestrator:
    return request.app[SERVICES].orchestrator


async def _read_model_request(request: web.Request, *, with_task_details: bool) -> ModelRequest:
    """A recommend/select body as a ModelRequest (recommend also takes complexity and priority)."""
    data, form = await read_fields(request)
    f = Fields(data, form)
    task_type = f.text("task_type", "general", max_len=64)
    complexity, priority = "medium", "normal"
    if with_task_details:
        complexity = f.choice("complexity", pricing.COMPLEXITIES, default="medium")
        priority = f.choice("priority", PRIORITIES, default="normal")
    tokens = f.integer("estimated_tokens", 0, MAX_TOKENS, default=1000)
    f.done()
    return ModelRequest(task_type, tokens, complexity, priority)


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


async def experiment_results(request: web.Request) -> web.Response:
    """An A/B experiment's results by its label (the API reference's cookbook, Recipe 5): the
    pricing experiment summary (per-variant count, approval rate and average margin, and the
    roll_out / discard / inconclusive recommendation of the business rules) over the recorded
    decisions tagged with ``experiment`` = ``experiment_id`` (POST /pricing/decision) in the
    last ``days`` (default: the whole kept history).  An experiment with no such decision is a
    404: there are no results to analyse."""
    data, form = await read_fields(request)
    f = Fields(data, form)
    if not f.present("experiment_id"):
        f.bad("experiment_id", "is required (the experiment label given to POST /pricing/decision)")
    experiment = f.text("experiment_id", "", max_len=64)
    days = f.integer("days", 1, MAX_DAYS, default=MAX_DAYS)
    f.done()
    results = await experiment_from_history(request, experiment, days)
    if results["status"] == "no_data":
        raise NotFound(f"No pricing decisions with a variant are recorded for experiment '{experiment}' in the "
                       f"last {days} days: tag them with POST /pricing/decision (experiment, variant)")
    del results["experiment"]  # the request's name for it
    return json_response({"success": True, "experiment_id": experiment, **results})


async def recommend_model(request: web.Request) -> web.Response:
    """A model for a task within the daily budget."""
    req = await _read_model_request(request, with_task_details=True)
    r = _service(request).recommend(req.task_type, req.estimated_tokens)
    price = request.app[CONFIG].models.get(r.model)
    snap = r.budget
    return json_response({"recommended_model": r.model, "budget_available": r.fits,
                          "daily_budget": snap["daily_budget"], "today_spend": round(float(snap["today_spend"]), 4),
                          "budget_remaining": snap["budget_remaining"], "task_type": req.task_type,
                          "complexity": req.complexity, "priority": req.priority,
                          "estimated_tokens": req.estimated_tokens,
                          "estimated_cost": round(pricing.blended_cost(price, req.estimated_tokens), 4)
                          if price else None})


async def orchestrator_status(request: web.Request) -> web.Response:
    """Live budget, usage, provider and pricing state for the orchestrator."""
    return json_response(await _service(request).status())


# ------------------------------------------------------------------------------ models (Kyros document)

def _capabilities(alias: str) -> list[str]:
    return [task for task, prefs in pricing.TASK_PREFERENCES.items() if alias in prefs]


def _model_view(request: web.Request, alias: str, full: bool) -> dict[str, Any]:
    config = request.app[CONFIG]
    m = config.models[alias]
    caps = _capabilities(alias)
    view: dict[str, Any] = {"name": alias, "provider": m.provider, "upstream_model": m.upstream,
                            "status": "available" if _service(request).available(alias) else "unavailable",
                            "recommended_usage": caps[0] if caps else "general_purpose"}
    if full:
        provider = config.providers.get(m.provider)
        view.update({
            "capabilities": caps, "fallback_model": m.fallback,
            "limits": {"max_tokens": m.max_tokens,
                       "requests_per_hour": provider.hourly_limit if provider is not None else None},
            "pricing": _pricing(m)})
    return view


def _pricing(m: ModelConfig) -> dict[str, Any]:
    """A model's prices (ModelConfig), as GET /models/{name} and ?include=pricing show them."""
    return {"input_tokens": m.input_per_1k, "output_tokens": m.output_per_1k,
            "blended": m.blended_per_1k, "per": "1k tokens", "currency": "USD"}


_INCLUDES = ("pricing", "performance")  # GET /models?include=: what each model adds to its entry


def _includes(request: web.Request) -> set[str]:
    """``?include=pricing,performance``: the extras the caller asked for (400 for others)."""
    asked = {part.strip() for part in request.query.get("include", "").split(",") if part.strip()}
    unknown = sorted(asked - set(_INCLUDES))
    if unknown:
        raise ValidationFailed([{"field": "include",
                                 "message": f"Cannot include {', '.join(unknown)} (use {', '.join(_INCLUDES)})"}])
    return asked


async def list_models(request: web.Request) -> web.Response:
    """The configured models the key may use (all of them, for a key without a models list),
    with their prices and live performance when asked for, and the teams the key may use."""
    return json_response({"success": True, "data": await models_catalogue(request)})


async def models_catalogue(request: web.Request) -> dict[str, Any]:
    """GET /models' data (also the Kyros dialect's)."""
    include = _includes(request)
    aliases = usable(request, request.app[CONFIG].models)
    models = [_model_view(request, alias, False) for alias in aliases]
    for view in models:
        if "pricing" in include:
            view["pricing"] = _pricing(request.app[CONFIG].models[view["name"]])
        if "performance" in include:
            view["performance"] = await _service(request).performance(view["name"])
    teams = [{"id": t.id, "name": t.name, "members": list(t.members), "specialty": list(t.specialty),
              "status": t.status} for t in usable(request, request.app[CONFIG].teams).values()]
    first = next(iter(aliases), None)  # apart: mypy 1.0 mistypes next(..., None) in a conditional
    data = {"models": models, "default_model": pricing.DEFAULT_MODEL if pricing.DEFAULT_MODEL in aliases
            else first,
            "escalation_model": "opus" if "opus" in aliases else None, "teams": teams}
    return data


async def get_model(request: web.Request) -> web.Response:
    """One model: provider, limits, pricing, capabilities, live performance."""
    return json_response({"success": True, "data": await model_detail(request, request.match_info["name"])})


async def model_detail(request: web.Request, name: str) -> dict[str, Any]:
    """GET /models/{name}'s data (also the Kyros dialect's); a model the key may not use is a 404."""
    if name not in usable(request, request.app[CONFIG].models):  # another key's model: as unknown
        raise NotFound(f"Model '{name}' not found")
    view = _model_view(request, name, True)
    view["performance"] = await _service(request).performance(name)
    return view


async def select_model(request: web.Request) -> web.Response:
    """A model for a task (budget-aware)."""
    req = await _read_model_request(request, with_task_details=False)
    task_type, tokens = req.task_type, req.estimated_tokens
    r = _service(request).recommend(task_type, tokens)
    model, fits, snap = r.model, r.fits, r.budget
    m = request.app[CONFIG].models.get(model)
    preferred = [p for p in pricing.TASK_PREFERENCES.get(task_type, (pricing.DEFAULT_MODEL,))]
    return json_response({"success": True, "data": {
        "selected_model": model, "fallback_model": m.fallback if m is not None else None,
        "estimated_cost": round(pricing.blended_cost(m, tokens), 4) if m is not None else None,
        "budget_available": fits,
        "reasoning": {"task_type": task_type, "preferred_models": preferred, "estimated_tokens": tokens,
                      "budget_remaining": snap["budget_remaining"],
                      "rule": "first available preferred model; the cheapest that fits when over budget"}}})
