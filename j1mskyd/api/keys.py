"""Key management over HTTP: create, list, change the limits of, revoke, rotate, rotate the
webhook secret (admin); a key's own record (GET /keys/me, GET /keys/{key_id} for its own id)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..agent_record import iso
from ..errors import NotFound, ValidationFailed
from ..key_request import LIMIT_FIELDS, model_names, parse_limits
from ..keys import SCOPES, ApiKey, KeyService
from .common import SERVICES, actor, config_of, json_response, key_of, read_json_object, viewer


def _keys(request: web.Request) -> KeyService:
    return request.app[SERVICES].keys


def _view(request: web.Request, key: ApiKey) -> dict[str, Any]:
    """The public view, with the key's own budget's standing (None: it has none)."""
    service = _keys(request)
    allowance = next(iter(service.allowances(key.key_id)), None)  # with its rotation family's spend
    budget = request.app[SERVICES].budget
    return {**key.public(service.clock()), "budget": None if allowance is None else budget.standing(allowance)}


async def create_key(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    require_signature = body.get("require_signature", False)
    if not isinstance(require_signature, bool):
        raise ValidationFailed([{"field": "require_signature", "message": "require_signature must be true or false"}])
    service = _keys(request)
    limits = parse_limits(body, known_models=model_names(config_of(request)), now=service.clock())
    new = await service.create(body.get("name"), body.get("scopes", ()), require_signature,
                               limits=limits)  # KeyRefused: 400
    _audit(request, "create", new.key.key_id, {"name": new.key.name, "scopes": list(new.key.scopes),
                                                **_limits_audit(new.key, LIMIT_FIELDS)})
    # The one time the token and secrets are shown.
    return json_response({"success": True, **new.reveal(), **_view(request, new.key)}, status=201,
                         headers={"Cache-Control": "no-store"})


def _limits_audit(key: ApiKey, fields: Any) -> dict[str, Any]:
    """The limits among ``fields`` as the audit log keeps them (metadata: its labels' names only)."""
    shown = key.limits_view() | {"expires_at": iso(key.expires_at)}
    out = {f: shown[f] for f in fields if f in shown and f != "metadata" and shown[f] is not None}
    if "metadata" in fields and key.metadata:
        out["metadata_keys"] = sorted(key.metadata)
    return out


def _audit(request: web.Request, action: str, key_id: str, details: dict) -> None:
    request.app[SERVICES].audit.record("config.change", actor(request), severity="warning" if action == "revoke"
                                       else "info", resource_type="api_key", resource_id=key_id,
                                       details={"action": action, **details})


async def list_keys(request: web.Request) -> web.Response:
    keys = [_view(request, k) for k in _keys(request).ring.keys.values()]
    return json_response({"keys": keys, "count": len(keys)})


def _not_found(key_id: str) -> NotFound:
    return NotFound(f"API key '{key_id}' not found")


async def get_key(request: web.Request) -> web.Response:
    """A key with its limits and budget: any key for admin:read, else the caller's own (another
    key's id answers 404, as an unknown one does: ids are not confirmed)."""
    key_id = request.match_info["key_id"]
    if not viewer(request).sees(key_id):
        raise _not_found(key_id)
    key = _keys(request).find(key_id)
    if key is None:
        raise _not_found(key_id)
    return json_response(_view(request, key))


async def get_own_key(request: web.Request) -> web.Response:
    """The calling key: scopes, limits, budget (authentication off: an anonymous caller that may
    do everything)."""
    key = key_of(request)
    if key is None:
        return json_response({"key_id": "anonymous", "name": "anonymous", "scopes": list(SCOPES), "status": "active",
                              "authentication": "off", "budget": None})
    return json_response(_view(request, key))


async def update_key(request: web.Request) -> web.Response:
    """PATCH: the limit fields given change (null clears one), the others stay."""
    key_id = request.match_info["key_id"]
    body = await read_json_object(request)
    unknown = sorted(set(body) - set(LIMIT_FIELDS))
    if unknown or not body:
        field = unknown[0] if unknown else "body"
        raise ValidationFailed([{"field": field, "message": f"send a JSON object of {', '.join(LIMIT_FIELDS)}"
                                 + (f"; '{field}' cannot be changed here" if unknown else "")}])
    service = _keys(request)
    key = service.find(key_id)
    if key is None:
        raise _not_found(key_id)
    limits = parse_limits(body, known_models=model_names(config_of(request)), now=service.clock(),
                          current=(key.max_budget, key.budget_duration))
    key, columns = await service.update(key_id, limits)  # KeyRefused (a revoked key): 400
    if columns:
        _audit(request, "update", key_id, {"fields": sorted(columns), **_limits_audit(key, columns)})
    return json_response({"success": True, "changed": sorted(c for c in columns if c != "budget_anchor"),
                          "key": _view(request, key)})


async def revoke_key(request: web.Request) -> web.Response:
    body = await read_json_object(request, optional=True)
    reason = body.get("reason", "revoked")
    if not isinstance(reason, str) or len(reason) > 200:
        raise ValidationFailed([{"field": "reason", "message": "reason must be a string of at most 200 characters"}])
    service = _keys(request)
    try:
        key = await service.revoke(request.match_info["key_id"], reason)
    except LookupError:
        raise _not_found(request.match_info["key_id"]) from None
    _audit(request, "revoke", key.key_id, {"reason": reason})
    return json_response({"success": True, "message": "API key revoked", "key": key.public(service.clock())})


async def rotate_key(request: web.Request) -> web.Response:
    service = _keys(request)
    old_id = request.match_info["key_id"]
    try:
        new = await service.rotate(old_id)
    except LookupError:
        raise _not_found(old_id) from None
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
        raise _not_found(key_id) from None
    _audit(request, "rotate_webhook_secret", key_id, {"pending_webhooks_resigned": resigned})
    # The one time this secret is shown.
    return json_response({"success": True, "key_id": key_id, "webhook_secret": secret,
                          "pending_webhooks_resigned": resigned}, headers={"Cache-Control": "no-store"})
