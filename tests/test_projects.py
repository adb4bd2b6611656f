"""Projects (issue 15): POST/GET/PATCH/DELETE /projects through real HTTP on a real daemon app,
with authentication on and real keys.  A key belongs to at most one project; membership lives
on the key's row, and the key ring follows every change at once."""

from __future__ import annotations

import asyncio
import re
import sqlite3

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app, state_db_path
from tests.conftest import Clock, auth_config, bearer, bootstrap_key
from tests.test_auth import error_of, new_key


async def start(aiohttp_client, tmp_path, clock=None):
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg, clock=clock))
    admin = bootstrap_key(cfg)
    return client, cfg, bearer(admin["token"])


def ring(client) -> dict:
    return client.server.app[SERVICES].keys.ring.keys


def rows(cfg, sql: str, args=()) -> list[tuple]:
    """What the database holds, read over a connection of the test's own."""
    conn = sqlite3.connect(state_db_path(cfg))
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def create(client, admin, **body) -> dict:
    resp = await client.post("/api/projects", json=body, headers=admin)
    out = await resp.json()
    assert resp.status == 201, out
    return out


async def audit_actions(client, admin) -> list[tuple]:
    await client.server.app[SERVICES].store.write()  # the audit rows are queued before the answer
    log = await (await client.get("/api/security/audit?event=config.change&limit=100", headers=admin)).json()
    return [(e["resource"]["id"], e["details"]["action"]) for e in log["data"]
            if e["resource"]["type"] == "project"]


# -- create, read, list ---------------------------------------------------------------------------
async def test_create_with_members_then_read_it_back(aiohttp_client, tmp_path):
    client, cfg, admin = await start(aiohttp_client, tmp_path)
    a = await new_key(client, {"token": admin["Authorization"][7:]}, ["agents:write"], name="a")
    b = await new_key(client, {"token": admin["Authorization"][7:]}, ["agents:write"], name="b")
    made = await create(client, admin, name=" household ", max_budget=12.5, budget_duration="30d",
                        metadata={"owner": "jo"}, members=[a["key_id"], b["key_id"]])
    assert re.fullmatch(r"prj_[0-9a-f]{16}", made["project_id"])
    assert made["success"] is True and made["name"] == "household" and made["moved"] == []
    assert made["max_budget"] == 12.5 and made["budget_duration"] == "30d" and made["metadata"] == {"owner": "jo"}
    assert made["members"] == sorted([a["key_id"], b["key_id"]])
    pid = made["project_id"]
    # The key ring knows at once (what the budget asks at a spawn).
    assert ring(client)[a["key_id"]].project_id == pid and ring(client)[b["key_id"]].project_id == pid
    got = await (await client.get(f"/api/projects/{pid}", headers=admin)).json()
    assert {k: got[k] for k in ("project_id", "name", "members", "metadata")} == \
           {k: made[k] for k in ("project_id", "name", "members", "metadata")}
    listed = await (await client.get("/api/projects", headers=admin)).json()
    assert listed["count"] == 1 and listed["projects"][0]["project_id"] == pid
    assert rows(cfg, "SELECT name, max_budget, budget_duration FROM projects") == [("household", 12.5, "30d")]
    assert ("create" in {act for _, act in await audit_actions(client, admin)})


async def test_a_project_survives_a_restart(aiohttp_client, tmp_path):
    client, cfg, admin = await start(aiohttp_client, tmp_path)
    a = await new_key(client, {"token": admin["Authorization"][7:]}, ["agents:read"])
    made = await create(client, admin, name="p", max_budget=3, members=[a["key_id"]])
    await client.close()
    again = await aiohttp_client(build_app(cfg))
    got = await (await again.get(f"/api/projects/{made['project_id']}", headers=admin)).json()
    assert got["name"] == "p" and got["members"] == [a["key_id"]] and got["budget_duration"] == "1d"
    assert again.server.app[SERVICES].projects.allowance(made["project_id"]).max_budget == 3


async def test_a_member_reads_its_own_project_only_and_nobody_but_admin_lists_or_writes(aiohttp_client, tmp_path):
    client, _, admin = await start(aiohttp_client, tmp_path)
    root = {"token": admin["Authorization"][7:]}
    member = await new_key(client, root, ["agents:read"])
    stranger = await new_key(client, root, ["agents:read", "agents:write", "billing:read"])
    reader = await new_key(client, root, ["admin:read"])
    mine = await create(client, admin, name="mine", members=[member["key_id"]])
    other = await create(client, admin, name="other", members=[stranger["key_id"]])
    ok = await client.get(f"/api/projects/{mine['project_id']}", headers=bearer(member["token"]))
    assert ok.status == 200 and (await ok.json())["name"] == "mine"
    # Another project's id answers as an unknown one does: ids are not confirmed.
    foreign = await error_of(await client.get(f"/api/projects/{other['project_id']}",
                                              headers=bearer(member["token"])), 404)
    unknown = await error_of(await client.get("/api/projects/prj_0000000000000000",
                                              headers=bearer(member["token"])), 404)
    assert foreign["message"].replace(other["project_id"], "ID") == unknown["message"].replace(
        "prj_0000000000000000", "ID")
    # A key in no project sees none.
    loner = await new_key(client, root, ["agents:read"])
    await error_of(await client.get(f"/api/projects/{mine['project_id']}", headers=bearer(loner["token"])), 404)
    # Listing needs admin:read; admin:read reads every project but changes none.
    await error_of(await client.get("/api/projects", headers=bearer(member["token"])), 403)
    assert (await client.get("/api/projects", headers=bearer(reader["token"]))).status == 200
    assert (await client.get(f"/api/projects/{other['project_id']}", headers=bearer(reader["token"]))).status == 200
    for method, path, body in (("POST", "/api/projects", {"name": "x"}),
                               ("PATCH", f"/api/projects/{mine['project_id']}", {"name": "x"}),
                               ("DELETE", f"/api/projects/{mine['project_id']}", None)):
        for key in (reader, member):
            await error_of(await client.request(method, path, json=body, headers=bearer(key["token"])), 403)
    assert (await (await client.get(f"/api/projects/{mine['project_id']}", headers=admin)).json())["name"] == "mine"


# -- membership: one project per key ---------------------------------------------------------------
async def test_adding_a_key_to_another_project_moves_it_and_says_so(aiohttp_client, tmp_path):
    client, cfg, admin = await start(aiohttp_client, tmp_path)
    root = {"token": admin["Authorization"][7:]}
    a, b = [await new_key(client, root, ["agents:write"], name=n) for n in "ab"]
    first = await create(client, admin, name="first", members=[a["key_id"], b["key_id"]])
    second = await create(client, admin, name="second", members=[a["key_id"]])
    assert second["moved"] == [{"key_id": a["key_id"], "from_project_id": first["project_id"]}]
    got = await (await client.get(f"/api/projects/{first['project_id']}", headers=admin)).json()
    assert got["members"] == [b["key_id"]]
    assert ring(client)[a["key_id"]].project_id == second["project_id"]
    # PATCH add_members moves it back, again said.
    resp = await client.patch(f"/api/projects/{first['project_id']}", json={"add_members": [a["key_id"]]},
                              headers=admin)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["moved"] == [{"key_id": a["key_id"], "from_project_id": second["project_id"]}]
    assert body["members"] == sorted([a["key_id"], b["key_id"]])
    assert rows(cfg, "SELECT project_id, COUNT(*) FROM api_keys WHERE project_id IS NOT NULL GROUP BY project_id") \
        == [(first["project_id"], 2)]


async def test_patch_members_replace_add_and_remove(aiohttp_client, tmp_path):
    client, _, admin = await start(aiohttp_client, tmp_path)
    root = {"token": admin["Authorization"][7:]}
    a, b, c = [await new_key(client, root, ["agents:write"], name=n) for n in "abc"]
    pid = (await create(client, admin, name="p", members=[a["key_id"], b["key_id"]]))["project_id"]

    async def patch(body) -> dict:
        resp = await client.patch(f"/api/projects/{pid}", json=body, headers=admin)
        out = await resp.json()
        assert resp.status == 200, out
        return out

    out = await patch({"members": [c["key_id"], b["key_id"]]})
    assert out["members"] == sorted([b["key_id"], c["key_id"]]) and out["removed"] == [a["key_id"]]
    assert ring(client)[a["key_id"]].project_id is None
    out = await patch({"remove_members": [b["key_id"]], "add_members": [a["key_id"]]})
    assert out["members"] == sorted([a["key_id"], c["key_id"]]) and out["removed"] == [b["key_id"]]
    out = await patch({"members": []})
    assert out["members"] == [] and all(k.project_id is None for k in ring(client).values())


# -- PATCH of name, budget, metadata ---------------------------------------------------------------
async def test_patch_budget_keeps_the_period_when_only_the_amount_changes(aiohttp_client, tmp_path):
    clock = Clock(1_764_000_000.0)  # 2025-11-24T16:00:00Z
    client, _, admin = await start(aiohttp_client, tmp_path, clock)
    service = client.server.app[SERVICES].projects
    pid = (await create(client, admin, name="p", max_budget=5, budget_duration="30d"))["project_id"]
    anchor = service.allowance(pid).anchor
    assert anchor == 1_763_942_400.0  # UTC midnight of the day it was set
    clock.t += 3 * 86_400

    async def patch(body) -> dict:
        resp = await client.patch(f"/api/projects/{pid}", json=body, headers=admin)
        out = await resp.json()
        assert resp.status == 200, out
        return out

    out = await patch({"max_budget": 9})
    assert (out["max_budget"], out["budget_duration"]) == (9, "30d") and service.allowance(pid).anchor == anchor
    out = await patch({"budget_duration": "1d"})  # a new period starts today
    assert (out["max_budget"], out["budget_duration"]) == (9, "1d")
    assert service.allowance(pid).anchor == anchor + 3 * 86_400
    out = await patch({"name": "renamed", "metadata": {"team": "blue"}})
    assert out["name"] == "renamed" and out["metadata"] == {"team": "blue"} and out["max_budget"] == 9
    out = await patch({"max_budget": None})
    assert out["max_budget"] is None and out["budget_duration"] is None and service.allowance(pid) is None
    out = await patch({"metadata": None})
    assert out["metadata"] == {}


# -- bad input: a 400 naming the field, nothing changed ---------------------------------------------
BAD_CREATE = [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": 7}, "name"),
    ({"name": "x" * 101}, "name"),
    # a newline forged a line of `j1mskyd projects list`, ESC ran in the reader's terminal
    ({"name": "evil\nprj_fake  totally-legit   no budget"}, "name"),
    ({"name": "red\x1b[31m"}, "name"),
    ({"name": "p\u202e"}, "name"),
    ({"name": "p", "max_budget": -1}, "max_budget"),
    ({"name": "p", "max_budget": "5"}, "max_budget"),
    ({"name": "p", "max_budget": True}, "max_budget"),
    ({"name": "p", "max_budget": 5, "budget_duration": "7d"}, "budget_duration"),
    ({"name": "p", "budget_duration": "1d"}, "budget_duration"),
    ({"name": "p", "metadata": ["a"]}, "metadata"),
    ({"name": "p", "metadata": {"blob": "x" * 5000}}, "metadata"),
    ({"name": "p", "members": "key_x"}, "members"),
    ({"name": "p", "members": [1]}, "members"),
    ({"name": "p", "members": ["key_unknown"]}, "members"),
    ({"name": "p", "colour": "red"}, "colour"),
]


@pytest.mark.parametrize("body,field", BAD_CREATE)
async def test_bad_create_bodies_are_400_naming_the_field(aiohttp_client, tmp_path, body, field):
    client, cfg, admin = await start(aiohttp_client, tmp_path)
    error = await error_of(await client.post("/api/projects", json=body, headers=admin), 400)
    assert error["type"] == "VALIDATION_ERROR" and error["details"][0]["field"] == field, error
    assert rows(cfg, "SELECT COUNT(*) FROM projects") == [(0,)]
    assert rows(cfg, "SELECT COUNT(*) FROM api_keys WHERE project_id IS NOT NULL") == [(0,)]


async def test_a_body_that_is_not_an_object_is_400(aiohttp_client, tmp_path):
    client, cfg, admin = await start(aiohttp_client, tmp_path)
    for body in ([], "p", 5):
        error = await error_of(await client.post("/api/projects", json=body, headers=admin), 400)
        assert error["details"][0]["field"] == "body"
    await error_of(await client.post("/api/projects", data=b"{nope", headers=admin), 400)
    assert rows(cfg, "SELECT COUNT(*) FROM projects") == [(0,)]


BAD_PATCH = [
    ({}, "body"),
    ({"name": ""}, "name"),
    ({"name": "a\u2028b"}, "name"),
    ({"max_budget": -3}, "max_budget"),
    ({"budget_duration": "week"}, "budget_duration"),
    ({"max_budget": None, "budget_duration": "1d"}, "budget_duration"),
    ({"metadata": 3}, "metadata"),
    ({"members": ["KEY"], "add_members": ["KEY"]}, "members"),
    ({"add_members": ["key_unknown"]}, "add_members"),
    ({"remove_members": ["key_unknown"]}, "remove_members"),
    ({"remove_members": ["OUTSIDER"]}, "remove_members"),   # a known key, not a member
    ({"add_members": ["OUTSIDER"], "remove_members": ["OUTSIDER"]}, "add_members"),
    ({"members": ["MEMBER", "key_unknown"]}, "members"),
    ({"project_id": "prj_1"}, "project_id"),
    ({"created_at": 0}, "created_at"),
]


@pytest.mark.parametrize("body,field", BAD_PATCH)
async def test_bad_patch_bodies_are_400_naming_the_field_and_change_nothing(aiohttp_client, tmp_path, body, field):
    client, cfg, admin = await start(aiohttp_client, tmp_path)
    root = {"token": admin["Authorization"][7:]}
    member = await new_key(client, root, ["agents:write"], name="member")
    outsider = await new_key(client, root, ["agents:write"], name="outsider")
    made = await create(client, admin, name="p", max_budget=5, metadata={"a": 1}, members=[member["key_id"]])
    names = {"KEY": member["key_id"], "MEMBER": member["key_id"], "OUTSIDER": outsider["key_id"]}

    def fill(value):
        if isinstance(value, list):
            return [names.get(v, v) for v in value]
        return value

    before = rows(cfg, "SELECT * FROM projects"), rows(cfg, "SELECT key_id, project_id FROM api_keys")
    error = await error_of(await client.patch(f"/api/projects/{made['project_id']}",
                                              json={k: fill(v) for k, v in body.items()}, headers=admin), 400)
    assert error["details"][0]["field"] == field, error
    assert (rows(cfg, "SELECT * FROM projects"), rows(cfg, "SELECT key_id, project_id FROM api_keys")) == before
    got = await (await client.get(f"/api/projects/{made['project_id']}", headers=admin)).json()
    assert got["members"] == [member["key_id"]] and got["max_budget"] == 5 and got["metadata"] == {"a": 1}


async def test_a_duration_alone_needs_a_budget(aiohttp_client, tmp_path):
    client, _, admin = await start(aiohttp_client, tmp_path)
    pid = (await create(client, admin, name="p"))["project_id"]
    error = await error_of(await client.patch(f"/api/projects/{pid}", json={"budget_duration": "30d"},
                                              headers=admin), 400)
    assert error["details"][0]["field"] == "budget_duration"


async def test_unknown_projects_are_404_on_every_route(aiohttp_client, tmp_path):
    client, _, admin = await start(aiohttp_client, tmp_path)
    for method, body in (("GET", None), ("PATCH", {"name": "x"}), ("DELETE", None)):
        error = await error_of(await client.request(method, "/api/projects/prj_nope", json=body, headers=admin), 404)
        assert "prj_nope" in error["message"]
    # The 404 comes before the body is judged: an unknown id with a bad body is still 404.
    await error_of(await client.patch("/api/projects/prj_nope", json={"name": ""}, headers=admin), 404)


# -- names are unique ------------------------------------------------------------------------------
async def test_a_duplicate_name_is_409_on_create_and_rename(aiohttp_client, tmp_path):
    client, cfg, admin = await start(aiohttp_client, tmp_path)
    await create(client, admin, name="alpha")
    beta = await create(client, admin, name="beta")
    error = await error_of(await client.post("/api/projects", json={"name": "alpha"}, headers=admin), 409)
    assert "alpha" in error["message"]
    await error_of(await client.patch(f"/api/projects/{beta['project_id']}", json={"name": "alpha"},
                                      headers=admin), 409)
    # Its own name again is no conflict.
    assert (await client.patch(f"/api/projects/{beta['project_id']}", json={"name": "beta"},
                               headers=admin)).status == 200
    assert sorted(rows(cfg, "SELECT name FROM projects")) == [("alpha",), ("beta",)]


async def test_racing_creates_of_one_name_make_one_project(aiohttp_client, tmp_path):
    client, cfg, admin = await start(aiohttp_client, tmp_path)
    answers = await asyncio.gather(*(client.post("/api/projects", json={"name": "same"}, headers=admin)
                                     for _ in range(8)))
    assert sorted(r.status for r in answers) == [201] + [409] * 7
    assert rows(cfg, "SELECT COUNT(*) FROM projects") == [(1,)]


# -- delete ----------------------------------------------------------------------------------------
async def test_delete_releases_its_keys_and_keeps_its_ledger_rows(aiohttp_client, tmp_path):
    client, cfg, admin = await start(aiohttp_client, tmp_path)
    root = {"token": admin["Authorization"][7:]}
    a = await new_key(client, root, ["agents:write"])
    pid = (await create(client, admin, name="gone", members=[a["key_id"]]))["project_id"]
    await client.server.app[SERVICES].store.write(
        ("INSERT INTO usage (ts, agent_id, model, provider, input_tokens, output_tokens, cost, api_key, project_id) "
         "VALUES (1, 'subagent_1', 'k2p5', 'offline', 1, 1, 0.5, ?, ?)", (a["key_id"], pid)))
    assert (await client.patch(f"/api/projects/{pid}", json={"metadata": {"x": 1}}, headers=admin)).status == 200
    resp = await client.delete(f"/api/projects/{pid}", headers=admin)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["released_keys"] == [a["key_id"]] and body["project_id"] == pid
    assert ring(client)[a["key_id"]].project_id is None
    assert rows(cfg, "SELECT project_id FROM api_keys WHERE key_id = ?", (a["key_id"],)) == [(None,)]
    assert rows(cfg, "SELECT COUNT(*) FROM projects") == [(0,)]
    assert rows(cfg, "SELECT project_id, cost FROM usage") == [(pid, 0.5)]
    await error_of(await client.get(f"/api/projects/{pid}", headers=admin), 404)
    await error_of(await client.delete(f"/api/projects/{pid}", headers=admin), 404)
    actions = await audit_actions(client, admin)
    assert {(pid, "create"), (pid, "update"), (pid, "delete")} <= set(actions)


async def test_the_openapi_document_describes_the_project_routes(aiohttp_client, tmp_path):
    client, _, admin = await start(aiohttp_client, tmp_path)
    doc = await (await client.get("/api/openapi.json")).json()
    one = doc["paths"]["/api/projects/{project_id}"]
    assert one["get"]["x-scope"] == "key" and one["patch"]["x-scope"] == "admin:write"
    assert {"400", "404", "409"} <= set(one["patch"]["responses"])
    patch = one["patch"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"members", "add_members", "remove_members", "max_budget"} <= set(patch["properties"])
    assert patch["additionalProperties"] is False
    create = doc["paths"]["/api/projects"]["post"]
    assert "201" in create["responses"] and create["requestBody"]["content"]["application/json"]["schema"][
        "required"] == ["name"]
    usage = {p["name"]: p for p in doc["paths"]["/api/billing/usage"]["get"]["parameters"]}
    assert re.fullmatch(usage["group_by"]["schema"]["pattern"], "key, project,day")
    assert not re.fullmatch(usage["group_by"]["schema"]["pattern"], "key,user")
