"""A key's webhooks are signed with a secret of their own (issue 12, item 6).

The request signing secret and the webhook secret differ, each is shown once, and a
receiver that holds the webhook secret cannot sign API requests with it.  Rotating the
webhook secret changes the signature a receiver verifies (pending deliveries included);
rotating the key carries the webhook secret over.  A key from before webhook secrets
(the migration leaves its column NULL) keeps signing with its request secret until its
webhook secret is rotated.  Receivers are real aiohttp servers on loopback, allowed in
this config's ``[webhooks] allowed_networks``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time

import pytest

from j1mskyd import webhooks
from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.config import WebhooksConfig
from j1mskyd.signing import sign
from j1mskyd.store import MIGRATIONS, Store, _statements
from tests.conftest import auth_config, bearer, bootstrap_key
from tests.daemon import run_cli
from tests.receiver import Receiver, expected_signature


@pytest.fixture
async def app_client(aiohttp_client, tmp_path):
    cfg = dataclasses.replace(auth_config(tmp_path), webhooks=WebhooksConfig(allowed_networks=("127.0.0.0/8",)))
    client = await aiohttp_client(build_app(cfg))
    return client, bearer(bootstrap_key(cfg)["token"])


async def new_key(client, admin, **body) -> dict:
    resp = await client.post("/api/keys", headers=admin,
                             json={"name": "worker", "scopes": ["agents:read", "agents:write"]} | body)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    return await resp.json()


async def spawn_to(client, token: str, url: str) -> str:
    resp = await client.post("/api/spawn", headers=bearer(token),
                             json={"model": "k2p5", "task": "tell me", "webhook_url": url})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["agent_id"]


async def test_the_webhook_secret_is_its_own_shown_once_and_signs_the_spawns_webhooks(app_client):
    client, admin = app_client
    key = await new_key(client, admin)
    assert key["webhook_secret"].startswith("whsec_") and key["webhook_secret"] != key["secret"]
    listed = await (await client.get("/api/keys", headers=admin)).json()
    text = json.dumps(listed)
    assert key["webhook_secret"] not in text and key["secret"] not in text  # shown once, never listed
    [mine] = [k for k in listed["keys"] if k["key_id"] == key["key_id"]]
    assert mine["webhook_signing"] == "webhook_secret"
    rec = await Receiver(key["webhook_secret"]).start()
    try:
        await spawn_to(client, key["token"], rec.url)
        [got] = await rec.wait_for(1)
        assert rec.rejected == []
        assert got.signature == expected_signature(key["webhook_secret"], got.body)
        assert got.signature != expected_signature(key["secret"], got.body)
    finally:
        await rec.stop()
    # The audit log records the creation, never a secret.
    audit = await (await client.get("/api/security/audit", headers=admin,
                                    params={"resource_id": key["key_id"]})).json()
    assert audit["data"] and key["webhook_secret"] not in json.dumps(audit)


async def test_a_receiver_holding_the_webhook_secret_cannot_sign_requests(app_client):
    client, admin = app_client
    key = await new_key(client, admin, require_signature=True)

    async def signed_get(secret: str) -> int:
        ts = str(int(time.time()))
        headers = {**bearer(key["token"]), "X-Timestamp": ts,
                   "X-Signature": sign(secret, ts, "GET", "/api/agents", "")}
        return (await client.get("/api/agents", headers=headers)).status

    assert await signed_get(key["webhook_secret"]) == 401
    assert await signed_get(key["secret"]) == 200


async def test_rotating_the_webhook_secret_changes_what_receivers_verify(app_client, monkeypatch):
    monkeypatch.setattr(webhooks, "RETRY_BASE", 0.05)
    monkeypatch.setattr(webhooks, "RETRY_CAP", 0.2)
    client, admin = app_client
    key = await new_key(client, admin)
    old = key["webhook_secret"]
    down = Receiver(None)  # not started yet: the first spawn's delivery waits, pending
    pending_agent = await spawn_to(client, key["token"], down.url)
    hooks = client.app[SERVICES].webhooks
    [hook] = [h for h in hooks.hooks.values() if h.agent_id == pending_agent]
    for _ in range(250):  # bounded: the worker has tried (and failed) at least once
        row = await hooks.store.read(lambda c: c.execute(
            "SELECT attempts FROM deliveries WHERE webhook_id = ?", (hook.webhook_id,)).fetchone())
        if row and row["attempts"]:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the delivery was never attempted")

    resp = await client.post(f"/api/keys/{key['key_id']}/webhook-secret/rotate", headers=admin)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    rotated = await resp.json()
    new = rotated["webhook_secret"]
    assert new.startswith("whsec_") and new not in (old, key["secret"])
    assert rotated["pending_webhooks_resigned"] == 1
    # Nothing else changed: the key still authenticates, its request secret is the same.
    assert (await client.get("/api/agents", headers=bearer(key["token"]))).status == 200

    down.secret = new
    await down.start()
    rec = await Receiver(new).start()
    try:
        await spawn_to(client, key["token"], rec.url)
        [got] = await rec.wait_for(1)
        assert got.signature == expected_signature(new, got.body) != expected_signature(old, got.body)
        [late] = await down.wait_for(1)  # the one that waited is signed with the new secret too
        assert late.payload["data"]["agent_id"] == pending_agent
        assert late.signature == expected_signature(new, late.body)
        assert rec.rejected == [] and down.rejected == []
    finally:
        await rec.stop()
        await down.stop()


async def test_key_rotation_carries_the_webhook_secret_over(app_client):
    client, admin = app_client
    key = await new_key(client, admin)
    resp = await client.post(f"/api/keys/{key['key_id']}/rotate", headers=admin)
    assert resp.status == 201, await resp.text()
    successor = await resp.json()
    assert "webhook_secret" not in successor  # not new: the receivers keep theirs
    rec = await Receiver(key["webhook_secret"]).start()
    try:
        await spawn_to(client, successor["token"], rec.url)
        [got] = await rec.wait_for(1)
        assert got.signature == expected_signature(key["webhook_secret"], got.body)
    finally:
        await rec.stop()
    # The old key, in its grace period, hands the webhook secret to its successor: 400.
    resp = await client.post(f"/api/keys/{key['key_id']}/webhook-secret/rotate", headers=admin)
    assert resp.status == 400 and successor["key_id"] in (await resp.json())["error"]["message"]


async def test_webhook_secret_rotation_refusals(app_client):
    client, admin = app_client
    key = await new_key(client, admin)
    resp = await client.post("/api/keys/key_0000000000000000/webhook-secret/rotate", headers=admin)
    assert resp.status == 404
    resp = await client.post(f"/api/keys/{key['key_id']}/webhook-secret/rotate", headers=bearer(key["token"]))
    assert resp.status == 403  # admin:write, like every key route
    await client.delete(f"/api/keys/{key['key_id']}", headers=admin)
    resp = await client.post(f"/api/keys/{key['key_id']}/webhook-secret/rotate", headers=admin)
    assert resp.status == 400 and "revoked" in (await resp.json())["error"]["message"]


async def test_a_key_from_before_webhook_secrets_signs_with_its_request_secret_until_rotated(app_client):
    client, admin = app_client
    key = await new_key(client, admin)
    services = client.app[SERVICES]
    # As the migration leaves a key made by an older daemon: no webhook secret.
    await services.store.write(("UPDATE api_keys SET webhook_secret = NULL WHERE key_id = ?", (key["key_id"],)))
    await services.keys.reload()
    listed = await (await client.get("/api/keys", headers=admin)).json()
    assert {k["key_id"]: k["webhook_signing"] for k in listed["keys"]}[key["key_id"]] == "request_secret"
    rec = await Receiver(key["secret"]).start()
    try:
        await spawn_to(client, key["token"], rec.url)
        [got] = await rec.wait_for(1)
        assert got.signature == expected_signature(key["secret"], got.body)  # its receivers keep working
        resp = await client.post(f"/api/keys/{key['key_id']}/webhook-secret/rotate", headers=admin)
        new = (await resp.json())["webhook_secret"]
        rec.secret = new
        await spawn_to(client, key["token"], rec.url)
        await rec.wait_for(2)
        assert rec.received[1].signature == expected_signature(new, rec.received[1].body)
        assert rec.rejected == []
    finally:
        await rec.stop()


async def test_migration_leaves_existing_keys_without_a_webhook_secret(tmp_path):
    path = str(tmp_path / "j1msky.db")
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:5]:
        for stmt in _statements(script):
            conn.execute(stmt)
    conn.execute("PRAGMA user_version=5")
    conn.execute("INSERT INTO api_keys (key_id, name, token_hash, secret, scopes, created_at) "
                 "VALUES ('key_old', 'old', 'h', 'plain-secret', 'agents:read', 1)")
    conn.commit()
    conn.close()
    store = Store(path, encrypt=False)
    await asyncio.get_running_loop().run_in_executor(None, store.open)
    try:
        row = store.read_sync(lambda c: c.execute("SELECT webhook_secret FROM api_keys").fetchone())
        assert row["webhook_secret"] is None
    finally:
        await store.close()


def test_cli_create_shows_the_webhook_secret_once(tmp_path):
    out = run_cli("keys", "create", "--name", "n", "--scopes", "agents:write", "--state-dir",
                  str(tmp_path / "state"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    fields = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    assert fields["webhook secret"].strip().startswith("whsec_")
    assert fields["webhook secret"].strip() != fields["secret"].strip()
    listing = run_cli("keys", "list", "--json", "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    assert fields["webhook secret"].strip() not in listing.stdout
