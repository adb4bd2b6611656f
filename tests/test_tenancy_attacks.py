"""Issue 15 under attack: what a hostile key (or a careless admin) tries against isolation and
the per-key budgets, each a regression test of a hole found, or of one that held."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.config import WebhooksConfig
from j1mskyd.tenancy import Viewer
from tests.conftest import auth_config, bearer, bootstrap_key
from tests.test_budget_http import priced_config, upstream  # noqa: F401  (upstream: the priced fake's fixture)
from tests.test_key_limits_enforced import open_api, settle, with_auth

USER = ("agents:read", "agents:write")
CHAT = {"model": "k2p5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}


async def test_a_rotated_key_hands_on_its_budget_it_does_not_mint_a_second(aiohttp_client, tmp_path, upstream):
    """Rotation (admin) gave the successor the key's limits but a spend of 0, and the old key
    kept its own for the grace day: two tokens of one tenant, each with a full budget."""
    upstream.delay = 1.0  # reservations in flight must count across the family too
    api = await open_api(aiohttp_client, with_auth(priced_config(tmp_path, upstream)))
    key = await api.key(max_budget=0.35)
    for _ in range(2):
        assert (await api.spawn(key["token"])).status == 200
    await settle(api)
    rotated = await api.client.post(f"/api/keys/{key['key_id']}/rotate", headers=api.admin)
    assert rotated.status == 201, await rotated.text()
    new = await rotated.json()
    standing = (await api.view(new["key_id"]))["budget"]
    assert standing["spend"] == pytest.approx(0.2) and standing["budget_remaining"] == pytest.approx(0.15)
    held = await api.spawn(key["token"])  # the old key, in its grace period, still spends: in flight
    assert held.status == 200
    for token in (new["token"], key["token"]):  # 0.2 spent + 0.1 held: no room for another 0.1
        refused = await api.spawn(token)
        body = await refused.json()
        assert refused.status == 402 and body["error"]["level"] == "key", body
        assert body["error"]["budget_remaining"] == pytest.approx(0.05)
    await settle(api)
    (spent,), = await api.ledger("SELECT COALESCE(SUM(cost), 0) FROM usage WHERE api_key IN (?, ?)",
                                 key["key_id"], new["key_id"])
    assert spent == pytest.approx(0.3) and spent <= 0.35
    again = await api.client.post(f"/api/keys/{new['key_id']}/rotate", headers=api.admin)  # and once more
    third = await again.json()
    assert (await api.view(third["key_id"]))["budget"]["spend"] == pytest.approx(0.3)
    assert (await api.spawn(third["token"])).status == 402


async def test_a_key_with_a_budget_of_zero_spends_nothing_on_any_route(aiohttp_client, tmp_path, upstream):
    """Held: max_budget 0 refuses every way to spend (402, or the front door's quota error), and
    nothing is made or reserved."""
    api = await open_api(aiohttp_client, with_auth(priced_config(tmp_path, upstream)))
    token = (await api.key(max_budget=0))["token"]
    for path, body in [("/api/spawn", {"model": "k2p5", "task": "t"}),
                       ("/api/spawn-batch", {"agents": [{"model": "k2p5", "task": "t"}]}),
                       ("/api/spawn-team", {"team": "team_coding", "task": "t"}),
                       ("/api/spawn", {"model": "opus", "task": "t"}),
                       ("/v1/chat/completions", CHAT), ("/v1/chat/completions", {**CHAT, "stream": True})]:
        resp = await api.client.post(path, json=body, headers=bearer(token))
        text = await resp.text()
        assert resp.status in (402, 429) and "Key budget of $0 per 1d" in text, (path, resp.status, text)
    anthropic = await api.client.post("/v1/messages", json=CHAT, headers={"x-api-key": token,
                                                                          "anthropic-version": "2023-06-01"})
    assert anthropic.status in (400, 402, 429) and "Key budget of $0" in await anthropic.text()
    assert await api.ledger("SELECT agent_id FROM agents") == [] and api.budget.reserved == 0


# -- a revoked key's webhooks --------------------------------------------------------------------

async def test_a_revoked_key_s_webhooks_hear_nothing_more(aiohttp_client, tmp_path):
    """A stolen admin token could set a webhook "*" to the thief's receiver; revoking the
    token left that webhook routed every key's events for ever (and a revoked key's own
    webhooks, and its agents' webhook_url, went on hearing).  Now a webhook acts only while
    its maker (or the maker's successor after a rotation) is active; deliveries queued
    before the revocation wait, unsent."""
    cfg = dataclasses.replace(auth_config(tmp_path), webhooks=WebhooksConfig(allowed_networks=("127.0.0.0/8",)))
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])
    services = client.app[SERVICES]
    hooks = services.webhooks

    async def key(*scopes: str) -> dict[str, Any]:
        resp = await client.post("/api/keys", json={"name": "k", "scopes": list(scopes)}, headers=admin)
        assert resp.status == 201
        return await resp.json()

    async def hook(token: str, events: list[str]) -> str:
        resp = await client.post("/api/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": events},
                                 headers=bearer(token))
        assert resp.status == 201, await resp.text()
        return (await resp.json())["data"]["webhook_id"]

    thief, user, rotated, victim = await key("admin:write"), await key(*USER), await key("admin:write"), await key(*USER)
    stolen = await hook(thief["token"], ["*"])
    own, named = await hook(user["token"], ["*"]), await hook(user["token"], ["budget.warning"])
    kept = await hook(rotated["token"], ["*"])
    spawned = await client.post("/api/spawn", json={"model": "k2p5", "task": "t", "webhook_url": "http://127.0.0.1:9/x"},
                                headers=bearer(user["token"]))
    agent_id = (await spawned.json())["agent_id"]
    per_agent = next(h.webhook_id for h in hooks.hooks.values() if h.agent_id == agent_id)

    def routed() -> set[str]:
        return {*hooks.route("agent.completed", {"agent_id": "a1"}, victim["key_id"]),
                *hooks.route("agent.completed", {"agent_id": agent_id}, user["key_id"]),
                *hooks.route("budget.warning", {}, None)}

    assert {stolen, own, named, kept, per_agent} <= routed()
    for key_id in (thief["key_id"], user["key_id"]):
        assert (await client.delete(f"/api/keys/{key_id}", headers=admin)).status == 200
    # the rotated admin key: its successor is active, so its webhooks go on after the grace ends
    assert (await client.post(f"/api/keys/{rotated['key_id']}/rotate", headers=admin)).status == 201
    await services.store.write(("UPDATE api_keys SET expires_at = ? WHERE key_id = ?",
                                (services.keys.clock() - 1, rotated["key_id"])))
    await services.keys.reload()
    assert services.keys.find(rotated["key_id"]).state(services.keys.clock()) == "expired"
    now = routed()
    assert kept in now
    assert not {stolen, own, named, per_agent} & now, now
    # a successor revoked while its old key is still in its grace period: its webhooks stop at once
    old = await key(*USER)
    rotation = await client.post(f"/api/keys/{old['key_id']}/rotate", headers=admin)
    successor = await rotation.json()
    heard = await hook(successor["token"], ["*"])
    assert heard in hooks.route("agent.completed", {"agent_id": "a2"}, successor["key_id"])
    assert (await client.delete(f"/api/keys/{successor['key_id']}", headers=admin)).status == 200
    assert services.keys.find(old["key_id"]).state(services.keys.clock()) == "active"
    assert heard not in hooks.route("agent.completed", {"agent_id": "a2"}, successor["key_id"])
    # what was queued for them before the revocation is not sent after it
    assert not {stolen, own, named, per_agent} & set(hooks._active_ids()[1])


# -- a revoked key's agents -----------------------------------------------------------------------

def one_at_a_time(tmp_path, upstream) -> Any:
    """The priced fake as the only provider of k2p5, one call at a time: a key's second agent waits queued."""
    cfg = with_auth(priced_config(tmp_path, upstream))
    providers = dict(cfg.providers)
    providers["paid"] = dataclasses.replace(providers["paid"], max_concurrency=1)
    return dataclasses.replace(cfg, providers=providers)


async def statuses(api, *agent_ids: str) -> list[str]:
    return [(await (await api.client.get(f"/api/agent/{a}", headers=api.admin)).json())["status"] for a in agent_ids]


async def test_revoking_a_key_leaves_its_agents_to_run_to_their_end(aiohttp_client, tmp_path, upstream):
    """What docs/security.md says revoking does not do: the key's token is refused at once, but
    the agents it spawned before (running and queued) go on, and their cost is the key's."""
    upstream.delay = 2.0  # long enough to find one running and one queued on a loaded machine
    api = await open_api(aiohttp_client, one_at_a_time(tmp_path, upstream))
    key = await api.key()
    running, queued = [(await (await api.spawn(key["token"])).json())["agent_id"] for _ in range(2)]
    await upstream.wait_calls(1)
    assert await statuses(api, running, queued) == ["running", "queued"]
    assert (await api.client.delete(f"/api/keys/{key['key_id']}", headers=api.admin)).status == 200
    assert (await api.spawn(key["token"])).status == 401
    await settle(api)
    assert await statuses(api, running, queued) == ["completed", "completed"]
    assert len(upstream.calls) == 2
    (spent,), = await api.ledger("SELECT SUM(cost) FROM usage WHERE api_key = ?", key["key_id"])
    assert spent == pytest.approx(0.2)


async def test_after_revoking_an_admin_finds_the_key_s_live_agents_and_cancels_them(aiohttp_client, tmp_path,
                                                                                    upstream):
    """The steps docs/security.md gives: list the key's queued and running agents with
    ``?api_key=`` and ``?status=``, cancel each; the call in flight is billed, the queued one is not."""
    upstream.delay = 30
    api = await open_api(aiohttp_client, one_at_a_time(tmp_path, upstream))
    key, other = await api.key(), await api.key()
    running, queued = [(await (await api.spawn(key["token"])).json())["agent_id"] for _ in range(2)]
    bystander = (await (await api.spawn(other["token"])).json())["agent_id"]
    await upstream.wait_calls(1)
    assert (await api.client.delete(f"/api/keys/{key['key_id']}", headers=api.admin)).status == 200
    live = []
    for status in ("queued", "running"):
        resp = await api.client.get(f"/api/agents?api_key={key['key_id']}&status={status}&limit=100",
                                    headers=api.admin)
        assert resp.status == 200
        live += [row["agent_id"] for row in (await resp.json())["data"]]
    assert sorted(live) == sorted([running, queued])  # the other key's queued agent is not among them
    for agent_id in live:
        assert (await api.client.delete(f"/api/agent/{agent_id}", headers=api.admin)).status == 200
    assert await statuses(api, running, queued) == ["cancelled", "cancelled"]
    await upstream.wait_calls(2)  # the provider's one slot went to the next in line, the other key's
    assert await statuses(api, bystander) == ["running"]
    (billed,), = await api.ledger("SELECT COUNT(*) FROM usage WHERE api_key = ?", key["key_id"])
    assert billed == 1  # the call in flight, billed; the queued one never called


# -- refusals of requests without a valid key ------------------------------------------------------

async def test_a_refused_request_without_a_valid_key_is_shown_to_admins_only(aiohttp_client, tmp_path):
    """The refusal of a request with no valid key (a revoked or unknown token, none) was a
    daemon-wide security.violation: every key read, on /events, its path (another key's
    agent id) and its address (another client's).  Now only keys that see all read it,
    listed, replayed, live, and at their webhooks."""
    cfg = dataclasses.replace(auth_config(tmp_path), webhooks=WebhooksConfig(allowed_networks=("127.0.0.0/8",)))
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])
    services = client.app[SERVICES]

    async def key(*scopes: str) -> dict[str, Any]:
        resp = await client.post("/api/keys", json={"name": "k", "scopes": list(scopes)}, headers=admin)
        assert resp.status == 201
        return await resp.json()

    a, b, reader = await key(*USER), await key(*USER), await key("admin:read")
    named = await client.post("/api/webhooks", json={"url": "http://127.0.0.1:9/h", "events": ["security.violation"]},
                              headers=bearer(b["token"]))
    assert named.status == 201
    b_hook = (await named.json())["data"]["webhook_id"]
    live_b = services.events.subscribe(None, viewer=Viewer(b["key_id"]))
    assert (await client.delete(f"/api/keys/{a['key_id']}", headers=admin)).status == 200
    secret_path = "/api/agent/subagent_1_of_a_9f3e"
    assert (await client.get(secret_path, headers=bearer(a["token"]))).status == 401  # A's revoked token
    assert (await client.get(secret_path + "x")).status == 401                      # no token at all
    wrong = await client.get("/api/agents", headers=bearer(b["token"] + "x"))         # a wrong token
    assert wrong.status == 401

    async def listed(token: str) -> str:
        resp = await client.get("/api/events?types=security.violation", headers=bearer(token))
        assert resp.status == 200
        return await resp.text()

    for _ in range(500):  # emitted soon after the refusal (bounded wait)
        if secret_path in await listed(reader["token"]):
            break
        await asyncio.sleep(0.01)
    assert secret_path in await listed(reader["token"]) and secret_path + "x" in await listed(reader["token"])
    assert "security.violation" not in await listed(b["token"])
    assert not await services.events.after(0, 100, None, Viewer(b["key_id"]))
    assert live_b.queue.empty()
    services.events.unsubscribe(live_b)
    owners = await services.store.read(lambda conn: {r[0] for r in conn.execute(
        "SELECT api_key FROM events WHERE type = 'security.violation'")})
    assert not any(b_hook in services.webhooks.route("security.violation", {}, owner) for owner in owners)
    # B's own refusal (a scope it lacks) stays B's event
    assert (await client.get("/api/keys", headers=bearer(b["token"]))).status == 403
    for _ in range(500):
        if "insufficient" in await listed(b["token"]) or "scope" in await listed(b["token"]):
            break
        await asyncio.sleep(0.01)
    own = json.loads(await listed(b["token"]))["data"]
    assert own and all(e["data"]["path"] == "/api/keys" for e in own)


# -- how many webhooks a tenant may make -------------------------------------------------------------

async def test_a_key_may_hold_only_so_many_webhooks_even_racing(aiohttp_client, tmp_path):
    """Webhooks moved from admin:write to agents:write: any tenant key could make thousands,
    each one more delivery row per event and more work on every key's event path.  A key that
    sees only its own work holds at most MAX_PER_KEY (409 past it, nothing made), racing
    creates included; an admin key is not capped."""
    from j1mskyd.webhooks import MAX_PER_KEY
    cfg = dataclasses.replace(auth_config(tmp_path), webhooks=WebhooksConfig(allowed_networks=("127.0.0.0/8",)))
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])
    resp = await client.post("/api/keys", json={"name": "k", "scopes": list(USER)}, headers=admin)
    tenant = bearer((await resp.json())["token"])

    async def make(headers: dict[str, str], n: int) -> list[Any]:
        return await asyncio.gather(*(client.post("/api/webhooks", json={"url": f"http://127.0.0.1:9/h{i}",
                                                                          "events": ["*"]}, headers=headers)
                                      for i in range(n)))

    answers = await make(tenant, MAX_PER_KEY + 5)
    statuses = [r.status for r in answers]
    assert statuses.count(201) == MAX_PER_KEY and statuses.count(409) == 5, statuses
    refused = await next(r for r in answers if r.status == 409).json()
    assert refused["error"]["type"] == "CONFLICT" and f"is {MAX_PER_KEY}" in refused["error"]["message"]
    listed = await (await client.get("/api/webhooks", headers=tenant)).json()
    assert listed["count"] == MAX_PER_KEY
    assert (await client.delete(f"/api/webhooks/{listed['data'][0]['webhook_id']}", headers=tenant)).status in (200, 204)
    assert [r.status for r in await make(tenant, 2)] in ([201, 409], [409, 201])
    assert all(r.status == 201 for r in await make(admin, MAX_PER_KEY + 1))  # admins are not capped


# -- expiry of the last admin key ----------------------------------------------------------------------

async def test_the_last_admin_key_with_no_expiry_cannot_be_given_one(aiohttp_client, tmp_path):
    """Revoking the last active admin key is refused (409), but PATCH expires_at did the same a
    little later: every admin key expired and nobody could manage keys over HTTP.  Now giving
    an expiry to the last admin key that has none is the same 409, and nothing changes."""
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    boot = bootstrap_key(cfg)
    admin = bearer(boot["token"])
    soon = "2099-01-01T00:00:00Z"

    async def patch(key_id: str) -> Any:
        return await client.patch(f"/api/keys/{key_id}", json={"expires_at": soon}, headers=admin)

    refused = await patch(boot["key_id"])
    body = await refused.json()
    assert refused.status == 409 and body["error"]["type"] == "CONFLICT" and "last active admin" in body["error"]["message"]
    assert (await (await client.get(f"/api/keys/{boot['key_id']}", headers=admin)).json())["expires_at"] is None
    expiring = await client.post("/api/keys", json={"name": "a2", "scopes": ["admin:write"], "expires_at": soon},
                                 headers=admin)
    assert expiring.status == 201
    assert (await patch(boot["key_id"])).status == 409  # the other admin key expires too
    lasting = await client.post("/api/keys", json={"name": "a3", "scopes": ["admin:write"]}, headers=admin)
    assert (await patch(boot["key_id"])).status == 200
    assert (await patch((await lasting.json())["key_id"])).status == 409  # now a3 is the last one with none
    plain = await client.post("/api/keys", json={"name": "u", "scopes": list(USER)}, headers=admin)
    assert (await patch((await plain.json())["key_id"])).status == 200  # other keys: as before


async def test_a_rotated_key_s_successor_sees_its_work_and_strangers_still_do_not(aiohttp_client, tmp_path, upstream):
    """Rotating a token hands the key's work on with its budget: the successor sees the old key's
    agents (by id and in lists), their events and their spend as its own, and may cancel them;
    a key outside the rotation family still gets 404 and sees none of it."""
    api = await open_api(aiohttp_client, with_auth(priced_config(tmp_path, upstream)))
    key = await api.key([*USER, "billing:read"])
    stranger = (await api.key([*USER, "billing:read"]))["token"]
    done = (await (await api.spawn(key["token"], model="k2p5", task="finished before the rotation")).json())
    await settle(api)
    upstream.delay = 30.0  # one agent still running, to cancel through the successor
    running = (await (await api.spawn(key["token"], model="k2p5", task="still running")).json())["agent_id"]
    rotated = await api.client.post(f"/api/keys/{key['key_id']}/rotate", headers=api.admin)
    assert rotated.status == 201, await rotated.text()
    new = bearer((await rotated.json())["token"])
    for agent_id in (done["agent_id"], running):
        assert (await api.client.get(f"/api/agent/{agent_id}", headers=new)).status == 200
        assert (await api.client.get(f"/api/agent/{agent_id}", headers=bearer(stranger))).status == 404
    listed = await (await api.client.get("/api/agents", headers=new)).json()
    assert {a["agent_id"] for a in listed["data"]} == {done["agent_id"], running}
    assert (await (await api.client.get("/api/agents", headers=bearer(stranger))).json())["data"] == []
    events = await (await api.client.get("/api/events", headers=new)).json()
    assert {e["data"].get("agent_id") for e in events["data"]} >= {done["agent_id"], running}
    stranger_events = await (await api.client.get("/api/events", headers=bearer(stranger))).json()
    assert not {e["data"].get("agent_id") for e in stranger_events["data"]} & {done["agent_id"], running}
    cancelled = await api.client.delete(f"/api/agent/{running}", headers=new)
    assert cancelled.status == 200, await cancelled.text()
    await settle(api)
    usage = await (await api.client.get("/api/billing/usage?group_by=key", headers=new)).json()
    assert {r["key_id"] for r in usage["rows"]} == {key["key_id"]} and usage["rows"][0]["cost"] > 0
    assert (await (await api.client.get("/api/billing/usage?group_by=key",
                                        headers=bearer(stranger))).json())["rows"] == []
