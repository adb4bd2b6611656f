"""Webhooks through real HTTP: a real aiohttp receiver on loopback (tests/receiver.py)
checks every X-J1MSKY-Signature with the shared secret over the raw body and counts
deliveries by their X-J1MSKY-Delivery id, through failures, outages and a kill -9.

Covers CRUD and its 400/404s, the seed's payload shape and headers, routing by event
type, pausing, the test endpoint, the deliveries listing, retries with backoff,
giving up and redelivering, the per-endpoint pace, the slack and file sinks, a
drop-in sink plugin, durability across kill -9 of a subprocess daemon, and the
budget, security and rate-limit events.  The backoff and give-up tests run the shipped
constants on the app's injected clock (the test moves time); elsewhere RETRY_BASE, RETRY_CAP
and PER_MINUTE are patched small where a test needs a retry or a pace in real time.

The receivers listen on loopback, which the webhook target policy refuses unless the
operator allows it: every config here allows 127.0.0.0/8 in ``[webhooks]
allowed_networks`` (tests/test_webhook_targets.py shows that without it nothing arrives).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from datetime import datetime, timezone

import pytest

from j1mskyd import webhooks
from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.config import WebhooksConfig
from j1mskyd.providers import ProviderSettings
from tests import conftest
from tests.test_store_full import FullDisk, until
from tests.conftest import Clock, bearer, bootstrap_key, wait_status
from tests.daemon import Daemon
from tests.daemon import write_config as _write_config
from tests.fakeupstream import FakeUpstream
from tests.receiver import Receiver, expected_signature

SECRET = "receiver-secret-123"
LOOPBACK = WebhooksConfig(allowed_networks=("127.0.0.0/8",))


def make_config(tmp_path, **kw):
    return dataclasses.replace(conftest.make_config(tmp_path, **kw), webhooks=_webhooks(tmp_path))


def auth_config(tmp_path, **security):
    return dataclasses.replace(conftest.auth_config(tmp_path, **security), webhooks=_webhooks(tmp_path))


def _webhooks(tmp_path) -> WebhooksConfig:
    """Receivers on loopback; file webhooks in the test's tmp dir (its state dir stays refused)."""
    return dataclasses.replace(LOOPBACK, file_sink_dirs=(str(tmp_path),))


def write_config(path, **kw):
    path = _write_config(path, **kw)
    path.write_text(path.read_text() + '\n[webhooks]\nallowed_networks = ["127.0.0.0/8"]\n')
    return path


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path)


# -- helpers ------------------------------------------------------------------------------

@pytest.fixture
async def receiver():
    rec = await Receiver(SECRET).start()
    yield rec
    await rec.stop()


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(webhooks, "RETRY_BASE", 0.05)
    monkeypatch.setattr(webhooks, "RETRY_CAP", 0.2)


async def create_hook(client, **body) -> dict:
    resp = await client.post("/api/webhooks", json=body)
    answer = await resp.json()
    assert resp.status == 201, answer
    return answer["data"]


async def spawn(client, **body) -> str:
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "write a haiku"} | body)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["agent_id"]


async def deliveries(client, webhook_id: str, **params) -> list[dict]:
    resp = await client.get(f"/api/webhooks/{webhook_id}/deliveries", params=params)
    body = await resp.json()
    assert resp.status == 200, body
    return body["data"]


async def eventually(predicate, timeout: float = 5.0, what: str = "condition"):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}")
        await asyncio.sleep(0.02)


async def stored(client, webhook_id: str) -> list[dict]:
    """The webhook's delivery rows as stored (exact times, where the API shows seconds)."""
    rows = await client.app[SERVICES].store.read(lambda c: c.execute(
        "SELECT * FROM deliveries WHERE webhook_id = ? ORDER BY rowid", (webhook_id,)).fetchall())
    return [dict(r) for r in rows]


def bad_field(body: dict) -> str:
    return body["error"]["details"][0]["field"]


# -- CRUD -----------------------------------------------------------------------------------

async def test_crud_in_the_seed_and_kyros_shapes(client):
    resp = await client.post("/api/webhooks", json={"url": "https://hooks.invalid/hook",
                                                    "events": ["agent.completed", "agent.failed"],
                                                    "secret": "your_webhook_secret", "description": "mine"})
    body = await resp.json()
    assert resp.status == 201, body
    hook = body["data"]
    assert body["success"] is True and hook["id"].startswith("webhook_")
    assert hook["url"] == "https://hooks.invalid/hook" and hook["events"] == ["agent.completed", "agent.failed"]
    assert hook["status"] == "active" and hook["last_triggered"] is None and hook["sink"] == "http"
    assert "secret" not in hook and "secret" not in body  # never echoed back when the caller chose it
    datetime.fromisoformat(hook["created_at"].replace("Z", "+00:00"))

    listed = await (await client.get("/api/webhooks")).json()
    assert [h["id"] for h in listed["data"]] == [hook["id"]] and listed["count"] == 1
    got = await (await client.get(f"/api/webhooks/{hook['id']}")).json()
    assert got["data"] == hook

    resp = await client.put(f"/api/webhooks/{hook['id']}", json={"events": ["agent.spawned"], "status": "paused"})
    updated = (await resp.json())["data"]
    assert resp.status == 200 and updated["events"] == ["agent.spawned"] and updated["status"] == "paused"
    assert (await (await client.get(f"/api/webhooks/{hook['id']}")).json())["data"]["status"] == "paused"

    # No secret given: one is generated and shown once.
    resp = await client.post("/api/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["*"]})
    made = await resp.json()
    assert resp.status == 201 and len(made["data"]["secret"]) >= 32
    assert resp.headers["Cache-Control"] == "no-store"
    again = await (await client.get(f"/api/webhooks/{made['data']['id']}")).json()
    assert "secret" not in again["data"]

    resp = await client.delete(f"/api/webhooks/{hook['id']}")
    assert resp.status == 200
    for method, path in (("GET", ""), ("PUT", ""), ("DELETE", ""), ("POST", "/test"), ("GET", "/deliveries"),
                         ("POST", "/deliveries/dlv_0000/redeliver")):
        resp = await client.request(method, f"/api/webhooks/{hook['id']}{path}", json={"status": "active"})
        assert resp.status == 404, (method, path, await resp.text())
    resp = await client.post(f"/api/webhooks/{made['data']['id']}/deliveries/dlv_nope/redeliver")
    assert resp.status == 404
    assert [h["id"] for h in (await (await client.get("/api/webhooks")).json())["data"]] == [made["data"]["id"]]


@pytest.mark.parametrize("body, field", [
    ({"url": "ftp://hooks.invalid/x", "events": ["agent.completed"]}, "url"),
    ({"url": "not a url", "events": ["agent.completed"]}, "url"),
    ({"url": "http:///nohost", "events": ["agent.completed"]}, "url"),
    ({"events": ["agent.completed"]}, "url"),
    ({"url": "https://hooks.invalid/x", "events": ["agent.exploded"]}, "events"),
    ({"url": "https://hooks.invalid/x", "events": []}, "events"),
    ({"url": "https://hooks.invalid/x", "events": "agent.completed"}, "events"),
    ({"url": "https://hooks.invalid/x", "events": ["agent.completed"], "secret": "short"}, "secret"),
    ({"url": "https://hooks.invalid/x", "events": ["agent.completed"], "secret": 12345678}, "secret"),
    ({"url": "https://hooks.invalid/x", "events": ["agent.completed"], "sink": "carrier_pigeon"}, "sink"),
    ({"url": "https://hooks.invalid/x", "events": ["agent.completed"], "sink": "file"}, "url"),
    ({"url": "https://hooks.invalid/x", "events": ["agent.completed"], "description": 5}, "description"),
    # Stored as sent and sent as nobody meant: a space, a line break, a tab, a NUL, DEL.
    *(({"url": f"http://127.0.0.1:9/a{c}b", "events": ["agent.completed"]}, "url") for c in " \r\n\t\x00\x7f"),
])
async def test_create_validation_is_400_naming_the_field(client, body, field):
    resp = await client.post("/api/webhooks", json=body)
    answer = await resp.json()
    assert resp.status == 400, answer
    assert bad_field(answer) == field, answer
    assert (await (await client.get("/api/webhooks")).json())["count"] == 0


async def test_update_validation_and_bad_bodies(client):
    hook = await create_hook(client, url="https://hooks.invalid/x", events=["agent.completed"], secret=SECRET)
    path = f"/api/webhooks/{hook['id']}"
    for body, field in (({"status": "sleeping"}, "status"), ({"events": ["nope"]}, "events"),
                        ({"secret": "short"}, "secret"), ({"url": "gopher://x"}, "url"),
                        ({"sink": "slack"}, "sink"), ({}, "body")):
        resp = await client.put(path, json=body)
        answer = await resp.json()
        assert resp.status == 400 and bad_field(answer) == field, (body, answer)
    resp = await client.post("/api/webhooks", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    resp = await client.post("/api/webhooks", json=["a", "list"])
    assert resp.status == 400
    assert (await (await client.get(path)).json())["data"] == hook  # nothing changed


async def test_webhooks_need_agents_scopes_and_events_need_read(aiohttp_client, tmp_path):
    """Webhooks are a key's own (issue 15): reading them takes agents:read, making them agents:write."""
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    admin = bootstrap_key(cfg)["token"]
    tokens = {}
    for scope in ("agents:read", "billing:read"):
        resp = await client.post("/api/keys", json={"name": scope, "scopes": [scope]}, headers=bearer(admin))
        assert resp.status in (200, 201), await resp.text()
        tokens[scope] = (await resp.json())["token"]
    reader = tokens["agents:read"]
    assert (await client.get("/api/webhooks")).status == 401
    assert (await client.get("/api/webhooks", headers=bearer(tokens["billing:read"]))).status == 403
    assert (await client.get("/api/webhooks", headers=bearer(reader))).status == 200
    resp = await client.post("/api/webhooks", json={"url": "https://example.com/h"}, headers=bearer(reader))
    assert resp.status == 403  # agents:write makes them
    assert (await client.get("/api/webhooks", headers=bearer(admin))).status == 200
    assert (await client.get("/api/events")).status == 401
    assert (await client.get("/api/events", headers=bearer(reader))).status == 200


# -- delivery -----------------------------------------------------------------------------------

async def test_seed_payload_signed_over_the_raw_body(client, receiver):
    hook = await create_hook(client, url=receiver.url, events=["agent.completed", "agent.failed"], secret=SECRET)
    before = time.time()
    agent_id = await spawn(client, task="Write Python function")
    done = await wait_status(client, agent_id)
    [got] = await receiver.wait_for(1)
    assert receiver.rejected == []
    # The exact HMAC over the bytes as sent (not over a re-serialisation).
    assert got.signature == expected_signature(SECRET, got.body)
    assert got.signature.startswith("sha256=") and len(got.signature) == 7 + 64
    assert got.event == "agent.completed" and got.headers["Content-Type"].startswith("application/json")
    assert got.delivery_id.startswith("dlv_")
    payload = got.payload
    assert set(payload) >= {"event", "timestamp", "data"}
    assert payload["event"] == "agent.completed"
    ts = datetime.strptime(payload["timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    assert before - 1 <= ts <= time.time() + 1  # a receiver can refuse old deliveries by it
    data = payload["data"]
    assert data["agent_id"] == agent_id and data["model"] == done["model"]
    assert data["task"] == "Write Python function" and data["result"] == done["result"]
    assert data["cost"] == done["cost"] and data["status"] == "completed"

    [row] = await deliveries(client, hook["id"])
    assert row["delivery_id"] == got.delivery_id and row["status"] == "delivered" and row["attempts"] == 1
    assert row["event"] == "agent.completed" and row["last_error"] is None
    view = (await (await client.get(f"/api/webhooks/{hook['id']}")).json())["data"]
    assert view["last_triggered"] is not None


async def test_retention_removes_old_events_and_their_settled_deliveries(client, receiver):
    hook = await create_hook(client, url=receiver.url, events=["agent.completed"], secret=SECRET)
    await wait_status(client, await spawn(client, task="old news"))
    await receiver.wait_for(1)
    await eventually(lambda: deliveries(client, hook["id"], status="delivered"), what="the delivery settled")
    events = client.app[SERVICES].events
    await events.purge(7)                      # nothing is 7 days old yet
    assert len(await deliveries(client, hook["id"])) == 1
    real = events.clock
    events.clock = lambda: real() + 8 * 86_400
    await events.purge(7)
    assert await deliveries(client, hook["id"]) == []
    assert (await (await client.get("/api/events")).json())["data"] == []


async def test_event_ids_go_on_after_every_event_was_purged_and_the_daemon_restarted(aiohttp_client, tmp_path):
    # The next id was MAX(id) + 1 of the events stored: with all of them purged (a week without
    # events), a start numbered from 1 again, and a receiver dropping the ids it had seen (the
    # documented recipe) dropped the new events.
    cfg = make_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    await wait_status(client, await spawn(client))
    events = client.app[SERVICES].events
    seen = events.newest
    assert seen >= 2
    real = events.clock
    events.clock = lambda: real() + 8 * 86_400
    await events.purge(7)
    assert (await (await client.get("/api/events")).json())["data"] == []
    await client.close()
    client = await aiohttp_client(build_app(cfg))
    await wait_status(client, await spawn(client))
    ids = [e["id"] for e in (await (await client.get("/api/events")).json())["data"]]
    assert ids == [seen + 1, seen + 2]


async def test_a_paused_webhook_keeps_its_events_past_retention_until_it_is_deleted(client, receiver):
    """What docs/webhooks.md says of a webhook paused for good: its pending deliveries, and the
    events they carry, outlive the 7 days; deleting it settles them, and the next purge takes both."""
    hook = await create_hook(client, url=receiver.url, events=["agent.completed"], secret=SECRET, active=False)
    await wait_status(client, await spawn(client, task="while paused"))
    await eventually(lambda: deliveries(client, hook["id"], status="pending"), what="a pending delivery")
    events = client.app[SERVICES].events
    real = events.clock
    events.clock = lambda: real() + 8 * 86_400
    await events.purge(7)
    assert len(await deliveries(client, hook["id"], status="pending")) == 1
    kept = (await (await client.get("/api/events?types=agent.completed")).json())["data"]
    assert len(kept) == 1 and kept[0]["data"]["task"] == "while paused"
    assert (await client.delete(f"/api/webhooks/{hook['id']}")).status == 200
    await events.purge(7)
    assert (await (await client.get("/api/events?types=agent.completed")).json())["data"] == []
    assert await stored(client, hook["id"]) == [] and receiver.received == []


async def test_a_wrong_secret_is_refused_by_the_receiver_and_retried(client, receiver, fast_retries):
    hook = await create_hook(client, url=receiver.url, events=["agent.completed"], secret="not-the-receivers")
    await wait_status(client, await spawn(client))
    await receiver.wait_for(2, what="rejected")
    assert receiver.received == []
    [row] = await deliveries(client, hook["id"])
    assert row["status"] == "pending" and row["attempts"] >= 2 and row["last_status"] == 401
    assert "401" in row["last_error"]
    # The operator fixes the secret: the pending delivery then arrives, same delivery id.
    resp = await client.put(f"/api/webhooks/{hook['id']}", json={"secret": SECRET})
    assert resp.status == 200
    [got] = await receiver.wait_for(1)
    assert got.delivery_id == row["delivery_id"]


async def test_an_endless_answer_is_read_only_so_far_and_the_delivery_counts(client, receiver):
    # A receiver answering 2xx with a body that never ends: the daemon read it all into memory
    # for its 10 s (gigabytes on loopback) and then counted the delivery as failed.  Only the
    # first ANSWER_READ bytes are read; the connection is closed on the rest.
    receiver.endless = True
    hook = await create_hook(client, url=receiver.url, events=["agent.completed"], secret=SECRET)
    await client.post(f"/api/webhooks/{hook['id']}/test")

    async def delivered():
        return [r for r in await deliveries(client, hook["id"]) if r["status"] == "delivered"]

    await eventually(delivered, timeout=5.0, what="the delivery counted as delivered")
    await receiver.wait_for(1, what="received")

    async def hung_up():
        return receiver.hung_up == 1

    await eventually(hung_up, what="the daemon hanging up")


async def test_routing_by_event_type(client, receiver):
    other = await Receiver(SECRET, path="/other").start()
    try:
        done_hook = await create_hook(client, url=receiver.url, events=["agent.completed"], secret=SECRET)
        spawn_hook = await create_hook(client, url=other.url, events=["agent.spawned"], secret=SECRET)
        ids = [await spawn(client) for _ in range(3)]
        for agent_id in ids:
            await wait_status(client, agent_id)
        await receiver.wait_for(3)
        await other.wait_for(3)
        # A delivery row is written with its event, and each hook has 3 (below): none is left to come.
        assert receiver.events() == ["agent.completed"] * 3
        assert other.events() == ["agent.spawned"] * 3
        assert [p["data"]["agent_id"] for p in other.payloads()] == ids  # in order
        assert sorted(p["data"]["agent_id"] for p in receiver.payloads()) == sorted(ids)
        assert len(await deliveries(client, done_hook["id"])) == 3
        assert len(await deliveries(client, spawn_hook["id"])) == 3
    finally:
        await other.stop()


async def test_paused_hook_gets_nothing_until_resumed_then_what_was_pending(client, receiver):
    hook = await create_hook(client, url=receiver.url, events=["agent.completed"], secret=SECRET)
    await wait_status(client, await spawn(client))
    await receiver.wait_for(1)
    resp = await client.put(f"/api/webhooks/{hook['id']}", json={"status": "paused"})
    assert resp.status == 200
    paused_ids = [await spawn(client) for _ in range(2)]
    for agent_id in paused_ids:
        await wait_status(client, agent_id)
    test = await (await client.post(f"/api/webhooks/{hook['id']}/test")).json()
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 1  # nothing while paused
    pending = await deliveries(client, hook["id"], status="pending")
    assert len(pending) == 3, pending
    resp = await client.put(f"/api/webhooks/{hook['id']}", json={"status": "active"})
    assert resp.status == 200
    await receiver.wait_for(4)
    await asyncio.sleep(0.1)
    assert len(receiver.received) == 4
    later = receiver.payloads()[1:]
    assert sorted(p["data"]["agent_id"] for p in later if p["event"] == "agent.completed") == sorted(paused_ids)
    assert test["delivery_id"] in receiver.delivery_ids()
    assert await deliveries(client, hook["id"], status="pending") == []


async def test_test_endpoint_sends_a_signed_test_event_to_that_hook_only(client, receiver):
    other = await Receiver(SECRET, path="/other").start()
    try:
        hook = await create_hook(client, url=receiver.url, events=["agent.completed"], secret=SECRET)
        everything = await create_hook(client, url=other.url, events=["*"], secret=SECRET)
        resp = await client.post(f"/api/webhooks/{hook['id']}/test")
        answer = await resp.json()
        assert resp.status == 202 and answer["success"] is True and answer["delivery_id"].startswith("dlv_")
        # Even the "*" hook gets no delivery of another hook's test: none is written for it (a
        # delivery row is written with the event, before the 202), so none can go out later.
        assert await deliveries(client, everything["id"]) == []
        [got] = await receiver.wait_for(1)
        assert got.delivery_id == answer["delivery_id"] and got.event == "webhook.test"
        assert got.signature == expected_signature(SECRET, got.body)
        assert got.payload["data"]["webhook_id"] == hook["id"]
        assert other.received == []
    finally:
        await other.stop()


async def stored_delivery(client, webhook_id: str, attempts: int) -> dict:
    """The hook's one delivery row as stored, once it has seen ``attempts`` attempts."""

    async def read() -> dict | None:
        rows = await stored(client, webhook_id)
        return rows[0] if rows and rows[0]["attempts"] >= attempts else None

    return await eventually(read, what=f"attempt {attempts} to be stored")


async def test_failing_receiver_is_retried_with_backoff_until_it_recovers(aiohttp_client, tmp_path, receiver):
    """The shipped schedule (RETRY_BASE 5 s, doubled at each failure, +-20 %), on the app's
    injected clock: the test moves time to each attempt instead of sleeping through it."""
    clock = Clock(time.time())
    client = await aiohttp_client(build_app(make_config(tmp_path), clock=clock))
    hooks = client.app[SERVICES].webhooks
    receiver.fail = True
    hook = await create_hook(client, url=receiver.url, events=["agent.completed"], secret=SECRET)
    await wait_status(client, await spawn(client))
    for attempt in range(1, 5):
        await receiver.wait_for(attempt, what="failed")
        row = await stored_delivery(client, hook["id"], attempt)
        assert row["status"] == "pending" and row["attempts"] == attempt
        assert row["last_status"] == 500 and "500" in row["last_error"]
        backoff = webhooks.RETRY_BASE * 2 ** (attempt - 1)
        assert 0.8 * backoff <= row["next_attempt_at"] - clock.t <= 1.2 * backoff, (attempt, row)
        clock.t = row["next_attempt_at"] - 0.5  # not yet due: nothing is sent
        hooks.wake()
        await asyncio.sleep(0.2)
        assert len(receiver.failed) == attempt
        receiver.fail = attempt < 4  # the receiver is back for the fifth
        clock.t = row["next_attempt_at"]
        hooks.wake()
    [got] = await receiver.wait_for(1)
    assert len({r.delivery_id for r in receiver.failed} | {got.delivery_id}) == 1  # the same delivery each time
    [row] = await deliveries(client, hook["id"])
    assert row["status"] == "delivered" and row["attempts"] == len(receiver.failed) + 1 == 5
    assert row["last_error"] is None and row["last_status"] is None  # the 500s are over: it was delivered


async def test_events_queued_behind_a_failing_delivery_wait_for_it_and_go_in_order(aiohttp_client, tmp_path,
                                                                                   receiver):
    # The events after a failing one were due at once when queued: they went out before it, each
    # one more call to a receiver that was down, and out of order.
    clock = Clock(time.time())
    client = await aiohttp_client(build_app(make_config(tmp_path), clock=clock))
    hooks = client.app[SERVICES].webhooks
    receiver.fail = True
    hook = await create_hook(client, url=receiver.url, events=["webhook.test"], secret=SECRET)
    first = (await (await client.post(f"/api/webhooks/{hook['id']}/test")).json())["delivery_id"]
    await receiver.wait_for(1, what="failed")
    held = (await stored_delivery(client, hook["id"], 1))["next_attempt_at"]
    later = [(await (await client.post(f"/api/webhooks/{hook['id']}/test")).json())["delivery_id"] for _ in range(2)]
    await asyncio.sleep(0.3)  # the worker ran (each test wakes it): nothing was due
    assert [r.delivery_id for r in receiver.failed] == [first]
    rows = await stored(client, hook["id"])
    assert [r["next_attempt_at"] for r in rows] == [held] * 3  # the later ones say they wait as long
    listed = {d["delivery_id"]: d for d in await deliveries(client, hook["id"])}
    assert {listed[d]["next_attempt_at"] for d in later} == {listed[first]["next_attempt_at"]}
    receiver.fail = False
    clock.t = held
    hooks.wake()
    await receiver.wait_for(3)
    assert receiver.delivery_ids() == [first, *later]


async def test_give_up_then_redeliver_with_a_new_delivery_id(aiohttp_client, tmp_path, receiver):
    """Given up after the shipped GIVE_UP_AFTER (a day), on the app's injected clock."""
    clock = Clock(time.time())
    client = await aiohttp_client(build_app(make_config(tmp_path), clock=clock))
    hooks = client.app[SERVICES].webhooks
    receiver.fail = True
    hook = await create_hook(client, url=receiver.url, events=["agent.completed"], secret=SECRET)
    await wait_status(client, await spawn(client))
    first = await stored_delivery(client, hook["id"], 1)
    clock.t = first["created_at"] + webhooks.GIVE_UP_AFTER - 1  # a day less a second: not given up yet
    hooks.wake()
    second = await stored_delivery(client, hook["id"], 2)
    assert second["status"] == "pending"
    clock.t = second["next_attempt_at"]  # due again, and more than a day after it was made: the last attempt
    assert clock.t >= first["created_at"] + webhooks.GIVE_UP_AFTER
    hooks.wake()

    async def failed():
        rows = await deliveries(client, hook["id"])
        return rows if rows and rows[0]["status"] == "failed" else None

    [row] = await eventually(failed, what="the delivery to be given up")
    assert row["attempts"] == 3 and "500" in row["last_error"] and row["next_attempt_at"] is None
    clock.t += webhooks.RETRY_CAP
    hooks.wake()
    await asyncio.sleep(0.3)
    assert len(receiver.failed) == 3  # given up: no more attempts
    receiver.fail = False
    resp = await client.post(f"/api/webhooks/{hook['id']}/deliveries/{row['delivery_id']}/redeliver")
    answer = await resp.json()
    assert resp.status == 202 and answer["redelivers"] == row["delivery_id"]
    assert answer["delivery_id"] != row["delivery_id"]
    [got] = await receiver.wait_for(1)
    assert got.delivery_id == answer["delivery_id"]
    assert got.payload["event"] == "agent.completed" and got.signature == expected_signature(SECRET, got.body)
    rows = {r["delivery_id"]: r for r in await deliveries(client, hook["id"])}
    assert rows[answer["delivery_id"]]["status"] == "delivered"
    assert rows[row["delivery_id"]]["status"] == "failed"
    assert rows[answer["delivery_id"]]["event_id"] == rows[row["delivery_id"]]["event_id"]
    # A delivered one can be redelivered as well; a pending one cannot.
    resp = await client.post(f"/api/webhooks/{hook['id']}/deliveries/{answer['delivery_id']}/redeliver")
    assert resp.status == 202
    await receiver.wait_for(2)
    receiver.fail = True
    await wait_status(client, await spawn(client))
    pending = await eventually(lambda: deliveries(client, hook["id"], status="pending"), what="a pending one")
    resp = await client.post(f"/api/webhooks/{hook['id']}/deliveries/{pending[0]['delivery_id']}/redeliver")
    assert resp.status == 400


async def paced(client, webhook_id: str, total: int, sent: int, until: float) -> list[dict]:
    """The webhook's ``total`` delivery rows once ``sent`` of them went out and every other one
    waits, unattempted, held back to ``until`` (a window later: the endpoint's pace)."""

    async def read() -> list[dict] | None:
        rows = await stored(client, webhook_id)
        held = [r for r in rows if r["status"] == "pending"]
        if len(rows) == total and len(rows) - len(held) == sent and all(
                r["attempts"] == 0 and r["next_attempt_at"] == pytest.approx(until, abs=1e-6) for r in held):
            return rows
        return None

    return await eventually(read, what=f"{sent} of {total} sent, the rest held back to {until}")


async def test_at_most_per_minute_per_endpoint(aiohttp_client, tmp_path, receiver, monkeypatch):
    """On the app's injected clock (frozen here): the shipped window of 60 s, PER_MINUTE made 3."""
    monkeypatch.setattr(webhooks, "PER_MINUTE", 3)
    clock = Clock(time.time())
    client = await aiohttp_client(build_app(make_config(tmp_path), clock=clock))
    hook = await create_hook(client, url=receiver.url, events=["agent.completed"], secret=SECRET)
    ids = [await spawn(client) for _ in range(5)]
    for agent_id in ids:
        await wait_status(client, agent_id)
    await receiver.wait_for(3)
    await paced(client, hook["id"], total=5, sent=3, until=clock.t + webhooks.PACE_WINDOW)
    assert len(receiver.received) == 3  # the other two wait for the next minute
    # A second webhook to the same receiver URL shares that endpoint's allowance.
    second = await create_hook(client, url=receiver.url, events=["agent.completed"], secret=SECRET)
    await wait_status(client, await spawn(client))
    await paced(client, second["id"], total=1, sent=0, until=clock.t + webhooks.PACE_WINDOW)
    assert len(receiver.received) == 3


async def test_pace_spreads_deliveries_over_the_window(aiohttp_client, tmp_path, receiver, monkeypatch):
    """PER_MINUTE sends to one endpoint in any PACE_WINDOW (the shipped 60 s), on the app's
    injected clock: the others wait, held back to the moment the window has room again."""
    monkeypatch.setattr(webhooks, "PER_MINUTE", 4)
    clock = Clock(time.time())
    client = await aiohttp_client(build_app(make_config(tmp_path), clock=clock))
    hooks = client.app[SERVICES].webhooks
    hook = await create_hook(client, url=receiver.url, events=["agent.completed"], secret=SECRET)
    for _ in range(10):
        await spawn(client)
    start = clock.t
    for window, sent in enumerate((4, 8, 10)):
        clock.t = start + window * webhooks.PACE_WINDOW
        hooks.wake()
        await receiver.wait_for(sent)
        await paced(client, hook["id"], total=10, sent=sent, until=clock.t + webhooks.PACE_WINDOW)
        assert len(receiver.received) == sent
    assert len(set(receiver.delivery_ids())) == 10


# -- other sinks ------------------------------------------------------------------------------------

async def test_the_worker_finds_pending_deliveries_without_reading_each_webhook_s_history(client):
    # Through webhook_id's index sqlite read every delivery kept (7 days of them) of each active
    # webhook, at every event: 45 ms with 100,000 kept, against 0.1 through deliveries_due.
    hooks = client.app[SERVICES].webhooks
    heads = hooks._HEADS.format("?, ?")
    plans = await client.app[SERVICES].store.read(lambda c: [
        " ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql, args)) for sql, args in (
            (heads, ("a", "b")),
            ("SELECT * FROM deliveries WHERE +webhook_id = ? AND status = 'pending' ORDER BY rowid", ("a",)))])
    assert all("deliveries_due" in plan and "deliveries_webhook" not in plan for plan in plans), plans


async def test_a_new_url_or_secret_sends_what_waited_for_a_retry_now(aiohttp_client, tmp_path, receiver):
    clock = Clock(time.time())
    client = await aiohttp_client(build_app(make_config(tmp_path), clock=clock))
    receiver.fail = True
    hook = await create_hook(client, url=receiver.url, events=["webhook.test"], secret=SECRET)
    first = (await (await client.post(f"/api/webhooks/{hook['id']}/test")).json())["delivery_id"]
    await receiver.wait_for(1, what="failed")
    await stored_delivery(client, hook["id"], 1)  # held back 5 s (the clock does not move here)
    receiver.fail = False
    resp = await client.put(f"/api/webhooks/{hook['id']}", json={"url": receiver.url + "?fixed=1"})
    assert resp.status == 200
    [got] = await receiver.wait_for(1)  # at once, not at the end of the backoff
    assert got.delivery_id == first


async def test_a_put_that_fails_on_a_full_disk_leaves_new_deliveries_held_like_the_old(
        aiohttp_client, tmp_path, receiver):
    # The held time was forgotten before the PUT's release was stored: when that write failed
    # (507), the next event's delivery was due at once while the old ones stayed held.
    clock = Clock(time.time())
    client = await aiohttp_client(build_app(make_config(tmp_path), clock=clock))
    receiver.fail = True
    hook = await create_hook(client, url=receiver.url, events=["webhook.test"], secret=SECRET)
    await client.post(f"/api/webhooks/{hook['id']}/test")
    await receiver.wait_for(1, what="failed")
    held = (await stored_delivery(client, hook["id"], 1))["next_attempt_at"]
    store = client.app[SERVICES].store
    disk = store._wconn = FullDisk(store._wconn)
    resp = await client.put(f"/api/webhooks/{hook['id']}", json={"url": receiver.url + "?fixed=1"})
    assert resp.status == 507
    disk.full = False
    await until(lambda: store.full is None, "the store's probe to find space")
    assert (await client.post(f"/api/webhooks/{hook['id']}/test")).status == 202
    rows = await stored(client, hook["id"])
    assert [r["next_attempt_at"] for r in rows] == [held, held]


async def test_a_restart_keeps_new_deliveries_behind_one_held_back(aiohttp_client, tmp_path, receiver):
    clock, cfg = Clock(time.time()), make_config(tmp_path)
    client = await aiohttp_client(build_app(cfg, clock=clock))
    receiver.fail = True
    hook = await create_hook(client, url=receiver.url, events=["webhook.test"], secret=SECRET)
    await client.post(f"/api/webhooks/{hook['id']}/test")
    await receiver.wait_for(1, what="failed")
    held = (await stored_delivery(client, hook["id"], 1))["next_attempt_at"]
    await client.close()
    client = await aiohttp_client(build_app(cfg, clock=clock))
    await client.post(f"/api/webhooks/{hook['id']}/test")
    rows = await stored(client, hook["id"])
    assert [r["next_attempt_at"] for r in rows] == [held, held]  # the new one says it waits as long


async def test_one_key_s_hung_receivers_leave_other_keys_drains(aiohttp_client, tmp_path, receiver):
    # A key's webhooks to receivers that hang took every drain (CONCURRENT_WEBHOOKS) for the
    # sink's 10 s: another key's healthy webhook waited behind them.  A maker holds at most
    # DRAINS_PER_MAKER of them.
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])
    tenants = []
    for name in ("a", "b"):
        resp = await client.post("/api/keys", json={"name": name, "scopes": ["agents:read", "agents:write"]},
                                 headers=admin)
        tenants.append(bearer((await resp.json())["token"]))
    a, b = tenants
    hung = await Receiver(SECRET, path="/hung").start()
    hung.hang = True
    try:
        for _ in range(webhooks.CONCURRENT_WEBHOOKS):
            hook = await create_hook_as(client, a, url=hung.url, events=["webhook.test"], secret=SECRET)
            assert (await client.post(f"/api/webhooks/{hook['id']}/test", headers=a)).status == 202
        await hung.wait_for(webhooks.DRAINS_PER_MAKER, what="hung")
        healthy = await create_hook_as(client, b, url=receiver.url, events=["webhook.test"], secret=SECRET)
        assert (await client.post(f"/api/webhooks/{healthy['id']}/test", headers=b)).status == 202
        await receiver.wait_for(1, timeout=5.0)  # well within the hung ones' 10 s
        assert len(hung.hung) == webhooks.DRAINS_PER_MAKER
    finally:
        await hung.stop()


async def test_slack_sink_posts_an_incoming_webhook_message(client):
    slack = await Receiver(secret=None, path="/services/T000/B000/XXXX").start()
    try:
        await create_hook(client, url=slack.url, sink="slack", events=["agent.completed", "webhook.test"])
        agent_id = await spawn(client)
        await wait_status(client, agent_id)
        [got] = await slack.wait_for(1)
        body = got.payload
        assert set(body) == {"text"} and isinstance(body["text"], str)
        assert "agent.completed" in body["text"] and agent_id in body["text"]
        assert got.headers["Content-Type"].startswith("application/json")
    finally:
        await slack.stop()


async def test_file_sink_appends_json_lines(client, tmp_path):
    path = tmp_path / "out" / "events.jsonl"
    path.parent.mkdir()
    hook = await create_hook(client, url=f"file://{path}", events=["agent.spawned", "agent.completed"])
    assert hook["sink"] == "file"
    ids = [await spawn(client) for _ in range(2)]
    for agent_id in ids:
        await wait_status(client, agent_id)

    async def four_lines():
        return path.exists() and len(path.read_text().splitlines()) >= 4

    await eventually(four_lines, what="4 lines in the file")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 4 and len({line["delivery_id"] for line in lines}) == 4
    assert all(line["event"] == line["payload"]["event"] for line in lines)
    assert sorted(line["event"] for line in lines) == ["agent.completed"] * 2 + ["agent.spawned"] * 2
    assert {line["payload"]["data"]["agent_id"] for line in lines} == set(ids)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    rows = await deliveries(client, hook["id"])
    assert all(r["status"] == "delivered" for r in rows)


async def test_the_file_sink_is_an_admin_s_and_never_writes_into_the_state_dir(aiohttp_client, tmp_path):
    # A key with agents:write (or the keyless local caller) made a file webhook and appended to
    # any file the daemon may write: into its data key, the daemon could no longer start.
    cfg = auth_config(tmp_path, local_scopes=("agents:read", "agents:write"))
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])
    resp = await client.post("/api/keys", json={"name": "w", "scopes": ["agents:read", "agents:write"]},
                             headers=admin)
    writer = bearer((await resp.json())["token"])
    state = tmp_path / "state"
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    for headers in (writer, {}):  # a tenant's key; the keyless local caller
        resp = await client.post("/api/webhooks", json={"url": f"file://{victim}", "events": ["*"]}, headers=headers)
        assert resp.status == 403, await resp.text()
        assert "admin:write" in (await resp.json())["error"]["message"]
    # An admin's file webhook may not write into the state dir, by its path or through a link.
    link = tmp_path / "innocent.jsonl"
    link.symlink_to(state / "data.key")
    for target in (state / "data.key", state / "j1msky.db", state, link, tmp_path / "state" / ".." / "state" / "x",
                   tmp_path / "a%00b"):  # a NUL: realpath raised, a 500
        resp = await client.post("/api/webhooks", json={"url": f"file://{target}", "events": ["*"]}, headers=admin)
        assert resp.status == 400 and bad_field(await resp.json()) == "url", (target, await resp.text())
    assert (await (await client.get("/api/webhooks", headers=admin)).json())["data"] == []
    # Made where it may write, then pointed into the state dir by a link: the delivery is refused.
    out = tmp_path / "events.jsonl"
    hook = await create_hook_as(client, admin, url=f"file://{out}", events=["*"])
    out.symlink_to(state / "data.key")
    before = (state / "data.key").read_bytes()
    await client.post(f"/api/webhooks/{hook['id']}/test", headers=admin)

    async def refused():
        rows = await (await client.get(f"/api/webhooks/{hook['id']}/deliveries", headers=admin)).json()
        return [r for r in rows["data"] if "state directory" in (r["last_error"] or "")]

    await eventually(refused, what="the delivery refused")
    assert (state / "data.key").read_bytes() == before and victim.read_text() == "mine\n"


async def test_the_file_sink_writes_only_where_the_operator_listed(aiohttp_client, tmp_path):
    # Outside the state dir was not enough: an admin key could append to any file the daemon
    # may write (a plugin, ~/.ssh/authorized_keys) and, through a hard link made in a harmless
    # place, to the data key itself.  Now [webhooks] file_sink_dirs is an allow-list, and each
    # delivery's open judges the file it found.
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = conftest.make_config(tmp_path)  # file_sink_dirs empty: the embedded default
    client = await aiohttp_client(build_app(cfg))
    resp = await client.post("/api/webhooks", json={"url": f"file://{logs}/e.jsonl", "events": ["*"]})
    assert resp.status == 400 and "file_sink_dirs" in (await resp.json())["error"]["message"]
    await client.close()
    cfg = dataclasses.replace(cfg, webhooks=WebhooksConfig(file_sink_dirs=(str(logs),)))
    client = await aiohttp_client(build_app(cfg))
    resp = await client.post("/api/webhooks", json={"url": f"file://{tmp_path}/other.jsonl", "events": ["*"]})
    assert resp.status == 400 and str(logs) in (await resp.json())["error"]["message"]
    hook = await create_hook(client, url=f"file://{logs}/e.jsonl", events=["webhook.test"])
    key = tmp_path / "state" / "data.key"
    before = key.read_bytes()
    os.link(key, logs / "e.jsonl")
    await client.post(f"/api/webhooks/{hook['id']}/test")

    async def refused():
        rows = await (await client.get(f"/api/webhooks/{hook['id']}/deliveries")).json()
        return [r for r in rows["data"] if "hard link" in (r["last_error"] or "")]

    await eventually(refused, what="the delivery refused")
    assert key.read_bytes() == before


async def create_hook_as(client, headers, **body) -> dict:
    resp = await client.post("/api/webhooks", json=body, headers=headers)
    answer = await resp.json()
    assert resp.status == 201, answer
    return answer["data"]


DROPIN_SINK = '''
J1MSKY_PLUGIN_API = 1
SEEN = []

class Collector:
    def __init__(self, settings, session):
        self.url = settings["url"]
        self.secret = settings["secret"]
    async def deliver(self, payload, *, delivery_id, event):
        if payload["data"].get("task") == "fail me" and not any(d == delivery_id for d, _, _ in SEEN):
            SEEN.append((delivery_id, event, None))
            raise RuntimeError("collector hiccup")
        SEEN.append((delivery_id, event, payload))

def register(registry):
    registry.add_sink("collector", Collector)
'''


async def test_dropin_sink_plugin(aiohttp_client, tmp_path, fast_retries):
    plugdir = tmp_path / "plugins.d"
    plugdir.mkdir(mode=0o755)
    (plugdir / "collector_sink.py").write_text(DROPIN_SINK)
    (plugdir / "collector_sink.py").chmod(0o644)
    base = make_config(tmp_path)
    cfg = dataclasses.replace(base, plugins=dataclasses.replace(base.plugins, dropin_dir=str(plugdir)))
    client = await aiohttp_client(build_app(cfg))
    hook = await create_hook(client, url="https://collector.invalid/x", sink="collector",
                             events=["agent.completed"])
    assert hook["sink"] == "collector"
    seen = sys.modules["j1msky_plugins.collector_sink"].SEEN
    seen.clear()
    ok_id = await spawn(client)
    bad_id = await spawn(client, task="fail me")
    for agent_id in (ok_id, bad_id):
        await wait_status(client, agent_id)

    async def both():
        return len([s for s in seen if s[2] is not None]) == 2

    await eventually(both, what="both deliveries through the drop-in sink")
    done = {s[2]["data"]["agent_id"]: s for s in seen if s[2] is not None}
    assert set(done) == {ok_id, bad_id} and all(s[1] == "agent.completed" for s in done.values())
    rows = {r["delivery_id"]: r for r in await deliveries(client, hook["id"])}
    assert rows[done[bad_id][0]]["attempts"] == 2 and rows[done[ok_id][0]]["attempts"] == 1
    # A sink kind nobody registered is refused; the plugin shows up in /plugins.
    resp = await client.post("/api/webhooks", json={"url": "https://x.invalid/", "sink": "nobody",
                                                    "events": ["*"]})
    assert resp.status == 400 and "collector" in (await resp.json())["error"]["message"]


# -- budget, security and rate-limit events --------------------------------------------------------

async def test_budget_events_as_spend_crosses_thresholds(aiohttp_client, tmp_path, receiver):
    upstream = await FakeUpstream().start()
    try:
        base = make_config(tmp_path)
        providers = dict(base.providers)
        providers["paid"] = ProviderSettings(name="paid", plugin="openai_compat", base_url=upstream.url + "/v1",
                                             api_key="sk-paid", timeout=60, max_concurrency=4, hourly_limit=1000)
        models = dict(base.models)
        models["k2p5"] = dataclasses.replace(models["k2p5"], provider="paid", input_per_1k=0.0, output_per_1k=1.0,
                                             typical_output_tokens=100, max_tokens=250, fallback=None)
        cfg = dataclasses.replace(base, providers=providers, models=models,
                                  budget=dataclasses.replace(base.budget, daily_budget=1.0))
        client = await aiohttp_client(build_app(cfg))
        await create_hook(client, url=receiver.url, events=["budget.notice", "budget.warning", "budget.critical"],
                          secret=SECRET)
        upstream.input_tokens = 0
        # Each spawn reserves its worst case, $0.25: $0.25, $0.50 (50 %), $0.75 (75 %), $0.95 (95 %).
        for tokens in (250, 250, 250, 200):
            upstream.output_tokens = tokens
            await wait_status(client, await spawn(client))
        got = await receiver.wait_for(3)
        await asyncio.sleep(0.1)
        assert receiver.events() == ["budget.notice", "budget.warning", "budget.critical"]
        data = [p["data"] for p in receiver.payloads()]
        assert [d["budget_alert_level"] for d in data] == ["notice", "warning", "critical"]
        assert [d["previous_level"] for d in data] == ["ok", "notice", "warning"]
        assert data[-1]["budget_utilization_pct"] == pytest.approx(95.0)
        assert all(r.signature == expected_signature(SECRET, r.body) for r in got)
    finally:
        await upstream.close()


async def test_security_violation_events_are_throttled_per_key(aiohttp_client, tmp_path, receiver):
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])
    resp = await client.post("/api/webhooks", headers=admin,
                             json={"url": receiver.url, "events": ["security.violation"], "secret": SECRET})
    assert resp.status == 201
    for _ in range(5):
        assert (await client.get("/api/agents", headers={"Authorization": "Bearer j1_wrong"})).status == 401
    for _ in range(3):
        assert (await client.get("/api/agents")).status == 401
    await receiver.wait_for(2)
    await asyncio.sleep(0.3)
    kinds = sorted(p["data"]["kind"] for p in receiver.payloads())
    assert kinds == ["invalid_api_key", "missing_api_key"], receiver.payloads()
    assert all(p["data"]["ip"] == "127.0.0.1" for p in receiver.payloads())
    events = await (await client.get("/api/events?types=security.violation", headers=admin)).json()
    assert len(events["data"]) == 2


async def test_rate_limit_exhausted_event_once_per_key_per_minute(aiohttp_client, tmp_path, receiver):
    cfg = make_config(tmp_path)
    cfg = dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, agents_list=2))
    client = await aiohttp_client(build_app(cfg))
    await create_hook(client, url=receiver.url, events=["rate_limit.exhausted"], secret=SECRET)
    codes = [(await client.get("/api/agents")).status for _ in range(6)]
    assert codes == [200, 200, 429, 429, 429, 429]
    [got] = await receiver.wait_for(1)
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 1
    assert got.payload["data"]["endpoint_class"] == "agents_list" and got.payload["data"]["limit"] == 2


# -- durability: kill -9 while the receiver is down ---------------------------------------------------

async def test_kill_9_while_the_receiver_is_down_loses_nothing(tmp_path):
    receiver = Receiver(SECRET)  # not started: down
    daemon = Daemon(tmp_path, tmp_path / "state", write_config(tmp_path / "slow.toml", delay=30.0,
                                                               max_concurrency=2), name="first")
    fast = write_config(tmp_path / "fast.toml", delay=0.0, max_concurrency=8)
    try:
        await asyncio.to_thread(daemon.start)
        status, hook = await asyncio.to_thread(daemon.request, "POST", "/api/webhooks", {
            "url": receiver.url, "events": ["agent.spawned", "agent.completed", "agent.failed"], "secret": SECRET})
        assert status == 201, hook
        hook_id = hook["data"]["id"]
        ids = [await asyncio.to_thread(daemon.spawn, f"task {i}", "quick") for i in range(4)]
        ids += [await asyncio.to_thread(daemon.spawn, f"slow {i}", "k2p5") for i in range(3)]
        for agent_id in ids[:4]:
            await asyncio.to_thread(daemon.wait_agent, agent_id)

        def attempted() -> list | None:
            rows = daemon.get(f"/api/webhooks/{hook_id}/deliveries?limit=200")["data"]
            return rows if len(rows) >= 11 and any(r["attempts"] >= 1 for r in rows) else None

        end = time.monotonic() + 10
        while not (rows := await asyncio.to_thread(attempted)):
            assert time.monotonic() < end, "deliveries were not attempted"
            await asyncio.sleep(0.1)
        assert all(r["status"] == "pending" for r in rows)
        assert all("cannot reach" in r["last_error"] for r in rows if r["attempts"])
        await asyncio.to_thread(daemon.kill)

        await receiver.start()
        second = Daemon(tmp_path, tmp_path / "state", fast, name="second")
        try:
            await asyncio.to_thread(second.start)
            for agent_id in ids[4:]:
                await asyncio.to_thread(second.wait_agent, agent_id)
            # 7 spawned + 7 finished (the slow ones re-run after the crash).
            await receiver.wait_for(14, timeout=15)
            await asyncio.sleep(0.5)
            assert receiver.rejected == [] and receiver.failed == []
            got = receiver.received
            assert all(r.signature == expected_signature(SECRET, r.body) for r in got)
            assert len(receiver.delivery_ids()) == len(set(receiver.delivery_ids())) == 14
            seen = {(p["event"], p["data"]["agent_id"]) for p in receiver.payloads()}
            assert seen == {(e, a) for a in ids for e in ("agent.spawned", "agent.completed")}
            assert len({p["id"] for p in receiver.payloads()}) == 14  # every event once
            rows = second.get(f"/api/webhooks/{hook_id}/deliveries?limit=200")["data"]
            assert len(rows) == 14 and all(r["status"] == "delivered" for r in rows)
            assert "Traceback" not in second.log(), second.log()
        finally:
            second.close()
    finally:
        daemon.close()
        await receiver.stop()


# -- a spawn's own webhook_url ---------------------------------------------------------------------

async def test_spawn_webhook_url_gets_that_agents_end_signed_with_the_key_webhook_secret(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    boot = bootstrap_key(cfg)
    admin = bearer(boot['token'])
    assert boot["webhook_secret"] != boot["secret"]
    rec = await Receiver(boot["webhook_secret"]).start()  # the caller already holds its key's webhook secret
    try:
        resp = await client.post("/api/spawn", headers=admin,
                                 json={"model": "k2p5", "task": "tell me when done", "webhook_url": rec.url})
        assert resp.status == 200, await resp.text()
        agent_id = (await resp.json())["agent_id"]
        resp = await client.post("/api/spawn", headers=admin, json={"model": "k2p5", "task": "no hook"})
        other = (await resp.json())["agent_id"]
        for a in (agent_id, other):
            resp = await client.get(f"/api/agent/{a}", headers=admin)
            assert resp.status == 200
        [got] = await rec.wait_for(1)
        await asyncio.sleep(0.3)
        assert len(rec.received) == 1 and rec.rejected == []
        assert got.event == "agent.completed" and got.payload["data"]["agent_id"] == agent_id
        assert got.signature == expected_signature(boot["webhook_secret"], got.body)
        listed = await (await client.get("/api/webhooks", headers=admin)).json()
        assert listed["count"] == 0  # a spawn's own hook is not an operator's webhook
        # Its one job done, it is forgotten (routing must not scan a list that only grows).
        services = client.app[SERVICES]
        assert not [h for h in services.webhooks.hooks.values() if h.agent_id == agent_id]
        rows = services.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM webhooks").fetchone()[0])
        assert rows == 0
        resp = await client.post("/api/spawn", headers=admin,
                                 json={"model": "k2p5", "task": "x", "webhook_url": "ftp://nope"})
        assert resp.status == 400 and bad_field(await resp.json()) == "webhook_url"
    finally:
        await rec.stop()


async def test_spawn_webhook_url_file_needs_admin(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    boot = bootstrap_key(cfg)
    resp = await client.post("/api/keys", json={"name": "writer", "scopes": ["agents:read", "agents:write"]},
                             headers=bearer(boot['token']))
    assert resp.status in (200, 201), await resp.text()
    writer = (await resp.json())["token"]
    target = tmp_path / "not-yours.txt"
    resp = await client.post("/api/spawn", headers=bearer(writer),
                             json={"model": "k2p5", "task": "x", "webhook_url": f"file://{target}"})
    assert resp.status in (400, 403), await resp.text()


async def test_pricing_event_names_are_checked_like_the_others(client):
    resp = await client.post("/api/webhooks", json={"url": "https://hooks.invalid/h", "events": ["pricing.typo"]})
    assert resp.status == 400 and bad_field(await resp.json()) == "events"
    assert (await client.get("/api/events", params={"types": "pricing.typo"})).status == 400
    resp = await client.post("/api/webhooks", json={"url": "https://hooks.invalid/h",
                                                    "events": ["pricing.quote_generated"]})
    assert resp.status == 201
    assert (await client.get("/api/events", params={"types": "pricing.policy_changed"})).status == 200
