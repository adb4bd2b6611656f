"""Helpers every handler uses: app keys, JSON in and out, the error envelope."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from aiohttp import web

from .. import jsonx
from ..audit import Actor
from ..config import Config
from ..reload import ConfigRef
from ..agent_record import ANONYMOUS
from ..keys import ADMIN
from ..local_access import LOCAL_ACTOR
from ..errors import ApiError, InvalidJson, ValidationFailed
from ..tenancy import Viewer

__all__ = ["API_KEY", "API_KEY_ID", "AWAITING_CREDENTIALS", "CLIENT_IP", "CLIENT_IP_TEXT", "CONFIG", "ERROR_TYPES",
           "LOCAL_CALLER", "METRICS", "REQUEST_ID", "SERVICES", "actor", "api_error_response", "app_key",
           "config_of", "error_response", "json_response", "query_params", "read_json", "read_json_object",
           "request_key", "usable", "viewer"]


def app_key(name: str) -> Any:
    """web.AppKey where it exists (aiohttp >= 3.9 warns on string keys), a string on 3.8."""
    return web.AppKey(name, object) if hasattr(web, "AppKey") else name


def request_key(name: str) -> Any:
    """web.RequestKey where it exists (newer aiohttp warns on string keys), a string before."""
    return web.RequestKey(name, object) if hasattr(web, "RequestKey") else name


CONFIG = app_key("j1msky.config")  # reload.ConfigRef: the configuration in force is its .current
SERVICES = app_key("j1msky.services")
METRICS = app_key("j1msky.metrics")  # metrics.Metrics: per-route counts and times
REQUEST_ID = request_key("j1msky.request_id")
CLIENT_IP = request_key("j1msky.client_ip")      # set by the IP guard
# The same address as text, set with it: formatting an address object (str) is ~8,500
# instructions, and every audit entry a request makes records it.
CLIENT_IP_TEXT = request_key("j1msky.client_ip_text")
API_KEY_ID = request_key("j1msky.api_key_id")    # set by auth (absent: anonymous)
API_KEY = request_key("j1msky.api_key")
# Set (True) by auth for a request served without a key as the local caller ([security]
# local_scopes, local_access.py): it acts as ``anonymous`` and sees only ownerless work.
LOCAL_CALLER = request_key("j1msky.local_caller")
# Set by the listener's connection guard (connguard.py): call it while a request waits for
# credentials sent inside its connection; call what it returns once they came.
AWAITING_CREDENTIALS = request_key("j1msky.awaiting_credentials")

ERROR_TYPES = {
    400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT", 410: "GONE", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE", 422: "UNPROCESSABLE",
    429: "RATE_LIMITED", 500: "INTERNAL_ERROR", 502: "BAD_GATEWAY", 503: "SERVICE_UNAVAILABLE",
}


def config_of(request: web.Request) -> Config:
    """The configuration in force.  A reload (reload.py) replaces it: read it per request,
    never keep it past one."""
    ref: ConfigRef = request.app[CONFIG]
    return ref.current


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    try:
        body = jsonx.dumps(data).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (e.g. echoed from a request's "\ud800"): escape it
        body = json.dumps(data, separators=(",", ":")).encode("ascii")
    return web.Response(body=body, status=status, headers=headers, content_type="application/json",
                        charset="utf-8")


def error_response(request: web.Request, status: int, message: str, *, type_: str | None = None,
                   extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> web.Response:
    error = {"code": status, "type": type_ or ERROR_TYPES.get(status, "ERROR"), "message": message,
             "request_id": request.get(REQUEST_ID)}
    if extra:
        error.update(extra)
    return json_response({"success": False, "error": error}, status=status, headers=headers)


def api_error_response(request: web.Request, exc: ApiError) -> web.Response:
    return error_response(request, exc.status, exc.message, type_=exc.type, extra=exc.extra, headers=exc.headers)


# JSON's "\ud800" to "\udfff" escapes: the only way a lone surrogate gets into a decoded body
# (UTF-8 cannot carry one), so only a body with one of these is searched.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or a 400 that says what is wrong with it.

    Text must be Unicode: a lone surrogate anywhere is a 400 VALIDATION_ERROR naming the
    field, before any handler can store or echo it (orjson refuses such a body outright).
    """
    raw = await request.read()
    if not raw.strip():
        raise InvalidJson("Request body is empty; send a JSON object")
    try:
        body = jsonx.loads_strict(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJson(f"Request body is not valid JSON: {exc}") from None
    except RecursionError:  # stdlib json on "[[[[...": deeper than the interpreter allows
        raise InvalidJson("Request body is not valid JSON: nested too deeply") from None
    if _SURROGATE_ESCAPE.search(raw):
        bad = jsonx.lone_surrogates(body)
        if bad:
            raise ValidationFailed([{"field": f, "message": f"{f} must be valid Unicode text (no lone surrogates)"}
                                    for f in bad])
    return body


async def read_json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object (400 otherwise); ``optional``: an empty body is ``{}``."""
    if optional and not (await request.read()).strip():
        return {}
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ValidationFailed([{"field": "body", "message": "Request body must be a JSON object"}])
    return body


def actor(request: web.Request) -> Actor:
    """Who made this request, for the audit log."""
    ip = request.get(CLIENT_IP_TEXT)
    # The local caller has no key; LOCAL_CALLER is asked only then (an absent key raises and
    # catches a KeyError inside Mapping.get: ~3,800 instructions, on every spawn).
    local = request.get(API_KEY) is None and request.get(LOCAL_CALLER)
    # Positional (api_key_id, ip_address, user_agent, request_id): 2,000 instructions fewer than by keyword.
    return Actor(LOCAL_ACTOR if local else request.get(API_KEY_ID), ip if ip is not None else request.remote,
                 request.headers.get("User-Agent"), request.get(REQUEST_ID))


def query_params(request: web.Request) -> dict[str, str]:
    """Query parameters as a plain dict (the last value wins for repeated keys)."""
    return {k: v for k, v in request.query.items()}


def viewer(request: web.Request) -> Viewer:
    """Whose work this request may see: its key's own, or everyone's for a key with admin:write
    or admin:read, and for every request while authentication is off (no key: anonymous).
    The local caller (no key, on loopback, [security] local_scopes) sees only ownerless work."""
    key = request.get(API_KEY)
    if key is None and request.get(LOCAL_CALLER):
        return Viewer(ANONYMOUS)
    if key is None:
        return Viewer(request.get(API_KEY_ID) or ANONYMOUS, sees_all=True, writes_all=True)
    family = request.app[SERVICES].keys.ring.family.get(key.key_id, ())
    return Viewer(key.key_id, sees_all=key.sees_all, writes_all=key.allows(ADMIN), family=family)


_V = TypeVar("_V")


def usable(request: web.Request, models: Mapping[str, _V]) -> dict[str, _V]:
    """The entries of ``models`` (by alias) that this request's key may use: a key with a
    ``models`` list sees only those in model lists, as its spawns may use only those."""
    key = request.get(API_KEY)
    return {name: m for name, m in models.items() if key is None or key.may_use(name)}
