"""Live events through real HTTP: GET /events cursor pages (the seed's shape), the
Server-Sent Events stream (in order, ``id:`` lines, resume with Last-Event-ID) and the
Kyros WebSocket (auth message, subscribe to event types and ``task_progress``, resume
with ``last_event_id``), with real aiohttp SSE and WebSocket clients.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json

import aiohttp
import pytest

from j1mskyd import events as events_mod
from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from tests.conftest import auth_config, bearer, bootstrap_key, make_config, wait_status


async def spawn(client, task: str = "count to three") -> str:
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": task})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["agent_id"]


async def spawn_done(client, n: int) -> list[str]:
    ids = [await spawn(client, f"task {i}") for i in range(n)]
    for agent_id in ids:
        await wait_status(client, agent_id)
    return ids


async def all_events(client, **params) -> list[dict]:
    resp = await client.get("/api/events", params={"limit": 500, **params})
    assert resp.status == 200
    return (await resp.json())["data"]


async def readers_gone(client, timeout: float = 3.0) -> None:
    """The server noticed every closed reader and dropped its subscription (no leak)."""
    subscribers = client.server.app[SERVICES].events.subscribers
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while subscribers:
        assert loop.time() < end, f"{len(subscribers)} reader(s) still subscribed"
        await asyncio.sleep(0.02)


async def burst(client, n: int) -> None:
    """``n`` agent.spawned events committed in one unit and published at once, as a
    spawn-batch does: more than a small queue holds before its reader runs."""
    log = client.server.app[SERVICES].events
    events, statements = [], []
    for i in range(n):
        event, stmts = log.statements("agent.spawned", {"agent_id": f"subagent_burst_{i}", "status": "queued"})
        events.append(event)
        statements += stmts
    await log.store.write(*statements)
    log.published(events)


def cursor_id(cursor: str) -> int:
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["id"]


# -- GET /events ------------------------------------------------------------------------------

async def test_events_cursor_pages_in_the_seed_shape(client):
    ids = await spawn_done(client, 4)  # 8 events: spawned + completed each
    resp = await client.get("/api/events", params={"limit": 3})
    first = await resp.json()
    assert resp.status == 200 and set(first) == {"data", "pagination"}
    assert first["pagination"]["has_more"] is True and len(first["data"]) == 3
    assert cursor_id(first["pagination"]["cursor"]) == first["data"][-1]["id"]

    seen, page = list(first["data"]), first
    while page["pagination"]["has_more"]:
        resp = await client.get("/api/events", params={"limit": 3, "cursor": page["pagination"]["cursor"]})
        page = await resp.json()
        seen += page["data"]
    assert len(seen) == 8 and [e["id"] for e in seen] == sorted({e["id"] for e in seen})
    assert all(set(e) >= {"event", "timestamp", "data", "id"} for e in seen)
    assert [e["data"]["agent_id"] for e in seen if e["event"] == "agent.spawned"] == ids
    assert {e["data"]["agent_id"] for e in seen if e["event"] == "agent.completed"} == set(ids)

    # The last cursor is where a poller waits: new events appear after it, nothing twice.
    cursor = page["pagination"]["cursor"]
    empty = await (await client.get("/api/events", params={"cursor": cursor})).json()
    assert empty["data"] == [] and empty["pagination"]["has_more"] is False
    assert empty["pagination"]["cursor"] == cursor
    new = await spawn_done(client, 1)
    later = await (await client.get("/api/events", params={"cursor": cursor})).json()
    assert [(e["event"], e["data"]["agent_id"]) for e in later["data"]] == [
        ("agent.spawned", new[0]), ("agent.completed", new[0])]

    # Filtered by type.
    done = await all_events(client, types="agent.completed")
    assert len(done) == 5 and {e["event"] for e in done} == {"agent.completed"}


async def test_the_seeds_cursor_is_accepted_and_bad_ones_are_400(client):
    await spawn_done(client, 1)
    resp = await client.get("/api/events", params={"limit": 50, "cursor": "eyJpZCI6MTIzNDV9"})
    body = await resp.json()
    assert resp.status == 200 and body["data"] == [] and body["pagination"]["has_more"] is False
    # Past the newest event (2): the cursor comes back at the newest, so that the events after it
    # are on the next page (it came back as 12345, and every event up to that id was skipped).
    assert cursor_id(body["pagination"]["cursor"]) == 2
    later = await spawn_done(client, 1)
    nxt = await (await client.get("/api/events", params={"cursor": body["pagination"]["cursor"]})).json()
    assert [e["data"]["agent_id"] for e in nxt["data"]] == later * 2  # its spawned and completed
    bad = ["!!!", "abc123", base64.b64encode(b"not json").decode(), base64.b64encode(b'{"id":"7"}').decode(),
           base64.b64encode(b'{"id":-1}').decode(), base64.b64encode(b"[1]").decode(),
           base64.b64encode(b'{"id":true}').decode(), base64.b64encode(b"\xff\xfe").decode()]
    for cursor in bad:
        resp = await client.get("/api/events", params={"cursor": cursor})
        answer = await resp.json()
        assert resp.status == 400, (cursor, answer)
        assert answer["error"]["details"][0]["field"] == "cursor"
    deep = base64.b64encode(b"[" * 5000).decode()  # json.loads' RecursionError: it was a 500
    assert (await client.get("/api/events", params={"cursor": deep})).status == 400
    for params in ({"limit": "0"}, {"limit": "501"}, {"limit": "x"}, {"types": "agent.exploded"},
                   {"limit": "1_0"}, {"limit": " 5"}, {"limit": "\uff15"}):
        assert (await client.get("/api/events", params=params)).status == 400, params


# -- SSE ----------------------------------------------------------------------------------------

class Sse:
    """A minimal EventSource: parses ``id:``/``event:``/``data:`` fields into events."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.retry: int | None = None
        self.comments = 0

    async def next(self, timeout: float = 5.0) -> dict | None:
        """The next event, or None when the server ended the stream."""
        fields: dict[str, str] = {}
        while True:
            line = await asyncio.wait_for(self.resp.content.readline(), timeout)
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if text == "":
                if "data" in fields:  # live-only events (agent.output) carry no id
                    return {"id": int(fields.get("id", 0)), "event": fields["event"],
                            "data": json.loads(fields["data"])}
                fields = {}
                continue
            if text.startswith(":"):
                self.comments += 1
                continue
            name, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "retry":
                self.retry = int(value)
            else:
                fields[name] = value

    async def take(self, n: int, timeout: float = 5.0) -> list[dict]:
        out = []
        for _ in range(n):
            event = await self.next(timeout)
            assert event is not None, f"stream ended after {len(out)} of {n} events"
            out.append(event)
        return out


async def open_sse(client, path: str = "/api/events/stream", **headers) -> Sse:
    resp = await client.get(path, headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return Sse(resp)


async def test_sse_in_order_with_ids_and_resume_with_last_event_id(client):
    before = await spawn_done(client, 1)  # history: replayed to a new reader from the start
    sse = await open_sse(client)
    ids = [await spawn(client, f"live {i}") for i in range(3)]
    got = await sse.take(8)  # 2 historical + 6 live
    assert sse.retry == 3000
    assert [e["id"] for e in got] == sorted(e["id"] for e in got) and len({e["id"] for e in got}) == 8
    assert all(e["id"] == e["data"]["id"] and e["event"] == e["data"]["event"] for e in got)
    assert [e["data"]["data"]["agent_id"] for e in got if e["event"] == "agent.spawned"] == before + ids
    sse.resp.close()  # the reader goes away...
    await readers_gone(client)

    last = got[-1]["id"]
    missed = [await spawn(client, f"missed {i}") for i in range(2)]
    for agent_id in missed:
        await wait_status(client, agent_id)
    # ...and comes back with Last-Event-ID, as a browser's EventSource does.
    sse = await open_sse(client, **{"Last-Event-ID": str(last)})
    again = await sse.take(4)
    assert [e["id"] for e in again] == list(range(last + 1, last + 5))
    assert {e["data"]["data"]["agent_id"] for e in again} == set(missed)
    live = await spawn(client, "after the resume")
    [nxt] = await sse.take(1)
    assert nxt["id"] == last + 5 and nxt["event"] == "agent.spawned" and nxt["data"]["data"]["agent_id"] == live
    sse.resp.close()
    await readers_gone(client)

    # The query-string form, a type filter, and a bad Last-Event-ID.
    sse = await open_sse(client, "/api/events/stream?types=agent.completed&last_event_id=0")
    done = await sse.take(6)
    assert {e["event"] for e in done} == {"agent.completed"}
    assert [e["data"]["data"]["agent_id"] for e in done][:1] == before
    sse.resp.close()
    await readers_gone(client)
    for bad in ("yesterday", "1_0", "+5"):
        resp = await client.get("/api/events/stream", headers={"Last-Event-ID": bad})
        assert resp.status == 400, bad


async def test_a_resume_point_past_the_newest_event_hears_the_events_after_it(client):
    # An id from another daemon, or from before this one's database was replaced: the new
    # events, numbered from below it, were all dropped as already sent; the stream stayed silent.
    await spawn_done(client, 1)
    sse = await open_sse(client, **{"Last-Event-ID": "99999999"})
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "subscribe", "events": ["*"], "last_event_id": 99999999})
        await ws_next(ws)
        agent_id = await spawn(client, "after the far resume")
        heard = await sse.take(2)
        assert [e["event"] for e in heard] == ["agent.spawned", "agent.completed"]
        assert {e["data"]["data"]["agent_id"] for e in heard} == {agent_id}
        assert [m["data"]["agent_id"] for m in await ws_take(ws, 2)] == [agent_id, agent_id]
    sse.resp.close()
    await readers_gone(client)


async def test_events_committed_during_the_replay_come_live_in_the_order_they_happened(client):
    """An agent streams and finishes while a new reader's history is being read: its
    agent.output (live only, queued) reaches the reader before its agent.completed (stored,
    also queued), and each only once; the replay stops where the subscription began."""
    before = await spawn_done(client, 1)
    log = client.server.app[SERVICES].events
    read = log.after

    async def after_while_an_agent_finishes(*args, **kwargs):
        log.publish_live("agent.output", {"agent_id": "subagent_late_1", "index": 0, "delta": "hi"})
        await log.emit("agent.completed", {"agent_id": "subagent_late_1", "status": "completed"})
        return await read(*args, **kwargs)

    log.after = after_while_an_agent_finishes
    sse = await open_sse(client, "/api/events/stream?types=agent.output,agent.completed")
    got = await sse.take(3)
    assert [(e["event"], e["data"]["data"]["agent_id"]) for e in got] == [
        ("agent.completed", before[0]), ("agent.output", "subagent_late_1"), ("agent.completed", "subagent_late_1")]
    assert got[0]["id"] < got[2]["id"] and got[1]["id"] == 0
    [after] = await spawn_done(client, 1)  # the next stored event follows: the late one was not sent twice
    rest = [await sse.next()]
    while rest[-1]["event"] != "agent.completed":
        rest.append(await sse.next())
    assert rest[-1]["data"]["data"]["agent_id"] == after and rest[-1]["id"] > got[2]["id"]
    sse.resp.close()
    await readers_gone(client)


async def test_sse_reader_too_slow_is_cut_off_and_resumes_without_loss(client, monkeypatch):
    monkeypatch.setattr(events_mod, "QUEUE_SIZE", 3)
    sse = await open_sse(client, "/api/events/stream?types=agent.spawned")
    await burst(client, 1)
    got = await sse.take(1)  # the reader is past its replay, live
    await burst(client, 10)
    while (event := await sse.next()) is not None:  # the server ends the stream
        got.append(event)
    assert len(got) < 11
    sse = await open_sse(client, "/api/events/stream?types=agent.spawned", **{"Last-Event-ID": str(got[-1]["id"])})
    got += await sse.take(11 - len(got))
    assert len({e["id"] for e in got}) == 11 and [e["id"] for e in got] == sorted(e["id"] for e in got)
    sse.resp.close()
    await readers_gone(client)


# -- WebSocket ----------------------------------------------------------------------------------

async def ws_next(ws, timeout: float = 5.0) -> dict:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def ws_take(ws, n: int, timeout: float = 5.0) -> list[dict]:
    return [await ws_next(ws, timeout) for _ in range(n)]


async def test_websocket_subscribe_to_types_in_order(client):
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "subscribe", "events": ["agent.completed"]})
        assert await ws_next(ws) == {"type": "subscribed", "events": ["agent.completed"]}
        ids = await spawn_done(client, 3)
        got = await ws_take(ws, 3)
        assert [m["type"] for m in got] == ["agent.completed"] * 3
        assert [m["event"] for m in got] == ["agent.completed"] * 3
        assert [m["id"] for m in got] == sorted(m["id"] for m in got)
        assert {m["data"]["agent_id"] for m in got} == set(ids)
        await ws.send_json({"type": "ping"})
        assert await ws_next(ws) == {"type": "pong"}
        await ws.send_str("not json")
        assert (await ws_next(ws))["type"] == "error"
        await ws.send_json({"type": "teleport"})
        assert (await ws_next(ws))["type"] == "error"
        await ws.send_json({"type": "subscribe", "events": "agent.completed"})
        assert (await ws_next(ws))["type"] == "error"


async def test_websocket_task_progress_in_the_kyros_shape(client):
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"type": "subscribe", "events": ["task_progress"]})
        assert (await ws_next(ws))["type"] == "subscribed"
        agent_id = await spawn(client)
        await wait_status(client, agent_id)
        queued, done = await ws_take(ws, 2)
        for msg in (queued, done):
            assert msg["type"] == "task_progress" and set(msg) >= {"type", "data", "timestamp"}
            assert msg["data"]["task_id"] == agent_id
        assert (queued["data"]["status"], done["data"]["status"]) == ("queued", "completed")
        assert queued["id"] < done["id"]


async def test_websocket_resume_with_last_event_id(client):
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "subscribe", "events": ["*"]})
        await ws_next(ws)
        await spawn_done(client, 1)
        got = await ws_take(ws, 2)
    last = got[-1]["id"]
    missed = await spawn_done(client, 2)
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "subscribe", "events": ["agent.spawned", "agent.completed"],
                            "last_event_id": last})
        await ws_next(ws)
        again = await ws_take(ws, 4)
        assert [m["id"] for m in again] == list(range(last + 1, last + 5))
        assert {m["data"]["agent_id"] for m in again} == set(missed)
        live = await spawn(client)
        nxt = await ws_next(ws)
        assert nxt["id"] == last + 5 and nxt["data"]["agent_id"] == live
        done = await ws_next(ws)
        assert (done["id"], done["type"], done["data"]["agent_id"]) == (last + 6, "agent.completed", live)
        with pytest.raises(asyncio.TimeoutError):  # nothing more, nothing twice
            await ws_next(ws, timeout=0.3)
    await readers_gone(client)


async def test_websocket_too_slow_is_closed_and_can_resume(client, monkeypatch):
    monkeypatch.setattr(events_mod, "QUEUE_SIZE", 3)
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "subscribe", "events": ["agent.spawned"]})
        await ws_next(ws)
        await burst(client, 1)
        got = [await ws_next(ws)]  # the pump is past its replay, live
        await burst(client, 10)
        while True:
            msg = await asyncio.wait_for(ws.receive(), 5)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            got.append(json.loads(msg.data))
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING), (msg, got)
        assert msg.data == 4008, (msg, got)  # the close frame says why
    events = [m for m in got if m["type"] == "agent.spawned"]
    assert len(events) < 11
    notice = got[-1]
    assert notice["type"] == "error" and notice["last_event_id"] == events[-1]["id"]
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "subscribe", "events": ["agent.spawned"],
                            "last_event_id": notice["last_event_id"]})
        await ws_next(ws)
        events += await ws_take(ws, 11 - len(events))
    assert len({m["id"] for m in events}) == 11


async def test_websocket_auth_when_auth_is_on(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    token = bootstrap_key(cfg)["token"]
    headers = bearer(token)

    async with client.ws_connect("/ws") as ws:  # subscribing first is refused
        await ws.send_json({"type": "subscribe", "events": ["*"]})
        assert (await ws_next(ws))["type"] == "error"
        await ws.send_json({"type": "auth", "token": "j1_not_a_real_token"})
        answer = await ws_next(ws)
        assert answer["type"] == "auth" and answer["success"] is False
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 4401

    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "auth", "token": token})
        assert await ws_next(ws) == {"type": "auth", "success": True}
        await ws.send_json({"type": "subscribe", "events": ["agent.spawned"]})
        assert (await ws_next(ws))["type"] == "subscribed"
        resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "hi"}, headers=headers)
        agent_id = (await resp.json())["agent_id"]
        msg = await ws_next(ws)
        assert msg["type"] == "agent.spawned" and msg["data"]["agent_id"] == agent_id

    async with client.ws_connect(f"/ws?token={token}") as ws:  # never from the URL
        answer = await ws_next(ws)
        assert answer["type"] == "error" and "not accepted" in answer["message"]
        await ws.send_json({"type": "subscribe", "events": ["*"]})
        assert (await ws_next(ws))["type"] == "error"  # still unauthenticated

    # SSE and GET /events take the key as a header, like every /api route.
    assert (await client.get("/api/events/stream")).status == 401
    # (types: the refused WebSocket auth above is a security.violation event, like an HTTP refusal)
    sse = await open_sse(client, "/api/events/stream?types=agent.spawned", **headers)
    [event] = await sse.take(1)
    assert event["event"] == "agent.spawned"
    sse.resp.close()
    await readers_gone(client)


async def test_streaming_provider_sends_agent_output_deltas_to_live_readers(aiohttp_client, tmp_path, fake_upstream):
    from j1mskyd.providers import ProviderSettings
    from tests.conftest import route_models
    fake_upstream.reply_text = "def reverse(s): return s[::-1]"
    base = make_config(tmp_path)
    providers = dict(base.providers) | {"up": ProviderSettings(name="up", plugin="openai_compat",
                                                               base_url=fake_upstream.url + "/v1")}
    cfg = dataclasses.replace(base, providers=providers, models=route_models(base, {"k2p5": "up"}))
    client = await aiohttp_client(build_app(cfg))
    sse = await open_sse(client, "/api/events/stream?types=agent.output,agent.completed")
    spawned = await (await client.post("/api/spawn", json={"model": "k2p5", "task": "reverse a string"})).json()
    deltas, done = [], None
    while done is None:
        event = await sse.next()
        assert event is not None
        if event["event"] == "agent.output":
            assert event["id"] == 0 and event["data"]["data"]["agent_id"] == spawned["agent_id"]
            deltas.append(event["data"]["data"]["delta"])
        else:
            done = event
    assert "".join(deltas) == fake_upstream.reply_text
    assert done["data"]["data"]["result"] == fake_upstream.reply_text and done["id"] > 0
    status = await wait_status(client, spawned["agent_id"])
    assert status["usage"] == {"input_tokens": 11, "output_tokens": 7}  # the stream's own usage chunk
    assert fake_upstream.calls[-1]["json"]["stream"] is True
    sse.resp.close()


async def test_without_live_readers_the_provider_is_not_streamed(aiohttp_client, tmp_path, fake_upstream):
    from j1mskyd.providers import ProviderSettings
    from tests.conftest import route_models
    base = make_config(tmp_path)
    providers = dict(base.providers) | {"up": ProviderSettings(name="up", plugin="openai_compat",
                                                               base_url=fake_upstream.url + "/v1")}
    cfg = dataclasses.replace(base, providers=providers, models=route_models(base, {"k2p5": "up"}))
    client = await aiohttp_client(build_app(cfg))
    spawned = await (await client.post("/api/spawn", json={"model": "k2p5", "task": "no one watches"})).json()
    assert (await wait_status(client, spawned["agent_id"]))["status"] == "completed"
    assert "stream" not in fake_upstream.calls[-1]["json"]


async def test_agent_started_reaches_live_readers_only(client):
    sse = await open_sse(client, "/api/events/stream?types=agent.started,agent.completed")
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "started?"})
    agent_id = (await resp.json())["agent_id"]
    # Either order: a reader that connects just before the spawn may get agent.completed from
    # its replay of the log before the live agent.started (live-only events are never replayed).
    got = {e["event"]: e for e in await sse.take(2)}
    started, completed = got["agent.started"], got["agent.completed"]
    assert started["event"] == "agent.started" and started["data"]["data"]["agent_id"] == agent_id
    assert started["data"]["data"]["status"] == "running" and started["id"] == 0  # live: nothing to resume
    assert completed["event"] == "agent.completed"
    sse.resp.close()
    stored = await (await client.get("/api/events?types=agent.started")).json()
    assert stored["data"] == []
    resp = await client.post("/api/webhooks", json={"url": "https://hooks.invalid/h", "events": ["agent.started"]})
    body = await resp.json()
    assert resp.status == 400 and "live readers only" in body["error"]["message"]


async def test_a_websocket_message_larger_than_a_request_body_may_be_closes_the_socket(aiohttp_client, tmp_path):
    """A WebSocket message is held to max_body_bytes like an HTTP body (aiohttp's default
    is 4 MiB, parsed as JSON even before the socket has authenticated)."""
    cfg = auth_config(tmp_path)
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, max_body_bytes=1000))
    client = await aiohttp_client(build_app(cfg))
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"type": "ping", "pad": "x" * 900})
        assert await ws_next(ws) == {"type": "pong"}
        await ws.send_json({"type": "ping", "pad": "x" * 2000})
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) \
            and ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
