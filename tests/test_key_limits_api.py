"""A key's own limits over the API and the CLI (issue 15): POST /keys and PATCH /keys/{key_id}
refuse every bad value with a 400 naming the field and change nothing; null clears a field,
an absent one stays; GET /keys/{key_id} shows a key its own record only (another key's id is
a 404 like an unknown one) and GET /keys/me the caller's; `j1mskyd keys create|update`
take the same fields; and a key from before migration 8 keeps working with no limits."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.keys import KeyService
from j1mskyd.key_request import parse_limits
from j1mskyd.store import Store
from j1mskyd.tenancy import day_start
from tests.conftest import auth_config, bearer, bootstrap_key
from tests.daemon import run_cli

FULL = {"max_budget": 5, "budget_duration": "30d", "models": ["k2p5", "team_coding"], "max_concurrency": 3,
        "limits": {"spawn": 10, "agents_list": 20}, "expires_at": "2099-01-01T00:00:00Z",
        "metadata": {"owner": "ana", "project": "garden"}}

# field -> values that must be refused, each alone (with what it needs beside it)
BAD: dict[str, list[Any]] = {
    "max_budget": ["5", True, -1, [], {}, 1e7],  # Infinity is not JSON: a 400 INVALID_JSON (api.md)
    "budget_duration": ["2d", 1, [], True],
    "models": ["k2p5", [], [1], ["nope"], {}, [None], 7],
    "max_concurrency": [0, 1.5, "3", True, [], -2, 10**9],
    "limits": [[], {"nope": 3}, {"spawn": 0}, {"spawn": "3"}, {"spawn": True}, "x", {"spawn": 2.5}],
    "expires_at": ["yesterday", 123, "2000-01-01T00:00:00Z", [], True, "2099-13-01T00:00:00Z",
                   # year 10000 in UTC: stored, it made every key listing a 500, for good
                   "9999-12-31T23:59:59-14:00"],
    "metadata": [[], "x", 5, True, {"note": "x" * 5000}],
}


def bodies_with_bad_values(patch: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(the field named in the 400, a body); ``patch``: for a key that has a budget already
    (a duration alone then changes that budget's: not an error)."""
    out = []
    for field, values in BAD.items():
        for value in values:
            body = {field: value}
            if field == "budget_duration":
                body["max_budget"] = 1
            out.append((field, body))
    if not patch:
        out.append(("budget_duration", {"budget_duration": "1d"}))        # a duration with no budget
    out.append(("budget_duration", {"max_budget": None, "budget_duration": "30d"}))
    return out


async def start(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    return client, bearer(bootstrap_key(cfg)["token"])


async def new_key(client, admin, **body) -> dict[str, Any]:
    resp = await client.post("/api/keys", json={"name": "k", "scopes": ["agents:read", "agents:write"], **body},
                             headers=admin)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def key_view(client, admin, key_id: str) -> dict[str, Any]:
    """GET /keys/{key_id} (without last_used_at, which a request of the key itself moves)."""
    resp = await client.get(f"/api/keys/{key_id}", headers=admin)
    assert resp.status == 200, await resp.text()
    view = await resp.json()
    view.pop("last_used_at")
    return view


def expect_field_error(status: int, body: dict[str, Any], field: str) -> None:
    assert status == 400, body
    assert body["error"]["type"] == "VALIDATION_ERROR", body
    assert any(d["field"].split(".")[0] == field for d in body["error"]["details"]), body


async def test_post_keys_refuses_every_bad_value_and_makes_no_key(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, tmp_path)
    before = (await (await client.get("/api/keys", headers=admin)).json())["count"]
    for field, body in bodies_with_bad_values():
        resp = await client.post("/api/keys", json={"name": "bad", "scopes": ["agents:read"], **body}, headers=admin)
        expect_field_error(resp.status, await resp.json(), field)
    resp = await client.post("/api/keys", json={"name": "bad", "scopes": ["agents:read"], "max_budget": float("inf")},
                             headers=admin)
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "INVALID_JSON"
    after = await (await client.get("/api/keys", headers=admin)).json()
    assert after["count"] == before
    # unknown models are named, with what is known
    resp = await client.post("/api/keys", json={"name": "bad", "scopes": ["agents:read"], "models": ["k2p5", "gpt-9"]},
                             headers=admin)
    message = (await resp.json())["error"]["message"]
    assert "gpt-9" in message and "team_coding" in message and "k2p5," in message


async def test_patch_refuses_every_bad_value_and_changes_nothing(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, tmp_path)
    key = await new_key(client, admin, **FULL)
    before = await key_view(client, admin, key["key_id"])
    for field, body in [*bodies_with_bad_values(patch=True), ("body", {}), ("name", {"name": "x"}), ("scopes", {"scopes": []})]:
        resp = await client.patch(f"/api/keys/{key['key_id']}", json=body, headers=admin)
        expect_field_error(resp.status, await resp.json(), field)
    for raw in (b"[]", b"7", b"not json"):
        resp = await client.patch(f"/api/keys/{key['key_id']}", data=raw, headers={**admin, "Content-Type": "application/json"})
        assert resp.status == 400
    assert await key_view(client, admin, key["key_id"]) == before
    unknown = await client.patch("/api/keys/key_0000", json={"max_budget": 1}, headers=admin)
    assert unknown.status == 404
    # PATCH is admin:write's: the key itself may not raise its own budget
    own = await client.patch(f"/api/keys/{key['key_id']}", json={"max_budget": 100}, headers=bearer(key["token"]))
    assert own.status == 403
    assert await key_view(client, admin, key["key_id"]) == before


async def test_post_keys_sets_every_limit_and_get_shows_them_with_the_budget(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, tmp_path)
    created = await new_key(client, admin, **FULL)
    assert "token" in created and created["max_budget"] == 5
    view = await key_view(client, admin, created["key_id"])
    for field in ("max_budget", "budget_duration", "models", "max_concurrency", "limits", "metadata"):
        assert view[field] == FULL[field], field
    assert view["expires_at"] == "2099-01-01T00:00:00Z" and view["project_id"] is None
    today = datetime.fromtimestamp(day_start(time.time()), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert view["budget"] == {"max_budget": 5.0, "budget_duration": "30d", "spend": 0.0, "reserved": 0.0,
                              "budget_remaining": 5.0, "period_start": today,
                              "resets_at": datetime.fromtimestamp(day_start(time.time()) + 30 * 86400, timezone.utc)
                              .strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert "token" not in view and "secret" not in view
    listed = {k["key_id"]: k for k in (await (await client.get("/api/keys", headers=admin)).json())["keys"]}
    assert listed[created["key_id"]]["budget"]["budget_remaining"] == 5.0
    plain = await new_key(client, admin)
    assert (await key_view(client, admin, plain["key_id"]))["budget"] is None


async def test_patch_null_clears_absent_keeps_and_is_audited(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, tmp_path)
    key = await new_key(client, admin, **FULL)
    kid = key["key_id"]

    async def patch(body: dict[str, Any]) -> dict[str, Any]:
        resp = await client.patch(f"/api/keys/{kid}", json=body, headers=admin)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    done = await patch({"models": None, "max_concurrency": 7})
    assert done["changed"] == ["max_concurrency", "models"]
    view = done["key"]
    assert view["models"] is None and view["max_concurrency"] == 7
    assert view["limits"] == FULL["limits"] and view["metadata"] == FULL["metadata"] and view["max_budget"] == 5
    period = view["budget"]["period_start"]
    done = await patch({"max_budget": 8})  # the amount alone: same duration, same period
    view = done["key"]
    assert done["changed"] == ["max_budget"]  # it listed budget_duration too, which stayed
    again = await patch({"max_budget": 8, "max_concurrency": 7})  # as they are: nothing changes
    assert again["changed"] == [] and again["key"] == view
    await patch({"metadata": {"flag": 1}})
    flagged = await patch({"metadata": {"flag": True}})  # equal in Python, not in JSON
    assert flagged["changed"] == ["metadata"] and flagged["key"]["metadata"] == {"flag": True}
    await patch({"metadata": FULL["metadata"]})
    assert view["budget_duration"] == "30d" and view["budget"]["period_start"] == period
    view = (await patch({"budget_duration": None}))["key"]  # cleared: back to the default
    assert view["budget_duration"] == "1d" and view["max_budget"] == 8
    view = (await patch({"limits": None, "metadata": None, "expires_at": None, "max_budget": None}))["key"]
    assert (view["limits"], view["metadata"], view["expires_at"], view["max_budget"], view["budget_duration"],
            view["budget"]) == (None, {}, None, None, None, None)
    assert view["max_concurrency"] == 7  # untouched by all of that
    entries = (await (await client.get("/api/security/audit?event=config.change&limit=50", headers=admin)).json())["data"]
    updates = [e for e in entries if e["details"].get("action") == "update" and e["resource"]["id"] == kid]
    assert len(updates) == 7  # the PATCH that changed nothing is no change in the log
    assert all("ana" not in json.dumps(e["details"]) for e in updates)  # labels' values stay out of the log


async def test_get_key_shows_a_key_its_own_record_only(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, tmp_path)
    a, b = await new_key(client, admin, max_budget=2), await new_key(client, admin)
    reader = await new_key(client, admin, scopes=["admin:read"])
    own = await client.get(f"/api/keys/{a['key_id']}", headers=bearer(a["token"]))
    assert own.status == 200 and (await own.json())["budget"]["max_budget"] == 2
    me = await client.get("/api/keys/me", headers=bearer(a["token"]))
    assert me.status == 200 and (await me.json())["key_id"] == a["key_id"]
    foreign = await client.get(f"/api/keys/{b['key_id']}", headers=bearer(a["token"]))
    unknown = await client.get("/api/keys/key_00000000", headers=bearer(a["token"]))
    assert foreign.status == unknown.status == 404
    assert (await foreign.json())["error"]["message"].replace(b["key_id"], "ID") == \
        (await unknown.json())["error"]["message"].replace("key_00000000", "ID")
    seen = await client.get(f"/api/keys/{b['key_id']}", headers=bearer(reader["token"]))
    assert seen.status == 200 and (await seen.json())["key_id"] == b["key_id"]
    assert (await client.get(f"/api/keys/{b['key_id']}", headers=admin)).status == 200
    assert (await client.get("/api/keys/me")).status == 401


def test_the_parser_merges_a_budget_change_with_the_key_s_current_pair():
    now = time.time()
    known = {"k2p5"}
    assert parse_limits({"max_budget": 3}, known_models=known, now=now, current=(5.0, "30d")).budget_duration == "30d"
    assert parse_limits({"max_budget": 3}, known_models=known, now=now).budget_duration == "1d"
    assert parse_limits({"budget_duration": "total"}, known_models=known, now=now,
                        current=(5.0, "1d")).max_budget == 5.0
    cleared = parse_limits({"max_budget": None}, known_models=known, now=now, current=(5.0, "1d"))
    assert (cleared.max_budget, cleared.budget_duration) == (None, None)
    assert parse_limits({"limits": {}}, known_models=known, now=now).limits is None


# -- the CLI -------------------------------------------------------------------------------------

def cli(tmp_path, *args: str) -> tuple[int, str, str]:
    out = run_cli("keys", *args, "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    return out.returncode, out.stdout, out.stderr


def test_cli_create_update_and_clear(tmp_path):
    code, out, err = cli(tmp_path, "create", "--name", "ana", "--scopes", "agents:write", "--max-budget", "2.5",
                         "--budget-duration", "30d", "--models", "k2p5,team_coding", "--max-concurrency", "4",
                         "--limit", "spawn=9", "--limit", "agents_list=30", "--expires-at", "2099-06-01T00:00:00Z",
                         "--metadata", "owner=ana", "--metadata", "room=kitchen", "--json")
    assert code == 0, err
    key_id = json.loads(out)["key_id"]

    def listed() -> dict[str, Any]:
        code, out, err = cli(tmp_path, "list", "--json")
        assert code == 0, err
        return {k["key_id"]: k for k in json.loads(out)}[key_id]

    shown = listed()
    assert (shown["max_budget"], shown["budget_duration"], shown["models"], shown["max_concurrency"],
            shown["limits"], shown["expires_at"], shown["metadata"]) == (
        2.5, "30d", ["k2p5", "team_coding"], 4, {"spawn": 9, "agents_list": 30}, "2099-06-01T00:00:00Z",
        {"owner": "ana", "room": "kitchen"})
    # bad values: exit 2 with the API's message, nothing changed
    for args, words in ((["--max-budget", "lots"], "max_budget must be a number"),
                        (["--models", "k2p5,gpt-9"], "gpt-9"),
                        (["--limit", "spawn=many"], "limits.spawn"),
                        (["--limit", "spawn"], "NAME=VALUE"),
                        (["--expires-at", "2001-01-01T00:00:00Z"], "in the future"),
                        (["--clear", "colour"], "--clear takes one of"),
                        (["--clear", "models", "--models", "k2p5"], "at once"),
                        ([], "nothing to change")):
        code, out, err = cli(tmp_path, "update", key_id, *args)
        assert code == 2 and words in err, (args, err)
    assert listed() == shown
    code, out, err = cli(tmp_path, "update", key_id, "--clear", "models", "--clear", "limits",
                         "--max-concurrency", "2")
    assert code == 0 and "max_concurrency, models, limits" not in out and "updated" in out, err
    shown = listed()
    assert (shown["models"], shown["limits"], shown["max_concurrency"], shown["max_budget"]) == (None, None, 2, 2.5)
    code, out, err = cli(tmp_path, "update", "key_nope", "--max-concurrency", "2")
    assert code == 1 and "no such key" in err


async def test_a_cli_change_seen_by_the_daemon_applies_at_once(aiohttp_client, tmp_path):
    """Another process's change of a key's limits (the CLI) reaches the daemon through
    KeyService.refresh, like a revocation: the next spawn meets the new budget."""
    client, admin = await start(aiohttp_client, tmp_path)
    key = await new_key(client, admin)
    spawned = await client.post("/api/spawn", json={"model": "k2p5", "task": "hi"}, headers=bearer(key["token"]))
    assert spawned.status == 200
    other = Store(str(tmp_path / "state" / "j1msky.db"), exclusive=False)
    await asyncio.get_running_loop().run_in_executor(None, other.open)
    try:
        cli_keys = KeyService(other)
        await cli_keys.reload()
        await cli_keys.update(key["key_id"], parse_limits({"max_budget": 0}, known_models={"k2p5"}, now=time.time()))
    finally:
        await other.close()
    await client.app[SERVICES].keys.refresh()  # what the daemon's refresh job does every REFRESH_SECONDS
    refused = await client.post("/api/spawn", json={"model": "k2p5", "task": "hi"}, headers=bearer(key["token"]))
    assert refused.status == 402, await refused.text()
    assert (await refused.json())["error"]["level"] == "key"


# -- migration -------------------------------------------------------------------------------------

_MIGRATION_8_COLUMNS = {
    "api_keys": ("max_budget", "budget_duration", "budget_anchor", "models", "max_concurrency", "limits", "metadata",
                 "project_id"),
    "agents": ("project_id",), "usage": ("project_id",), "events": ("api_key",)}


def _back_to_schema_7(path: str) -> None:
    """Undo migration 8 on a database (sqlite >= 3.35 drops columns): as a daemon from before left it
    (and migrations 9 and 10 after it: the dashboard's series, tasks)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("DROP TABLE IF EXISTS metric_points")
        for table in ("tasks", "task_steps", "escalations"):  # migration 10 (tasks), after 8
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        for column in ("max_tokens", "temperature"):  # migration 10's agents columns (a step's role preferences)
            conn.execute(f"ALTER TABLE agents DROP COLUMN {column}")
        conn.execute("ALTER TABLE usage DROP COLUMN cut")  # migration 11 (a call a crash cut)
        for index in ("agents_key", "usage_key_ts", "usage_project_ts", "events_key", "projects_name"):
            conn.execute(f"DROP INDEX IF EXISTS {index}")
        conn.execute("DROP TABLE projects")
        conn.execute("DROP TABLE IF EXISTS metric_points")  # migration 9 (h-obs's time series), after 8
        for table, columns in _MIGRATION_8_COLUMNS.items():
            for column in columns:
                conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute("PRAGMA user_version=7")
        conn.commit()
    finally:
        conn.close()


@pytest.mark.skipif(sqlite3.sqlite_version_info < (3, 35), reason="DROP COLUMN needs sqlite 3.35")
async def test_a_key_from_before_migration_8_keeps_working_with_no_limits(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])
    old = await new_key(client, admin)
    first = await client.post("/api/spawn", json={"model": "k2p5", "task": "before"}, headers=bearer(old["token"]))
    assert first.status == 200
    before = (await first.json())["agent_id"]
    await client.close()
    _back_to_schema_7(str(tmp_path / "state" / "j1msky.db"))
    client = await aiohttp_client(build_app(cfg))  # migrates to 8 at start
    me = await client.get("/api/keys/me", headers=bearer(old["token"]))
    view = await me.json()
    assert me.status == 200 and view["budget"] is None
    assert all(view[f] is None for f in ("max_budget", "models", "max_concurrency", "limits", "project_id"))
    assert float(me.headers["X-Budget-Remaining"]) == pytest.approx(cfg.budget.daily_budget, abs=0.01)
    again = await client.post("/api/spawn", json={"model": "opus", "task": "after"}, headers=bearer(old["token"]))
    assert again.status == 200
    listed = (await (await client.get("/api/agents", headers=admin)).json())["data"]
    assert {a["agent_id"] for a in listed} >= {before, (await again.json())["agent_id"]}


async def test_a_rotated_key_s_successor_keeps_its_limits(aiohttp_client, tmp_path):
    """Rotation must not be a way out of a key's limits: the successor has the same ones."""
    client, admin = await start(aiohttp_client, tmp_path)
    key = await new_key(client, admin, **FULL)
    resp = await client.post(f"/api/keys/{key['key_id']}/rotate", headers=admin)
    assert resp.status == 201
    successor = await key_view(client, admin, (await resp.json())["key_id"])
    old = await key_view(client, admin, key["key_id"])
    for field in ("max_budget", "budget_duration", "models", "max_concurrency", "limits", "metadata", "project_id"):
        assert successor[field] == old[field], field
    assert successor["budget"]["period_start"] == old["budget"]["period_start"]
    assert successor["expires_at"] == FULL["expires_at"]  # the expiry set on the key, not the grace period
    assert old["expires_at"] != FULL["expires_at"]  # the old key's grace period ends long before


async def test_a_stored_expiry_past_year_9999_still_lists(aiohttp_client, tmp_path):
    # An older daemon stored 9999-12-31T23:59:59-14:00 (year 10000 in UTC), after which every
    # key listing was a 500 and the key could not even be found to clear it.
    client, admin = await start(aiohttp_client, tmp_path)
    kid = (await new_key(client, admin))["key_id"]
    services = client.app[SERVICES]
    await services.store.write(("UPDATE api_keys SET expires_at = ? WHERE key_id = ?", (253402351199.0, kid)))
    await services.keys.reload()
    resp = await client.get("/api/keys", headers=admin)
    assert resp.status == 200
    [shown] = [k for k in (await resp.json())["keys"] if k["key_id"] == kid]
    assert shown["expires_at"] == "9999-12-31T23:59:59Z"
    resp = await client.patch(f"/api/keys/{kid}", json={"expires_at": None}, headers=admin)
    assert resp.status == 200 and (await resp.json())["key"]["expires_at"] is None
