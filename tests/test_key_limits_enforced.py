"""A key's own limits at work (issue 15), through real HTTP against a loopback fake upstream:
the key budget is a hard cap under 100 concurrent spawns, its models a 403 on every spawn
route and the front door (nothing made, nothing reserved), max_concurrency and its request
limits in place of the daemon's, X-Budget-Remaining on its responses, its project stamped on
its agents and ledger rows, and its streams (events and the front door) ended when it expires
or is revoked.

Money is exact as in test_budget_http.py: k2p5 reserves and costs $0.10 a spawn."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.keys import membership_statements
from tests.conftest import bearer, bootstrap_key
from tests.test_budget_http import priced_config, upstream  # noqa: F401  (upstream: the priced fake's fixture)

KEY_SCOPES = ["agents:read", "agents:write"]


def with_auth(cfg: Any) -> Any:
    return dataclasses.replace(cfg, security=dataclasses.replace(cfg.security, auth=True))


class Api:
    def __init__(self, client: Any, cfg: Any) -> None:
        self.client = client
        self.cfg = cfg
        self.admin = bearer(bootstrap_key(cfg)["token"])

    async def key(self, scopes: list[str] = KEY_SCOPES, **limits: Any) -> dict[str, Any]:
        resp = await self.client.post("/api/keys", json={"name": "tenant", "scopes": scopes, **limits},
                                      headers=self.admin)
        assert resp.status == 201, await resp.text()
        return await resp.json()

    async def spawn(self, token: str, path: str = "/api/spawn", **body: Any) -> Any:
        body = body or {"model": "k2p5", "task": "spend some money"}
        return await self.client.post(path, json=body, headers=bearer(token))

    async def view(self, key_id: str) -> dict[str, Any]:
        return await (await self.client.get(f"/api/keys/{key_id}", headers=self.admin)).json()

    async def ledger(self, sql: str, *args: Any) -> list[Any]:
        store = self.client.app[SERVICES].store
        return await store.read(lambda conn: [tuple(r) for r in conn.execute(sql, args)])

    @property
    def budget(self) -> Any:
        return self.client.app[SERVICES].budget


async def open_api(aiohttp_client, cfg: Any) -> Api:
    return Api(await aiohttp_client(build_app(cfg)), cfg)


async def settle(api: Api, timeout: float = 20.0) -> None:
    """Until no agent is live (bounded)."""
    runtime = api.client.app[SERVICES].runtime
    end = asyncio.get_running_loop().time() + timeout
    while runtime.live:
        assert asyncio.get_running_loop().time() < end, f"agents still live: {list(runtime.live)}"
        await asyncio.sleep(0.02)


# -- the key budget: a hard cap under concurrency ------------------------------------------------

async def test_a_key_budget_holds_under_100_concurrent_spawns(aiohttp_client, tmp_path, upstream):
    upstream.delay = 1.0  # in flight together: their reservations alone must stop the rest
    api = await open_api(aiohttp_client, with_auth(priced_config(tmp_path, upstream)))
    key = await api.key(max_budget=0.55)
    other = await api.key()
    answers = await asyncio.gather(*(api.spawn(key["token"]) for _ in range(100)))
    statuses = [r.status for r in answers]
    bodies = [await r.json() for r in answers]
    assert statuses.count(200) == 5 and statuses.count(402) == 95, statuses
    refusals = [b["error"] for b in bodies if "error" in b]
    assert all(e["type"] == "BUDGET_EXCEEDED" and e["level"] == "key" for e in refusals)
    assert all(e["budget_remaining"] == pytest.approx(0.05) for e in refusals)
    assert "Key budget of $0.55 per 1d" in refusals[0]["message"]
    standing = (await api.view(key["key_id"]))["budget"]
    assert standing["spend"] + standing["reserved"] <= 0.55 + 1e-9
    assert (await api.spawn(other["token"])).status == 200  # another key is not held by it
    await settle(api)
    (spent,), = await api.ledger("SELECT COALESCE(SUM(cost), 0) FROM usage WHERE api_key = ?", key["key_id"])
    assert spent == pytest.approx(0.5) and spent <= 0.55
    standing = (await api.view(key["key_id"]))["budget"]
    assert standing["spend"] == pytest.approx(0.5) and standing["reserved"] == 0
    assert standing["budget_remaining"] == pytest.approx(0.05)
    again = await api.spawn(key["token"])
    assert again.status == 402 and (await again.json())["error"]["budget_remaining"] == pytest.approx(0.05)


async def test_the_key_spend_survives_a_restart(aiohttp_client, tmp_path, upstream):
    cfg = with_auth(priced_config(tmp_path, upstream))
    api = await open_api(aiohttp_client, cfg)
    key = await api.key(max_budget=0.25, budget_duration="30d")
    for _ in range(2):
        assert (await api.spawn(key["token"])).status == 200
    await settle(api)
    await api.client.close()
    api = await open_api(aiohttp_client, cfg)  # the spend comes back from the ledger
    standing = (await api.view(key["key_id"]))["budget"]
    assert standing["spend"] == pytest.approx(0.2) and standing["budget_remaining"] == pytest.approx(0.05)
    assert (await api.spawn(key["token"])).status == 402


# -- models -----------------------------------------------------------------------------------------

async def test_models_outside_the_key_s_list_are_403_on_every_spawn_route(aiohttp_client, tmp_path, upstream):
    api = await open_api(aiohttp_client, with_auth(priced_config(tmp_path, upstream)))
    key = await api.key(models=["k2p5", "team_coding"])
    token = key["token"]
    refused = [
        await api.spawn(token, model="opus", task="t"),
        await api.spawn(token, "/api/spawn-team", team="team_research", task="t"),
        await api.spawn(token, "/api/spawn-batch", agents=[{"model": "k2p5", "task": "t"},
                                                           {"model": "sonnet", "task": "t"}]),
    ]
    for resp in refused:
        body = await resp.json()
        assert resp.status == 403 and body["error"]["type"] == "FORBIDDEN", body
        assert body["error"]["message"].startswith("this key may use only: k2p5, team_coding")
    assert api.budget.reserved == 0
    assert await api.ledger("SELECT agent_id FROM agents") == []  # nothing was made
    assert (await api.spawn(token, model="k2p5", task="t")).status == 200
    assert (await api.spawn(token, "/api/spawn-team", team="team_coding", task="t")).status == 200
    free = await api.key()
    assert (await api.spawn(free["token"], model="opus", task="t")).status == 200  # no list: every model


async def test_models_outside_the_list_are_403_at_the_front_door_in_each_dialect(aiohttp_client, tmp_path, upstream):
    api = await open_api(aiohttp_client, with_auth(priced_config(tmp_path, upstream)))
    token = (await api.key(models=["k2p5"]))["token"]
    chat = {"model": "opus", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    openai = await api.client.post("/v1/chat/completions", json=chat, headers=bearer(token))
    body = await openai.json()
    assert openai.status == 403 and set(body) == {"error"} and "this key may use only: k2p5" in body["error"]["message"]
    anthropic = await api.client.post("/v1/messages", json=chat, headers={"x-api-key": token,
                                                                           "anthropic-version": "2023-06-01"})
    body = await anthropic.json()
    assert anthropic.status == 403 and body["type"] == "error" and body["error"]["type"] == "permission_error"
    assert await api.ledger("SELECT agent_id FROM agents") == [] and api.budget.reserved == 0
    allowed = await api.client.post("/v1/chat/completions", json={**chat, "model": "k2p5"}, headers=bearer(token))
    assert allowed.status == 200


async def test_the_openai_sdk_raises_permission_denied_for_a_model_outside_the_list(aiohttp_client, tmp_path,
                                                                                     upstream):
    openai = pytest.importorskip("openai", reason="the official openai SDK (the test extra) is not installed here")
    api = await open_api(aiohttp_client, with_auth(priced_config(tmp_path, upstream)))
    token = (await api.key(models=["k2p5"]))["token"]
    async with openai.AsyncOpenAI(base_url=str(api.client.make_url("/v1")), api_key=token, max_retries=0) as sdk:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await sdk.chat.completions.create(model="opus", messages=[{"role": "user", "content": "hi"}])
        assert "this key may use only: k2p5" in str(denied.value)
        answer = await sdk.chat.completions.create(model="k2p5", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "fake reply"


async def test_a_key_s_model_lists_show_only_the_models_it_may_use(aiohttp_client, tmp_path, upstream):
    """/v1/models (what Open WebUI and the SDKs offer a user to pick from) and /api/models list a key
    with a models list only those; another model reads as unknown (404, as OpenAI answers a model the
    caller has no access to).  A key without a list, and the admin, see every configured model."""
    openai = pytest.importorskip("openai", reason="the official openai SDK (the test extra) is not installed here")
    api = await open_api(aiohttp_client, with_auth(priced_config(tmp_path, upstream)))
    every = sorted(api.cfg.models)
    assert "k2p5" in every and len(every) > 1
    limited = (await api.key(models=["k2p5"]))["token"]
    free = (await api.key())["token"]
    async with openai.AsyncOpenAI(base_url=str(api.client.make_url("/v1")), api_key=limited, max_retries=0) as sdk:
        assert [m.id async for m in sdk.models.list()] == ["k2p5"]
        assert (await sdk.models.retrieve("k2p5")).id == "k2p5"
        other = next(m for m in every if m != "k2p5")
        with pytest.raises(openai.NotFoundError):
            await sdk.models.retrieve(other)
    native = await (await api.client.get("/api/models", headers=bearer(limited))).json()
    assert [m["name"] for m in native["data"]["models"]] == ["k2p5"] and native["data"]["default_model"] == "k2p5"
    assert (await api.client.get(f"/api/models/{other}", headers=bearer(limited))).status == 404
    for headers in (bearer(free), api.admin):
        listed = await (await api.client.get("/v1/models", headers=headers)).json()
        assert sorted(m["id"] for m in listed["data"]) == every
        native = await (await api.client.get("/api/models", headers=headers)).json()
        assert sorted(m["name"] for m in native["data"]["models"]) == every


# -- concurrency and request limits of its own -------------------------------------------------

async def test_max_concurrency_replaces_max_agents_per_key_for_that_key(aiohttp_client, tmp_path, upstream):
    upstream.delay = 2.0
    cfg = with_auth(priced_config(tmp_path, upstream, max_agents_per_key=3))
    api = await open_api(aiohttp_client, cfg)
    two, five, plain = await api.key(max_concurrency=2), await api.key(max_concurrency=5), await api.key()
    for key, most in ((two, 2), (five, 5), (plain, 3)):
        for _ in range(most):
            assert (await api.spawn(key["token"])).status == 200
        refused = await api.spawn(key["token"])
        assert refused.status == 429, (most, await refused.text())
        assert f"limit {most}" in (await refused.json())["error"]["message"]
    # A batch no larger than the key's own limit waits for room (429); a larger one never fits (400).
    batch = {"agents": [{"model": "k2p5", "task": "t"}] * 5}
    assert (await api.client.post("/api/spawn-batch", json=batch, headers=bearer(five["token"]))).status == 429
    too_many = await api.client.post("/api/spawn-batch", json=batch, headers=bearer(two["token"]))
    assert too_many.status == 400 and "(2)" in (await too_many.json())["error"]["details"][0]["message"]


async def test_a_key_s_own_request_limits_override_the_config_s(aiohttp_client, tmp_path, upstream):
    base = priced_config(tmp_path, upstream)
    cfg = with_auth(dataclasses.replace(base, limits=dataclasses.replace(base.limits, agents_list=50)))
    api = await open_api(aiohttp_client, cfg)
    tight, plain = await api.key(limits={"agents_list": 2}), await api.key()
    seen = []
    for _ in range(3):
        resp = await api.client.get("/api/agents", headers=bearer(tight["token"]))
        seen.append((resp.status, resp.headers["X-RateLimit-Limit"], resp.headers["X-RateLimit-Remaining"]))
    assert seen == [(200, "2", "1"), (200, "2", "0"), (429, "2", "0")]
    resp = await api.client.get("/api/agents", headers=bearer(plain["token"]))
    assert resp.status == 200 and resp.headers["X-RateLimit-Limit"] == "50"
    mine = await (await api.client.get("/api/rate-limits", headers=bearer(tight["token"]))).json()
    assert mine["requests"]["agents_list"]["limit"] == 2 and mine["requests"]["spawn"]["limit"] == cfg.limits.spawn
    # A changed limit applies to the next request (a new bucket of its size).
    await api.client.patch(f"/api/keys/{tight['key_id']}", json={"limits": {"agents_list": 10}}, headers=api.admin)
    resp = await api.client.get("/api/agents", headers=bearer(tight["token"]))
    assert resp.status == 200 and resp.headers["X-RateLimit-Limit"] == "10"


# -- X-Budget-Remaining ----------------------------------------------------------------------------

async def test_x_budget_remaining_is_the_smallest_of_key_project_and_day(aiohttp_client, tmp_path, upstream):
    upstream.delay = 2.0
    api = await open_api(aiohttp_client, with_auth(priced_config(tmp_path, upstream, daily_budget=0.8)))
    key, plain = await api.key(max_budget=0.5), await api.key()
    assert (await api.client.get("/api/agents", headers=bearer(key["token"]))).headers["X-Budget-Remaining"] == "0.5000"
    resp = await api.spawn(key["token"])
    assert resp.headers["X-Budget-Remaining"] == "0.4000"  # its own reservation is counted already
    refused = await api.client.patch(f"/api/keys/{key['key_id']}", json={"max_budget": 3},
                                     headers=bearer(key["token"]))
    assert refused.status == 403 and refused.headers["X-Budget-Remaining"] == "0.4000"  # on refusals too
    resp = await api.client.get("/api/system", headers=bearer(plain["token"]))
    assert resp.headers["X-Budget-Remaining"] == "0.7000"  # no budget of its own: the day's
    await api.client.patch(f"/api/keys/{key['key_id']}", json={"max_budget": 5}, headers=api.admin)
    resp = await api.client.get("/api/keys/me", headers=bearer(key["token"]))
    assert resp.headers["X-Budget-Remaining"] == "0.7000"  # now the day is the smaller
    assert "X-Budget-Remaining" not in (await api.client.get("/api/health")).headers  # no key, no budget


# -- the project is stamped at spawn -------------------------------------------------------------

async def test_agents_and_ledger_rows_carry_the_key_s_project_at_spawn(aiohttp_client, tmp_path, upstream):
    api = await open_api(aiohttp_client, with_auth(priced_config(tmp_path, upstream)))
    key = await api.key()
    services = api.client.app[SERVICES]
    await services.store.write(*membership_statements("prj_a", [key["key_id"]]))
    await services.keys.reload()
    first = (await (await api.spawn(key["token"])).json())["agent_id"]
    await settle(api)
    await services.store.write(*membership_statements("prj_b", [key["key_id"]]))  # the key moves
    await services.keys.reload()
    second = (await (await api.spawn(key["token"])).json())["agent_id"]
    await settle(api)
    rows = dict(await api.ledger("SELECT agent_id, project_id FROM agents"))
    assert rows == {first: "prj_a", second: "prj_b"}
    billed = dict(await api.ledger("SELECT agent_id, project_id FROM usage"))
    assert billed == {first: "prj_a", second: "prj_b"}  # the first spend stays in prj_a


# -- expiry and revocation end the key's streams -----------------------------------------------------

def iso_in(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() + seconds, timezone.utc).isoformat()


async def test_an_expires_at_set_by_patch_closes_the_key_s_event_stream(aiohttp_client, tmp_path, upstream):
    api = await open_api(aiohttp_client, with_auth(priced_config(tmp_path, upstream)))
    key = await api.key(["agents:read"])
    resp = await api.client.get("/api/events/stream", headers=bearer(key["token"]))
    assert resp.status == 200
    patched = await api.client.patch(f"/api/keys/{key['key_id']}", json={"expires_at": iso_in(1.5)},
                                     headers=api.admin)
    assert patched.status == 200
    expires = datetime.fromisoformat((await patched.json())["key"]["expires_at"].replace("Z", "+00:00")).timestamp()
    tail = b""
    async with asyncio.timeout(10):  # the stream must end by itself: a hang fails here
        while not resp.content.at_eof():
            tail += await resp.content.read(4096)
    closed = time.time()
    assert b"closed: key expired" in tail
    assert closed - expires < 5.0  # the issue asks for 1 s: pushed by a timer, asserted with margin
    after = await api.client.get("/api/agents", headers=bearer(key["token"]))
    assert after.status == 401


async def test_a_front_door_stream_of_a_revoked_key_ends_and_is_billed(aiohttp_client, tmp_path, upstream):
    upstream.reply_text = " ".join(f"w{i}" for i in range(400))
    upstream.chunk_delay = 0.05  # twenty seconds of words: the revocation comes long before the end
    api = await open_api(aiohttp_client, with_auth(priced_config(tmp_path, upstream)))
    key = await api.key()
    body = {"model": "k2p5", "stream": True, "max_tokens": 100, "messages": [{"role": "user", "content": "talk"}]}
    resp = await api.client.post("/v1/chat/completions", json=body, headers=bearer(key["token"]))
    assert resp.status == 200
    first = await resp.content.readline()
    assert first.startswith(b"data: ")
    revoked = await api.client.delete(f"/api/keys/{key['key_id']}", headers=api.admin)
    assert revoked.status == 200
    started = time.monotonic()
    rest = b""
    async with asyncio.timeout(10):
        while not resp.content.at_eof():
            rest += await resp.content.read(4096)
    assert time.monotonic() - started < 5.0
    frames = [json.loads(line[6:]) for line in rest.splitlines() if line.startswith(b"data: {")]
    assert frames and "error" in frames[-1], rest[-300:]
    await settle(api)
    agents = await api.ledger("SELECT agent_id, status FROM agents")
    assert len(agents) == 1 and agents[0][1] == "cancelled"
    (cost, tokens), = await api.ledger("SELECT cost, output_tokens FROM usage WHERE agent_id = ?", agents[0][0])
    assert cost > 0 and tokens >= 1  # the words it streamed are billed
    assert api.budget.reserved == 0
    for _ in range(100):  # the upstream's connection is closed under it (bounded wait)
        if upstream.hangups:
            break
        await asyncio.sleep(0.05)
    assert upstream.hangups == 1
