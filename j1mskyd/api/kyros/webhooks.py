"""Kyros webhooks (the Kyros document's "Webhooks"): the native webhook service's operations
(api/webhooks.py), in the Kyros envelope.  ``status`` is the native one (active | paused)."""

from __future__ import annotations

from aiohttp import web

from .. import webhooks as native
from .envelope import ok

__all__ = ["create_webhook", "delete_webhook", "get_webhook", "list_webhooks", "test_webhook", "update_webhook"]


async def create_webhook(request: web.Request) -> web.Response:
    """Register a webhook (a generated secret is shown once)"""
    data, headers = await native.created(request)
    return ok(request, data, "Webhook created", 201, headers)


async def list_webhooks(request: web.Request) -> web.Response:
    """The key's webhooks"""
    hooks = native.listed(request)
    return ok(request, {"webhooks": hooks, "total": len(hooks)})


async def get_webhook(request: web.Request) -> web.Response:
    """One webhook"""
    return ok(request, native.fetched(request))


async def update_webhook(request: web.Request) -> web.Response:
    """Change a webhook's events, status (active | paused), url, secret or description"""
    return ok(request, await native.updated(request), "Webhook updated")


async def delete_webhook(request: web.Request) -> web.Response:
    """Delete a webhook"""
    return ok(request, {"id": await native.deleted(request)}, "Webhook deleted")


async def test_webhook(request: web.Request) -> web.Response:
    """Send a webhook.test event to this webhook"""
    return ok(request, await native.tested(request), "Test delivery queued", 202)
