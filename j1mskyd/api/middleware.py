"""Middlewares, outermost first.  The order is stated once, in MIDDLEWARES.

request id -> error envelope -> body size limit -> IP guard -> (later: auth, signature,
rate limit, idempotency) -> handler.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import ApiError, IpNotAllowed, PayloadTooLarge
from ..netguard import IpPolicy
from .common import CONFIG, REQUEST_ID, api_error_response, app_key, error_response, request_key

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
STATS = app_key("j1msky.request_stats")


class RequestStats:
    """Two counters, cheap enough for every request; /health reports the error rate."""

    __slots__ = ("requests", "server_errors")

    def __init__(self) -> None:
        self.requests = 0
        self.server_errors = 0

    @property
    def error_rate(self) -> float:
        return round(self.server_errors / self.requests, 4) if self.requests else 0.0


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Honour a sane client X-Request-Id (so traces join up), else make one."""
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _CLIENT_ID.fullmatch(given) else "req_" + secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    response = await handler(request)
    response.headers["X-Request-Id"] = request_id
    stats: RequestStats = request.app[STATS]
    stats.requests += 1
    if response.status >= 500:
        stats.server_errors += 1
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


IP_POLICY = app_key("j1msky.ip_policy")
CLIENT_IP = request_key("j1msky.client_ip")


@web.middleware
async def ip_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the client address once (proxies per config) and apply the allowlist."""
    policy: IpPolicy = request.app[IP_POLICY]
    addr = policy.client_ip(request.remote, request.headers.get("X-Forwarded-For"))
    request[CLIENT_IP] = addr
    if not policy.admits(addr):
        if request.app[CONFIG].security.log_violations:
            log.warning("refused %s %s from %s: not in the IP allowlist", request.method, request.path, addr)
        raise IpNotAllowed("Access denied: your IP address is not in the allowlist", your_ip=str(addr))
    return await handler(request)


MIDDLEWARES = (request_id_middleware, error_middleware, body_limit_middleware, ip_guard_middleware)
