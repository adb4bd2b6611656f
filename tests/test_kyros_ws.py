"""/kyros/v1/ws: the document's auth and subscribe messages, pushes of task_progress,
escalation_status and system_alerts built from the event log's events (only the key's own
tasks' and escalations'), unknown names refused, and a revoked key's open socket closed."""

from __future__ import annotations

import asyncio

from tests.kyros_helpers import BASE, start

WAIT = 5.0  # generous: pushes are immediate, the machine is shared


async def _auth(ws, token: str) -> None:
    await ws.send_json({"type": "auth", "token": token})
    assert (await ws.receive_json(timeout=WAIT)) == {"type": "auth", "success": True}


def _token(headers: dict[str, str]) -> str:
    return headers["Authorization"].split()[1]


async def test_auth_subscribe_and_pushes(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    owner = d.writer["key_id"]
    async with d.client.ws_connect(BASE + "/ws") as ws:
        await ws.send_json({"type": "subscribe", "events": ["task_progress"]})
        assert (await ws.receive_json(timeout=WAIT))["type"] == "error"  # not authenticated yet
        await _auth(ws, _token(d.writer))
        await ws.send_json({"type": "subscribe", "events": ["task_progress", "bogus"]})
        refused = await ws.receive_json(timeout=WAIT)
        assert refused["type"] == "error" and "bogus" in refused["message"]
        await ws.send_json({"type": "subscribe", "events": ["task_progress", "escalation_status", "system_alerts"]})
        assert (await ws.receive_json(timeout=WAIT))["type"] == "subscribed"
        events = d.services.events
        # Another key's task: never seen here.
        await events.emit("task.progress", {"id": "task_other", "status": "in_progress"}, d.other["key_id"])
        progress = {"completed_steps": 1, "total_steps": 4, "percentage": 25, "current_step": "implementer"}
        await events.emit("task.progress", {"id": "task_1", "status": "in_progress", "progress": progress}, owner)
        await events.emit("escalation.approved", {"escalation_id": "esc_1", "task_id": "task_1",
                                                  "status": "approved", "approved_by": "key_x",
                                                  "approved_at": "2026-12-06T12:00:00Z"}, owner)
        await events.emit("budget.warning", {"budget_alert_level": "warning", "budget_utilization_pct": 80.0})
        got = [await ws.receive_json(timeout=WAIT) for _ in range(3)]
    assert [m["type"] for m in got] == ["task_progress", "escalation_status", "system_alerts"]
    task = got[0]["data"]
    assert task["task_id"] == "task_1" and task["status"] == "in_progress" and task["progress"] == progress
    assert task["current_step"] == "implementer"
    assert got[1]["data"]["escalation_id"] == "esc_1" and got[1]["data"]["approved_by"] == "key_x"
    assert got[2]["data"]["type"] == "budget_warning" and got[2]["data"]["severity"] == "warning"
    assert all(set(m) >= {"type", "data", "timestamp"} for m in got)


async def test_only_the_subscribed_kinds_arrive(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    async with d.client.ws_connect(BASE + "/ws", headers={"Authorization": d.writer["Authorization"]}) as ws:
        await ws.send_json({"type": "subscribe", "events": ["system_alerts"]})
        assert (await ws.receive_json(timeout=WAIT))["type"] == "subscribed"
        await d.services.events.emit("task.progress", {"id": "task_1", "status": "in_progress"},
                                     d.writer["key_id"])
        await d.services.events.emit("budget.critical", {"budget_alert_level": "critical"})
        first = await ws.receive_json(timeout=WAIT)
    assert first["type"] == "system_alerts" and first["data"]["severity"] == "critical"


async def test_bad_token_and_revoked_key(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    async with d.client.ws_connect(BASE + "/ws") as ws:
        await ws.send_json({"type": "auth", "token": "j1_wrong"})
        answer = await ws.receive_json(timeout=WAIT)
        assert answer["success"] is False and answer["code"] == 401
        closing = await ws.receive(timeout=WAIT)
        assert ws.close_code == 4401 or closing.data == 4401
    victim = await d.key("agents:read")
    async with d.client.ws_connect(BASE + "/ws") as ws:
        await _auth(ws, _token(victim))
        await ws.send_json({"type": "subscribe"})
        assert set((await ws.receive_json(timeout=WAIT))["events"]) == {"task_progress", "escalation_status",
                                                                        "system_alerts"}
        resp = await d.client.delete(f"/api/keys/{victim['key_id']}", headers=d.admin)
        assert resp.status == 200, await resp.text()
        msg = await ws.receive(timeout=WAIT)
        while msg.type.name not in ("CLOSE", "CLOSED", "CLOSING"):
            msg = await asyncio.wait_for(ws.receive(), WAIT)
        assert ws.close_code == 4401


async def test_real_task_and_escalation_pushes(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    async with d.client.ws_connect(BASE + "/ws") as ws:
        await _auth(ws, _token(d.writer))
        await ws.send_json({"type": "subscribe", "events": ["task_progress", "escalation_status"]})
        assert (await ws.receive_json(timeout=WAIT))["type"] == "subscribed"
        created = await (await d.call("POST", "/tasks", json={"title": "t", "type": "review"})).json()
        task_id = created["data"]["id"]
        esc = await (await d.call("POST", "/escalation/submit", json={"task_id": task_id, "reason": "hard"})).json()
        esc_id = esc["data"]["escalation_id"]
        resp = await d.call("POST", f"/escalation/{esc_id}/approve", d.admin, json={"decision": "approved"})
        assert resp.status == 200, await resp.text()
        seen = []
        while not any(m["type"] == "escalation_status" and m["data"]["status"] == "approved" for m in seen):
            seen.append(await ws.receive_json(timeout=WAIT))
    first = seen[0]
    assert first["type"] == "task_progress" and first["data"]["task_id"] == task_id
    assert first["data"]["status"] == "pending" and first["data"]["progress"]["total_steps"] == 2
    statuses = [m["data"]["status"] for m in seen if m["type"] == "escalation_status"]
    assert statuses == ["pending_approval", "approved"]
    approved = seen[-1]["data"]
    assert approved["escalation_id"] == esc_id and approved["approved_by"] == d.admin_key_id
