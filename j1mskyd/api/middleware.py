"""Middlewares, outermost first.  The order is stated once, in MIDDLEWARES.

request id (and metrics) -> error envelope -> body size limit -> IP guard -> auth (key,
scope) -> request signature -> rate limit -> idempotency -> handler.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..agent import ANONYMOUS
from ..errors import ApiError, BadRequest, Conflict, Forbidden, IpNotAllowed, PayloadTooLarge, RateLimited, Unauthorized
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
RATE_DECISION = request_key("j1msky.rate_decision")


def route_name(request: web.Request) -> str:
    """``METHOD /pattern`` for metrics: the route's pattern, never the raw path (ids would explode it)."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical}" if resource is not None else f"{request.method} (unmatched)"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Honour a sane client X-Request-Id (so traces join up), else make one; time the request."""
    started = time.perf_counter()
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _CLIENT_ID.fullmatch(given) else "req_" + secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    response = await handler(request)
    response.headers["X-Request-Id"] = request_id
    request.app[METRICS].record(route_name(request), response.status, time.perf_counter() - started)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as the one JSON envelope; never a traceback."""
    try:
        return await handler(request)
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
async def body_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse an oversized body from its Content-Length, before reading it.

    Chunked bodies without a length are capped by the Application's client_max_size.
    """
    limit = request.app[CONFIG].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body exceeds {limit} bytes")
    return await handler(request)




@web.middleware
async def ip_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the client address once (proxies per config); apply IP blocks, then the allowlist."""
    control = request.app[SERVICES].ip_control
    addr = control.policy.client_ip(request.remote, request.headers.get("X-Forwarded-For"))
    request[CLIENT_IP] = addr
    block = control.blocked(addr)
    if block is not None:
        _violation(request, "ip_blocked", block.reason)
        raise IpNotAllowed("IP blocked", type_="IP_BLOCKED", your_ip=str(addr), reason=block.reason)
    if not control.policy.admits(addr):
        _violation(request, "ip_not_allowed")
        raise IpNotAllowed("IP not whitelisted", your_ip=str(addr))  # the seed's words
    return await handler(request)


def _violation(request: web.Request, kind: str, detail: str | None = None) -> None:
    """security.violation in the audit log, and a log line when the operator wants one."""
    services = request.app[SERVICES]
    if services.ip_control.log_violations:
        log.warning("refused %s %s from %s: %s%s", request.method, request.path, request.get(CLIENT_IP), kind,
                    f" ({detail})" if detail else "")
    services.audit.record("security.violation", actor(request), severity="warning",
                          details={"kind": kind, "method": request.method, "path": request.path,
                                   **({"detail": detail} if detail else {})})


ROUTE_SCOPES = app_key("j1msky.route_scopes")
REPLAY_GUARD = app_key("j1msky.replay_guard")
PUBLIC = "public"  # the scope of routes open without a key


def _route_info(request: web.Request, table_key) -> str | None:
    resource = request.match_info.route.resource
    return request.app[table_key].get((request.method, resource.canonical if resource is not None else ""))


def _token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-API-Key", "").strip() or None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer token or X-API-Key -> the key; then the route's scope.  Off when security.auth is false."""
    if not request.app[CONFIG].security.auth or not (request.path.startswith("/api/") or request.path == "/metrics"):
        return await handler(request)
    scope = _route_info(request, ROUTE_SCOPES)
    if scope == PUBLIC or (scope is None and request.match_info.http_exception is not None):
        return await handler(request)  # open routes; unknown paths 404/405 without revealing more
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
    return await handler(request)


@web.middleware
async def signature_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HMAC signature (signing.py) when the key or the config requires it, or the client sent one."""
    key = request.get(API_KEY)
    if key is None:
        return await handler(request)
    sec = request.app[CONFIG].security
    if key.require_signature or sec.require_signatures or "X-Signature" in request.headers:
        raw = await request.read()  # cached by aiohttp: the handler reads the same bytes
        try:
            verify(key.secret, request.headers.get("X-Timestamp"), request.headers.get("X-Signature"),
                   request.method, [request.path, request.path_qs, request.raw_path], raw,
                   request.app[REPLAY_GUARD], sec.signature_max_skew)
        except SignatureError as exc:
            _violation(request, "bad_signature", exc.type)
            raise Unauthorized(exc.message, type_=exc.type) from None
    return await handler(request)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request against its key and its IP (API paths only); 429 when either is spent.

    The decision is kept on the request so that ``add_rate_limit_headers`` puts the
    X-RateLimit-* headers on every API response, error envelopes included.
    """
    if not request.path.startswith("/api/"):
        return await handler(request)
    resource = request.match_info.route.resource
    endpoint_class = request.app[ROUTE_CLASSES].get(
        (request.method, resource.canonical if resource is not None else ""), "other")
    ip = request.get(CLIENT_IP)
    decision = request.app[LIMITER].check(endpoint_class, request.get(API_KEY_ID, ANONYMOUS),
                                          str(ip) if ip is not None else None)
    request[RATE_DECISION] = decision
    if not decision.allowed:
        request.app[METRICS].rate_limit_hits += 1
        wait = max(1, math.ceil(decision.retry_after))
        raise RateLimited("Rate limit exceeded", retry_after=wait, headers={"Retry-After": str(wait)})
    return await handler(request)


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Idempotency-Key on POST/PUT (idempotency.py): replay the first answer, 409 on another payload."""
    key = request.headers.get("Idempotency-Key")
    if key is None or request.method not in ("POST", "PUT") or not request.path.startswith("/api/"):
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
        if 200 <= response.status < 300 and isinstance(response, web.Response) and response.body is not None:
            await records.record(scope, key, request.method, request.path, body_hash, response.status,
                                 bytes(response.body), response.content_type)
        return response
    finally:
        records.end(scope, key)


async def add_rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: runs for every response, including those the error middleware made."""
    decision = request.get(RATE_DECISION)
    if decision is not None:
        response.headers.update(decision.headers())


MIDDLEWARES = (request_id_middleware, error_middleware, body_limit_middleware, ip_guard_middleware,
               auth_middleware, signature_middleware, rate_limit_middleware, idempotency_middleware)
