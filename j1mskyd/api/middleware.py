"""The request pipeline: one aiohttp middleware running the steps in the order of admit().

    request id + metrics + rate-limit headers   (around everything, every response)
      error envelope                             (every failure becomes the one JSON body)
        body size limit -> IP guard -> auth (key, scope) -> request signature
        -> rate limit                            (checks: each refuses by raising)
          idempotency                            (around the handler)
            handler

One middleware instead of eight because aiohttp 3.8 rebuilds the middleware chain with
functools.partial for every request: on a Pi that overhead is a real share of a cheap
request.  The checks are plain functions, each testable alone; their order is stated
once, in admit().  admit() is also the one way in for credentials that arrive inside an
open connection (a WebSocket's auth message): the same IP checks, key and scope, signature
rule, rate limit and audit entries as any request.

What the pipeline knows of a route (scope, rate-limit class, dialect) comes from the app's
RouteTable (route_table.py: deny by default); the X-RateLimit-* headers are formatted by
rate_headers.py from the limiter's decisions.

The front door's routes (/v1, added with a dialect) go the same way; there every refusal,
the checks' too, leaves in the route's dialect (OpenAI's or Anthropic's error shape and
status) instead of the native envelope, and the rate-limit headers include OpenAI's names.
A handler that streams sends its headers before the pipeline sees its response: it takes
them from :func:`early_headers`.

Public routes (GET /health, the sunset 410s) take a short way: IP guard, handler, and the
rate-limit headers from a look at the buckets (cached while they are full), because a
monitor may poll /health many times a second (bench/ measures exactly this path).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from multidict import istr

from ..agent_record import ANONYMOUS
from ..dialects import retry_headers
from ..errors import (ApiError, BadRequest, Conflict, Forbidden, IpNotAllowed, PayloadTooLarge, RateLimited,
                      Unauthorized)
from ..idempotency import KEY_PATTERN, fingerprint
from ..local_access import browser_safe, grants_local, names_client
from ..netguard import parse_address
from ..signing import SignatureError, verify
from ..violations import record_violation
from .common import (ERROR_TYPES, METRICS, PASS, Pass, actor, api_error_response, app_key, json_response, pass_of,
                     request_id_of)
from .rate_headers import decision_headers
from .route_table import PUBLIC, ROUTE_TABLE, Route, route_of

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LIMITER = app_key("j1msky.request_limiter")
REPLAY_GUARD = app_key("j1msky.replay_guard")

# Request ids: a random per-process prefix and a counter (unique, and no syscall per request).
_ID_PREFIX = "req_" + os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)
_REQUEST_ID_HEADER = istr("X-Request-Id")  # istr: multidict skips case-folding it per response
_BUDGET_REMAINING = istr("X-Budget-Remaining")


# -- checks: each returns None or raises an ApiError ------------------------------------------
def check_body_size(request: web.Request, p: Pass) -> None:
    """Refuse an oversized body from its Content-Length, before reading it.

    Chunked bodies without a length are capped by the Application's client_max_size.
    """
    limit = p.route.config.current.server.max_body_bytes
    length = request.content_length  # a property that parses the header: read once
    if length is not None and length > limit:
        raise PayloadTooLarge(f"Request body exceeds {limit} bytes")


def check_ip(request: web.Request, p: Pass) -> None:
    """Resolve the client address once (proxies per config); apply IP blocks, then the allowlist."""
    control = p.route.services.ip_control
    # X-Forwarded-For counts only from a trusted proxy; without any, it is not even read.
    # Several header lines are one list, in order (RFC 9110 5.3): reading only the first
    # would let a line the client sent hide the hop its proxy appended.
    forwarded = _forwarded_for(request) if control.policy.trusted_proxies else None
    record = p.record
    addr, p.ip, refusal = control.verdict(request.remote, forwarded)
    record.addr, record.ip = addr, p.ip
    if refusal is not None:
        kind, reason = refusal
        _violation(request, p, kind, reason)
        if kind == "ip_blocked":
            raise IpNotAllowed("IP blocked", type_="IP_BLOCKED", your_ip=p.ip, reason=reason)
        raise IpNotAllowed("IP not whitelisted", your_ip=p.ip)  # the API reference's words


def _forwarded_for(request: web.Request) -> str:
    return ", ".join(request.headers.getall("X-Forwarded-For", ()))


def _violation(request: web.Request, p: Pass, kind: str, detail: str | None = None) -> None:
    """security.violation in the audit log, and a log line when the operator wants one."""
    services = p.route.services
    if services.ip_control.log_violations:
        log.warning("refused %s %s from %s: %s%s", request.method, request.path, p.ip, kind,
                    f" ({detail})" if detail else "")
    details = {"kind": kind, "method": request.method, "path": request.path, **({"detail": detail} if detail else {})}
    record_violation(services.audit, services.events, actor(request), p.ip, details)


def _token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-API-Key", "").strip() or None


class Credentials:
    """What a request offers to prove its key: the token and, when signed, the timestamp and
    signature over ``body`` (None: the request's own body, read when the signature is checked)."""

    __slots__ = ("token", "timestamp", "signature", "body")

    def __init__(self, token: str | None, timestamp: str | None = None, signature: str | None = None,
                 body: bytes | None = None) -> None:
        self.token = token
        self.timestamp = timestamp
        self.signature = signature
        self.body = body

    @classmethod
    def from_headers(cls, request: web.Request) -> Credentials:
        """Bearer token or X-API-Key; X-Timestamp and X-Signature."""
        headers = request.headers
        return cls(_token(request), headers.get("X-Timestamp"), headers.get("X-Signature"))


def check_auth(request: web.Request, p: Pass, token: str | None) -> None:
    """The token -> the key; then the route's scope.  Off when security.auth is false."""
    if not p.route.authenticated or not p.route.config.current.security.auth:
        return
    if token is None and serves_locally(request, p):
        record = p.record
        record.local = True
        record.caller_id = ANONYMOUS  # what it makes is ownerless, as with authentication off
        return
    if token is None:
        _violation(request, p, "missing_api_key")
        raise Unauthorized("API key required: send 'Authorization: Bearer <token>' or 'X-API-Key: <token>'",
                           headers={"WWW-Authenticate": 'Bearer realm="j1mskyd"'})
    services = p.route.services
    key = services.keys.authenticate(token)
    if key is None:
        _violation(request, p, "invalid_api_key")
        raise Unauthorized("Invalid, expired or revoked API key", type_="INVALID_API_KEY",
                           headers={"WWW-Authenticate": 'Bearer realm="j1mskyd", error="invalid_token"'})
    record = p.record
    p.key = record.key = key
    p.key_id = record.caller_id = key.key_id
    if services.audit.key_used_due(key.key_id):
        services.audit.record("api.key.used", actor(request), resource_type="api_key", resource_id=key.key_id)
    scope = p.route.scope
    if not key.allows(scope):  # no scope (a route added around the route table): no key at all
        _violation(request, p, "insufficient_scope", scope)
        raise Forbidden(f"This API key lacks the scope '{scope}'" if scope is not None
                        else "This route declares no scope: no API key may call it", required_scope=scope)


def serves_locally(request: web.Request, p: Pass) -> bool:
    """A request without credentials that [security] local_scopes lets through: its route's
    scope is granted, and both the socket's peer and the resolved client are loopback
    (local_access.py; never decided from a header alone).  Any credentials header, even
    one that names no usable key (another scheme, an empty X-API-Key), rules it out: a
    client that meant to send a key learns that it failed."""
    headers = request.headers
    if "Authorization" in headers or "X-API-Key" in headers:
        return False
    if not browser_safe(headers.get("Host"), headers.get("Origin")):
        return False  # a web page in a browser on this machine: DNS rebinding, a cross-site request
    if (p.route.services.ip_control.policy.trusts(parse_address(request.remote))
            and not names_client(_forwarded_for(request))):
        return False  # a trusted proxy on this host that does not say whom it forwards
    return grants_local(request.remote, p.record.addr, p.route.scope,
                        p.route.config.current.security.local_scopes)


def needs_signature(p: Pass, creds: Credentials) -> bool:
    key = p.key
    return key is not None and (key.require_signature or p.route.config.current.security.require_signatures
                                or creds.signature is not None)


async def check_signature(request: web.Request, p: Pass, creds: Credentials) -> None:
    """HMAC signature (signing.py) when the key or the config requires it, or the client sent one."""
    # The request's body is cached by aiohttp: the handler reads the same bytes.
    raw = await request.read() if creds.body is None else creds.body
    try:
        verify(p.key.secret, creds.timestamp, creds.signature,
               request.method, [request.path, request.path_qs, request.raw_path], raw,
               p.app[REPLAY_GUARD], p.route.config.current.security.signature_max_skew)
    except SignatureError as exc:
        _violation(request, p, "bad_signature", exc.type)
        raise Unauthorized(exc.message, type_=exc.type) from None


def check_rate_limit(request: web.Request, p: Pass) -> None:
    """Count the request against its key and its IP (API paths only); 429 when either is spent.

    Public routes do not come here: the pipeline only looks at their buckets (a monitor
    polling /health must neither lock itself out nor make the counters file churn).
    """
    route = p.route
    if not route.is_api:
        return
    decision = p.decision = route.rate_headers.limiter.check(route.limit_class, p.key_id, p.ip, _own_limits(p))
    if not decision.allowed:
        p.app[METRICS].rate_limit_hits += 1
        route.services.events.emit_soon(
            "rate_limit.exhausted", {"api_key_id": p.key_id, "ip": p.ip, "endpoint_class": route.limit_class,
                                     "limit": decision.limit, "reset_at": decision.reset_at},
            throttle_key=f"ratelimit:{p.key_id}:{p.ip}:{route.limit_class}", owner=p.key_id)
        wait = max(1, math.ceil(decision.retry_after))
        raise RateLimited("Rate limit exceeded", retry_after=wait, headers={"Retry-After": str(wait)})


def _own_limits(p: Pass) -> dict[str, int] | None:
    """The key's own request limits by endpoint class (None: [limits] for it too)."""
    key = p.key
    return key.limits if key is not None else None


def _budget_remaining(p: Pass) -> str:
    """X-Budget-Remaining for a request of a key: the most it could reserve now (its own
    budget, its project's and the daemon's day; budget.Budget.remaining_for, memory only)."""
    return f"{p.route.services.budget.remaining_for(p.key_id):.4f}"


def idempotent(request: web.Request, handler: Handler, p: Pass) -> Awaitable[web.StreamResponse]:
    """Idempotency-Key on POST/PUT (idempotency.py): replay the first answer, 409 on another payload.

    Without the header (nearly every request) this is the handler's own coroutine: the pipeline
    awaits it with no coroutine of this step's between them (each such layer is a frame made,
    and passed through at every resumption of the handler)."""
    key = request.headers.get("Idempotency-Key")
    if key is None or request.method not in ("POST", "PUT") or not p.route.is_api:
        return handler(request)
    if not KEY_PATTERN.match(key):
        raise BadRequest("Idempotency-Key must be 1-255 visible ASCII characters")
    return _replayable(request, handler, p, key)


async def _replayable(request: web.Request, handler: Handler, p: Pass, key: str) -> web.StreamResponse:
    records = p.route.services.idempotency
    scope = p.key_id
    body_hash = fingerprint(request.method, request.path, await request.read())
    found = await records.begin(scope, key)
    if found is not None:
        if found.body_hash != body_hash:
            raise Conflict("Idempotency key payload mismatch")  # the API reference's words
        return web.Response(body=found.response, status=found.status, content_type=found.content_type.split(";")[0],
                            headers={"Idempotent-Replayed": "true"})
    try:
        response = await handler(request)
        # "no-store" marks one-time secrets (a new key's token): never kept, never replayed.
        if (200 <= response.status < 300 and isinstance(response, web.Response)
                and isinstance(response.body, (bytes, bytearray))
                and "no-store" not in response.headers.get("Cache-Control", "")):
            await records.record(scope, key, request.method, request.path, body_hash, response.status,
                                 bytes(response.body), response.content_type)
        return response
    finally:
        records.end(scope, key)


def admit(request: web.Request, p: Pass, creds: Credentials, *, opening: bool = False) -> Awaitable[None] | None:
    """The checks that admit a client, in their order (stated only here): IP guard, key and
    scope, signature (when needed), rate limit.  Each refuses by raising its ApiError.

    Returns None when every check ran (the usual case: no signature to check, so nothing to
    await and no coroutine made), else the awaitable that checks the signature and then the
    rate limit: the caller awaits it.

    ``opening``: the request opens a connection that may authenticate inside (a route added
    with ``in_band=True``); without credentials it passes on the IP guard alone, uncounted,
    like any request that has no key yet: its auth message comes through here again
    (authenticate_in_band).
    """
    check_ip(request, p)
    if opening and creds.token is None and p.route.in_band and not serves_locally(request, p):
        return None
    check_auth(request, p, creds.token)
    if needs_signature(p, creds):
        return _signed(request, p, creds)
    check_rate_limit(request, p)
    return None


async def _signed(request: web.Request, p: Pass, creds: Credentials) -> None:
    """admit()'s end for a request that must be signed: the signature, then the rate limit."""
    await check_signature(request, p, creds)
    check_rate_limit(request, p)


async def authenticate_in_band(request: web.Request, token: str | None, timestamp: str | None = None,
                               signature: str | None = None) -> Any:
    """admit() for credentials sent inside an open connection (a WebSocket's auth message).

    Signed like the GET that opened the connection: method GET, its path (with or without
    the query), an empty body.  Returns the key (None when security.auth is off); raises
    the ApiError that a request with these headers would get, after the same audit entries.
    """
    p = Pass(route_of(request), request.app, pass_of(request).record)
    pending = admit(request, p, Credentials(token, timestamp, signature, body=b""))
    if pending is not None:
        await pending
    return p.key


def count_in_band(request: web.Request, key: Any) -> None:
    """A message inside an open connection that costs what a request costs (a WebSocket's
    subscribe replays history from the database, as a GET /api/events page does): the IP
    checks again and one request against ``key``'s and the address's rate limits.  Raises
    the ApiError a request would get."""
    p = Pass(route_of(request), request.app, pass_of(request).record)
    check_ip(request, p)
    if key is not None:
        p.key, p.key_id = key, key.key_id  # the key: its own request limits count here too
    check_rate_limit(request, p)


def _failure(request: web.Request, exc: Exception, route: Route) -> web.Response:
    """Every failure leaves as the one JSON envelope (on a front-door route: its dialect's
    error; under a prefixed dialect: its envelope), never a traceback; redirects pass."""
    if isinstance(exc, ApiError):
        error = exc
    elif isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "link")}
        message = {404: "No such endpoint", 405: f"Method {request.method} not allowed here",
                   413: "Request body too large"}.get(exc.status, exc.reason)
        error = _http_error(exc.status, message, headers)
    elif isinstance(exc, ConnectionResetError):
        # The client went away, or the listener closed it (a body past server.body_timeout):
        # nobody is left to answer, and it is not the daemon's error to log with a traceback.
        log.debug("%s %s (request %s): the connection was lost", request.method, request.path,
                  request_id_of(request))
        error = _http_error(400, "Connection lost")
    else:
        log.error("unhandled error in %s %s (request %s)", request.method, request.path, request_id_of(request),
                  exc_info=exc)
        error = _http_error(500, "Internal server error; quote the request_id when reporting it")
    if route.dialect is not None:
        status, body = route.dialect.error(error)
        return json_response(body, status, {**error.headers, **retry_headers(error)})
    if route.envelope is not None:
        status, body = route.envelope.error(error, request_id_of(request))
        return json_response(body, status, error.headers)
    return api_error_response(request, error)


def _http_error(status: int, message: str, headers: dict[str, str] | None = None) -> ApiError:
    """An ApiError of ``status`` with the envelope's usual type for it."""
    error = ApiError(message, headers=headers, type_=ERROR_TYPES.get(status, "ERROR"))
    error.status = status
    return error


@web.middleware
async def pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id (a sane client X-Request-Id is kept, so traces join up), timing, headers."""
    started = time.perf_counter()
    given = request.headers.get("X-Request-Id")
    request_id = given if given is not None and _CLIENT_ID.fullmatch(given) else f"{_ID_PREFIX}{next(_ID_COUNTER):x}"
    app = request.app
    route = app[ROUTE_TABLE].route_of(request)
    p = request[PASS] = Pass(route, app)
    p.request_id = request_id
    try:
        if route.public:
            # Open routes (health, the 410s): only the address checks; the limiter only
            # looks (below).  No key, so no signature, scope or idempotency record either.
            check_ip(request, p)
            response = await handler(request)
        else:
            # Every check in its order (admit), then the handler: inline, so that no coroutine
            # of the pipeline's own stands between this one and the handler's.
            check_body_size(request, p)
            pending = admit(request, p, Credentials.from_headers(request), opening=True)
            if pending is not None:
                await pending
            response = await idempotent(request, handler, p)
    except Exception as exc:  # noqa: BLE001 - CancelledError is a BaseException and passes
        response = _failure(request, exc, route)
    if not response.prepared:  # a stream sent its headers itself (early_headers)
        headers = response.headers
        headers[_REQUEST_ID_HEADER] = request_id
        if route.dialect is not None:
            headers.update(route.rate_headers.front_door(route.limit_class, p.key_id, p.ip, p.decision,
                                                         _own_limits(p)))
        elif route.is_api:
            # Counted: the limiter's answer.  Public, or refused before the limiter: the
            # standing, without counting (cached while the buckets are full).
            headers.update(decision_headers(p.decision) if p.decision is not None
                           else route.rate_headers.peek(route.limit_class, p.key_id, p.ip, _own_limits(p)))
        if p.key is not None:
            headers[_BUDGET_REMAINING] = _budget_remaining(p)
    route.record(app, response.status, time.perf_counter() - started)
    return response


def early_headers(request: web.Request) -> dict[str, str]:
    """The headers the pipeline adds to a front-door response (request id, rate limits), for
    a handler that sends its headers itself (a stream) before the pipeline sees its response."""
    p: Pass = request[PASS]
    return {_REQUEST_ID_HEADER: cast(str, p.request_id),  # set first thing in pipeline()
            **p.route.rate_headers.front_door(p.route.limit_class, p.key_id, p.ip, p.decision, _own_limits(p)),
            **({_BUDGET_REMAINING: _budget_remaining(p)} if p.key is not None else {})}


MIDDLEWARES = (pipeline,)
__all__ = ["LIMITER", "METRICS", "MIDDLEWARES", "PASS", "PUBLIC", "REPLAY_GUARD", "Credentials", "Pass",
           "authenticate_in_band", "count_in_band", "early_headers", "pipeline"]
