"""Live streams obey their key, all the time (issue 12, item 1), and a key in its rotation
grace period cannot be rotated again (item 6).

Real daemon app on a loopback test server, real SSE and WebSocket clients, a real second
process (``j1mskyd keys revoke``) and a second sqlite connection on the same database for
changes made outside the daemon.  "Closed within 1 s" is asserted with the generous BOUND
(shared, noisy machines); the closing is pushed by the key change, so nothing here has to
send a frame to make it happen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.signing import sign
from j1mskyd.security_request import BlockRequest
from tests.conftest import auth_config, bearer, bootstrap_key
from tests.daemon import run_cli
from tests.test_events_live import Sse, ws_next

BOUND = 5.0  # seconds; the daemon promises 1 s (docs/security.md)


# -- helpers ------------------------------------------------------------------------------------

async def start(aiohttp_client, cfg):
    client = await aiohttp_client(build_app(cfg))
    return client, bearer(bootstrap_key(cfg)["token"])


# admin:read: the streams here must see the admin's probe agents (a key with agents:read alone
# sees only its own work since issue 15); it grants agents:read, whose loss closes them.
async def make_key(client, admin, name: str, scopes=("admin:read",), require_signature: bool = False) -> dict:
    resp = await client.post("/api/keys", json={"name": name, "scopes": list(scopes),
                                                "require_signature": require_signature}, headers=admin)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def open_sse(client, headers, path: str = "/api/events/stream") -> Sse:
    resp = await client.get(path, headers=headers)
    assert resp.status == 200, await resp.text()
    return Sse(resp)


async def open_ws(client, token: str, path: str = "/api/ws", **auth):
    """A WebSocket authenticated by its auth message and subscribed to every event."""
    ws = await client.ws_connect(path)
    await ws.send_json({"type": "auth", "token": token, **auth})
    assert await ws_next(ws) == {"type": "auth", "success": True}
    await ws.send_json({"type": "subscribe", "events": ["*"]})
    assert (await ws_next(ws))["type"] == "subscribed"
    return ws


async def sse_ends(sse: Sse, timeout: float = BOUND) -> None:
    """The server ends the stream (events still in flight may come first)."""
    async with asyncio.timeout(timeout):
        while await sse.next(timeout) is not None:
            pass


async def ws_closed(ws, timeout: float = BOUND) -> tuple[int, str]:
    """The server closes the socket: its close code and reason (events in flight may come first)."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.CLOSE:
                # The code in the server's close frame: ws.close_code turns into 1006 when the
                # client's reply to it cannot be sent any more (a loaded machine, a quick server).
                return msg.data, msg.extra or ""
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return ws.close_code, msg.extra or ""


async def spawn(client, admin) -> str:
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "hello"}, headers=admin)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["agent_id"]


async def sse_sees(sse: Sse, agent_id: str) -> None:
    while True:
        event = await sse.next(BOUND)
        assert event is not None, "the stream ended"
        if event["data"]["data"].get("agent_id") == agent_id:  # the SSE data is the event's payload
            return


async def ws_sees(ws, agent_id: str) -> None:
    while True:
        msg = await ws_next(ws, BOUND)
        if msg.get("data", {}).get("agent_id") == agent_id:
            return


async def still_open(client, admin, sses=(), sockets=()) -> None:
    """These streams keep receiving: a new agent's event reaches each of them."""
    agent_id = await spawn(client, admin)
    for sse in sses:
        await sse_sees(sse, agent_id)
    for ws in sockets:
        await ws_sees(ws, agent_id)


def db_path(cfg) -> Path:
    return Path(cfg.server.state_dir) / "j1msky.db"


def edit_db(cfg, sql: str, params: tuple) -> None:
    """A change made outside the daemon (an operator's sqlite3, another process)."""
    conn = sqlite3.connect(db_path(cfg), isolation_level=None)
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


async def two_keys_streaming(aiohttp_client, cfg):
    """A victim key and a bystander key, each with an open SSE stream and WebSocket."""
    client, admin = await start(aiohttp_client, cfg)
    victim = await make_key(client, admin, "victim")
    other = await make_key(client, admin, "bystander")
    streams = {}
    for name, key in (("victim", victim), ("other", other)):
        streams[name] = (await open_sse(client, bearer(key["token"])), await open_ws(client, key["token"]))
    await still_open(client, admin, [s for s, _ in streams.values()], [w for _, w in streams.values()])
    return client, admin, victim, streams


async def assert_victim_closed(client, admin, streams, reason: str) -> None:
    sse, ws = streams["victim"]
    code, why = await ws_closed(ws)
    assert (code, why) == (4401, reason)
    await sse_ends(sse)
    other_sse, other_ws = streams["other"]
    await still_open(client, admin, [other_sse], [other_ws])
    assert not other_ws.closed


# -- revocation, expiry, scope: every open stream of the key is closed -------------------------

async def test_revoke_over_http_closes_that_keys_streams_and_no_other(aiohttp_client, tmp_path):
    client, admin, victim, streams = await two_keys_streaming(aiohttp_client, auth_config(tmp_path))
    resp = await client.delete(f"/api/keys/{victim['key_id']}", headers=admin)
    assert resp.status == 200
    await assert_victim_closed(client, admin, streams, "key revoked")


async def test_revoked_websocket_cannot_subscribe_or_authenticate_again(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client, admin = await start(aiohttp_client, cfg)
    victim = await make_key(client, admin, "victim")
    ws = await client.ws_connect("/api/ws")
    await ws.send_json({"type": "auth", "token": victim["token"]})
    assert await ws_next(ws) == {"type": "auth", "success": True}
    assert (await client.delete(f"/api/keys/{victim['key_id']}", headers=admin)).status == 200
    assert await ws_closed(ws) == (4401, "key revoked")  # closed though it never subscribed
    with pytest.raises(ConnectionResetError):
        await ws.send_json({"type": "subscribe", "events": ["*"]})
    async with client.ws_connect("/api/ws") as again:
        await again.send_json({"type": "auth", "token": victim["token"]})
        answer = await ws_next(again)
        assert answer["success"] is False, answer
        assert answer["error_type"] == "INVALID_API_KEY"
        assert await ws_closed(again) == (4401, "INVALID_API_KEY")


async def test_revoke_from_the_cli_process_closes_the_streams(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client, admin, victim, streams = await two_keys_streaming(aiohttp_client, cfg)
    loop = asyncio.get_running_loop()
    out = await loop.run_in_executor(None, lambda: run_cli(
        "keys", "revoke", victim["key_id"], "--state-dir", cfg.server.state_dir, cwd=tmp_path))
    assert out.returncode == 0, out.stderr
    await assert_victim_closed(client, admin, streams, "key revoked")


async def test_end_of_the_rotation_grace_period_closes_the_streams(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path, key_rotation_grace_hours=2.0 / 3600)  # two seconds
    client, admin, victim, streams = await two_keys_streaming(aiohttp_client, cfg)
    resp = await client.post(f"/api/keys/{victim['key_id']}/rotate", headers=admin)
    assert resp.status == 201
    successor = await resp.json()
    # During the grace period the old key's streams keep working (and nothing else is sent
    # after this: the end of the grace is a timer, not a check made when a frame goes out).
    await still_open(client, admin, [streams["victim"][0]], [streams["victim"][1]])
    sse, ws = streams["victim"]
    assert await ws_closed(ws, 2.0 + BOUND) == (4401, "key expired")
    await sse_ends(sse)
    new_ws = await open_ws(client, successor["token"])
    await still_open(client, admin, [streams["other"][0]], [streams["other"][1], new_ws])


async def test_an_expiry_set_outside_the_daemon_closes_the_streams(aiohttp_client, tmp_path):
    """Keys get an expiry only from rotation; an operator's edit of the database is noticed
    by the refresh and then timed like the grace period's end."""
    cfg = auth_config(tmp_path)
    client, admin, victim, streams = await two_keys_streaming(aiohttp_client, cfg)
    edit_db(cfg, "UPDATE api_keys SET expires_at = ? WHERE key_id = ?", (time.time() + 1.0, victim["key_id"]))
    await assert_victim_closed(client, admin, streams, "key expired")


async def test_losing_the_scope_closes_the_streams(aiohttp_client, tmp_path):
    """No interface changes a key's scopes; an edit of the database does, and is obeyed."""
    cfg = auth_config(tmp_path)
    client, admin, victim, streams = await two_keys_streaming(aiohttp_client, cfg)
    edit_db(cfg, "UPDATE api_keys SET scopes = 'billing:read' WHERE key_id = ?", (victim["key_id"],))
    await assert_victim_closed(client, admin, streams, "key lacks scope agents:read")


async def test_a_key_used_on_the_root_websocket_and_by_header_is_held_too(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client, admin = await start(aiohttp_client, cfg)
    victim = await make_key(client, admin, "victim")
    root = await open_ws(client, victim["token"], "/ws")
    by_header = await client.ws_connect("/api/v1/ws", headers=bearer(victim["token"]))
    await by_header.send_json({"type": "subscribe", "events": ["*"]})  # no auth message needed
    assert (await ws_next(by_header))["type"] == "subscribed"
    assert (await client.delete(f"/api/keys/{victim['key_id']}", headers=admin)).status == 200
    for ws in (root, by_header):
        assert await ws_closed(ws) == (4401, "key revoked")
    assert not client.server.app[SERVICES].keys._watches  # nothing left holding the key


# -- one authentication path: signatures, audit, IP checks, rate limits ------------------------

def signed(secret: str, ts: int, path: str = "/api/ws") -> dict[str, str]:
    return {"timestamp": str(ts), "signature": sign(secret, str(ts), "GET", path, "")}


async def test_a_key_that_must_sign_cannot_stream_with_its_token_alone(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client, admin = await start(aiohttp_client, cfg)
    strict = await make_key(client, admin, "strict", require_signature=True)
    token, secret, now = strict["token"], strict["secret"], int(time.time())

    async with client.ws_connect("/api/ws") as ws:  # the token alone, in the auth message
        await ws.send_json({"type": "auth", "token": token})
        answer = await ws_next(ws)
        assert answer["success"] is False, answer
        assert answer == {"type": "auth", "success": False, "error_type": "SIGNATURE_REQUIRED", "code": 401,
                          "error": answer["error"]}
        assert await ws_closed(ws) == (4401, "SIGNATURE_REQUIRED")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # the token alone, in the upgrade's headers
        await client.ws_connect("/api/ws", headers=bearer(token))
    assert refused.value.status == 401
    resp = await client.get("/api/events/stream", headers=bearer(token))
    assert resp.status == 401 and (await resp.json())["error"]["type"] == "SIGNATURE_REQUIRED"
    async with client.ws_connect("/api/ws") as ws:  # a signature over another path
        await ws.send_json({"type": "auth", "token": token, **signed(secret, now, "/api/events")})
        assert (await ws_next(ws))["error_type"] == "INVALID_SIGNATURE"

    # Signed: the auth message over "GET <upgrade path>", or the upgrade's own headers.
    ws = await open_ws(client, token, **signed(secret, now - 1))
    sse = await open_sse(client, {**bearer(token), "X-Timestamp": str(now - 2),
                                  "X-Signature": sign(secret, str(now - 2), "GET", "/api/events/stream", "")})
    by_header = await client.ws_connect("/api/ws", headers={
        **bearer(token), "X-Timestamp": str(now - 3), "X-Signature": sign(secret, str(now - 3), "GET", "/api/ws", "")})
    await by_header.send_json({"type": "subscribe", "events": ["*"]})
    assert (await ws_next(by_header))["type"] == "subscribed"
    await still_open(client, admin, [sse], [ws, by_header])

    async with client.ws_connect("/api/ws") as replay:  # the same auth message again
        await replay.send_json({"type": "auth", "token": token, **signed(secret, now - 1)})
        assert (await ws_next(replay))["error_type"] == "REPLAYED_REQUEST"


async def audit(client, admin, **filters) -> list[dict]:
    resp = await client.get("/api/security/audit", params={"limit": 100, **filters}, headers=admin)
    assert resp.status == 200
    return (await resp.json())["data"]


async def test_websocket_auth_writes_the_audit_entries_of_http(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client, admin = await start(aiohttp_client, cfg)
    user = await make_key(client, admin, "user")
    for token in ("jsk_not_a_real_token", None):
        async with client.ws_connect("/api/ws") as ws:
            await ws.send_json({"type": "auth", **({"token": token} if token else {})})
            assert (await ws_next(ws))["success"] is False
    assert (await client.get("/api/events", headers=bearer("jsk_not_a_real_token"))).status == 401
    ws = await open_ws(client, user["token"])

    found = {(e["details"]["path"], e["details"]["kind"]): e
             for e in await audit(client, admin, event="security.violation")}
    assert set(found) >= {("/api/ws", "invalid_api_key"), ("/api/ws", "missing_api_key"),
                          ("/api/events", "invalid_api_key")}
    over_ws, over_http = found[("/api/ws", "invalid_api_key")], found[("/api/events", "invalid_api_key")]
    same = ("event", "severity", "api_key_id", "ip_address")
    assert {k: over_ws[k] for k in same} == {k: over_http[k] for k in same}
    assert over_ws["details"]["method"] == "GET" and over_ws["ip_address"] == "127.0.0.1"
    used = await audit(client, admin, event="api.key.used", api_key_id=user["key_id"])
    assert len(used) == 1  # the WebSocket's auth message was this key's first use
    await ws.close()


async def test_websocket_auth_counts_against_the_rate_limit(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, other=3, per_ip=False))
    client, admin = await start(aiohttp_client, cfg)
    user = await make_key(client, admin, "user")
    for _ in range(2):
        assert (await client.get("/api/events", headers=bearer(user["token"]))).status == 200
    async with client.ws_connect("/api/ws") as ws:  # the third request of the key
        await ws.send_json({"type": "auth", "token": user["token"]})
        assert (await ws_next(ws))["success"] is True
    async with client.ws_connect("/api/ws") as ws:  # the fourth: over the limit
        await ws.send_json({"type": "auth", "token": user["token"]})
        answer = await ws_next(ws)
        assert answer["success"] is False, answer
        assert (answer["code"], answer["error_type"]) == (429, "RATE_LIMITED")
        assert await ws_closed(ws) == (4429, "RATE_LIMITED")
    assert (await client.get("/api/events", headers=bearer(user["token"]))).status == 429


async def test_each_websocket_subscribe_counts_against_the_rate_limit(aiohttp_client, tmp_path):
    """A subscribe replays history from the database, like a GET /api/events page or an SSE
    (re)connect, which are counted: so is it, or one socket could replay the log for ever."""
    cfg = auth_config(tmp_path)
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, other=3, per_ip=False))
    client, admin = await start(aiohttp_client, cfg)
    user = await make_key(client, admin, "user")
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"type": "auth", "token": user["token"]})  # the key's first request
        assert (await ws_next(ws))["success"] is True
        for _ in range(2):  # the second and third
            await ws.send_json({"type": "subscribe", "events": ["agent.spawned"], "last_event_id": 0})
            assert (await ws_next(ws))["type"] == "subscribed"
        await ws.send_json({"type": "subscribe", "events": ["*"], "last_event_id": 0})
        answer = await ws_next(ws)
        assert answer["type"] == "error" and answer["error_type"] == "RATE_LIMITED" and answer["retry_after"] >= 1
        await ws.send_json({"type": "ping"})  # still open, still subscribed as before
        assert await ws_next(ws) == {"type": "pong"}
    assert (await client.get("/api/events", headers=bearer(user["token"]))).status == 429

async def test_a_refused_address_cannot_open_or_authenticate_a_stream(aiohttp_client, tmp_path):
    outside = auth_config(tmp_path / "a", allowed_ips=("10.0.0.0/8",))  # loopback is not allowed
    client = await aiohttp_client(build_app(outside))
    token = bootstrap_key(outside)["token"]
    resp = await client.get("/api/events/stream", headers=bearer(token))
    assert resp.status == 403 and (await resp.json())["error"]["type"] == "IP_NOT_ALLOWED"
    for path in ("/api/ws", "/ws"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(path)
        assert refused.value.status == 403

    # Blocked after the upgrade: the auth message passes the same IP checks, and is refused.
    cfg = auth_config(tmp_path / "b")
    client, admin = await start(aiohttp_client, cfg)
    user = await make_key(client, admin, "user")
    async with client.ws_connect("/api/ws") as ws:
        await client.server.app[SERVICES].ip_control.block(BlockRequest(ip="127.0.0.1", reason="test"))
        await ws.send_json({"type": "auth", "token": user["token"]})
        answer = await ws_next(ws)
        assert answer["success"] is False, answer
        assert (answer["code"], answer["error_type"]) == (403, "IP_BLOCKED")
        assert await ws_closed(ws) == (4403, "IP_BLOCKED")


# -- rotation: one live successor at a time -----------------------------------------------------

async def keys_by_id(client, admin) -> dict[str, dict]:
    """Every key's standing; not last_used_at, which the admin's own requests move."""
    resp = await client.get("/api/keys", headers=admin)
    return {k["key_id"]: {f: v for f, v in k.items() if f != "last_used_at"} for k in (await resp.json())["keys"]}


async def test_rotating_a_key_in_its_grace_period_is_409_and_mints_nothing(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client, admin = await start(aiohttp_client, cfg)
    old = await make_key(client, admin, "worker")
    resp = await client.post(f"/api/keys/{old['key_id']}/rotate", headers=admin)
    assert resp.status == 201
    first = await resp.json()
    before = await keys_by_id(client, admin)

    resp = await client.post(f"/api/keys/{old['key_id']}/rotate", headers=admin)
    body = await resp.json()
    assert resp.status == 409 and body["success"] is False and body["error"]["type"] == "CONFLICT", body
    assert first["key_id"] in body["error"]["message"] and "token" not in body
    assert await keys_by_id(client, admin) == before

    loop = asyncio.get_running_loop()
    out = await loop.run_in_executor(None, lambda: run_cli(
        "keys", "rotate", old["key_id"], "--state-dir", cfg.server.state_dir, cwd=tmp_path))
    assert out.returncode == 2 and "already rotated" in out.stderr and "Traceback" not in out.stderr, out
    await client.server.app[SERVICES].keys.reload()  # what the CLI may have written, now
    assert await keys_by_id(client, admin) == before

    # The successor revoked: the old key, still in its grace period, may get a new one
    # (its deadline stays where it was).
    assert (await client.delete(f"/api/keys/{first['key_id']}", headers=admin)).status == 200
    resp = await client.post(f"/api/keys/{old['key_id']}/rotate", headers=admin)
    assert resp.status == 201
    second = await resp.json()
    after = (await keys_by_id(client, admin))[old["key_id"]]
    assert after["rotated_to"] == second["key_id"] and after["expires_at"] == before[old["key_id"]]["expires_at"]


async def test_two_rotations_at_once_mint_one_successor(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client, admin = await start(aiohttp_client, cfg)
    old = await make_key(client, admin, "raced")
    answers = await asyncio.gather(*(client.post(f"/api/keys/{old['key_id']}/rotate", headers=admin)
                                     for _ in range(2)))
    assert sorted(r.status for r in answers) == [201, 409]
    named = [k for k in (await keys_by_id(client, admin)).values() if k["name"] == "raced"]
    assert len(named) == 2  # the old key and one successor


# -- the key service's side: watches and the refresh pace ----------------------------------------

@pytest.fixture
async def key_service(tmp_path):
    from j1mskyd.keys import KeyService
    from j1mskyd.store import Store

    store = Store(str(tmp_path / "state" / "j1msky.db"))
    store.open()
    yield KeyService(store, grace_seconds=3600)
    await store.close()


async def lost_within(seen: list[str], timeout: float = BOUND) -> None:
    async with asyncio.timeout(timeout):
        while not seen:
            await asyncio.sleep(0.01)


async def test_a_watch_is_told_once_and_one_failing_watcher_spares_the_others(key_service, caplog):
    made = await key_service.create("watched", ["agents:read"])
    told: list[str] = []

    def broken(reason: str) -> None:
        raise RuntimeError("a stream that cannot close")

    key_service.watch(made.key.key_id, "agents:read", broken)
    kept = key_service.watch(made.key.key_id, "agents:read", told.append)
    gone = key_service.watch(made.key.key_id, "agents:read", told.append)
    key_service.unwatch(gone)
    await asyncio.sleep(0)  # the first look (call_soon): still active, nobody told
    assert told == []
    await key_service.revoke(made.key.key_id, "test")
    assert told == ["key revoked"] and kept.lost == "key revoked"  # at once: no refresh, no frame
    assert "closing a stream" in caplog.text
    await key_service.reload()
    assert told == ["key revoked"]  # once
    late: list[str] = []
    key_service.watch(made.key.key_id, "agents:read", late.append)  # already revoked: told on the next turn
    await lost_within(late)
    assert late == ["key revoked"] and not key_service._watches


async def test_the_refresh_looks_every_half_second_while_a_stream_watches(key_service, monkeypatch):
    from j1mskyd import keys as keys_mod

    made = await key_service.create("watched", ["agents:read"])
    monkeypatch.setattr(keys_mod, "REFRESH_SECONDS", 3600.0)  # the idle pace, made endless
    waiting = asyncio.ensure_future(key_service.wait_refresh())
    await asyncio.sleep(0)
    assert not waiting.done()
    watch = key_service.watch(made.key.key_id, "agents:read", lambda reason: None)
    async with asyncio.timeout(BOUND):  # the first watcher cuts the idle sleep short
        await waiting
    delays: list[float] = []
    real_sleep = asyncio.sleep
    monkeypatch.setattr(keys_mod.asyncio, "sleep", lambda d: delays.append(d) or real_sleep(0))
    await key_service.wait_refresh()
    assert delays == [keys_mod.STREAM_REFRESH_SECONDS] and keys_mod.STREAM_REFRESH_SECONDS <= 0.5
    key_service.unwatch(watch)
    assert key_service._timer is None


async def test_a_first_watcher_moves_the_next_look_to_the_stream_pace_without_a_look_of_its_own(key_service, monkeypatch):
    """A chat call watches its key: a watcher soon after a look must not cost a look of its own
    (a task step and a read in the answer's path), yet the next look comes at the stream pace."""
    from j1mskyd import keys as keys_mod

    made = await key_service.create("watched", ["agents:read"])
    monkeypatch.setattr(keys_mod, "REFRESH_SECONDS", 3600.0)
    monkeypatch.setattr(keys_mod, "STREAM_REFRESH_SECONDS", 30.0)  # a look 30 s after the last one
    await key_service.refresh()
    waiting = asyncio.ensure_future(key_service.wait_refresh())
    await asyncio.sleep(0)
    watch = key_service.watch(made.key.key_id, "agents:read", lambda reason: None)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()
    assert key_service._sleep is not None
    assert key_service._sleep.when() == pytest.approx(key_service._looked_at + 30.0)  # not the idle hour
    key_service.unwatch(watch)

    key_service._looked_at -= 31.0  # the last look is older than the stream pace: look at once
    watch = key_service.watch(made.key.key_id, "agents:read", lambda reason: None)
    async with asyncio.timeout(BOUND):
        await waiting
    key_service.unwatch(watch)


async def test_a_first_watcher_in_the_step_the_long_sleep_expires_is_no_error(key_service, monkeypatch):
    """The long sleep's timeout has fired but the refresher has not resumed yet: a first watcher
    then (a look began a moment ago) must not reschedule that expiring timeout, which raises.
    The timer is fired by hand while its deadline is still ahead, as uvloop's millisecond timers
    may fire a hair before it (a deadline behind the loop's clock is never rescheduled)."""
    from j1mskyd import keys as keys_mod

    monkeypatch.setattr(keys_mod, "REFRESH_SECONDS", 3600.0)
    made = await key_service.create("watched", ["agents:read"])
    waiting = asyncio.ensure_future(key_service.wait_refresh())
    await asyncio.sleep(0)
    sleep = key_service._sleep
    assert sleep is not None
    key_service._looked_at = asyncio.get_running_loop().time()  # a reload a moment ago
    sleep._on_timeout()  # it expires; the refresher resumes only at the next step
    assert key_service._sleep is sleep and sleep.expired()
    watch = key_service.watch(made.key.key_id, "agents:read", lambda reason: None)
    async with asyncio.timeout(BOUND):
        await waiting
    key_service.unwatch(watch)
