"""Kyros models (the Kyros document's "Model Selection API"): the native catalogue (api/orchestrator.py),
in the Kyros envelope.  Prices are per 1K tokens, as the document's example shows them."""

from __future__ import annotations

from aiohttp import web

from .. import orchestrator as native
from .envelope import ok

__all__ = ["get_model", "list_models"]


async def list_models(request: web.Request) -> web.Response:
    """The models this key may use, with the default and escalation model"""
    return ok(request, await native.models_catalogue(request))


async def get_model(request: web.Request) -> web.Response:
    """One model: provider, capabilities, limits, pricing per 1K tokens, performance"""
    return ok(request, await native.model_detail(request, request.match_info["model_name"]))
