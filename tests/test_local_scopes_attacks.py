"""Attacks on [security] local_scopes (issue 16) that its own tests do not make: what the
keyless local caller inherits from a daemon that once ran without authentication.  Real
app, real store, loopback only."""

from __future__ import annotations

import dataclasses

from j1mskyd.app import build_app
from j1mskyd.config import WebhooksConfig
from tests.conftest import auth_config, bearer, bootstrap_key, make_config

LOCAL = ("agents:read", "agents:write", "billing:read")
RECEIVER = "http://127.0.0.1:9/hook"  # never contacted: the hook is paused


def _loopback_hooks(cfg):
    return dataclasses.replace(cfg, webhooks=WebhooksConfig(allowed_networks=("127.0.0.0/8",)))


async def test_a_webhook_made_with_authentication_off_is_not_the_local_caller_s(aiohttp_client, tmp_path):
    """A webhook registered while authentication was off has no maker, so it hears every
    key's events; once keys are on, the keyless local caller (who sees only ownerless work)
    must neither see it, read its deliveries nor repoint it to its own receiver."""
    before = await aiohttp_client(build_app(_loopback_hooks(make_config(tmp_path))))
    made = await before.post("/api/webhooks", json={"url": RECEIVER, "events": ["*"], "active": False})
    assert made.status == 201, await made.text()
    hook_id = (await made.json())["webhook_id"]
    await before.close()

    cfg = _loopback_hooks(auth_config(tmp_path, local_scopes=LOCAL))
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])
    listed = await (await client.get("/api/webhooks")).json()
    assert hook_id not in [h["webhook_id"] for h in listed["data"]], listed
    for method, path, body in (("GET", f"/api/webhooks/{hook_id}", None),
                               ("GET", f"/api/webhooks/{hook_id}/deliveries", None),
                               ("PUT", f"/api/webhooks/{hook_id}", {"url": "http://127.0.0.1:10/mine"}),
                               ("POST", f"/api/webhooks/{hook_id}/test", None),
                               ("DELETE", f"/api/webhooks/{hook_id}", None)):
        resp = await client.request(method, path, json=body)
        assert resp.status == 404, (method, path, await resp.text())
    # The admin still has it, unchanged.
    seen = await (await client.get(f"/api/webhooks/{hook_id}", headers=admin)).json()
    assert seen["url"] == RECEIVER, seen
    # The local caller's own webhooks are its own.
    own = await client.post("/api/webhooks", json={"url": RECEIVER, "events": ["agent.completed"], "active": False})
    assert own.status == 201, await own.text()
    own_id = (await own.json())["webhook_id"]
    assert (await client.put(f"/api/webhooks/{own_id}", json={"description": "mine"})).status == 200


async def test_a_trusted_proxy_that_does_not_name_its_client_does_not_make_it_local(aiohttp_client, tmp_path):
    """Behind a trusted proxy on this host the client is what its X-Forwarded-For names.  A
    proxy that names nobody (no header) or names its client in a form that is no bare address
    ("unknown", an address with a port) leaves the peer's loopback address as the client, and
    that must not make a LAN client the local caller.  Header values only: nothing connects
    to these addresses."""
    cfg = auth_config(tmp_path, local_scopes=LOCAL, trusted_proxies=("127.0.0.0/8",))
    client = await aiohttp_client(build_app(cfg))
    for forwarded in (None, "unknown", "192.0.2.5:4711", "[2001:db8::5]:443", "192.0.2.5, unknown", ""):
        headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
        resp = await client.get("/api/agents", headers=headers)
        assert resp.status == 401, (forwarded, await resp.text())
    # A loopback client behind it (every hop an address on this host) is still local.
    for forwarded in ("127.0.0.1", "::1", "127.0.0.1, 127.0.0.2"):
        resp = await client.get("/api/agents", headers={"X-Forwarded-For": forwarded})
        assert resp.status == 200, (forwarded, await resp.text())
