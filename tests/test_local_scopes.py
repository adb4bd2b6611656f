"""[security] local_scopes: what a caller on loopback may do without a key (issue 16).

The decision is tested with address values (grants_local): a test never connects to a
non-loopback address; a stranger is another loopback address (127.0.0.2), which is local
too, so "not loopback" is only ever an address value handed to the function.  The HTTP
tests run a real app on loopback with authentication on.  The route-walk proofs (the local
caller sees no key's work and reaches no admin route) are in tests/test_isolation.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress

import aiohttp
import pytest

from j1mskyd.app import build_app
from j1mskyd.config import ConfigError, embedded_default, load_config
from j1mskyd.local_access import GRANTABLE, browser_safe, grants_local, is_loopback
from j1mskyd.ratelimit import ENDPOINT_CLASSES
from tests.conftest import auth_config, bearer, bootstrap_key, wait_status
from tests.daemon import ROOT, write_config

LOCAL = ("agents:read", "agents:write", "billing:read")


# -- the decision, from address values --------------------------------------------------------------
@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "::ffff:127.0.0.1",
                                     ipaddress.ip_address("127.0.0.3")])
def test_loopback_addresses_are_local(address):
    assert is_loopback(address)
    assert grants_local(str(address), address, "agents:write", LOCAL)


@pytest.mark.parametrize("address", ["192.168.1.20", "10.0.0.7", "172.16.0.1", "169.254.169.254", "fd00::1",
                                     "fe80::1", "8.8.8.8", "::ffff:192.168.1.20", "0.0.0.0", "::", "", None,
                                     "localhost", "127.0.0.1.evil", "not an address"])
def test_other_addresses_are_not_local(address):
    assert not is_loopback(address)
    assert not grants_local(address, address, "agents:read", LOCAL)


def test_both_the_peer_and_the_resolved_client_must_be_loopback():
    # A trusted proxy on this host forwarding a LAN client: the peer is loopback, the client is not.
    assert not grants_local("127.0.0.1", ipaddress.ip_address("192.168.1.20"), "agents:read", LOCAL)
    # A LAN peer whose X-Forwarded-For claims loopback (believed or not): the peer decides.
    assert not grants_local("192.168.1.20", ipaddress.ip_address("127.0.0.1"), "agents:read", LOCAL)
    assert grants_local("127.0.0.1", ipaddress.ip_address("127.0.0.1"), "agents:read", LOCAL)


def test_only_granted_non_admin_scopes_pass():
    for scope in LOCAL:
        assert grants_local("127.0.0.1", "127.0.0.1", scope, LOCAL)
        assert not grants_local("127.0.0.1", "127.0.0.1", scope, ())
    assert not grants_local("127.0.0.1", "127.0.0.1", "agents:write", ("agents:read",))
    # An admin scope never, even in a list that was not validated; nor "key" (routes for any key)
    # or a route without a scope.
    for scope in ("admin:write", "admin:read", "key", None):
        assert not grants_local("127.0.0.1", "127.0.0.1", scope, (*LOCAL, "admin:write", "admin:read", "key"))


@pytest.mark.parametrize("host, origin", [
    ("127.0.0.1:8080", None), ("localhost:8080", None), ("localhost", None), ("[::1]:8080", None),
    ("127.0.0.2", None), ("127.0.0.1:8080", "http://localhost:8080"), ("127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("localhost", "https://[::1]")])
def test_a_loopback_host_without_a_foreign_origin_is_browser_safe(host, origin):
    assert browser_safe(host, origin)


@pytest.mark.parametrize("host, origin", [
    # DNS rebinding: a page whose own name now resolves to 127.0.0.1 sends that name as Host.
    ("evil.example:8080", None), ("raspberrypi.local:8080", None), ("192.168.1.5:8080", None),
    ("127.0.0.1.evil.example", None), ("", None), (None, None), ("[::1", None),
    # A cross-site form or fetch from a page in a browser on this machine carries its Origin.
    ("127.0.0.1:8080", "https://evil.example"), ("127.0.0.1:8080", "null"), ("127.0.0.1:8080", "file://"),
    ("127.0.0.1:8080", "http://127.0.0.1.evil.example"), ("127.0.0.1:8080", "ftp://localhost"),
    ("127.0.0.1:8080", "http://[::1")])
def test_a_web_page_is_never_the_local_caller(host, origin):
    assert not browser_safe(host, origin)


# -- configuration ---------------------------------------------------------------------------------
def _load(tmp_path, security: str):
    path = write_config(tmp_path / "config.toml")
    path.write_text(path.read_text(encoding="utf-8") + f"\n[security]\n{security}\n", encoding="utf-8")
    return load_config(path, env={})


def test_the_embedded_default_grants_agents_and_billing_and_a_file_that_does_not_say_none(tmp_path):
    assert embedded_default().security.local_scopes == LOCAL == GRANTABLE
    assert _load(tmp_path, "auth = true").security.local_scopes == ()
    assert _load(tmp_path, "local_scopes = []").security.local_scopes == ()
    assert _load(tmp_path, 'local_scopes = ["agents:read"]').security.local_scopes == ("agents:read",)


@pytest.mark.parametrize("value, message", [
    ('["admin:write"]', "admin:write cannot be granted without a key"),
    ('["agents:read", "admin:read"]', "admin:read cannot be granted without a key"),
    ('["agents:delete"]', "unknown scope(s) agents:delete"),
    ('["key"]', "unknown scope(s) key"),
    ('"agents:read"', "must be an array of non-empty strings"),
    ("true", "must be an array of non-empty strings"),
    ("1", "must be an array of non-empty strings"),
    ('[""]', "must be an array of non-empty strings"),
    ("[1]", "must be an array of non-empty strings"),
    ('["agents:read", "agents:read"]', "must not repeat an entry"),
    ("{}", "must be an array of non-empty strings"),
])
def test_bad_local_scopes_are_refused_with_a_clear_error(tmp_path, value, message):
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f"local_scopes = {value}")
    text = str(caught.value)
    assert "security.local_scopes" in text and message in text, text


def test_required_signatures_and_local_scopes_together_are_refused(tmp_path):
    """A keyless request cannot be signed: with every request required signed, granting
    loopback keyless access would leave it unsigned (found by the hostile review)."""
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, 'require_signatures = true\nlocal_scopes = ["agents:read"]')
    text = str(caught.value)
    assert "security.local_scopes" in text and "require_signatures" in text, text
    assert _load(tmp_path, "require_signatures = true\nlocal_scopes = []").security.require_signatures


def test_the_shipped_config_is_valid_and_says_what_it_grants():
    shipped = ROOT / "etc" / "j1msky" / "config.toml"
    text = shipped.read_text(encoding="utf-8")
    assert "local_scopes" in text
    assert load_config(shipped, env={}).security.local_scopes == LOCAL


# -- over HTTP ---------------------------------------------------------------------------------------
def _config(tmp_path, **security):
    return auth_config(tmp_path, **{"local_scopes": LOCAL, **security})


async def _start(aiohttp_client, cfg):
    client = await aiohttp_client(build_app(cfg))
    return client, bearer(bootstrap_key(cfg)["token"])


async def _error(resp, status: int) -> dict:
    body = await resp.json()
    assert resp.status == status, body
    assert body["success"] is False and body["error"]["code"] == status
    return body["error"]


async def test_a_keyless_local_caller_spawns_reads_and_bills_as_the_ownerless_anonymous(aiohttp_client, tmp_path):
    client, admin = await _start(aiohttp_client, _config(tmp_path))
    spawned = await client.post("/api/spawn", json={"model": "k2p5", "task": "hello"})
    assert spawned.status == 200, await spawned.text()
    agent_id = (await spawned.json())["agent_id"]
    done = await wait_status(client, agent_id)
    assert done["status"] == "completed"
    assert (await client.get("/api/billing/usage")).status == 200
    assert (await client.get("/api/orchestrator/status")).status == 200
    # No X-Budget-Remaining: that is a key's budget, and there is no key.
    assert "X-Budget-Remaining" not in spawned.headers
    # Ownerless: stored as "anonymous", as work made with authentication off.
    from j1mskyd.api.common import SERVICES
    row = await client.server.app[SERVICES].agents.store.read(
        lambda c: c.execute("SELECT api_key FROM agents WHERE agent_id = ?", (agent_id,)).fetchone())
    assert row[0] == "anonymous"
    # The audit log names the actor "local".
    entries = await (await client.get(f"/api/security/audit?event=agent.spawn&resource_id={agent_id}",
                                      headers=admin)).json()
    assert [(e["api_key_id"], e["ip_address"]) for e in entries["data"]] == [("local", "127.0.0.1")], entries


@pytest.mark.parametrize("path, method", [
    ("/api/keys", "GET"), ("/api/keys/me", "GET"), ("/api/keys", "POST"), ("/api/security/ip-whitelist", "GET"),
    ("/api/security/block-ip", "POST"), ("/api/security/audit", "GET"), ("/api/projects", "GET"),
    ("/api/pricing/webhook", "POST"), ("/api/cache/invalidate", "POST"), ("/api/v1/keys/me", "GET")])
async def test_a_keyless_local_caller_never_reaches_keys_security_or_admin_routes(aiohttp_client, tmp_path,
                                                                                  path, method):
    client, _ = await _start(aiohttp_client, _config(tmp_path))
    resp = await client.request(method, path, json={})
    error = await _error(resp, 401)
    assert error["type"] == "UNAUTHORIZED" and "API key required" in error["message"]


async def test_only_the_granted_scopes_are_open_and_none_with_an_empty_list(aiohttp_client, tmp_path):
    client, _ = await _start(aiohttp_client, _config(tmp_path, local_scopes=("agents:read",)))
    assert (await client.get("/api/agents")).status == 200
    await _error(await client.post("/api/spawn", json={"model": "k2p5", "task": "x"}), 401)
    await _error(await client.get("/api/billing/usage"), 401)


async def test_an_empty_local_scopes_requires_a_key_everywhere(aiohttp_client, tmp_path):
    client, _ = await _start(aiohttp_client, _config(tmp_path, local_scopes=()))
    for method, path in (("GET", "/api/agents"), ("POST", "/api/spawn"), ("GET", "/api/billing/usage")):
        await _error(await client.request(method, path, json={"model": "k2p5", "task": "x"}), 401)


async def test_with_authentication_off_nothing_changes(aiohttp_client, tmp_path):
    cfg = _config(tmp_path)
    cfg = dataclasses.replace(cfg, security=dataclasses.replace(cfg.security, auth=False))
    client = await aiohttp_client(build_app(cfg))
    assert (await client.get("/api/keys/me")).status == 200  # auth off: everything, as before


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer jsk_not-a-real-token"}, {"X-API-Key": "jsk_nope"}, {"Authorization": "Bearer"},
    {"Authorization": "Basic dXNlcjpwYXNz"}, {"X-API-Key": "   "}, {"Authorization": ""}])
async def test_a_request_that_carries_credentials_never_falls_back_to_local(aiohttp_client, tmp_path, headers):
    client, _ = await _start(aiohttp_client, _config(tmp_path))
    resp = await client.get("/api/agents", headers=headers)
    assert (await _error(resp, 401))["type"] in ("UNAUTHORIZED", "INVALID_API_KEY")


async def test_a_stranger_on_127_0_0_2_with_a_revoked_key_gets_401_not_local(aiohttp_client, tmp_path):
    """A second loopback address plays another machine's process: keyless it is local (loopback),
    with a revoked key it is refused, never served as the local caller."""
    client, admin = await _start(aiohttp_client, _config(tmp_path))
    made = await (await client.post("/api/keys", json={"name": "s", "scopes": list(LOCAL)}, headers=admin)).json()
    assert (await client.delete(f"/api/keys/{made['key_id']}", headers=admin)).status == 200
    url = str(client.make_url("/api/agents"))
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as stranger:
        async with stranger.get(url, headers=bearer(made["token"])) as resp:
            assert (await _error(resp, 401))["type"] == "INVALID_API_KEY"
        async with stranger.get(url) as resp:
            assert resp.status == 200  # 127.0.0.2 is loopback: the keyless local caller


async def test_a_cross_site_or_rebound_page_gets_401_keyless(aiohttp_client, tmp_path):
    client, _ = await _start(aiohttp_client, _config(tmp_path))
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Host": f"evil.example:{client.port}"}):
        resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "x"}, headers=headers)
        await _error(resp, 401)
    from j1mskyd.api.common import SERVICES
    assert client.server.app[SERVICES].runtime.live == {}  # nothing was spawned
    ok = await client.post("/api/spawn", json={"model": "k2p5", "task": "x"},
                           headers={"Origin": f"http://127.0.0.1:{client.port}"})
    assert ok.status == 200  # the dashboard served from loopback itself


async def test_x_forwarded_for_never_makes_a_request_local(aiohttp_client, tmp_path):
    # From a trusted proxy on this host, a forwarded LAN client is not local...
    client, _ = await _start(aiohttp_client, _config(tmp_path, trusted_proxies=("127.0.0.1",)))
    await _error(await client.get("/api/agents", headers={"X-Forwarded-For": "192.168.1.20"}), 401)
    # ...while a forwarded loopback client (a process on this host behind it) is.
    assert (await client.get("/api/agents", headers={"X-Forwarded-For": "127.0.0.1"})).status == 200


async def test_the_ip_guard_and_per_ip_limits_still_apply(aiohttp_client, tmp_path):
    cfg = _config(tmp_path)
    limits = {c: 1000 for c in ENDPOINT_CLASSES} | {"agents_list": 2}
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, per_ip=True, **limits))
    client, admin = await _start(aiohttp_client, cfg)
    assert (await client.post("/api/security/block-ip", json={"ip": "127.0.0.2", "reason": "test"},
                              headers=admin)).status in (200, 201)
    url = str(client.make_url("/api/agents"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as stranger:
        async with stranger.get(url) as resp:
            assert (await _error(resp, 403))["type"] == "IP_BLOCKED"
    statuses = [(await client.get("/api/agents")).status for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_a_keyless_websocket_is_local_and_a_bad_auth_message_still_closes_it(aiohttp_client, tmp_path):
    from tests.test_events_live import ws_next
    client, _ = await _start(aiohttp_client, _config(tmp_path))
    ws = await client.ws_connect("/api/ws")
    await ws.send_json({"type": "subscribe", "events": ["agent.completed"]})
    assert (await ws_next(ws))["type"] == "subscribed"
    agent_id = (await (await client.post("/api/spawn", json={"model": "k2p5", "task": "x"})).json())["agent_id"]
    event = await ws_next(ws)
    assert event["type"] == "agent.completed" and event["data"]["agent_id"] == agent_id
    await ws.send_json({"type": "auth", "token": "jsk_wrong"})
    answer = await ws_next(ws)
    assert answer["success"] is False and answer["code"] == 401
    await ws.close()
    # Without local_scopes the same socket must authenticate first.
    client2, _ = await _start(aiohttp_client, _config(tmp_path / "off", local_scopes=()))
    ws = await client2.ws_connect("/api/ws")
    await ws.send_json({"type": "subscribe", "events": ["*"]})
    assert "authenticate first" in (await ws_next(ws))["message"]
    await ws.close()
