"""Budgets nest: a spawn must fit its key's budget, its project's and the daemon's, all hard
caps under concurrency (issue 15, "Projects").

A fake upstream on loopback bills every call its whole ``max_tokens`` (an upstream that writes
until it is cut off), so what the ledger records is each spawn's worst case, the amount its
reservation held: no cap can be kept by an upstream that happened to bill little.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from aiohttp import web

from j1mskyd import worstcase
from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.providers import ProviderSettings
from tests.conftest import Clock, auth_config, bearer, bootstrap_key
from tests.fakeupstream import FakeUpstream
from tests.test_auth import new_key
from tests.test_budget_hardcap import model

TASK = "race {:03d}"  # one length for every task: one worst case for every spawn


class HeldUpstream(FakeUpstream):
    """Holds every call until ``release`` is set: all accepted spawns hold their reservations
    at once while the test looks at them."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def _begin(self, request: web.Request) -> Any:
        await self.release.wait()
        return await super()._begin(request)


@pytest.fixture
async def upstream():
    up = await HeldUpstream().start()
    up.input_tokens, up.bill_max_tokens = 5, True  # every call billed its whole max_tokens
    try:
        yield up
    finally:
        up.release.set()
        await up.close()


def paid_config(tmp_path, upstream: FakeUpstream, daily: float):
    base = auth_config(tmp_path)
    provider = ProviderSettings(name="paid", plugin="openai_compat", base_url=upstream.url + "/v1",
                                api_key="sk-paid", timeout=60, max_concurrency=256, hourly_limit=100_000)
    models = {"k2p5": model("k2p5", "paid")}  # $1 per 1k output tokens, max_tokens 200
    cfg = dataclasses.replace(base, providers={"paid": provider}, models=models, teams={},
                              runtime=dataclasses.replace(base.runtime, max_concurrency=256))
    return dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, daily_budget=daily,
                                                               monthly_ceiling=100 * daily, spike_per_hour=1000.0))


async def wait_done(client, admin, agent_ids: list[str], timeout: float = 60.0) -> list[dict]:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    done = []
    for agent_id in agent_ids:
        while True:
            body = await (await client.get(f"/api/agent/{agent_id}", headers=admin)).json()
            if body.get("status") in ("completed", "failed", "cancelled"):
                done.append(body)
                break
            assert loop.time() < end, f"agent {agent_id} stuck: {body}"
            await asyncio.sleep(0.02)
    return done


async def spend_by(app, column: str) -> dict[Any, float]:
    return dict(await app[SERVICES].store.read(lambda conn: conn.execute(
        f"SELECT {column}, SUM(cost) FROM usage GROUP BY {column}").fetchall()))


async def test_200_concurrent_spawns_over_three_keys_of_one_project_keep_every_cap(aiohttp_client, tmp_path,
                                                                                  upstream):
    """Keys A (10.5 worst cases), B and C (30.5 each) in one project of 50.5: their sum (71.5)
    is more than the project's.  200 spawns at once, A, B, C in turn: no key, the project or
    the daemon's day is ever past its cap, held or settled; every refusal is a 402 naming its
    level; spawned + refused == 200."""
    w = worstcase.agent_bound(paid_config(tmp_path, upstream, 1.0).models, "k2p5", TASK.format(0))
    caps = {"A": 10.5 * w, "B": 30.5 * w, "C": 30.5 * w}
    project_cap, daily = 50.5 * w, 60.5 * w
    cfg = paid_config(tmp_path, upstream, daily)
    app = build_app(cfg)
    client = await aiohttp_client(app)
    root = bootstrap_key(cfg)
    admin = bearer(root["token"])
    keys = {n: await new_key(client, root, ["agents:write", "agents:read"], name=n, max_budget=caps[n])
            for n in "ABC"}
    resp = await client.post("/api/projects", headers=admin, json={
        "name": "race", "max_budget": project_cap, "members": [k["key_id"] for k in keys.values()]})
    assert resp.status == 201, await resp.text()
    pid = (await resp.json())["project_id"]
    order = ["ABC"[i % 3] for i in range(200)]
    answers = await asyncio.gather(*(client.post("/api/spawn", headers=bearer(keys[n]["token"]),
                                                 json={"model": "k2p5", "task": TASK.format(i)})
                                     for i, n in enumerate(order)))
    bodies = [await r.json() for r in answers]
    spawned = {n: [b["agent_id"] for r, b, o in zip(answers, bodies, order) if r.status == 200 and o == n]
               for n in "ABC"}
    refusals = [(o, r.status, b) for r, b, o in zip(answers, bodies, order) if r.status != 200]
    total = sum(len(v) for v in spawned.values())
    assert total + len(refusals) == 200
    # Room for 50 worst cases in the project; A stops at 10 on its own.
    assert total == 50 and len(spawned["A"]) == 10, {n: len(v) for n, v in spawned.items()}
    assert all(len(spawned[n]) <= 30 for n in "BC")
    levels = {"key": 0, "project": 0}
    for who, status, body in refusals:
        error = body["error"]
        assert status == 402 and error["type"] == "BUDGET_EXCEEDED", body
        assert "budget_remaining" in error, body
        if error["message"].startswith("Key budget"):
            levels["key"] += 1
            assert len(spawned[who]) * w > caps[who] - w, body  # only a full key refuses for itself
        else:
            assert error["message"].startswith("Project budget") and pid in error["message"], body
            levels["project"] += 1
    assert levels["key"] == order.count("A") - 10 and levels["project"] == len(refusals) - levels["key"]
    assert levels["project"] > 0
    # Held now (the upstream answers nothing yet): the reservations keep every cap.
    for n in "ABC":
        standing = (await (await client.get(f"/api/keys/{keys[n]['key_id']}", headers=admin)).json())["budget"]
        assert standing["reserved"] == pytest.approx(len(spawned[n]) * w)
        assert standing["spend"] + standing["reserved"] <= caps[n] + 1e-9
    project = (await (await client.get(f"/api/projects/{pid}", headers=admin)).json())["budget"]
    assert project["reserved"] == pytest.approx(50 * w) and project["reserved"] <= project_cap
    assert project["budget_remaining"] == pytest.approx(project_cap - 50 * w, abs=1e-4)
    assert app[SERVICES].budget.committed_today <= daily
    # Settled: the ledger, billed to the last token allowed, keeps every cap too.
    upstream.release.set()
    done = await wait_done(client, admin, [a for ids in spawned.values() for a in ids])
    assert all(a["status"] == "completed" for a in done)
    by_key = await spend_by(app, "api_key")
    for n in "ABC":
        assert by_key.get(keys[n]["key_id"], 0.0) <= caps[n] + 1e-9
    assert await spend_by(app, "project_id") == {pid: pytest.approx(sum(by_key.values()))}
    assert sum(by_key.values()) <= project_cap + 1e-9
    assert len(upstream.calls) == 50 and {c["json"]["max_tokens"] for c in upstream.calls} == {200}
    assert app[SERVICES].budget.reserved == pytest.approx(0.0, abs=1e-9)


async def test_the_daemons_day_caps_a_key_outside_any_project_and_names_itself(aiohttp_client, tmp_path, upstream):
    """The third level: with the project's 20 spawns settled, a key outside the project meets
    the daily budget (25.5 worst cases) after 5 more of its 30 concurrent spawns."""
    w = worstcase.agent_bound(paid_config(tmp_path, upstream, 1.0).models, "k2p5", TASK.format(0))
    daily = 25.5 * w
    cfg = paid_config(tmp_path, upstream, daily)
    app = build_app(cfg)
    client = await aiohttp_client(app)
    root = bootstrap_key(cfg)
    admin = bearer(root["token"])
    member = await new_key(client, root, ["agents:write", "agents:read"], name="member", max_budget=100.0)
    loner = await new_key(client, root, ["agents:write"], name="loner")
    resp = await client.post("/api/projects", headers=admin, json={"name": "p", "max_budget": 20.5 * w,
                                                                   "members": [member["key_id"]]})
    assert resp.status == 201
    first = await asyncio.gather(*(client.post("/api/spawn", headers=bearer(member["token"]),
                                               json={"model": "k2p5", "task": TASK.format(i)}) for i in range(25)))
    assert sorted(r.status for r in first) == [200] * 20 + [402] * 5  # the project's 20
    upstream.release.set()
    await wait_done(client, admin, [(await r.json())["agent_id"] for r in first if r.status == 200])
    second = await asyncio.gather(*(client.post("/api/spawn", headers=bearer(loner["token"]),
                                                json={"model": "k2p5", "task": TASK.format(i)}) for i in range(30)))
    accepted = [r for r in second if r.status == 200]
    refused = [await r.json() for r in second if r.status != 200]
    assert len(accepted) + len(refused) == 30 and len(accepted) >= 5 and refused
    for body in refused:
        assert body["error"]["type"] == "BUDGET_EXCEEDED" and body["error"]["message"].startswith("Daily budget")
    await wait_done(client, admin, [(await r.json())["agent_id"] for r in accepted])
    assert sum((await spend_by(app, "api_key")).values()) <= daily + 1e-9


async def test_a_moved_key_leaves_its_spend_behind_and_spends_under_its_new_project(aiohttp_client, tmp_path,
                                                                                   upstream):
    """Spend is stamped with the project of its spawn: moving the key later moves none of it.
    The move takes effect at the next spawn (the key ring is current at once): the old
    project's spent budget no longer refuses it.  Deleting the project releases the key."""
    upstream.release.set()
    w = worstcase.agent_bound(paid_config(tmp_path, upstream, 1.0).models, "k2p5", TASK.format(0))
    cfg = paid_config(tmp_path, upstream, 100 * w)
    app = build_app(cfg)
    client = await aiohttp_client(app)
    root = bootstrap_key(cfg)
    admin = bearer(root["token"])
    key = await new_key(client, root, ["agents:write", "agents:read"], name="mover")
    headers = bearer(key["token"])
    old = (await (await client.post("/api/projects", headers=admin, json={
        "name": "old", "max_budget": 1.5 * w, "members": [key["key_id"]]})).json())["project_id"]
    new = (await (await client.post("/api/projects", headers=admin, json={
        "name": "new", "max_budget": 10 * w})).json())["project_id"]

    async def spawn(i: int) -> tuple[int, dict]:
        resp = await client.post("/api/spawn", headers=headers, json={"model": "k2p5", "task": TASK.format(i)})
        body = await resp.json()
        if resp.status == 200:
            await wait_done(client, admin, [body["agent_id"]])
        return resp.status, body

    assert (await spawn(1))[0] == 200
    status, body = await spawn(2)
    assert status == 402 and body["error"]["message"].startswith("Project budget") and old in body["error"]["message"]
    moved = await (await client.patch(f"/api/projects/{new}", headers=admin,
                                      json={"add_members": [key["key_id"]]})).json()
    assert moved["moved"] == [{"key_id": key["key_id"], "from_project_id": old}]
    assert (await spawn(3))[0] == 200  # under the new project now
    assert await spend_by(app, "project_id") == {old: pytest.approx(w, rel=0.01), new: pytest.approx(w, rel=0.01)}
    old_view = await (await client.get(f"/api/projects/{old}", headers=admin)).json()
    assert old_view["members"] == [] and old_view["budget"]["spend"] == pytest.approx(w, rel=0.01)
    new_view = await (await client.get(f"/api/projects/{new}", headers=headers)).json()  # the member reads its own
    assert new_view["budget"]["spend"] == pytest.approx(w, rel=0.01)
    assert new_view["budget"]["budget_remaining"] == pytest.approx(10 * w - new_view["budget"]["spend"], abs=1e-4)
    usage = await (await client.get("/api/billing/usage?group_by=project", headers=admin)).json()
    assert {r["project_id"]: r["calls"] for r in usage["rows"]} == {old: 1, new: 1}
    # Deleting the project releases the key: its next spend is under no project, its past stays.
    released = await (await client.delete(f"/api/projects/{new}", headers=admin)).json()
    assert released["released_keys"] == [key["key_id"]]
    assert (await (await client.get(f"/api/keys/{key['key_id']}", headers=admin)).json())["project_id"] is None
    assert (await spawn(4))[0] == 200
    assert await spend_by(app, "project_id") == {old: pytest.approx(w, rel=0.01), new: pytest.approx(w, rel=0.01),
                                                 None: pytest.approx(w, rel=0.01)}


async def _one_key_in_a_total_project(aiohttp_client, tmp_path, upstream, worst_cases: float, clock=None):
    """A daemon whose one key is in a project with a `total` budget of ``worst_cases`` spawns'
    worst cases (w); the upstream answers at once.  (cfg, client, admin headers, key, project id, w)."""
    upstream.release.set()
    w = worstcase.agent_bound(paid_config(tmp_path, upstream, 1.0).models, "k2p5", TASK.format(0))
    cfg = paid_config(tmp_path, upstream, 100 * w)
    client = await aiohttp_client(build_app(cfg, clock=clock))
    root = bootstrap_key(cfg)
    admin = bearer(root["token"])
    key = await new_key(client, root, ["agents:write", "agents:read"], name="k")
    pid = (await (await client.post("/api/projects", headers=admin, json={
        "name": "p", "max_budget": worst_cases * w, "budget_duration": "total", "members": [key["key_id"]]})).json())[
        "project_id"]
    return cfg, client, admin, key, pid, w


async def test_a_projects_spend_survives_a_restart(aiohttp_client, tmp_path, upstream):
    """The project's spend in its period is rebuilt from the ledger at start: after a restart
    the budget is as spent as before, and refuses what no longer fits."""
    cfg, client, admin, key, pid, w = await _one_key_in_a_total_project(aiohttp_client, tmp_path, upstream, 2.5)
    spawned = [await client.post("/api/spawn", headers=bearer(key["token"]),
                                 json={"model": "k2p5", "task": TASK.format(i)}) for i in range(2)]
    await wait_done(client, admin, [(await r.json())["agent_id"] for r in spawned])
    before = (await (await client.get(f"/api/projects/{pid}", headers=admin)).json())["budget"]
    assert before["spend"] == pytest.approx(2 * w, rel=0.01) and before["resets_at"] is None
    await client.close()
    again = await aiohttp_client(build_app(cfg))
    after = (await (await again.get(f"/api/projects/{pid}", headers=admin)).json())["budget"]
    assert after == before
    refused = await again.post("/api/spawn", headers=bearer(key["token"]),
                               json={"model": "k2p5", "task": TASK.format(3)})
    error = (await refused.json())["error"]
    assert refused.status == 402 and error["message"].startswith("Project budget"), error


async def test_a_project_without_members_at_start_keeps_its_older_spend(aiohttp_client, tmp_path, upstream):
    """A `total` budget's spend goes back to its anchor: the ledger read at start covers every
    project's period, members or none, so a key that joins later meets the spend of days ago."""
    clock = Clock()
    cfg, client, admin, key, pid, w = await _one_key_in_a_total_project(aiohttp_client, tmp_path, upstream, 1.5,
                                                                        clock)
    spawned = await client.post("/api/spawn", headers=bearer(key["token"]),
                                json={"model": "k2p5", "task": TASK.format(1)})
    await wait_done(client, admin, [(await spawned.json())["agent_id"]])
    assert (await client.patch(f"/api/projects/{pid}", headers=admin, json={"members": []})).status == 200
    await client.close()
    clock.t += 5 * 86_400  # days later, the project has no member at the start
    again = await aiohttp_client(build_app(cfg, clock=clock))
    assert (await again.patch(f"/api/projects/{pid}", headers=admin,
                              json={"add_members": [key["key_id"]]})).status == 200
    budget = (await (await again.get(f"/api/projects/{pid}", headers=admin)).json())["budget"]
    assert budget["spend"] == pytest.approx(w, rel=0.01)
    refused = await again.post("/api/spawn", headers=bearer(key["token"]),
                               json={"model": "k2p5", "task": TASK.format(2)})
    assert refused.status == 402 and (await refused.json())["error"]["message"].startswith("Project budget")
