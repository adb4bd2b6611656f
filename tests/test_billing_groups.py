"""GET /billing/usage?group_by=key|project|model|day (any combination): who spent what, from
the ledger, over the report's period; a key that does not see every key's work gets its own
spend only, whatever it groups by (and in the report without group_by too)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from tests.conftest import auth_config, bearer, bootstrap_key
from tests.test_auth import error_of, new_key

PERIOD = {"from": "2026-02-01", "to": "2026-02-19"}


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


async def start(aiohttp_client, tmp_path):
    """A daemon with auth on, keys A and B (billing:read), an admin:read key, and a ledger:
    A spends under project P1 then (moved) under P2; B under P1; one row outside the period."""
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    root = bootstrap_key(cfg)
    a = await new_key(client, root, ["billing:read"], name="a")
    b = await new_key(client, root, ["billing:read"], name="b")
    reader = await new_key(client, root, ["admin:read"], name="reader")
    ledger = [  # (ts, key, project, model, cost, input, output)
        ("2026-01-31T23:00:00", a, "prj_1", "k2p5", 40.0, 1, 1),    # before the period
        ("2026-02-01T10:00:00", a, "prj_1", "k2p5", 1.0, 100, 10),
        ("2026-02-01T11:00:00", a, "prj_1", "sonnet", 2.0, 200, 20),
        ("2026-02-02T10:00:00", a, "prj_2", "k2p5", 4.0, 400, 40),
        ("2026-02-02T12:00:00", b, "prj_1", "k2p5", 8.0, 800, 80),
        ("2026-02-03T12:00:00", b, None, "opus", 0.5, 50, 5),
    ]
    await client.server.app[SERVICES].store.write(*[
        ("INSERT INTO usage (ts, agent_id, model, provider, input_tokens, output_tokens, cost, api_key, project_id) "
         "VALUES (?, ?, ?, 'offline', ?, ?, ?, ?, ?)", (_ts(ts), f"subagent_{i}", model, tin, tout, cost,
                                                        key["key_id"], project))
        for i, (ts, key, project, model, cost, tin, tout) in enumerate(ledger)])
    return client, bearer(root["token"]), a, b, reader


async def usage(client, headers, **params) -> dict:
    resp = await client.get("/api/billing/usage", params={**PERIOD, **params}, headers=headers)
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def test_group_by_each_dimension_and_combinations(aiohttp_client, tmp_path):
    client, admin, a, b, _ = await start(aiohttp_client, tmp_path)
    ka, kb = a["key_id"], b["key_id"]
    by_key = await usage(client, admin, group_by="key")
    assert by_key["group_by"] == ["key"] and by_key["period"] == "2026-02-01 to 2026-02-19"
    assert by_key["rows"] == [
        {"key_id": kb, "cost": 8.5, "input_tokens": 850, "output_tokens": 85, "calls": 2},
        {"key_id": ka, "cost": 7.0, "input_tokens": 700, "output_tokens": 70, "calls": 3}]
    assert by_key["total_cost"] == 15.5 and by_key["count"] == 2
    by_project = await usage(client, admin, group_by="project")
    assert [(r["project_id"], r["cost"], r["calls"]) for r in by_project["rows"]] == [
        ("prj_1", 11.0, 3), ("prj_2", 4.0, 1), (None, 0.5, 1)]
    by_day = await usage(client, admin, group_by="day")
    assert {r["day"]: r["cost"] for r in by_day["rows"]} == {"2026-02-01": 3.0, "2026-02-02": 12.0,
                                                             "2026-02-03": 0.5}
    both = await usage(client, admin, group_by="key,model")
    assert [(r["key_id"], r["model"], r["cost"]) for r in both["rows"]] == [
        (kb, "k2p5", 8.0), (ka, "k2p5", 5.0), (ka, "sonnet", 2.0), (kb, "opus", 0.5)]
    every = await usage(client, admin, group_by="day, project ,key,model,key")  # spaces, a repeat
    assert every["group_by"] == ["day", "project", "key", "model"]
    assert set(every["rows"][0]) == {"day", "project_id", "key_id", "model", "cost", "input_tokens",
                                     "output_tokens", "calls"}
    assert len(every["rows"]) == 5 and every["total_cost"] == 15.5
    # Another period: only the row before it.
    january = await usage(client, admin, group_by="project", **{"from": "2026-01-01", "to": "2026-01-31"})
    assert january["rows"] == [{"project_id": "prj_1", "cost": 40.0, "input_tokens": 1, "output_tokens": 1,
                                "calls": 1}]


async def test_a_key_sees_only_its_own_spend_whatever_it_groups_by(aiohttp_client, tmp_path):
    client, admin, a, b, reader = await start(aiohttp_client, tmp_path)
    mine = bearer(a["token"])
    for group in ("key", "project", "model", "day", "key,project,model,day"):
        body = await usage(client, mine, group_by=group)
        assert body["total_cost"] == 7.0, (group, body)
        assert all(r.get("key_id", a["key_id"]) == a["key_id"] for r in body["rows"])
    by_project = await usage(client, mine, group_by="project")
    assert [(r["project_id"], r["cost"]) for r in by_project["rows"]] == [("prj_2", 4.0), ("prj_1", 3.0)]
    # The report without group_by too: its totals and its by_key are the key's own.
    report = await usage(client, mine, by_key="true")
    assert report["total_cost"] == 7.0 and report["by_key"] == {a["key_id"]: 7.0}
    assert report["by_model"] == {"k2p5": 5.0, "sonnet": 2.0} and report["calls"] == 3
    assert (await usage(client, bearer(b["token"])))["total_cost"] == 8.5
    # admin:read and admin:write see every key's.
    for headers in (bearer(reader["token"]), admin):
        assert (await usage(client, headers))["total_cost"] == 15.5
        assert len((await usage(client, headers, group_by="key"))["rows"]) == 2


async def test_without_group_by_the_report_keeps_its_shape(aiohttp_client, tmp_path):
    client, admin, *_ = await start(aiohttp_client, tmp_path)
    body = await usage(client, admin)
    assert set(body) == {"period", "total_cost", "by_model", "by_day", "calls", "tokens"}
    assert body["total_cost"] == 15.5 and body["tokens"] == {"input": 1550, "output": 155}


@pytest.mark.parametrize("value", ["maybe", "2", "on", "tru", " true"])
async def test_a_by_key_that_is_no_yes_or_no_is_400(aiohttp_client, tmp_path, value):
    # It silently meant no: the caller never learnt that by_key=on gave no breakdown.
    client, admin, *_ = await start(aiohttp_client, tmp_path)
    error = await error_of(await client.get("/api/billing/usage", params={"by_key": value}, headers=admin), 400)
    assert error["details"][0]["field"] == "by_key"
    for flag, shown in (("no", False), ("0", False), ("FALSE", False), ("yes", True), ("1", True)):
        body = await usage(client, admin, by_key=flag)
        assert ("by_key" in body) == shown, flag


@pytest.mark.parametrize("value", ["", "user", "key,", "key,user", "KEY", "key;model", ","])
async def test_bad_group_by_is_400_naming_the_allowed_ones(aiohttp_client, tmp_path, value):
    client, admin, *_ = await start(aiohttp_client, tmp_path)
    error = await error_of(await client.get("/api/billing/usage", params={"group_by": value}, headers=admin), 400)
    assert error["type"] == "VALIDATION_ERROR" and error["details"][0]["field"] == "group_by"
    assert "key, project, model, day" in error["message"]
