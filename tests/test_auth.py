"""API keys and scopes through real HTTP: the bootstrap key, 401/403 envelopes, the
/keys endpoints (create, list, revoke, rotate), hashing at rest and usage attribution.

conftest's ``make_config`` turns authentication off; every test here turns it on.
Expiry after a rotation uses a fake clock on the running app's KeyService, so the
grace period passes without sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.keys import KeyService, hash_token
from tests.conftest import Clock, auth_config, bearer, bootstrap_key, bootstrap_path, make_config

SCOPES = ("agents:read", "agents:write", "billing:read", "admin:write")



# -- helpers (test_signing imports them) --------------------------------------------------

async def start(aiohttp_client, cfg):
    """A client on a fresh app and the bootstrap admin key it made."""
    client = await aiohttp_client(build_app(cfg))
    return client, bootstrap_key(cfg)


async def new_key(client, admin: dict, scopes, name: str = "test", **extra) -> dict:
    resp = await client.post("/api/keys", json={"name": name, "scopes": list(scopes), **extra},
                             headers=bearer(admin["token"]))
    body = await resp.json()
    assert resp.status == 201, body
    return body


async def error_of(resp, status: int) -> dict:
    body = await resp.json()
    assert resp.status == status, body
    assert body["success"] is False, body
    assert body["error"]["code"] == status, body
    return body["error"]


def key_service(client) -> KeyService:
    return client.server.app[SERVICES].keys


# -- the bootstrap admin key ---------------------------------------------------------------

async def test_bootstrap_key_made_once_0600_and_never_logged(aiohttp_client, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = auth_config(tmp_path)
    client, admin = await start(aiohttp_client, cfg)
    path = bootstrap_path(cfg)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert set(admin) >= {"key_id", "token", "secret", "scopes"}
    assert admin["scopes"] == ["admin:write"]
    assert admin["key_id"].startswith("key_") and admin["token"] and admin["secret"]
    assert (await client.get("/api/keys", headers=bearer(admin["token"]))).status == 200
    await client.close()

    assert admin["key_id"] in caplog.text  # the log names the key (and so was captured) ...
    assert admin["token"] not in caplog.text  # ... but never its token or secret
    assert admin["secret"] not in caplog.text

    first_text = path.read_text()
    client2 = await aiohttp_client(build_app(cfg))  # second start, same state dir
    assert path.read_text() == first_text  # not re-made, not rewritten
    resp = await client2.get("/api/keys", headers=bearer(admin["token"]))
    body = await resp.json()
    assert resp.status == 200, body
    assert [k["key_id"] for k in body["keys"]] == [admin["key_id"]]


async def test_bootstrap_file_is_0600_even_if_a_stale_file_was_wider(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    path = bootstrap_path(cfg)
    path.parent.mkdir(mode=0o700, parents=True)
    path.write_text("stale")
    os.chmod(path, 0o644)
    await start(aiohttp_client, cfg)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert bootstrap_key(cfg)["scopes"] == ["admin:write"]


async def test_no_bootstrap_key_when_auth_is_off(aiohttp_client, tmp_path):
    cfg = make_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    assert (await client.get("/api/agents")).status == 200
    assert not bootstrap_path(cfg).exists()


# -- 401: no key, bad key ------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/agents", "/api/v1/agents", "/api/keys", "/metrics"])
async def test_missing_key_is_401_with_www_authenticate(aiohttp_client, tmp_path, path):
    client, _ = await start(aiohttp_client, auth_config(tmp_path))
    resp = await client.get(path)
    error = await error_of(resp, 401)
    assert error["type"] == "UNAUTHORIZED"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert error["request_id"] == resp.headers["X-Request-Id"]


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwYXNz"},
                                     {"X-API-Key": "   "}])
async def test_empty_or_foreign_credentials_count_as_missing(aiohttp_client, tmp_path, headers):
    client, _ = await start(aiohttp_client, auth_config(tmp_path))
    resp = await client.get("/api/agents", headers=headers)
    assert (await error_of(resp, 401))["type"] == "UNAUTHORIZED"
    assert "WWW-Authenticate" in resp.headers


async def test_wrong_token_is_401_invalid_api_key(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    for headers in (bearer("jsk_not-a-real-token"), bearer(admin["token"] + "x"), bearer(admin["secret"]),
                    bearer(admin["key_id"]), {"X-API-Key": "jsk_nope"}):
        resp = await client.get("/api/agents", headers=headers)
        error = await error_of(resp, 401)
        assert error["type"] == "INVALID_API_KEY", headers
        assert "invalid_token" in resp.headers["WWW-Authenticate"]


async def test_bearer_and_x_api_key_both_work(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    key = await new_key(client, admin, ["agents:read"])
    for headers in (bearer(key["token"]), {"Authorization": f"bearer {key['token']}"},
                    {"X-API-Key": key["token"]}):
        resp = await client.get("/api/agents", headers=headers)
        assert resp.status == 200, (headers, await resp.text())


async def test_health_is_public_and_everything_else_is_not(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    for path in ("/api/health", "/api/v1/health"):
        resp = await client.get(path)
        assert resp.status == 200, await resp.text()
    for method, path in (("GET", "/api/agents"), ("GET", "/api/agents/active"), ("GET", "/api/agent/x"),
                         ("DELETE", "/api/agent/x"), ("POST", "/api/spawn"), ("POST", "/api/spawn-team"),
                         ("POST", "/api/spawn-batch"), ("GET", "/api/plugins"), ("GET", "/api/rate-limits"),
                         ("GET", "/api/system"), ("GET", "/api/metrics"), ("GET", "/api/billing/usage"),
                         ("POST", "/api/keys"), ("GET", "/api/keys"), ("DELETE", "/api/keys/key_x"),
                         ("POST", "/api/keys/key_x/rotate"), ("GET", "/metrics")):
        resp = await client.request(method, path, json={})
        assert resp.status == 401, (method, path, await resp.text())


async def test_root_metrics_needs_agents_read(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    billing = await new_key(client, admin, ["billing:read"])
    reader = await new_key(client, admin, ["agents:read"])
    assert (await client.get("/metrics")).status == 401
    resp = await client.get("/metrics", headers=bearer(billing["token"]))
    assert (await error_of(resp, 403))["required_scope"] == "agents:read"
    resp = await client.get("/metrics", headers=bearer(reader["token"]))
    assert resp.status == 200
    assert "j1msky_http_requests_total" in await resp.text()


# -- 403: scopes ---------------------------------------------------------------------------

SCOPED = [  # method, path, body, scope, status with the right scope
    ("GET", "/api/agents", None, "agents:read", 200),
    ("GET", "/api/agent/agent_unknown", None, "agents:read", 404),
    ("POST", "/api/spawn", {"model": "k2p5", "task": "scoped"}, "agents:write", 200),
    ("DELETE", "/api/agent/agent_unknown", None, "agents:write", 404),
    ("GET", "/api/billing/usage", None, "billing:read", 200),
    ("GET", "/api/keys", None, "admin:read", 200),  # the admin reads take admin:read (issue 15)
    ("GET", "/api/security/audit", None, "admin:read", 200),
    ("POST", "/api/keys", {"name": "made", "scopes": ["agents:read"]}, "admin:write", 201),
]


@pytest.mark.parametrize("method,path,body,scope,ok", SCOPED, ids=[f"{m} {p}" for m, p, *_ in SCOPED])
async def test_scope_is_required_and_admin_implies_it(aiohttp_client, tmp_path, method, path, body, scope, ok):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    others = await new_key(client, admin, [s for s in SCOPES if s not in (scope, "admin:write")], name="others")
    right = await new_key(client, admin, [scope], name="right")

    resp = await client.request(method, path, json=body, headers=bearer(others["token"]))
    error = await error_of(resp, 403)
    assert error["type"] == "FORBIDDEN"
    assert error["required_scope"] == scope
    assert scope in error["message"]

    for key in (right, admin):  # the scope itself, and admin:write which implies all
        resp = await client.request(method, path, json=body, headers=bearer(key["token"]))
        assert resp.status == ok, (key["scopes"], await resp.text())


async def test_write_scope_does_not_imply_read(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    writer = await new_key(client, admin, ["agents:write"])
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "w"}, headers=bearer(writer["token"]))
    agent_id = (await resp.json())["agent_id"]
    resp = await client.get(f"/api/agent/{agent_id}", headers=bearer(writer["token"]))
    assert (await error_of(resp, 403))["required_scope"] == "agents:read"


# -- POST /keys, GET /keys -----------------------------------------------------------------

async def test_create_shows_token_and_secret_once_and_list_never(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    resp = await client.post("/api/keys", json={"name": "ci", "scopes": ["agents:read", "billing:read"]},
                             headers=bearer(admin["token"]))
    made = await resp.json()
    assert resp.status == 201, made
    assert resp.headers["Cache-Control"] == "no-store"
    assert made["key_id"].startswith("key_")
    assert made["token"].startswith("jsk_") and len(made["token"]) > 32
    assert len(made["secret"]) > 32 and made["secret"] != made["token"]
    assert made["scopes"] == ["agents:read", "billing:read"]
    assert made["require_signature"] is False

    resp = await client.get("/api/keys", headers=bearer(admin["token"]))
    text = await resp.text()
    assert resp.status == 200, text
    for secret in (made["token"], made["secret"], hash_token(made["token"]), admin["token"], admin["secret"],
                   hash_token(admin["token"])):
        assert secret not in text
    listed = {k["key_id"]: k for k in json.loads(text)["keys"]}
    assert set(listed) == {admin["key_id"], made["key_id"]}
    for k in listed.values():
        assert not {"token", "secret", "token_hash"} & set(k), k
    assert listed[made["key_id"]]["status"] == "active"
    assert listed[made["key_id"]]["name"] == "ci"
    assert listed[made["key_id"]]["scopes"] == ["agents:read", "billing:read"]

    resp = await client.get("/api/agents", headers=bearer(made["token"]))
    assert resp.status == 200


@pytest.mark.parametrize("body", [
    {"scopes": ["agents:read"]},                                   # no name
    {"name": "", "scopes": ["agents:read"]},
    {"name": "   ", "scopes": ["agents:read"]},
    {"name": 5, "scopes": ["agents:read"]},
    {"name": "x" * 101, "scopes": ["agents:read"]},
    {"name": "n"},                                                 # no scopes
    {"name": "n", "scopes": []},
    {"name": "n", "scopes": ["agents:read", "root"]},
    {"name": "n", "scopes": ["AGENTS:READ"]},
    {"name": "n", "scopes": [1]},
    {"name": "n", "scopes": [None]},
    {"name": "n", "scopes": 7},
    {"name": "n", "scopes": {"agents:read": True}},
    {"name": "n", "scopes": ["agents:read"], "require_signature": "yes"},
    {"name": "n", "scopes": ["agents:read"], "require_signature": 1},
    {"name": "n", "scopes": ["agents:read"], "require_signature": None},
    ["not", "an", "object"],
], ids=lambda b: json.dumps(b)[:60])
async def test_create_refuses_bad_bodies_with_400(aiohttp_client, tmp_path, body):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    resp = await client.post("/api/keys", json=body, headers=bearer(admin["token"]))
    error = await error_of(resp, 400)
    assert error["type"] in ("BAD_REQUEST", "VALIDATION_ERROR"), error
    resp = await client.get("/api/keys", headers=bearer(admin["token"]))
    assert (await resp.json())["count"] == 1  # nothing was made


async def test_create_refuses_invalid_json(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    resp = await client.post("/api/keys", data=b"{nope", headers=bearer(admin["token"]))
    assert (await error_of(resp, 400))["type"] == "INVALID_JSON"


# -- DELETE /keys/{id} ---------------------------------------------------------------------

async def test_revoke_with_reason_then_401_404_and_400(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    key = await new_key(client, admin, ["agents:read"])
    assert (await client.get("/api/agents", headers=bearer(key["token"]))).status == 200

    resp = await client.delete(f"/api/keys/{key['key_id']}", json={"reason": "laptop stolen"},
                               headers=bearer(admin["token"]))
    body = await resp.json()
    assert resp.status == 200, body
    assert body["key"]["status"] == "revoked"
    assert body["key"]["revoke_reason"] == "laptop stolen"
    assert body["key"]["revoked_at"]
    assert key["token"] not in json.dumps(body)

    for headers in (bearer(key["token"]), {"X-API-Key": key["token"]}):
        resp = await client.get("/api/agents", headers=headers)
        assert (await error_of(resp, 401))["type"] == "INVALID_API_KEY"

    resp = await client.delete(f"/api/keys/{key['key_id']}", json={"reason": "again"},
                               headers=bearer(admin["token"]))
    assert "already revoked" in (await error_of(resp, 400))["message"]
    resp = await client.delete("/api/keys/key_0000000000000000", json={"reason": "x"},
                               headers=bearer(admin["token"]))
    assert (await error_of(resp, 404))["type"] == "NOT_FOUND"

    listed = {k["key_id"]: k for k in (await (await client.get("/api/keys", headers=bearer(admin["token"])))
                                       .json())["keys"]}
    assert listed[key["key_id"]]["status"] == "revoked"
    assert listed[key["key_id"]]["revoke_reason"] == "laptop stolen"


async def test_the_last_admin_key_cannot_be_revoked_over_http(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    resp = await client.delete(f"/api/keys/{admin['key_id']}", headers=bearer(admin["token"]))
    error = await error_of(resp, 409)
    assert error["type"] == "CONFLICT" and "last active admin key" in error["message"]
    assert (await client.get("/api/keys", headers=bearer(admin["token"]))).status == 200  # still works
    # A non-admin key does not count as a replacement; a second admin key does.
    await new_key(client, admin, ["agents:read", "agents:write", "billing:read"])
    assert (await client.delete(f"/api/keys/{admin['key_id']}", headers=bearer(admin["token"]))).status == 409
    second = await new_key(client, admin, ["admin:write"])
    resp = await client.delete(f"/api/keys/{admin['key_id']}", headers=bearer(second["token"]))
    assert resp.status == 200, await resp.text()
    resp = await client.delete(f"/api/keys/{second['key_id']}", headers=bearer(second["token"]))
    assert (await error_of(resp, 409))["type"] == "CONFLICT"


async def test_revoke_without_body_and_bad_reason(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    key = await new_key(client, admin, ["agents:read"])
    resp = await client.delete(f"/api/keys/{key['key_id']}", json={"reason": 5}, headers=bearer(admin["token"]))
    await error_of(resp, 400)
    assert (await client.get("/api/agents", headers=bearer(key["token"]))).status == 200  # still active
    resp = await client.delete(f"/api/keys/{key['key_id']}", headers=bearer(admin["token"]))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["key"]["status"] == "revoked"


async def test_a_revoked_key_cannot_be_rotated(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    key = await new_key(client, admin, ["agents:read"])
    await client.delete(f"/api/keys/{key['key_id']}", headers=bearer(admin["token"]))
    resp = await client.post(f"/api/keys/{key['key_id']}/rotate", headers=bearer(admin["token"]))
    await error_of(resp, 400)
    resp = await client.post("/api/keys/key_0000000000000000/rotate", headers=bearer(admin["token"]))
    await error_of(resp, 404)


# -- rotation and expiry -------------------------------------------------------------------

async def test_rotate_new_key_works_old_works_during_grace_then_expires(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path, key_rotation_grace_hours=1.0)
    client, admin = await start(aiohttp_client, cfg)
    clock = key_service(client).clock = Clock(time.time())
    old = await new_key(client, admin, ["agents:read"], name="rotating")

    resp = await client.post(f"/api/keys/{old['key_id']}/rotate", headers=bearer(admin["token"]))
    new = await resp.json()
    assert resp.status == 201, new
    assert resp.headers["Cache-Control"] == "no-store"
    assert new["key_id"] != old["key_id"] and new["token"] != old["token"] and new["secret"] != old["secret"]
    assert new["replaces"] == old["key_id"]
    assert new["scopes"] == ["agents:read"] and new["name"] == "rotating"
    assert new["old_key_expires_at"]

    listed = {k["key_id"]: k for k in (await (await client.get("/api/keys", headers=bearer(admin["token"])))
                                       .json())["keys"]}
    assert listed[old["key_id"]]["rotated_to"] == new["key_id"]
    assert listed[old["key_id"]]["status"] == "active"
    assert listed[old["key_id"]]["expires_at"] == new["old_key_expires_at"]

    clock.t += 3600 - 5  # within the grace: both work
    for key in (old, new):
        assert (await client.get("/api/agents", headers=bearer(key["token"]))).status == 200, key["key_id"]
    clock.t += 10  # past it: only the new one
    resp = await client.get("/api/agents", headers=bearer(old["token"]))
    assert (await error_of(resp, 401))["type"] == "INVALID_API_KEY"
    assert (await client.get("/api/agents", headers=bearer(new["token"]))).status == 200
    listed = {k["key_id"]: k for k in (await (await client.get("/api/keys", headers=bearer(admin["token"])))
                                       .json())["keys"]}
    assert listed[old["key_id"]]["status"] == "expired"
    resp = await client.post(f"/api/keys/{old['key_id']}/rotate", headers=bearer(admin["token"]))
    await error_of(resp, 400)  # an expired key is not rotated again


async def test_rotate_with_zero_grace_expires_the_old_key_at_once(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path, key_rotation_grace_hours=0))
    old = await new_key(client, admin, ["agents:read"])
    resp = await client.post(f"/api/keys/{old['key_id']}/rotate", headers=bearer(admin["token"]))
    new = await resp.json()
    assert resp.status == 201, new
    resp = await client.get("/api/agents", headers=bearer(old["token"]))
    assert (await error_of(resp, 401))["type"] == "INVALID_API_KEY"
    assert (await client.get("/api/agents", headers=bearer(new["token"]))).status == 200


async def test_rotate_keeps_require_signature(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    old = await new_key(client, admin, ["agents:read"], require_signature=True)
    resp = await client.post(f"/api/keys/{old['key_id']}/rotate", headers=bearer(admin["token"]))
    new = await resp.json()
    assert new["require_signature"] is True
    resp = await client.get("/api/agents", headers=bearer(new["token"]))
    assert (await error_of(resp, 401))["type"] == "SIGNATURE_REQUIRED"


# -- at rest ---------------------------------------------------------------------------------

async def test_tokens_stored_only_as_hashes_and_secrets_sealed(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client, admin = await start(aiohttp_client, cfg)
    key = await new_key(client, admin, ["agents:read"])
    rotated = await (await client.post(f"/api/keys/{key['key_id']}/rotate", headers=bearer(admin["token"]))).json()
    assert (await client.get("/api/agents", headers=bearer(key["token"]))).status == 200  # a last-use to write
    await key_service(client).refresh()
    await client.close()  # checkpoint: everything is in the main file now

    state = Path(cfg.server.state_dir)
    files = [p for p in state.iterdir() if p.is_file() and p.name != KeyService.BOOTSTRAP_FILE]
    assert any(p.name == "j1msky.db" for p in files)
    blob = b"".join(p.read_bytes() for p in files)
    for made in (admin, key, rotated):
        assert made["token"].encode() not in blob, made["key_id"]
        assert made["secret"].encode() not in blob, made["key_id"]

    conn = sqlite3.connect(f"file:{state / 'j1msky.db'}?mode=ro", uri=True)
    try:
        rows = {r[0]: r[1:] for r in conn.execute("SELECT key_id, token_hash, secret FROM api_keys")}
    finally:
        conn.close()
    assert set(rows) == {admin["key_id"], key["key_id"], rotated["key_id"]}
    for made in (admin, key, rotated):
        token_hash, sealed = rows[made["key_id"]]
        assert token_hash == hash_token(made["token"])
        assert sealed.startswith("kdf1:")  # derived from the data key (crypto.DataCipher.new_secret)


# -- attribution -----------------------------------------------------------------------------

async def test_usage_is_attributed_to_the_spawning_key(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    worker = await new_key(client, admin, ["agents:read", "agents:write"], name="worker")
    # Every key's spend is for a key that sees all keys' work (admin:read); billing:read alone
    # shows a key its own (tests/test_billing_groups.py).
    accountant = await new_key(client, admin, ["billing:read", "admin:read"], name="accountant")
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "bill me"},
                             headers=bearer(worker["token"]))
    body = await resp.json()
    assert resp.status == 200, body
    agent_id = body["agent_id"]

    end = time.monotonic() + 10
    while True:
        body = await (await client.get(f"/api/agent/{agent_id}", headers=bearer(worker["token"]))).json()
        if body["status"] in ("completed", "failed", "cancelled"):
            break
        assert time.monotonic() < end, body
        await asyncio.sleep(0.01)
    assert body["status"] == "completed", body

    resp = await client.get("/api/billing/usage?by_key=true", headers=bearer(accountant["token"]))
    report = await resp.json()
    assert resp.status == 200, report
    assert worker["key_id"] in report["by_key"], report
    assert report["by_key"][worker["key_id"]] > 0
    assert set(report["by_key"]) == {worker["key_id"]}
    assert worker["token"] not in json.dumps(report)


async def test_idempotency_key_never_stores_or_replays_a_token(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client, admin = await start(aiohttp_client, cfg)
    headers = bearer(admin["token"]) | {"Idempotency-Key": "make-ci-key-1"}
    body = {"name": "ci", "scopes": ["agents:read"]}
    first = await client.post("/api/keys", json=body, headers=headers)
    made = await first.json()
    assert first.status == 201, made
    rotated = await (await client.post(f"/api/keys/{made['key_id']}/rotate",
                                       headers=bearer(admin["token"]) | {"Idempotency-Key": "rotate-1"})).json()
    again = await client.post("/api/keys", json=body, headers=headers)
    assert made["token"] not in await again.text()  # "shown once": a retry may not show it again
    await client.close()
    state = Path(cfg.server.state_dir)
    blob = b"".join(p.read_bytes() for p in state.iterdir()
                    if p.is_file() and p.name != KeyService.BOOTSTRAP_FILE)
    for secret in (made["token"], made["secret"], rotated["token"], rotated["secret"]):
        assert secret.encode() not in blob


async def test_the_bootstrap_token_file_is_written_before_the_key_exists(tmp_path):
    """A power cut (here: a failing file write) between the two must never leave an admin key
    whose token is nowhere; the next start makes key and file anew."""
    from j1mskyd.store import Store
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    store = Store(str(state / "j1msky.db"))
    store.open()
    try:
        keys = KeyService(store)
        await keys.reload()
        (state / KeyService.BOOTSTRAP_FILE).mkdir()  # os.replace onto a directory fails
        with pytest.raises(OSError):
            await keys.bootstrap(str(state))
        assert store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0]) == 0
        (state / KeyService.BOOTSTRAP_FILE).rmdir()
        new = await keys.bootstrap(str(state))
        saved = json.loads((state / KeyService.BOOTSTRAP_FILE).read_text())
        assert saved["token"] == new.token and keys.authenticate(new.token) is not None
    finally:
        await store.close()
