"""Webhook registration fields the API reference's examples send (issue 16): ``"active": false``
registers a paused webhook, custom ``headers`` go with each delivery (never logged, never
shown), and ``{"url", "event"}`` (one name, the cookbook's Recipe 3) means ``events: [event]``.

Real receivers on loopback (tests/receiver.py check the signature of every delivery), a real
app and store; every bad value is a 400 that changes nothing."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.config import WebhooksConfig
from j1mskyd.webhook_request import RESERVED_HEADERS
from tests.conftest import make_config
from tests.receiver import Receiver

SECRET = "receiver-secret-123"  # tests/receiver.py's default: every delivery's signature is checked
TOKEN = "rcv-token-7f3a9c"      # a header value: secrets-adjacent, must never be logged or shown


@pytest.fixture
def config(tmp_path):
    cfg = make_config(tmp_path)
    return dataclasses.replace(cfg, webhooks=WebhooksConfig(allowed_networks=("127.0.0.0/8",)))


@pytest.fixture
async def receivers():
    recs = [await Receiver(secret=SECRET).start() for _ in range(2)]
    yield recs
    for rec in recs:
        await rec.stop()


async def _register(client, body, status: int = 201) -> dict:
    resp = await client.post("/api/webhooks", json=body)
    answer = await resp.json()
    assert resp.status == status, answer
    return answer


async def _count(client) -> int:
    return len(client.server.app[SERVICES].webhooks.hooks)


async def _test(client, hook_id: str) -> str:
    resp = await client.post(f"/api/webhooks/{hook_id}/test")
    assert resp.status == 202, await resp.text()
    return (await resp.json())["delivery_id"]


async def _status_of(client, hook_id: str, delivery_id: str) -> str:
    rows = (await (await client.get(f"/api/webhooks/{hook_id}/deliveries")).json())["data"]
    return next(r["status"] for r in rows if r["delivery_id"] == delivery_id)


# -- active ----------------------------------------------------------------------------------------
async def test_active_false_registers_a_paused_webhook_that_delivers_nothing_until_resumed(client, receivers):
    paused_rec, live_rec = receivers
    paused = await _register(client, {"url": paused_rec.url, "events": ["*"], "secret": SECRET, "active": False})
    assert paused["status"] == "paused" and paused["active"] is False
    live = await _register(client, {"url": live_rec.url, "events": ["*"], "secret": SECRET, "active": True})
    assert live["status"] == "active" and live["active"] is True
    waiting = await _test(client, paused["webhook_id"])
    await _test(client, live["webhook_id"])
    await live_rec.wait_for(1)  # the worker has run: the active webhook's delivery went out
    assert paused_rec.received == [] and paused_rec.rejected == []
    assert await _status_of(client, paused["webhook_id"], waiting) == "pending"
    # Resumed: what waited goes out.
    resp = await client.put(f"/api/webhooks/{paused['webhook_id']}", json={"active": True})
    assert resp.status == 200 and (await resp.json())["status"] == "active"
    await paused_rec.wait_for(1)
    assert paused_rec.received[0].delivery_id == waiting


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, [], {}, 1.5])
async def test_active_must_be_a_boolean(client, receivers, value):
    error = (await _register(client, {"url": receivers[0].url, "active": value}, 400))["error"]
    assert error["details"][0]["field"] == "active"
    assert await _count(client) == 0


@pytest.mark.parametrize("value", ["disabled", "PAUSED", "", 12345, None, True, [], {}])
async def test_a_new_webhook_s_status_is_active_or_paused(client, receivers, value):
    # It was ignored: any value registered the webhook active (a Kyros client asking for a
    # paused one got live deliveries).
    error = (await _register(client, {"url": receivers[0].url, "status": value}, 400))["error"]
    assert error["details"][0]["field"] == "status"
    assert await _count(client) == 0


async def test_status_paused_registers_a_paused_webhook_and_must_agree_with_active(client, receivers):
    paused = await _register(client, {"url": receivers[0].url, "status": "paused"})
    assert paused["status"] == "paused" and paused["active"] is False
    both = await _register(client, {"url": receivers[1].url, "status": "active", "active": True})
    assert both["status"] == "active"
    error = (await _register(client, {"url": receivers[1].url, "status": "active", "active": False}, 400))["error"]
    assert error["details"][0]["field"] == "active"
    assert await _count(client) == 2


async def test_put_active_and_status_must_agree(client, receivers):
    hook = await _register(client, {"url": receivers[0].url})
    resp = await client.put(f"/api/webhooks/{hook['webhook_id']}", json={"active": True, "status": "paused"})
    assert resp.status == 400 and (await resp.json())["error"]["details"][0]["field"] == "active"
    resp = await client.put(f"/api/webhooks/{hook['webhook_id']}", json={"active": False, "status": "paused"})
    assert resp.status == 200 and (await resp.json())["active"] is False


# -- headers ---------------------------------------------------------------------------------------
async def test_custom_headers_are_sent_with_each_delivery_and_never_shown_or_logged(client, receivers, caplog,
                                                                                   config, aiohttp_client):
    caplog.set_level(logging.DEBUG)
    rec = receivers[0]
    hook = await _register(client, {"url": rec.url, "events": ["*"], "secret": SECRET,
                                    "headers": {"Authorization": f"Bearer {TOKEN}", "X-Team": "ops"}})
    assert hook["headers"] == ["Authorization", "X-Team"]  # names only
    await _test(client, hook["webhook_id"])
    [got] = await rec.wait_for(1)
    assert got.headers["Authorization"] == f"Bearer {TOKEN}" and got.headers["X-Team"] == "ops"
    assert got.headers["Content-Type"] == "application/json" and got.signature  # the daemon's own still there
    shown = [await (await client.get(p)).text() for p in ("/api/webhooks", f"/api/webhooks/{hook['webhook_id']}",
                                                          f"/api/webhooks/{hook['webhook_id']}/deliveries")]
    store = client.server.app[SERVICES].store
    audit = await store.read(lambda c: [r[0] for r in c.execute("SELECT details FROM audit_log")])
    assert not [t for t in [*shown, caplog.text, *map(str, audit)] if TOKEN in t]
    # Kept across a restart, sealed at rest like the secret.
    raw = await store.read(lambda c: c.execute("SELECT value FROM settings WHERE name LIKE 'webhook.headers.%'")
                           .fetchall())
    assert len(raw) == 1 and (store.cipher is None or TOKEN not in raw[0][0])
    await client.close()
    again = await aiohttp_client(build_app(config))
    assert again.server.app[SERVICES].webhooks.hooks[hook["webhook_id"]].headers == (
        ("Authorization", f"Bearer {TOKEN}"), ("X-Team", "ops"))
    await _test(again, hook["webhook_id"])
    await rec.wait_for(2)
    assert rec.received[1].headers["Authorization"] == f"Bearer {TOKEN}"


async def test_put_replaces_headers_and_delete_removes_them(client, receivers):
    rec = receivers[0]
    hook = await _register(client, {"url": rec.url, "secret": SECRET, "headers": {"X-A": "1"}})
    resp = await client.put(f"/api/webhooks/{hook['webhook_id']}", json={"headers": {"X-B": "2"}})
    assert (await resp.json())["headers"] == ["X-B"]
    await _test(client, hook["webhook_id"])
    [got] = await rec.wait_for(1)
    assert got.headers.get("X-B") == "2" and "X-A" not in got.headers
    store = client.server.app[SERVICES].store

    async def rows() -> int:
        return await store.read(lambda c: c.execute(
            "SELECT COUNT(*) FROM settings WHERE name LIKE 'webhook.headers.%'").fetchone()[0])

    assert await rows() == 1
    assert (await client.put(f"/api/webhooks/{hook['webhook_id']}", json={"headers": {}})).status == 200
    assert await rows() == 0
    await client.put(f"/api/webhooks/{hook['webhook_id']}", json={"headers": {"X-C": "3"}})
    assert (await client.delete(f"/api/webhooks/{hook['webhook_id']}")).status == 200
    assert await rows() == 0


@pytest.mark.parametrize("name", sorted(RESERVED_HEADERS) + ["HOST", "content-LENGTH", "X-J1MSKY-Signature",
                                                             "x-j1msky-event", "X-J1MSKY-Delivery", "X-J1msky-Other"])
async def test_reserved_headers_are_refused(client, receivers, name):
    error = (await _register(client, {"url": receivers[0].url, "headers": {name: TOKEN}}, 400))["error"]
    assert error["details"][0]["field"] == "headers" and "cannot be set" in error["details"][0]["message"]
    assert TOKEN not in str(error)
    assert await _count(client) == 0


@pytest.mark.parametrize("headers", [
    [], "X-A: 1", 1, True, None,
    {"Bad Name": "x"}, {"": "x"}, {"a:b": "x"}, {"X-\u00e9": "x"}, {"x" * 65: "x"},
    {"X-A": f"{TOKEN}\r\nX-Evil: 1"}, {"X-A": f"{TOKEN}\n"}, {"X-A": 5}, {"X-A": None}, {"X-A": [TOKEN]},
    {"X-A": {"v": TOKEN}}, {"X-A": True}, {"X-A": "x" * 1025}, {"X-A": f"caf\u00e9{TOKEN}"},
    {"X-A": "1", "x-a": "2"}, {f"X-H{i}": "v" for i in range(21)},
])
async def test_bad_headers_are_a_400_that_quotes_no_value(client, receivers, headers):
    error = (await _register(client, {"url": receivers[0].url, "headers": headers}, 400))["error"]
    assert error["type"] == "VALIDATION_ERROR" and error["details"][0]["field"] == "headers"
    assert TOKEN not in str(error)
    assert await _count(client) == 0


# -- event (singular) ------------------------------------------------------------------------------
async def test_event_singular_means_events_with_that_one_name(client, receivers):
    hook = await _register(client, {"url": receivers[0].url, "event": "agent.failed"})
    assert hook["events"] == ["agent.failed"]
    assert (await _register(client, {"url": receivers[0].url, "event": "*"}))["events"] == ["*"]


@pytest.mark.parametrize("body, field, words", [
    ({"event": "agent.failed", "events": ["agent.completed"]}, "event", "not both"),
    ({"event": "agent.failed", "events": None}, "event", "not both"),
    # The cookbook's Recipe 3 sends a message as "event": it names no event, so nothing is registered.
    ({"event": "Competitor acme has changes: new pricing"}, "events", "Unknown event"),
    ({"event": "agent.output"}, "events", "live readers only"),
    ({"event": ["agent.failed"]}, "event", "one event name"),
    ({"event": None}, "event", "one event name"),
    ({"event": 5}, "event", "one event name"),
    ({"event": True}, "event", "one event name"),
    ({"event": {"type": "agent.failed"}}, "event", "one event name"),
    ({"event": ""}, "events", "Unknown event"),
])
async def test_bad_event_is_a_400(client, receivers, body, field, words):
    error = (await _register(client, {"url": receivers[0].url, **body}, 400))["error"]
    assert error["details"][0]["field"] == field and words in error["details"][0]["message"], error
    assert await _count(client) == 0
