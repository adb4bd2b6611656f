"""Each check of the request pipeline, proven alone on a bare app: the pipeline, one dummy
handler and only the services the checks consult (real sqlite underneath), not the daemon.

Also: deny by default (issue 13, item 6) and the pipeline's state kept per app (item 8).
"""

from __future__ import annotations

import dataclasses
import types
from datetime import datetime, timezone
from pathlib import Path

import pytest
from aiohttp import web

from j1mskyd import statedir
from j1mskyd.reload import ConfigRef
from j1mskyd.api.common import CONFIG, METRICS, SERVICES, app_key, json_response
from j1mskyd.budget import Budget, BudgetPolicy
from j1mskyd.errors import ApiError
from j1mskyd.api.middleware import LIMITER, MIDDLEWARES, REPLAY_GUARD
from j1mskyd.api.rate_headers import RATE_HEADERS, RateHeaders
from j1mskyd.api.route_table import PUBLIC, ROUTE_TABLE, RouteTable
from j1mskyd.api.routes import setup_routes
from j1mskyd.app import build_app
from j1mskyd.audit import AuditLog
from j1mskyd.events import EventLog
from j1mskyd.idempotency import IdempotencyStore
from j1mskyd.ipcontrol import IpControl
from j1mskyd.keys import ANY_KEY, SCOPES, ApiKey, KeyService
from j1mskyd.metrics import Metrics
from j1mskyd.netguard import IpPolicy, parse_networks
from j1mskyd.ratelimit import ENDPOINT_CLASSES, Buckets, Limit, RequestLimiter
from j1mskyd.signing import ReplayGuard, sign
from j1mskyd.store import Store
from j1mskyd.security_request import BlockRequest
from tests.conftest import auth_config, bearer, make_config

CALLS = app_key("test.calls")  # how many times the dummy handler ran
KEYS = app_key("test.keys")    # scope name -> NewKey, made at start
THING = "/api/thing"           # POST, needs agents:write
OPEN = "/api/open"             # GET, public


async def _dummy(request: web.Request) -> web.Response:
    request.app[CALLS].append(await request.read())
    return json_response({"n": len(request.app[CALLS])})


async def _services(app: web.Application):
    """Only what the checks consult: IP control, keys, audit, events, idempotency records, and the
    budget (X-Budget-Remaining on a key's responses)."""
    cfg = app[CONFIG].current
    statedir.prepare(cfg.server.state_dir)
    store = Store(str(Path(cfg.server.state_dir) / "j1msky.db"))
    store.open()
    sec = cfg.security
    services = types.SimpleNamespace(
        ip_control=IpControl(store, IpPolicy(parse_networks(sec.allowed_ips), sec.enforce_allowlist,
                                             parse_networks(sec.trusted_proxies)), sec.log_violations),
        keys=KeyService(store), audit=AuditLog(store), events=EventLog(store), idempotency=IdempotencyStore(store))
    services.budget = Budget(BudgetPolicy(), allowances=services.keys.allowances)
    for part in (services.keys.reload, services.ip_control.load, services.audit.load, services.events.load):
        await part()
    app[KEYS] = {"agents:read": await services.keys.create("reader", ["agents:read"]),
                 "admin:write": await services.keys.create("admin", ["admin:write"]),
                 "signed": await services.keys.create("signer", ["agents:write"], require_signature=True)}
    app[SERVICES] = services
    yield
    await store.close()


def bare_app(cfg, *, add_routes=None) -> web.Application:
    """The pipeline around one dummy handler at THING (agents:write) and OPEN (public)."""
    app = web.Application(middlewares=list(MIDDLEWARES), client_max_size=1 << 20)
    app[CONFIG] = ConfigRef(cfg)
    app[CALLS] = []
    app[METRICS] = Metrics()
    lim = cfg.limits
    app[LIMITER] = RequestLimiter(Buckets(), {c: Limit(getattr(lim, c), lim.window_seconds) for c in ENDPOINT_CLASSES},
                                  lim.per_ip)
    app[RATE_HEADERS] = RateHeaders(app[LIMITER])
    app[REPLAY_GUARD] = ReplayGuard()
    table = app[ROUTE_TABLE] = RouteTable(app)
    table.add("POST", THING, _dummy, "agents:write")
    table.add("GET", OPEN, _dummy, PUBLIC)
    if add_routes is not None:
        add_routes(app)
    app.cleanup_ctx.append(_services)
    return app


def with_security(cfg, **security):
    return dataclasses.replace(cfg, security=dataclasses.replace(cfg.security, **security))


def token(client, scope: str) -> dict[str, str]:
    return bearer(client.app[KEYS][scope].token)


async def refused(resp, status: int, type_: str) -> dict:
    body = await resp.json()
    assert (resp.status, body["error"]["type"]) == (status, type_), body
    assert body["success"] is False and body["error"]["request_id"] == resp.headers["X-Request-Id"]
    return body["error"]


# -- body size ------------------------------------------------------------------------------------
async def test_body_size_refuses_an_oversized_body_before_anything_else(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, max_body_bytes=64))
    client = await aiohttp_client(bare_app(cfg))
    # Without a key: the size is refused first (the app itself would take up to 1 MiB).
    await refused(await client.post(THING, data=b"x" * 65), 413, "PAYLOAD_TOO_LARGE")
    assert client.app[CALLS] == []
    assert (await client.post(THING, data=b"x" * 64, headers=token(client, "admin:write"))).status == 200
    assert client.app[CALLS] == [b"x" * 64]


# -- IP guard -------------------------------------------------------------------------------------
async def test_ip_allowlist_refuses_an_address_outside_it_even_on_public_routes(aiohttp_client, tmp_path):
    cfg = with_security(make_config(tmp_path), allowed_ips=("127.0.0.2/32",), enforce_allowlist=True)
    client = await aiohttp_client(bare_app(cfg))
    for resp in (await client.get(OPEN), await client.post(THING, data=b"{}")):
        error = await refused(resp, 403, "IP_NOT_ALLOWED")
        assert error["your_ip"] == "127.0.0.1"
    assert client.app[CALLS] == []


async def test_ip_block_refuses_a_blocked_address(aiohttp_client, tmp_path):
    cfg = with_security(make_config(tmp_path), allowed_ips=("127.0.0.0/8",), enforce_allowlist=True)
    client = await aiohttp_client(bare_app(cfg))
    assert (await client.post(THING, data=b"{}")).status == 200  # allowed, auth off
    await client.app[SERVICES].ip_control.block(BlockRequest(ip="127.0.0.1", reason="test"))
    error = await refused(await client.post(THING, data=b"{}"), 403, "IP_BLOCKED")
    assert error["your_ip"] == "127.0.0.1" and error["reason"] == "test"
    assert len(client.app[CALLS]) == 1


# -- auth -----------------------------------------------------------------------------------------
async def test_auth_needs_a_known_key(aiohttp_client, tmp_path):
    client = await aiohttp_client(bare_app(auth_config(tmp_path)))
    resp = await client.post(THING, data=b"{}")
    await refused(resp, 401, "UNAUTHORIZED")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    await refused(await client.post(THING, data=b"{}", headers=bearer("jsk_not_a_key")), 401, "INVALID_API_KEY")
    assert client.app[CALLS] == []
    assert (await client.post(THING, data=b"{}", headers={"X-API-Key": client.app[KEYS]["admin:write"].token})
            ).status == 200
    assert len(client.app[CALLS]) == 1


# -- scope ----------------------------------------------------------------------------------------
async def test_scope_refuses_a_key_without_it_and_public_needs_no_key(aiohttp_client, tmp_path):
    client = await aiohttp_client(bare_app(auth_config(tmp_path)))
    error = await refused(await client.post(THING, data=b"{}", headers=token(client, "agents:read")),
                          403, "FORBIDDEN")
    assert error["required_scope"] == "agents:write"
    assert client.app[CALLS] == []
    assert (await client.post(THING, data=b"{}", headers=token(client, "admin:write"))).status == 200
    assert (await client.get(OPEN)).status == 200  # public: no key at all
    assert len(client.app[CALLS]) == 2


async def test_a_route_added_around_the_table_is_closed_to_every_key(aiohttp_client, tmp_path):
    """Deny by default: no scope declared means no key (admin's neither) may call it, on
    any path (not only under /api/)."""
    def around(app: web.Application) -> None:
        app.router.add_get("/api/forgotten", _dummy)
        app.router.add_get("/forgotten", _dummy)

    client = await aiohttp_client(bare_app(auth_config(tmp_path), add_routes=around))
    assert set(client.app[ROUTE_TABLE].undeclared()) == {"GET /api/forgotten", "HEAD /api/forgotten",
                                                         "GET /forgotten", "HEAD /forgotten"}
    for path in ("/api/forgotten", "/forgotten"):
        await refused(await client.get(path), 401, "UNAUTHORIZED")
        error = await refused(await client.get(path, headers=token(client, "admin:write")), 403, "FORBIDDEN")
        assert error["required_scope"] is None and "declares no scope" in error["message"]
    assert client.app[CALLS] == []


def test_no_key_allows_no_scope():
    admin = _key(("admin:write",))
    assert not admin.allows(None)
    assert all(admin.allows(scope) for scope in SCOPES)
    reader = _key(("agents:read",))
    assert reader.allows("agents:read") and not reader.allows("agents:write") and not reader.allows(None)


def _key(scopes: tuple[str, ...]) -> ApiKey:
    fields = {f.name: None for f in dataclasses.fields(ApiKey)}
    return ApiKey(**(fields | {"key_id": "key_x", "name": "x", "scopes": scopes}))


# -- signature ------------------------------------------------------------------------------------
def _signed(key, method: str, path: str, body: str) -> dict[str, str]:
    ts = datetime.now(timezone.utc).replace(tzinfo=None).isoformat()
    return {**bearer(key.token), "X-Timestamp": ts, "X-Signature": sign(key.secret, ts, method, path, body)}


async def test_signature_is_required_of_a_signing_key_and_not_replayable(aiohttp_client, tmp_path):
    client = await aiohttp_client(bare_app(auth_config(tmp_path)))
    signer = client.app[KEYS]["signed"]
    await refused(await client.post(THING, data=b"{}", headers=bearer(signer.token)), 401, "SIGNATURE_REQUIRED")
    wrong = _signed(signer, "POST", THING, "{}") | {"X-Signature": "0" * 64}
    await refused(await client.post(THING, data=b"{}", headers=wrong), 401, "INVALID_SIGNATURE")
    assert client.app[CALLS] == []
    good = _signed(signer, "POST", THING, "{}")
    assert (await client.post(THING, data=b"{}", headers=good)).status == 200
    resp = await client.post(THING, data=b"{}", headers=good)  # the same signature again
    assert resp.status == 401
    assert len(client.app[CALLS]) == 1


# -- rate limit -----------------------------------------------------------------------------------
async def test_rate_limit_refuses_the_request_over_the_limit(aiohttp_client, tmp_path):
    cfg = make_config(tmp_path)
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, other=2, window_seconds=3600))
    client = await aiohttp_client(bare_app(cfg))
    remaining = []
    for _ in range(2):
        resp = await client.post(THING, data=b"{}")
        assert resp.status == 200
        remaining.append(resp.headers["X-RateLimit-Remaining"])
    assert remaining == ["1", "0"] and resp.headers["X-RateLimit-Limit"] == "2"
    resp = await client.post(THING, data=b"{}")
    await refused(resp, 429, "RATE_LIMITED")
    assert int(resp.headers["Retry-After"]) >= 1 and resp.headers["X-RateLimit-Remaining"] == "0"
    assert len(client.app[CALLS]) == 2


# -- idempotency ----------------------------------------------------------------------------------
async def test_idempotency_replays_the_first_answer_and_refuses_another_payload(aiohttp_client, tmp_path):
    client = await aiohttp_client(bare_app(make_config(tmp_path)))
    first = await client.post(THING, data=b'{"a":1}', headers={"Idempotency-Key": "once"})
    again = await client.post(THING, data=b'{"a":1}', headers={"Idempotency-Key": "once"})
    assert first.status == again.status == 200 and await first.json() == await again.json() == {"n": 1}
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    await refused(await client.post(THING, data=b'{"a":2}', headers={"Idempotency-Key": "once"}), 409, "CONFLICT")
    await refused(await client.post(THING, data=b"{}", headers={"Idempotency-Key": "x" * 256}), 400, "BAD_REQUEST")
    assert client.app[CALLS] == [b'{"a":1}']


# -- deny by default: the daemon's router ---------------------------------------------------------
def test_every_route_of_the_daemon_declares_a_scope(tmp_path):
    app = build_app(make_config(tmp_path))
    table = app[ROUTE_TABLE]
    assert table.undeclared() == []
    declared = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    assert declared == set(table.scopes) and len(declared) > 100
    assert set(table.scopes.values()) <= {*SCOPES, ANY_KEY, PUBLIC}  # ANY_KEY: a key's own record


def test_setup_routes_refuses_a_route_without_a_scope(tmp_path):
    app = web.Application()
    app.router.add_get("/api/sneaky", _dummy)  # not through the table
    with pytest.raises(RuntimeError, match="routes without a scope.*GET /api/sneaky"):
        setup_routes(app)


def test_a_route_needs_a_known_scope():
    table = RouteTable(web.Application())
    for scope in (None, "", "agents:everything"):
        with pytest.raises(ValueError, match="neither a key scope"):
            table.add("GET", "/api/x", _dummy, scope)
    assert table.scopes == {}


# -- state per app --------------------------------------------------------------------------------
async def test_two_apps_in_one_process_keep_their_own_routes(aiohttp_client, tmp_path):
    """The same path, public in one app and needing a key in the other: each app's own table
    and Route cache answer (a process-wide cache would give one app the other's Route)."""
    def public_thing(app: web.Application) -> None:
        app[ROUTE_TABLE].add("GET", "/api/both", _dummy, PUBLIC)

    def keyed_thing(app: web.Application) -> None:
        app[ROUTE_TABLE].add("GET", "/api/both", _dummy, "agents:read")

    a = await aiohttp_client(bare_app(auth_config(tmp_path / "a"), add_routes=public_thing))
    b = await aiohttp_client(bare_app(auth_config(tmp_path / "b"), add_routes=keyed_thing))
    for _ in range(2):  # the second round answers from each app's cache
        assert (await a.get("/api/both")).status == 200
        assert (await b.get("/api/both")).status == 401
    assert a.app[ROUTE_TABLE] is not b.app[ROUTE_TABLE]
    assert a.app[RATE_HEADERS] is not b.app[RATE_HEADERS]


async def test_a_breaker_change_in_one_app_leaves_the_other_apps_health_cache(aiohttp_client, tmp_path, monkeypatch):
    from j1mskyd.api import system
    monkeypatch.setattr(system, "time", types.SimpleNamespace(monotonic=lambda: 1000.0))  # one second throughout
    apps = [build_app(make_config(tmp_path / name, runtime={"breaker_threshold": 1})) for name in ("a", "b")]
    a, b = [await aiohttp_client(app) for app in apps]
    for client in (a, b):
        assert (await client.get("/api/health")).status == 200
    cached_b = b.app[SERVICES].health_cache
    a.app[SERVICES].slots["offline"].breaker.record_failure()  # a's breaker opens
    assert (await a.get("/api/health")).status == 503  # a sees it at once
    assert (await b.get("/api/health")).status == 200
    assert b.app[SERVICES].health_cache is cached_b  # b's body was not rebuilt: nothing of b changed
    b.app[SERVICES].slots["offline"].breaker.record_failure()
    assert (await b.get("/api/health")).status == 503


# -- credentials inside an open connection --------------------------------------------------------
async def test_credentials_sent_inside_a_connection_become_the_requests_key(aiohttp_client, tmp_path):
    """authenticate_in_band (a WebSocket's auth message) records the key into the request, as the
    headers' key would be: what the handler reads afterwards (key_of, key_id_of, actor) is the
    key that authenticated last, and a refused one leaves the request without a key."""
    from j1mskyd.api.common import actor, key_id_of, key_of
    from j1mskyd.api.middleware import authenticate_in_band

    async def in_band(request: web.Request) -> web.Response:
        before = key_of(request)
        body = await request.json()
        try:
            await authenticate_in_band(request, body.get("token"))
        except ApiError as exc:
            return json_response({"refused": exc.status, "key": key_id_of(request)})
        who = actor(request)
        return json_response({"before": before, "key": key_of(request).key_id, "key_id": key_id_of(request),
                              "actor": who.api_key_id, "request_id": who.request_id})

    def add(app: web.Application) -> None:
        app[ROUTE_TABLE].add("POST", "/api/in-band", in_band, "agents:read", in_band=True)

    client = await aiohttp_client(bare_app(auth_config(tmp_path), add_routes=add))
    reader = client.app[KEYS]["agents:read"]
    resp = await client.post("/api/in-band", json={"token": reader.token})  # no key in the headers
    body = await resp.json()
    kid = reader.key.key_id
    assert body == {"before": None, "key": kid, "key_id": kid, "actor": kid,
                    "request_id": resp.headers["X-Request-Id"]}
    resp = await client.post("/api/in-band", json={"token": "jsk_not_a_key"})
    assert await resp.json() == {"refused": 401, "key": None}
