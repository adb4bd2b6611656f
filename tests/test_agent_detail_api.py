"""What the dashboard's agent detail and its other views read (issue 18): an agent's charges
(estimated, charged, refunded), its timeline, the fallbacks it took, its webhook deliveries
(GET /agent/{id}/deliveries); the listing's charged cost; GET /models with prices, live
performance and the teams.  Real app, real sqlite, fake upstreams and a real receiver on loopback."""

from __future__ import annotations

import dataclasses

import pytest

from j1mskyd.app import build_app
from tests import conftest
from tests.conftest import bearer, bootstrap_key, wait_status
from tests.test_runtime import spawn, two_provider_config
from tests.test_webhooks import LOOPBACK, eventually, receiver  # noqa: F401  (receiver: a fixture)


async def test_a_completed_agent_shows_its_charges_timeline_and_no_fallback(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.input_tokens, primary.output_tokens = 3000, 1200
    client = await aiohttp_client(build_app(two_provider_config(tmp_path, primary, secondary)))
    done = await wait_status(client, await spawn(client))
    assert done["status"] == "completed"
    charges = done["charges"]
    assert charges["estimated"] == done["estimated_cost"]
    assert charges["charged"] == done["cost"] > 0
    assert charges["refunded"] == pytest.approx(max(done["estimated_cost"] - done["cost"], 0.0))
    assert done["timeline"] == {"created": done["created"], "queued": done["created"], "started": done["started"],
                                "completed": done["completed"]}
    assert done["timeline"]["started"] is not None and done["timeline"]["completed"] is not None
    assert done["fallbacks"] == [] and done["attempts"] == 1
    listed = (await (await client.get("/api/agents")).json())["data"][0]
    assert listed["charged_cost"] == done["cost"]


async def test_a_fallback_is_named_and_a_failed_agent_was_charged_nothing(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    primary.fail_next(3, 500)
    client = await aiohttp_client(build_app(two_provider_config(tmp_path, primary, secondary)))
    done = await wait_status(client, await spawn(client))
    assert done["served_by"]["model"] == "minimax-m2.5"
    assert done["fallbacks"] == ["minimax-m2.5"] and done["attempts"] == 4

    primary.fail_next(3, 500)
    secondary.fail_next(3, 529)
    failed = await wait_status(client, await spawn(client))
    assert failed["status"] == "failed" and failed["cost"] is None
    # Nothing was billed: charged 0, the whole estimate back; no model answered: no fallback path.
    assert failed["charges"] == {"estimated": failed["estimated_cost"], "charged": 0.0,
                                 "refunded": failed["estimated_cost"]}
    assert failed["fallbacks"] is None and failed["attempts"] > 3  # the primary's three, then the fallback's
    assert failed["usage"] is None  # unknown: the dashboard says so rather than showing nothing
    listing = (await (await client.get("/api/agents?status=failed")).json())["data"]
    assert [a["charged_cost"] for a in listing] == [0.0]
    assert listing[0]["estimated_cost"] > 0  # what the table showed before, though nothing was charged


async def test_a_live_agent_has_no_charge_yet(aiohttp_client, tmp_path):
    cfg = conftest.make_config(tmp_path)
    slow = dataclasses.replace(cfg.providers["offline"], options={"delay": 30.0})
    client = await aiohttp_client(build_app(dataclasses.replace(cfg, providers={**cfg.providers, "offline": slow})))
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "slow"})
    agent_id = (await resp.json())["agent_id"]
    live = await wait_status(client, agent_id, ("running",))
    assert live["charges"] == {"estimated": live["estimated_cost"], "charged": None, "refunded": None}
    assert live["fallbacks"] is None and live["timeline"]["completed"] is None
    listed = (await (await client.get("/api/agents")).json())["data"][0]
    assert listed["charged_cost"] is None
    cancelled = await (await client.delete(f"/api/agent/{agent_id}")).json()
    after = await wait_status(client, agent_id)
    assert after["status"] == "cancelled"
    assert after["charges"]["refunded"] == cancelled["refund"]  # the same figure DELETE answered


async def test_an_agents_webhook_deliveries_are_listed_for_whoever_sees_the_agent(aiohttp_client, tmp_path,
                                                                                 receiver):
    cfg = dataclasses.replace(conftest.auth_config(tmp_path), webhooks=LOOPBACK)
    cfg = dataclasses.replace(cfg, limits=conftest.make_config(tmp_path).limits)
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])

    async def new_key(name: str) -> dict[str, str]:
        resp = await client.post("/api/keys", json={"name": name, "scopes": ["agents:read", "agents:write"]},
                                 headers=admin)
        assert resp.status == 201
        return bearer((await resp.json())["token"])

    a, b = await new_key("a"), await new_key("b")
    resp = await client.post("/api/webhooks", json={"url": receiver.url, "events": ["agent.spawned", "agent.completed"],
                                                    "secret": "receiver-secret-123"}, headers=a)
    assert resp.status == 201, await resp.text()
    hook = (await resp.json())["data"]
    first = (await (await client.post("/api/spawn", json={"model": "k2p5", "task": "one"}, headers=a)).json())
    second = (await (await client.post("/api/spawn", json={"model": "k2p5", "task": "two"}, headers=a)).json())
    await receiver.wait_for(4)

    async def listed(agent_id: str, headers: dict[str, str]) -> list[dict]:
        resp = await client.get(f"/api/agent/{agent_id}/deliveries", headers=headers)
        body = await resp.json()
        assert resp.status == 200, body
        return body["data"]

    async def settled() -> list[dict] | None:
        rows = await listed(first["agent_id"], a)
        return rows if len(rows) == 2 and all(r["status"] == "delivered" for r in rows) else None

    rows = await eventually(settled, what="both deliveries delivered")
    assert [r["event"] for r in rows] == ["agent.spawned", "agent.completed"]  # its own, not the other agent's
    assert {r["webhook_id"] for r in rows} == {hook["webhook_id"]} and rows[0]["url"] == receiver.url
    assert rows[0]["attempts"] == 1 and rows[0]["delivered_at"]
    assert len(await listed(second["agent_id"], a)) == 2
    assert len(await listed(first["agent_id"], admin)) == 2  # the admin sees every key's work
    # Another key: the agent is unknown to it (the same 404 as an id that does not exist).
    for agent_id in (first["agent_id"], "subagent_0_0000"):
        resp = await client.get(f"/api/agent/{agent_id}/deliveries", headers=b)
        assert resp.status == 404 and (await resp.json())["error"]["type"] == "NOT_FOUND"
    resp = await client.get(f"/api/agent/{first['agent_id']}/deliveries")
    assert resp.status == 401


async def test_models_with_prices_performance_and_teams(client):
    await wait_status(client, (await (await client.post("/api/spawn", json={"model": "k2p5", "task": "x"})).json())
                      ["agent_id"])
    plain = (await (await client.get("/api/models")).json())["data"]
    assert "pricing" not in plain["models"][0] and "performance" not in plain["models"][0]
    teams = {t["id"]: t for t in plain["teams"]}
    assert teams and all(t["members"] and t["name"] for t in teams.values())
    resp = await client.get("/api/models?include=pricing,performance")
    body = (await resp.json())["data"]
    k2p5 = next(m for m in body["models"] if m["name"] == "k2p5")
    assert k2p5["pricing"]["per"] == "1k tokens" and k2p5["pricing"]["input_tokens"] > 0
    assert k2p5["performance"]["finished_agents"] == 1 and k2p5["performance"]["success_rate"] == 100.0
    one = (await (await client.get("/api/models/k2p5")).json())["data"]
    assert one["pricing"] == k2p5["pricing"]
    resp = await client.get("/api/models?include=pricing,secrets")
    body = await resp.json()
    assert resp.status == 400 and body["error"]["details"][0]["field"] == "include"
    assert "secrets" in body["error"]["message"]


async def test_a_key_limited_to_some_models_sees_only_its_teams(aiohttp_client, tmp_path):
    cfg = conftest.auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])
    team_id = next(iter(cfg.teams))
    resp = await client.post("/api/keys", json={"name": "narrow", "scopes": ["agents:read"], "models": ["k2p5"]},
                             headers=admin)
    narrow = bearer((await resp.json())["token"])
    assert (await (await client.get("/api/models", headers=narrow)).json())["data"]["teams"] == []
    everything = (await (await client.get("/api/models", headers=admin)).json())["data"]["teams"]
    assert team_id in [t["id"] for t in everything]


async def test_spend_by_hour_for_the_burn_down(aiohttp_client, tmp_path):
    from tests.test_billing_groups import start, usage

    client, admin, a, _, _ = await start(aiohttp_client, tmp_path)
    one_day = {"from": "2026-02-01", "to": "2026-02-01"}
    by_hour = await usage(client, admin, group_by="hour", **one_day)
    assert {r["hour"]: r["cost"] for r in by_hour["rows"]} == {"2026-02-01T10:00:00Z": 1.0,
                                                               "2026-02-01T11:00:00Z": 2.0}
    mine = await usage(client, bearer(a["token"]), group_by="hour,model", **{"from": "2026-02-02", "to": "2026-02-02"})
    assert [(r["hour"], r["model"], r["cost"]) for r in mine["rows"]] == [("2026-02-02T10:00:00Z", "k2p5", 4.0)]
