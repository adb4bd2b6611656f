"""Key management over HTTP (admin:write): create, list, revoke, rotate, rotate the webhook secret."""

from __future__ import annotations

from aiohttp import web

from ..errors import NotFound, ValidationFailed
from ..keys import KeyService
from .common import SERVICES, actor, json_response, read_json_object


def _keys(request: web.Request) -> KeyService:
    return request.app[SERVICES].keys


async def create_key(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    require_signature = body.get("require_signature", False)
    if not isinstance(require_signature, bool):
        raise ValidationFailed([{"field": "require_signature", "message": "require_signature must be true or false"}])
    new = await _keys(request).create(body.get("name"), body.get("scopes", ()), require_signature)  # KeyRefused: 400
    _audit(request, "create", new.key.key_id, {"name": new.key.name, "scopes": list(new.key.scopes)})
    # The one time the token and secrets are shown.
    return json_response({"success": True, **new.reveal()}, status=201, headers={"Cache-Control": "no-store"})


def _audit(request: web.Request, action: str, key_id: str, details: dict) -> None:
    request.app[SERVICES].audit.record("config.change", actor(request), severity="warning" if action == "revoke"
                                       else "info", resource_type="api_key", resource_id=key_id,
                                       details={"action": action, **details})


async def list_keys(request: web.Request) -> web.Response:
    service = _keys(request)
    now = service.clock()
    keys = [k.public(now) for k in service.ring.keys.values()]
    return json_response({"keys": keys, "count": len(keys)})


async def revoke_key(request: web.Request) -> web.Response:
    body = await read_json_object(request, optional=True)
    reason = body.get("reason", "revoked")
    if not isinstance(reason, str) or len(reason) > 200:
        raise ValidationFailed([{"field": "reason", "message": "reason must be a string of at most 200 characters"}])
    service = _keys(request)
    try:
        key = await service.revoke(request.match_info["key_id"], reason)
    except LookupError:
        raise NotFound(f"API key '{request.match_info['key_id']}' not found") from None
    _audit(request, "revoke", key.key_id, {"reason": reason})
    return json_response({"success": True, "message": "API key revoked", "key": key.public(service.clock())})


async def rotate_key(request: web.Request) -> web.Response:
    service = _keys(request)
    old_id = request.match_info["key_id"]
    try:
        new = await service.rotate(old_id)
    except LookupError:
        raise NotFound(f"API key '{old_id}' not found") from None
    old = service.get(old_id).public(service.clock())
    _audit(request, "rotate", old_id, {"new_key_id": new.key.key_id, "old_key_expires_at": old["expires_at"]})
    return json_response({"success": True, **new.reveal(), "replaces": old_id, "old_key_expires_at": old["expires_at"]},
                         status=201, headers={"Cache-Control": "no-store"})


async def rotate_webhook_secret(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    services = request.app[SERVICES]
    try:
        secret, resigned = await services.webhooks.rotate_key_secret(services.keys, key_id)
    except LookupError:
        raise NotFound(f"API key '{key_id}' not found") from None
    _audit(request, "rotate_webhook_secret", key_id, {"pending_webhooks_resigned": resigned})
    # The one time this secret is shown.
    return json_response({"success": True, "key_id": key_id, "webhook_secret": secret,
                          "pending_webhooks_resigned": resigned}, headers={"Cache-Control": "no-store"})
