"""A WebSocket ``subscribe`` without ``last_event_id`` starts live: the stored log is not
replayed (issue 16: it used to replay every stored event).  With ``last_event_id`` it replays
what came after that id (0: everything) first, as before; a bad one is an error message and
no subscription."""

from __future__ import annotations

import pytest

from tests.conftest import wait_status
from tests.test_events_live import spawn, ws_next


async def _done(client, task: str) -> str:
    agent_id = await spawn(client, task)
    await wait_status(client, agent_id)
    return agent_id


async def test_subscribe_without_last_event_id_replays_nothing(client):
    old = await _done(client, "before the socket")
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "subscribe", "events": ["agent.completed"]})
        assert (await ws_next(ws))["type"] == "subscribed"
        new = await _done(client, "after the socket")
        first = await ws_next(ws)
        # Events go out in id order: had the old completion been replayed, it would come first.
        assert first["type"] == "agent.completed" and first["data"]["agent_id"] == new != old


async def test_subscribe_with_last_event_id_replays_after_it(client):
    old = await _done(client, "before the socket")
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "subscribe", "events": ["agent.completed"], "last_event_id": 0})
        assert (await ws_next(ws))["type"] == "subscribed"
        replayed = await ws_next(ws)
        assert replayed["data"]["agent_id"] == old
        # Resuming after that event: nothing older again, the next live one comes.
        await ws.send_json({"type": "subscribe", "events": ["agent.completed"], "last_event_id": replayed["id"]})
        assert (await ws_next(ws))["type"] == "subscribed"
        new = await _done(client, "after")
        assert (await ws_next(ws))["data"]["agent_id"] == new


@pytest.mark.parametrize("bad", [-1, 2**63, "5", 1.5, True, [1], {"id": 1}])
async def test_a_bad_last_event_id_is_an_error_and_no_subscription(client, bad):
    await _done(client, "before")
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "subscribe", "events": ["agent.completed"], "last_event_id": bad})
        error = await ws_next(ws)
        assert error["type"] == "error" and error["code"] == 400 and "last_event_id" in error["message"]
        # Not subscribed: the next message answered is the ping's pong, not an event.
        await _done(client, "while not subscribed")
        await ws.send_json({"type": "ping"})
        assert await ws_next(ws) == {"type": "pong"}


async def test_null_last_event_id_means_live_too(client):
    await _done(client, "before")
    async with client.ws_connect("/ws") as ws:
        await ws.send_json({"type": "subscribe", "events": ["agent.completed"], "last_event_id": None})
        assert (await ws_next(ws))["type"] == "subscribed"
        new = await _done(client, "after")
        assert (await ws_next(ws))["data"]["agent_id"] == new
