"""The short way of public routes (GET /health): the cached body follows breaker changes at
once, the X-RateLimit-* headers stay right while cached, and the IP guard still applies."""

from __future__ import annotations

import dataclasses
import math
import time
import types
from datetime import datetime, timezone

from j1mskyd.api.common import SERVICES
from j1mskyd.api.middleware import LIMITER
from j1mskyd.api.rate_headers import RateHeaders
from j1mskyd.app import build_app
from j1mskyd.ratelimit import Buckets, Limit, RequestLimiter
from j1mskyd.security_request import BlockRequest
from tests.conftest import Clock, make_config

HEADERS = ("X-Request-Id", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-RateLimit-Reset-At")



def with_other_limit(tmp_path, limit: int):
    cfg = make_config(tmp_path)
    return dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, other=limit))


def rate(resp) -> tuple[int, int, int, str]:
    h = resp.headers
    return (int(h["X-RateLimit-Limit"]), int(h["X-RateLimit-Remaining"]), int(h["X-RateLimit-Reset"]),
            h["X-RateLimit-Reset-At"])


async def test_health_shows_a_breaker_change_at_once(aiohttp_client, tmp_path):
    app = build_app(make_config(tmp_path, runtime={"breaker_threshold": 1}))
    client = await aiohttp_client(app)
    first = await (await client.get("/api/health")).json()
    assert first["status"] == "healthy" and first["providers"]["offline"]["state"] == "closed"
    assert set(first) == {"status", "reasons", "version", "uptime_seconds", "error_rate", "models_configured", "agents",
                          "providers"}
    breaker = app[SERVICES].slots["offline"].breaker
    breaker.record_failure()  # threshold 1: open now, well within the body's one-second life
    resp = await client.get("/api/health")
    body = await resp.json()
    assert resp.status == 503 and body["status"] == "unhealthy"
    assert body["providers"]["offline"]["state"] == "open" and body["providers"]["offline"]["times_opened"] == 1
    breaker.record_success()
    assert (await (await client.get("/api/health")).json())["providers"]["offline"]["state"] == "closed"


async def test_health_body_is_reused_within_a_second(aiohttp_client, tmp_path, monkeypatch):
    from j1mskyd.api import system
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    built = []
    real = system.health_view
    monkeypatch.setattr(system, "health_view", lambda request: built.append(1) or real(request))
    now = [1000.0]
    # The module's own clock only (the event loop keeps the real time.monotonic).
    monkeypatch.setattr(system, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    for _ in range(3):
        assert (await client.get("/api/health")).status == 200
    assert len(built) == 1  # one second: built once
    now[0] += 1.0
    await client.get("/api/health")
    assert len(built) == 2  # the next second: built again


async def test_public_route_headers_are_complete_and_right(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(with_other_limit(tmp_path, 7)))
    for path in ("/api/health", "/api/v1/health"):
        before = time.time()
        resp = await client.get(path)
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert all(h in resp.headers for h in HEADERS)
        limit, remaining, reset, reset_at = rate(resp)
        assert (limit, remaining) == (7, 7)  # a full bucket; health is never counted
        assert math.floor(before) <= reset <= math.ceil(time.time())
        assert reset_at == datetime.fromtimestamp(reset, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ids = {(await client.get("/api/health")).headers["X-Request-Id"] for _ in range(3)}
    assert len(ids) == 3
    kept = await client.get("/api/health", headers={"X-Request-Id": "trace-42"})
    assert kept.headers["X-Request-Id"] == "trace-42"


async def test_cached_headers_follow_the_second_and_any_spending(aiohttp_client, tmp_path):
    cfg = with_other_limit(tmp_path, 7)
    app = build_app(cfg)
    clock = Clock(1_800_000_000.25)
    app[LIMITER].buckets.clock = clock
    client = await aiohttp_client(app)
    assert rate(await client.get("/api/health")) == (7, 7, 1_800_000_001, "2027-01-15T08:00:01Z")
    clock.t += 1.5
    assert rate(await client.get("/api/health")) == (7, 7, 1_800_000_002, "2027-01-15T08:00:02Z")
    # A counted request of the same class and address, in the same second: health shows it.
    assert (await client.get("/api/plugins")).status == 200
    limit, remaining, reset, _ = rate(await client.get("/api/health"))
    assert (limit, remaining) == (7, 6) and reset == math.ceil(clock.t + cfg.limits.window_seconds / 7)


async def test_blocked_ip_is_refused_on_health_with_the_headers(aiohttp_client, tmp_path):
    app = build_app(make_config(tmp_path))
    client = await aiohttp_client(app)
    assert (await client.get("/api/health")).status == 200
    await app[SERVICES].ip_control.block(BlockRequest(ip="127.0.0.1", reason="too chatty"))
    resp = await client.get("/api/health")
    body = await resp.json()
    assert resp.status == 403 and body["error"]["type"] == "IP_BLOCKED" and body["error"]["your_ip"] == "127.0.0.1"
    assert all(h in resp.headers for h in HEADERS)
    assert body["error"]["request_id"] == resp.headers["X-Request-Id"]
    await app[SERVICES].ip_control.unblock("127.0.0.1")
    assert (await client.get("/api/health")).status == 200


async def test_non_public_routes_still_authenticate_and_count(aiohttp_client, tmp_path):
    cfg = with_other_limit(tmp_path, 7)
    cfg = dataclasses.replace(cfg, security=dataclasses.replace(cfg.security, auth=True))
    client = await aiohttp_client(build_app(cfg))
    resp = await client.get("/api/plugins")
    assert resp.status == 401 and all(h in resp.headers for h in HEADERS)
    assert rate(resp)[:2] == (7, 7)  # refused before the limiter: shown, not counted
    assert (await client.get("/api/health")).status == 200  # public: no key needed


def test_peek_headers_caches_only_full_buckets():
    clock = Clock(1000.5)
    limiter = RequestLimiter(Buckets(clock), {"other": Limit(10, 10.0)})
    headers = RateHeaders(limiter)
    full = headers.peek("other", "anonymous", "10.0.0.1")
    assert full["X-RateLimit-Remaining"] == "10" and full["X-RateLimit-Reset"] == "1001"
    assert headers.peek("other", "anonymous", "10.0.0.1") is full  # reused within the second
    limiter.check("other", "anonymous", "10.0.0.1")
    spent = headers.peek("other", "anonymous", "10.0.0.1")
    assert spent["X-RateLimit-Remaining"] == "9"
    clock.t += 0.5  # half a token back: still not full, so computed afresh
    assert headers.peek("other", "anonymous", "10.0.0.1")["X-RateLimit-Remaining"] == "9"
    clock.t += 0.5
    assert headers.peek("other", "anonymous", "10.0.0.1")["X-RateLimit-Remaining"] == "10"
    assert headers.peek("other", "anonymous", "10.0.0.2")["X-RateLimit-Reset"] == "1002"
