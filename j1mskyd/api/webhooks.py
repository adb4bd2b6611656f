"""Webhook endpoints (the J1MSKY API reference and the Kyros document): CRUD, test, deliveries, redeliver.

Each acts as the request's viewer (api.common.viewer): a key reaches its own webhooks only."""

from __future__ import annotations

from aiohttp import web

from ..webhook_request import parse_change, parse_new
from ..webhooks import WebhookService
from .common import API_KEY_ID, SERVICES, actor, json_response, query_params, read_json, viewer


def _hooks(request: web.Request) -> WebhookService:
    return request.app[SERVICES].webhooks


def _audit(request: web.Request, action: str, webhook_id: str, details: dict | None = None) -> None:
    request.app[SERVICES].audit.record("config.change", actor(request), resource_type="webhook",
                                       resource_id=webhook_id, details={"action": action, **(details or {})})


async def create_webhook(request: web.Request) -> web.Response:
    hooks = _hooks(request)
    req = parse_new(await read_json(request), hooks.sink_kinds())
    hook, generated = await hooks.create(req, request.get(API_KEY_ID))
    _audit(request, "create", hook.webhook_id, {"url": hook.url, "events": list(hook.events), "status": hook.status,
                                                "headers": [name for name, _ in hook.headers]})  # names only
    data = hook.view()
    headers = None
    if generated is not None:  # shown once, like an API key's secret
        data["secret"] = generated
        headers = {"Cache-Control": "no-store"}
    return json_response({"success": True, "data": data, **data}, status=201, headers=headers)


async def list_webhooks(request: web.Request) -> web.Response:
    hooks = [h.view() for h in _hooks(request).listed(viewer(request))]
    return json_response({"success": True, "data": hooks, "webhooks": hooks, "count": len(hooks)})


async def get_webhook(request: web.Request) -> web.Response:
    view = _hooks(request).get(request.match_info["webhook_id"], viewer(request)).view()
    return json_response({"success": True, "data": view, **view})


async def update_webhook(request: web.Request) -> web.Response:
    body = await read_json(request)
    hooks = _hooks(request)
    seen = viewer(request)
    hook = hooks.get_to_change(request.match_info["webhook_id"], seen)  # a 404 (403) before the body is judged
    hook = await hooks.update(hook.webhook_id, parse_change(body, hook.sink), seen)
    _audit(request, "update", hook.webhook_id, {"events": list(hook.events), "status": hook.status})
    view = hook.view()
    return json_response({"success": True, "data": view, **view})


async def delete_webhook(request: web.Request) -> web.Response:
    webhook_id = request.match_info["webhook_id"]
    await _hooks(request).delete(webhook_id, viewer(request))
    _audit(request, "delete", webhook_id)
    return json_response({"success": True, "message": "Webhook deleted", "webhook_id": webhook_id})


async def test_webhook(request: web.Request) -> web.Response:
    return json_response(await _hooks(request).test(request.match_info["webhook_id"], viewer(request)), status=202)


async def list_deliveries(request: web.Request) -> web.Response:
    return json_response(await _hooks(request).deliveries(request.match_info["webhook_id"], query_params(request),
                                                          viewer(request)))


async def redeliver(request: web.Request) -> web.Response:
    return json_response(await _hooks(request).redeliver(request.match_info["webhook_id"],
                                                         request.match_info["delivery_id"], viewer(request)),
                         status=202)
