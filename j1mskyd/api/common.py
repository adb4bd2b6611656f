"""Helpers every handler uses: app keys, JSON in and out, the error envelope."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

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
from .dashboard import SECURITY_HEADERS

if TYPE_CHECKING:
    from ..ratelimit import Decision
    from .route_table import Route

__all__ = ["AWAITING_CREDENTIALS", "CONFIG", "ERROR_TYPES", "METRICS", "PASS", "SERVICES", "Pass", "actor",
           "actor_of", "api_error_response", "app_key", "client_address", "config_of", "error_response", "is_local", "json_response",
           "key_id_of", "key_of", "pass_of", "query_params", "read_json", "read_json_object", "request_id_of",
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
PASS = request_key("j1msky.pass")  # the request's Pass (below): what the pipeline found out about it
# Set by the listener's connection guard (connguard.py): call it while a request waits for
# credentials sent inside its connection; call what it returns once they came.
AWAITING_CREDENTIALS = request_key("j1msky.awaiting_credentials")



class Pass:
    """One request's way through the pipeline (api/middleware.py), and what it found out about
    the request, which handlers read through the accessors below (key_of, key_id_of, ...).

    The request holds one Pass (request[PASS]) instead of six request keys: each
    request.__setitem__ and request.get() is a Python call of aiohttp's (a get goes through
    Mapping.get, a miss raises and catches a KeyError): six of each were ~16,600 instructions
    a request (callgrind, aiohttp 3.14), the Pass's attributes a few hundred.

    ``record`` is the Pass that holds the request's facts: the Pass itself, except for the
    checks run again inside an open connection (a WebSocket's auth message), whose own Pass
    counts its own key and decision but records into the request's, as the request keys did.
    """

    __slots__ = ("route", "app", "record", "request_id", "addr", "ip", "key", "key_id", "caller_id", "local",
                 "decision")

    def __init__(self, route: Route | None, app: web.Application | None, record: Pass | None = None) -> None:
        self.route: Any = route
        self.app: Any = app  # None only in an empty Pass (pass_of)
        self.record: Pass = self if record is None else record
        self.request_id: str | None = None
        self.addr: Any = None  # the client's address (ip_address), once the IP guard resolved it
        self.ip: str | None = None  # the same as text: formatting an address is ~8,500 instructions
        self.key: Any = None  # the authenticated key (None: no key, or authentication off)
        self.key_id: str = ANONYMOUS  # whom the rate limits count
        self.caller_id: str | None = None  # the key id auth set (the local caller: anonymous; else None)
        # True for a request served without a key as the local caller ([security] local_scopes,
        # local_access.py): it acts as ``anonymous`` and sees only ownerless work.
        self.local = False
        self.decision: Decision | None = None


def pass_of(request: web.Request) -> Pass:
    """The request's Pass (a request the pipeline did not see, e.g. one the listener refuses
    before any app has it: an empty one)."""
    try:
        p: Pass = request[PASS]
        return p
    except KeyError:
        return Pass(None, None)


def key_of(request: web.Request) -> Any:
    """The request's API key (None: none, or authentication off)."""
    return pass_of(request).record.key


def key_id_of(request: web.Request) -> str | None:
    """The key id auth found (``anonymous`` for the local caller; None when it found none)."""
    return pass_of(request).record.caller_id


def client_address(request: web.Request) -> Any:
    """The client's address as the IP guard resolved it (proxies per config), or None."""
    return pass_of(request).record.addr


def request_id_of(request: web.Request) -> str | None:
    return pass_of(request).record.request_id


def is_local(request: web.Request) -> bool:
    """Served without a key as the local caller ([security] local_scopes)?"""
    return pass_of(request).record.local


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
             "request_id": request_id_of(request)}
    if extra:
        error.update(extra)
    path = request.path
    if path == "/" or path.startswith("/static/"):  # the dashboard's: every answer there carries them
        headers = {**SECURITY_HEADERS, **(headers or {})}
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
    except jsonx.TooManyDigits as exc:  # valid JSON, but a number Python will not convert
        raise InvalidJson(f"Request body cannot be read: {exc}") from None
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
    return actor_of(request, pass_of(request).record)


def actor_of(request: web.Request, p: Pass) -> Actor:
    """:func:`actor` from the request's record (a handler that holds it already)."""
    ip = p.ip
    # Positional (api_key_id, ip_address, user_agent, request_id): 2,000 instructions fewer than by keyword.
    return Actor(LOCAL_ACTOR if p.key is None and p.local else p.caller_id, ip if ip is not None else request.remote,
                 request.headers.get("User-Agent"), p.request_id)


def query_params(request: web.Request) -> dict[str, str]:
    """Query parameters as a plain dict (the last value wins for repeated keys)."""
    return {k: v for k, v in request.query.items()}


def viewer(request: web.Request) -> Viewer:
    """Whose work this request may see: its key's own, or everyone's for a key with admin:write
    or admin:read, and for every request while authentication is off (no key: anonymous).
    The local caller (no key, on loopback, [security] local_scopes) sees only ownerless work."""
    p = pass_of(request).record
    key = p.key
    if key is None and p.local:
        return Viewer(ANONYMOUS)
    if key is None:
        return Viewer(p.caller_id or ANONYMOUS, sees_all=True, writes_all=True)
    family = request.app[SERVICES].keys.ring.family.get(key.key_id, ())
    return Viewer(key.key_id, sees_all=key.sees_all, writes_all=key.allows(ADMIN), family=family)


_V = TypeVar("_V")


def usable(request: web.Request, models: Mapping[str, _V]) -> dict[str, _V]:
    """The entries of ``models`` (by alias) that this request's key may use: a key with a
    ``models`` list sees only those in model lists, as its spawns may use only those."""
    key = key_of(request)
    return {name: m for name, m in models.items() if key is None or key.may_use(name)}
