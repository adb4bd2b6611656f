"""The request pipeline: one aiohttp middleware running the steps in the order of STEPS.

    request id + metrics + rate-limit headers   (around everything, every response)
      error envelope                             (every failure becomes the one JSON body)
        body size limit -> IP guard -> auth (key, scope) -> request signature
        -> rate limit                            (checks: each refuses by raising)
          idempotency                            (around the handler)
            handler

One middleware instead of eight because aiohttp 3.8 rebuilds the middleware chain with
functools.partial for every request: on a Pi that overhead is a real share of a cheap
request.  The checks are plain functions, each testable alone; their order is stated
once, in CHECKS.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..agent import ANONYMOUS
from ..errors import (ApiError, BadRequest, Conflict, Forbidden, IpNotAllowed, PayloadTooLarge, RateLimited,
                      Unauthorized)
from ..idempotency import KEY_PATTERN, fingerprint
from ..signing import SignatureError, verify
from .common import (API_KEY, API_KEY_ID, CLIENT_IP, CONFIG, REQUEST_ID, SERVICES, actor, api_error_response,
                     app_key, error_response, request_key)

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
METRICS = app_key("j1msky.metrics")
LIMITER = app_key("j1msky.request_limiter")
ROUTE_CLASSES = app_key("j1msky.route_classes")
ROUTE_SCOPES = app_key("j1msky.route_scopes")
REPLAY_GUARD = app_key("j1msky.replay_guard")
RATE_DECISION = request_key("j1msky.rate_decision")
PUBLIC = "public"  # the scope of routes open without a key

# Request ids: a random per-process prefix and a counter (unique, and no syscall per request).
_ID_PREFIX = "req_" + os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)
_ROUTE_NAMES: dict[tuple[str, int], str] = {}


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


ROUTE = request_key("j1msky.route")


def _route_key(request: web.Request) -> tuple[str, str]:
    """(method, route pattern), computed once per request."""
    route = request.get(ROUTE)
    if route is None:
        resource = request.match_info.route.resource
        route = request[ROUTE] = (request.method, resource.canonical if resource is not None else "")
    return route


def route_name(request: web.Request) -> str:
    """``METHOD /pattern`` for metrics: the route's pattern, never the raw path (ids would explode it)."""
    resource = request.match_info.route.resource
    key = (request.method, id(resource))
    name = _ROUTE_NAMES.get(key)
    if name is None:
        name = f"{request.method} {resource.canonical}" if resource is not None else f"{request.method} (unmatched)"
        if len(_ROUTE_NAMES) < 1024:
            _ROUTE_NAMES[key] = name
    return name


# -- checks: each returns None or raises an ApiError ------------------------------------------
def check_body_size(request: web.Request) -> None:
    """Refuse an oversized body from its Content-Length, before reading it.

    Chunked bodies without a length are capped by the Application's client_max_size.
    """
    limit = request.app[CONFIG].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body exceeds {limit} bytes")


def check_ip(request: web.Request) -> None:
    """Resolve the client address once (proxies per config); apply IP blocks, then the allowlist."""
    control = request.app[SERVICES].ip_control
    addr, admitted = control.resolve(request.remote, request.headers.get("X-Forwarded-For"))
    request[CLIENT_IP] = addr
    block = control.blocked(addr)
    if block is not None:
        _violation(request, "ip_blocked", block.reason)
        raise IpNotAllowed("IP blocked", type_="IP_BLOCKED", your_ip=str(addr), reason=block.reason)
    if not admitted:
        _violation(request, "ip_not_allowed")
        raise IpNotAllowed("IP not whitelisted", your_ip=str(addr))  # the seed's words


def _violation(request: web.Request, kind: str, detail: str | None = None) -> None:
    """security.violation in the audit log, and a log line when the operator wants one."""
    services = request.app[SERVICES]
    if services.ip_control.log_violations:
        log.warning("refused %s %s from %s: %s%s", request.method, request.path, request.get(CLIENT_IP), kind,
                    f" ({detail})" if detail else "")
    details = {"kind": kind, "method": request.method, "path": request.path, **({"detail": detail} if detail else {})}
    services.audit.record("security.violation", actor(request), severity="warning", details=details)
    ip = request.get(CLIENT_IP)
    services.events.emit_soon("security.violation", details | {"ip": str(ip) if ip is not None else None},
                              throttle_key=f"violation:{ip}:{kind}")


def _token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-API-Key", "").strip() or None


def check_auth(request: web.Request) -> None:
    """Bearer token or X-API-Key -> the key; then the route's scope.  Off when security.auth is false."""
    if not request.app[CONFIG].security.auth or not (_is_api(request) or request.path == "/metrics"):
        return
    scope = request.app[ROUTE_SCOPES].get(_route_key(request))
    if scope == PUBLIC or (scope is None and request.match_info.http_exception is not None):
        return  # open routes; unknown paths 404/405 without revealing more
    token = _token(request)
    if token is None:
        _violation(request, "missing_api_key")
        raise Unauthorized("API key required: send 'Authorization: Bearer <token>' or 'X-API-Key: <token>'",
                           headers={"WWW-Authenticate": 'Bearer realm="j1mskyd"'})
    services = request.app[SERVICES]
    key = services.keys.authenticate(token)
    if key is None:
        _violation(request, "invalid_api_key")
        raise Unauthorized("Invalid, expired or revoked API key", type_="INVALID_API_KEY",
                           headers={"WWW-Authenticate": 'Bearer realm="j1mskyd", error="invalid_token"'})
    request[API_KEY] = key
    request[API_KEY_ID] = key.key_id
    services.audit.record("api.key.used", actor(request), resource_type="api_key", resource_id=key.key_id)
    if not key.allows(scope):
        _violation(request, "insufficient_scope", scope)
        raise Forbidden(f"This API key lacks the scope '{scope}'", required_scope=scope)


def needs_signature(request: web.Request) -> bool:
    key = request.get(API_KEY)
    return key is not None and (key.require_signature or request.app[CONFIG].security.require_signatures
                                or "X-Signature" in request.headers)


async def check_signature(request: web.Request) -> None:
    """HMAC signature (signing.py) when the key or the config requires it, or the client sent one."""
    raw = await request.read()  # cached by aiohttp: the handler reads the same bytes
    try:
        verify(request[API_KEY].secret, request.headers.get("X-Timestamp"), request.headers.get("X-Signature"),
               request.method, [request.path, request.path_qs, request.raw_path], raw,
               request.app[REPLAY_GUARD], request.app[CONFIG].security.signature_max_skew)
    except SignatureError as exc:
        _violation(request, "bad_signature", exc.type)
        raise Unauthorized(exc.message, type_=exc.type) from None


def check_rate_limit(request: web.Request) -> None:
    """Count the request against its key and its IP (API paths only); 429 when either is spent.

    Public routes (health) are only looked at, not counted: a monitor polling them must
    neither lock itself out nor make the counters file churn on the SD card.
    """
    if not _is_api(request):
        return
    app = request.app
    route = _route_key(request)
    endpoint_class = app[ROUTE_CLASSES].get(route, "other")
    ip = request.get(CLIENT_IP)
    limiter = app[LIMITER]
    key_id = request.get(API_KEY_ID, ANONYMOUS)
    ip_text = str(ip) if ip is not None else None
    if app[ROUTE_SCOPES].get(route) == PUBLIC:
        request[RATE_DECISION] = limiter.peek(endpoint_class, key_id, ip_text)
        return
    decision = limiter.check(endpoint_class, key_id, ip_text)
    request[RATE_DECISION] = decision
    if not decision.allowed:
        app[METRICS].rate_limit_hits += 1
        app[SERVICES].events.emit_soon("rate_limit.exhausted",
                                       {"api_key_id": key_id, "ip": ip_text, "endpoint_class": endpoint_class,
                                        "limit": decision.limit, "reset_at": decision.reset_at},
                                       throttle_key=f"ratelimit:{key_id}:{ip_text}:{endpoint_class}")
        wait = max(1, math.ceil(decision.retry_after))
        raise RateLimited("Rate limit exceeded", retry_after=wait, headers={"Retry-After": str(wait)})


async def idempotent(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Idempotency-Key on POST/PUT (idempotency.py): replay the first answer, 409 on another payload."""
    key = request.headers.get("Idempotency-Key")
    if key is None or request.method not in ("POST", "PUT") or not _is_api(request):
        return await handler(request)
    if not KEY_PATTERN.match(key):
        raise BadRequest("Idempotency-Key must be 1-255 visible ASCII characters")
    records = request.app[SERVICES].idempotency
    scope = request.get(API_KEY_ID, ANONYMOUS)
    body_hash = fingerprint(request.method, request.path, await request.read())
    found = await records.begin(scope, key)
    if found is not None:
        if found.body_hash != body_hash:
            raise Conflict("Idempotency key payload mismatch")  # the seed's words
        return web.Response(body=found.response, status=found.status, content_type=found.content_type.split(";")[0],
                            headers={"Idempotent-Replayed": "true"})
    try:
        response = await handler(request)
        # "no-store" marks one-time secrets (a new key's token): never kept, never replayed.
        if (200 <= response.status < 300 and isinstance(response, web.Response) and response.body is not None
                and "no-store" not in response.headers.get("Cache-Control", "")):
            await records.record(scope, key, request.method, request.path, body_hash, response.status,
                                 bytes(response.body), response.content_type)
        return response
    finally:
        records.end(scope, key)


# The order, stated once.  (The signature check is async and runs only when needed.)
CHECKS = (check_body_size, check_ip, check_auth)
LATE_CHECKS = (check_rate_limit,)


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Checks, then the handler; every failure leaves as the one JSON envelope, never a traceback."""
    try:
        if request.app[ROUTE_SCOPES].get(_route_key(request)) == PUBLIC:
            # Open routes (health, the 410s): only the address checks and the limiter's look.
            check_ip(request)
            check_rate_limit(request)
            return await handler(request)
        for check in CHECKS:
            check(request)
        if needs_signature(request):
            await check_signature(request)
        for check in LATE_CHECKS:
            check(request)
        return await idempotent(request, handler)
    except ApiError as exc:
        return api_error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "link")}
        message = {404: "No such endpoint", 405: f"Method {request.method} not allowed here",
                   413: "Request body too large"}.get(exc.status, exc.reason)
        return error_response(request, exc.status, message, headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path,
                      request.get(REQUEST_ID))
        return error_response(request, 500, "Internal server error; quote the request_id when reporting it")


@web.middleware
async def pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id (a sane client X-Request-Id is kept, so traces join up), timing, headers."""
    started = time.perf_counter()
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _CLIENT_ID.fullmatch(given) else f"{_ID_PREFIX}{next(_ID_COUNTER):x}"
    request[REQUEST_ID] = request_id
    response = await _guarded(request, handler)
    headers = response.headers
    headers["X-Request-Id"] = request_id
    if _is_api(request):
        decision = request.get(RATE_DECISION)
        if decision is None:  # refused before the rate limiter: show the standing, without counting
            ip = request.get(CLIENT_IP)
            decision = request.app[LIMITER].peek(request.app[ROUTE_CLASSES].get(_route_key(request), "other"),
                                                 request.get(API_KEY_ID, ANONYMOUS),
                                                 str(ip) if ip is not None else None)
        headers.update(decision.headers())
    request.app[METRICS].record(route_name(request), response.status, time.perf_counter() - started)
    return response


MIDDLEWARES = (pipeline,)
