"""Idempotency, the IP allowlist API and IP blocks, the audit log, retention and deletion."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import pytest

from j1mskyd.app import build_app
from j1mskyd.pii import MaskingFilter, mask
from j1mskyd.security_request import BlockRequest
from tests.conftest import Clock, make_config, wait_status

SPAWN = {"model": "k2p5", "task": "Write a haiku about idempotency"}


async def total_agents(client) -> int:
    return (await (await client.get("/api/agents?limit=1")).json())["pagination"]["total"]


# -- idempotency ---------------------------------------------------------------------------------
async def test_same_key_same_payload_replays_the_first_answer(client):
    headers = {"Idempotency-Key": "7f8f8c5a-4d6f-4f6c-ae4b-52a7c8aa2d9b"}
    first = await client.post("/api/spawn", json=SPAWN, headers=headers)
    again = await client.post("/api/spawn", json=SPAWN, headers=headers)
    assert first.status == again.status == 200
    assert await first.json() == await again.json()
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert await total_agents(client) == 1


async def test_same_key_other_payload_is_409_with_the_seed_message(client):
    headers = {"Idempotency-Key": "k-1"}
    assert (await client.post("/api/spawn", json=SPAWN, headers=headers)).status == 200
    resp = await client.post("/api/spawn", json=SPAWN | {"task": "something else"}, headers=headers)
    body = await resp.json()
    assert resp.status == 409 and body["error"]["message"] == "Idempotency key payload mismatch"
    assert await total_agents(client) == 1


async def test_concurrent_duplicates_run_the_side_effect_once(client):
    headers = {"Idempotency-Key": "burst"}
    answers = await asyncio.gather(*(client.post("/api/spawn", json=SPAWN, headers=headers) for _ in range(20)))
    bodies = [await r.json() for r in answers]
    assert all(r.status == 200 for r in answers)
    assert len({b["agent_id"] for b in bodies}) == 1
    assert await total_agents(client) == 1


async def test_failed_requests_are_not_recorded_and_keys_are_validated(client):
    headers = {"Idempotency-Key": "fix-and-retry"}
    bad = await client.post("/api/spawn", json={"model": "k2p5", "task": ""}, headers=headers)
    assert bad.status == 400
    good = await client.post("/api/spawn", json=SPAWN, headers=headers)
    assert good.status == 200
    resp = await client.post("/api/spawn", json=SPAWN, headers={"Idempotency-Key": "x" * 300})
    assert resp.status == 400


async def test_idempotency_holds_across_a_restart(aiohttp_client, tmp_path):
    cfg = make_config(tmp_path)
    headers = {"Idempotency-Key": "survives"}
    first = await aiohttp_client(build_app(cfg))
    body = await (await first.post("/api/spawn", json=SPAWN, headers=headers)).json()
    await first.close()
    second = await aiohttp_client(build_app(cfg))
    resp = await second.post("/api/spawn", json=SPAWN, headers=headers)
    assert resp.status == 200 and (await resp.json())["agent_id"] == body["agent_id"]
    assert await total_agents(second) == 1


# -- IP allowlist and blocks -----------------------------------------------------------------------
async def test_ip_whitelist_api_changes_and_persists(aiohttp_client, tmp_path):
    cfg = make_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    current = await (await client.get("/api/security/ip-whitelist")).json()
    assert current["enforce"] is True and "127.0.0.0/8" in current["allowed_ips"]
    # The seed's example body, plus our own address so we do not lock ourselves out.
    body = {"allowed_ips": ["192.168.1.0/24", "10.0.0.0/8", "203.0.113.45/32", "127.0.0.1/32"], "enforce": True,
            "log_violations": True}
    resp = await client.put("/api/security/ip-whitelist", json=body)
    assert resp.status == 200 and (await resp.json())["allowed_ips"] == body["allowed_ips"]
    lockout = await client.put("/api/security/ip-whitelist", json={"allowed_ips": ["10.0.0.0/8"], "enforce": True})
    assert lockout.status == 400 and "lock yourself out" in (await lockout.json())["error"]["message"]
    bad = await client.put("/api/security/ip-whitelist", json={"allowed_ips": ["10.0.0.999/8"]})
    assert bad.status == 400
    await client.close()
    again = await aiohttp_client(build_app(cfg))
    assert (await (await again.get("/api/security/ip-whitelist")).json())["allowed_ips"] == body["allowed_ips"]


async def test_blocked_ip_gets_403_until_unblocked_or_expired(aiohttp_client, tmp_path):
    base = make_config(tmp_path)
    cfg = dataclasses.replace(base, security=dataclasses.replace(base.security, trusted_proxies=("127.0.0.1/32",)))
    client = await aiohttp_client(build_app(cfg))
    resp = await client.post("/api/security/block-ip", json={"ip": "192.168.1.66", "reason": "suspicious_activity",
                                                             "duration_hours": 24})
    assert resp.status == 201
    from_lan = {"X-Forwarded-For": "192.168.1.66"}
    blocked = await client.get("/api/health", headers=from_lan)
    body = await blocked.json()
    assert blocked.status == 403 and body["error"]["type"] == "IP_BLOCKED"
    assert body["error"]["your_ip"] == "192.168.1.66"
    assert (await client.get("/api/health", headers={"X-Forwarded-For": "192.168.1.67"})).status == 200
    listing = await (await client.get("/api/security/blocked-ips")).json()
    assert [b["ip"] for b in listing["blocked"]] == ["192.168.1.66"]
    assert (await client.delete("/api/security/block-ip/192.168.1.66")).status == 200
    assert (await client.get("/api/health", headers=from_lan)).status == 200
    assert (await client.delete("/api/security/block-ip/192.168.1.66")).status == 404
    # Expiry: a block whose time has passed is ignored.
    services = client.app[next(k for k in client.app if "services" in str(k))]
    await services.ip_control.block(BlockRequest(ip="192.168.1.70", duration_hours=1))
    services.ip_control.clock = lambda: time.time() + 3601
    assert (await client.get("/api/health", headers={"X-Forwarded-For": "192.168.1.70"})).status == 200
    for bad in ({"ip": "nope"}, {"ip": "10.0.0.1", "duration_hours": -1}, {"ip": "10.0.0.1", "reason": ""}):
        assert (await client.post("/api/security/block-ip", json=bad)).status == 400


# -- audit log --------------------------------------------------------------------------------------
async def test_audit_records_the_seed_events_in_the_seed_format(aiohttp_client, tmp_path):
    base = make_config(tmp_path)
    cfg = dataclasses.replace(base, security=dataclasses.replace(base.security, auth=True))
    client = await aiohttp_client(build_app(cfg))
    token = __import__("json").loads((tmp_path / "state" / "bootstrap-admin.key").read_text())["token"]
    admin = {"Authorization": f"Bearer {token}", "User-Agent": "j1msky-sdk/1.0.0"}
    settings = {"enabled": True, "log_level": "verbose", "retention_days": 90, "include_request_body": False,
                "include_response_body": False, "events": ["agent.spawn", "agent.complete", "agent.fail",
                                                           "api.key.used", "config.change", "security.violation"]}
    assert (await client.post("/api/security/audit", json=settings, headers=admin)).status == 200
    spawned = await (await client.post("/api/spawn", headers=admin, json={
        "model": "k2p5", "task": "Generate report for jane.doe@example.com"})).json()
    for _ in range(500):  # wait_status sends no key; poll with the admin's
        done = await (await client.get(f"/api/agent/{spawned['agent_id']}", headers=admin)).json()
        if done["status"] == "completed":
            break
        await asyncio.sleep(0.01)
    await client.get("/api/agents", headers={"Authorization": "Bearer wrong"})
    log = await (await client.get("/api/security/audit?limit=100", headers=admin)).json()
    events = [e["event"] for e in log["data"]]
    for event in ("config.change", "api.key.used", "agent.spawn", "agent.complete", "security.violation"):
        assert event in events, event
    # Many requests with one key, one api.key.used a minute (after the settings made it wanted).
    assert events.count("api.key.used") == 1
    spawn = next(e for e in log["data"] if e["event"] == "agent.spawn")
    assert set(spawn) == {"timestamp", "event", "severity", "api_key_id", "ip_address", "user_agent", "request_id",
                          "resource", "details"}
    assert spawn["resource"] == {"type": "agent", "id": spawned["agent_id"]}
    assert spawn["user_agent"] == "j1msky-sdk/1.0.0" and spawn["api_key_id"].startswith("key_")
    assert spawn["details"]["model"] == "k2p5" and "[email]" in spawn["details"]["task_preview"]
    assert "jane.doe" not in str(log)
    only = await (await client.get("/api/security/audit?event=security.violation", headers=admin)).json()
    assert only["data"] and all(e["event"] == "security.violation" for e in only["data"])
    bad = await client.post("/api/security/audit", json={"events": ["nope"]}, headers=admin)
    assert bad.status == 400


async def test_audit_retention_purges_old_entries(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    await client.post("/api/security/audit", json={"retention_days": 1})
    services = client.app[next(k for k in client.app if "services" in str(k))]
    services.audit.clock = lambda: time.time() - 3 * 86400  # an entry from three days ago
    services.audit.record("config.change", details={"old": True})
    services.audit.clock = time.time
    await services.audit.purge()
    log = await (await client.get("/api/security/audit?limit=500")).json()
    assert not any(e["details"].get("old") for e in log["data"])
    assert any(e["event"] == "config.change" for e in log["data"])  # the settings change itself stays


# -- privacy ------------------------------------------------------------------------------------------
async def test_immediate_deletion_and_retention(aiohttp_client, config):
    clock = Clock(time.time())  # retention ends when the test moves the app's clock
    client = await aiohttp_client(build_app(config, clock=clock))
    spawned = await (await client.post("/api/spawn", json=SPAWN | {"privacy": {"retention_days": 7}})).json()
    done = await wait_status(client, spawned["agent_id"])
    resp = await client.delete(f"/api/agent/{spawned['agent_id']}/data")
    assert resp.status == 200
    erased = await (await client.get(f"/api/agent/{spawned['agent_id']}")).json()
    assert erased["task"] == "" and erased["result"] is None and erased["data_deleted_at"]
    assert erased["cost"] == done["cost"]  # the cost record stays
    assert (await client.delete("/api/agent/subagent_0_0000/data")).status == 404
    bad = await client.post("/api/spawn", json=SPAWN | {"privacy": {"retention_days": -1}})
    assert bad.status == 400

    other = await (await client.post("/api/spawn", json=SPAWN | {"privacy": {"retention_days": 0.00001}})).json()
    await wait_status(client, other["agent_id"])
    keep = await (await client.post("/api/spawn", json=SPAWN)).json()
    await wait_status(client, keep["agent_id"])
    clock.t += 1.0  # 0.00001 days is under a second
    services = client.app[next(k for k in client.app if "services" in str(k))]
    await services.agents.purge_expired()
    assert (await (await client.get(f"/api/agent/{other['agent_id']}")).json())["task"] == ""
    assert (await (await client.get(f"/api/agent/{keep['agent_id']}")).json())["task"] == SPAWN["task"]


@pytest.mark.parametrize("text,expected", [
    ("mail jane.doe@example.com now", "mail [email] now"),
    ("card 4111 1111 1111 1111 ok", "card [card] ok"),
    ("call +44 20 7946 0958 today", "call [phone] today"),
    ("order 1234567890123 is not a card", "order 1234567890123 is not a card"),
    ("version 3.11.2 and port 8080", "version 3.11.2 and port 8080"),
    ("no personal data in here at all", "no personal data in here at all"),  # neither "@" nor a digit
    ("reach bob@example.com or +44 20 7946 0958", "reach [email] or [phone]"),
    ("card4111111111111111@example.com", "[email]"),  # the email pass first, as before
])
def test_pii_masking(text, expected):
    assert mask(text) == expected


def test_masking_filter_rewrites_log_records(caplog):
    logger = logging.getLogger("j1mskyd.test.pii")
    handler = logging.Handler()
    seen = []
    handler.emit = lambda record: seen.append(record.getMessage())
    handler.addFilter(MaskingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("task from %s", "bob@example.org")
    finally:
        logger.removeHandler(handler)
    assert seen == ["task from [email]"]
