"""Webhook endpoints (the J1MSKY API reference and the Kyros document): CRUD, test, deliveries, redeliver.

Each acts as the request's viewer (api.common.viewer): a key reaches its own webhooks only."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..webhook_request import parse_change, parse_new
from ..webhooks import WebhookService
from .common import SERVICES, actor, json_response, key_id_of, query_params, read_json, viewer


def _hooks(request: web.Request) -> WebhookService:
    return request.app[SERVICES].webhooks


def _audit(request: web.Request, action: str, webhook_id: str, details: dict | None = None) -> None:
    request.app[SERVICES].audit.record("config.change", actor(request), resource_type="webhook",
                                       resource_id=webhook_id, details={"action": action, **(details or {})})


# The data of each operation, shared by the native handlers below and the Kyros dialect's
# (api/kyros/webhooks.py), which wraps the same data in its envelope.

async def created(request: web.Request) -> tuple[dict[str, Any], dict[str, str] | None]:
    """Register a webhook: its view (with a generated secret, shown once) and the answer's headers."""
    hooks = _hooks(request)
    req = parse_new(await read_json(request), hooks.sink_kinds())
    hook, generated = await hooks.create(req, key_id_of(request), writes_all=viewer(request).writes_all)
    _audit(request, "create", hook.webhook_id, {"url": hook.url, "events": list(hook.events), "status": hook.status,
                                                "headers": [name for name, _ in hook.headers]})  # names only
    data = hook.view()
    headers = None
    if generated is not None:  # shown once, like an API key's secret
        data["secret"] = generated
        headers = {"Cache-Control": "no-store"}
    return data, headers


def listed(request: web.Request) -> list[dict[str, Any]]:
    return [h.view() for h in _hooks(request).listed(viewer(request))]


def fetched(request: web.Request) -> dict[str, Any]:
    return _hooks(request).get(request.match_info["webhook_id"], viewer(request)).view()  # type: ignore[no-any-return]


async def updated(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    hooks = _hooks(request)
    seen = viewer(request)
    hook = hooks.get_to_change(request.match_info["webhook_id"], seen)  # a 404 (403) before the body is judged
    hook = await hooks.update(hook.webhook_id, parse_change(body, hook.sink), seen)
    _audit(request, "update", hook.webhook_id, {"events": list(hook.events), "status": hook.status})
    return hook.view()  # type: ignore[no-any-return]


async def deleted(request: web.Request) -> str:
    webhook_id = request.match_info["webhook_id"]
    await _hooks(request).delete(webhook_id, viewer(request))
    _audit(request, "delete", webhook_id)
    return webhook_id


async def tested(request: web.Request) -> dict[str, Any]:
    return await _hooks(request).test(request.match_info["webhook_id"], viewer(request))


async def create_webhook(request: web.Request) -> web.Response:
    data, headers = await created(request)
    return json_response({"success": True, "data": data, **data}, status=201, headers=headers)


async def list_webhooks(request: web.Request) -> web.Response:
    hooks = listed(request)
    return json_response({"success": True, "data": hooks, "webhooks": hooks, "count": len(hooks)})


async def get_webhook(request: web.Request) -> web.Response:
    view = fetched(request)
    return json_response({"success": True, "data": view, **view})


async def update_webhook(request: web.Request) -> web.Response:
    view = await updated(request)
    return json_response({"success": True, "data": view, **view})


async def delete_webhook(request: web.Request) -> web.Response:
    webhook_id = await deleted(request)
    return json_response({"success": True, "message": "Webhook deleted", "webhook_id": webhook_id})


async def test_webhook(request: web.Request) -> web.Response:
    return json_response(await tested(request), status=202)


async def list_deliveries(request: web.Request) -> web.Response:
    return json_response(await _hooks(request).deliveries(request.match_info["webhook_id"], query_params(request),
                                                          viewer(request)))


async def redeliver(request: web.Request) -> web.Response:
    return json_response(await _hooks(request).redeliver(request.match_info["webhook_id"],
                                                         request.match_info["delivery_id"], viewer(request)),
                         status=202)
