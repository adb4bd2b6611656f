"""Request validation of the write endpoints, through real HTTP (seed 000, "Request Validation Rules").

Every refusal is a 400 in the one error envelope with ``details`` (field errors), and a
refused request creates nothing: the agent count seen by GET /api/agents is unchanged.
"""

from __future__ import annotations

import pytest

from j1mskyd.app import build_app
from tests.conftest import make_config, wait_status

SPAWN_OK = {"model": "k2p5", "task": "Write a Python function to calculate fibonacci", "priority": "normal"}


async def agent_total(client) -> int:
    resp = await client.get("/api/agents?include_members=true")
    assert resp.status == 200, await resp.text()
    return (await resp.json())["pagination"]["total"]


async def refused(client, path: str, *, status: int = 400, type_: str = "VALIDATION_ERROR", **kwargs) -> dict:
    """POST, expect the error envelope, and check that nothing was created."""
    before = await agent_total(client)
    resp = await client.post(path, **kwargs)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["success"] is False
    error = body["error"]
    assert error["code"] == status and error["type"] == type_
    assert isinstance(error["message"], str) and error["message"]
    assert error["request_id"] == resp.headers["X-Request-Id"]
    if type_ == "VALIDATION_ERROR":
        details = error["details"]
        assert isinstance(details, list) and details
        for d in details:
            assert set(d) == {"field", "message"} and d["field"] and d["message"]
        assert error["message"] == details[0]["message"]
    assert await agent_total(client) == before
    return error


def fields(error: dict) -> list[str]:
    return [d["field"] for d in error["details"]]


# -- task ----------------------------------------------------------------------------------
async def test_missing_task(client):
    error = await refused(client, "/api/spawn", json={"model": "k2p5"})
    assert error["details"] == [{"field": "task", "message": "Task cannot be empty"}]
    assert error["message"] == "Task cannot be empty"  # the seed's own wording


@pytest.mark.parametrize("task", ["", "   ", "\n\t \r\n"])
async def test_empty_or_blank_task(client, task):
    error = await refused(client, "/api/spawn", json={"model": "k2p5", "task": task})
    assert error["details"] == [{"field": "task", "message": "Task cannot be empty"}]


@pytest.mark.parametrize("task", [123, 1.5, True, ["a"], {"text": "a"}])
async def test_task_not_a_string(client, task):
    error = await refused(client, "/api/spawn", json={"model": "k2p5", "task": task})
    assert fields(error) == ["task"]
    assert "string" in error["message"]


async def test_null_task_is_missing(client):
    error = await refused(client, "/api/spawn", json={"model": "k2p5", "task": None})
    assert error["details"] == [{"field": "task", "message": "Task cannot be empty"}]


async def test_task_of_2000_chars_accepted(client):
    task = "x" * 1999 + "y"
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": task})
    assert resp.status == 200, await resp.text()
    got = await (await client.get(f"/api/agent/{(await resp.json())['agent_id']}")).json()
    assert got["task"] == task


async def test_task_of_2001_chars_refused(client):
    error = await refused(client, "/api/spawn", json={"model": "k2p5", "task": "x" * 2001})
    assert fields(error) == ["task"]
    assert "2000" in error["message"]


async def test_task_length_counts_characters_not_bytes(client):
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "é" * 2000})
    assert resp.status == 200, await resp.text()


# -- model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["gpt-5", "K2P5", "", "team_coding"])
async def test_unknown_model(client, config, model):
    error = await refused(client, "/api/spawn", json={"model": model, "task": "hello"})
    assert fields(error) == ["model"]
    for alias in config.models:
        assert alias in error["message"]


async def test_missing_model(client):
    error = await refused(client, "/api/spawn", json={"task": "hello"})
    assert fields(error) == ["model"]


@pytest.mark.parametrize("model", [5, None, True, ["k2p5"], {"alias": "k2p5"}])
async def test_model_not_a_string(client, model):
    error = await refused(client, "/api/spawn", json={"model": model, "task": "hello"})
    assert fields(error) == ["model"]


async def test_unknown_model_is_not_echoed_at_any_length(client):
    error = await refused(client, "/api/spawn", json={"model": "m" * 5000, "task": "hello"})
    assert len(error["message"]) < 500


@pytest.mark.parametrize("model", ["k2p5", "sonnet", "opus"])
async def test_seed_models_accepted(client, model):
    resp = await client.post("/api/spawn", json={"model": model, "task": "hello"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["model"] == model and body["status"] == "spawning" and body["success"] is True


# -- priority -----------------------------------------------------------------------------
@pytest.mark.parametrize("priority", ["urgent", "HIGH", "", 1, None, True, ["high"], {"p": "high"}])
async def test_bad_priority(client, priority):
    error = await refused(client, "/api/spawn", json={"model": "k2p5", "task": "hello", "priority": priority})
    assert fields(error) == ["priority"]
    assert "low, normal, high" in error["message"]


async def test_default_priority_is_normal(client):
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "hello"})
    assert resp.status == 200
    got = await (await client.get(f"/api/agent/{(await resp.json())['agent_id']}")).json()
    assert got["priority"] == "normal"


@pytest.mark.parametrize("priority", ["low", "normal", "high"])
async def test_every_priority_accepted(client, priority):
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "hello", "priority": priority})
    assert resp.status == 200
    got = await (await client.get(f"/api/agent/{(await resp.json())['agent_id']}")).json()
    assert got["priority"] == priority


# -- timeout --------------------------------------------------------------------------------
@pytest.mark.parametrize("timeout", [1, 1.0, 300, 3600, 2.5])
async def test_timeout_within_bounds(client, timeout):
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "hello", "timeout": timeout})
    assert resp.status == 200, await resp.text()
    got = await (await client.get(f"/api/agent/{(await resp.json())['agent_id']}")).json()
    assert got["timeout"] == timeout


async def test_default_timeout(client, config):
    resp = await client.post("/api/spawn", json=SPAWN_OK)
    got = await (await client.get(f"/api/agent/{(await resp.json())['agent_id']}")).json()
    assert got["timeout"] == config.runtime.default_timeout == 300


@pytest.mark.parametrize("timeout", [0, 0.5, -1, 3600.5, 3601, 10 ** 400, True, False, "300", None, [300]])
async def test_bad_timeout(client, timeout):
    error = await refused(client, "/api/spawn", json={"model": "k2p5", "task": "hello", "timeout": timeout})
    assert fields(error) == ["timeout"]
    assert "3600" in error["message"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_non_finite_timeout(client, literal):
    # Python's json accepts these literals; they must be refused as values, not crash.
    raw = '{"model": "k2p5", "task": "hello", "timeout": %s}' % literal
    resp = await client.post("/api/spawn", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["type"] in ("VALIDATION_ERROR", "INVALID_JSON")


# -- body shape -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/spawn", "/api/spawn-team"])
@pytest.mark.parametrize("raw", ['[{"model": "k2p5", "task": "hello"}]', '"spawn please"', "42", "null", "true"])
async def test_body_not_an_object(client, path, raw):
    error = await refused(client, path, data=raw, headers={"Content-Type": "application/json"})
    assert fields(error) == ["body"]
    assert "JSON object" in error["message"]


@pytest.mark.parametrize("raw", [b"{", b"{'model': 'k2p5'}", b"model=k2p5&task=x", b"\xff\xfe\x00",
                                 b'{"task": "a",}', b"[1, 2"])
@pytest.mark.parametrize("path", ["/api/spawn", "/api/spawn-team", "/api/spawn-batch"])
async def test_invalid_json(client, path, raw):
    error = await refused(client, path, type_="INVALID_JSON", data=raw,
                          headers={"Content-Type": "application/json"})
    assert "JSON" in error["message"]
    assert "Traceback" not in error["message"]


@pytest.mark.parametrize("raw", [b"", b"   \n"])
@pytest.mark.parametrize("path", ["/api/spawn", "/api/spawn-team", "/api/spawn-batch"])
async def test_empty_body(client, path, raw):
    error = await refused(client, path, type_="INVALID_JSON", data=raw,
                          headers={"Content-Type": "application/json"})
    assert "empty" in error["message"]


async def test_unknown_fields_are_ignored(client):
    resp = await client.post("/api/spawn", json=SPAWN_OK | {"colour": "blue"})
    assert resp.status == 200


async def test_body_over_max_body_bytes(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(make_config(tmp_path, max_body_bytes=1024)))
    small = {"model": "k2p5", "task": "x" * 900}
    assert (await client.post("/api/spawn", json=small)).status == 200
    error = await refused(client, "/api/spawn", status=413, type_="PAYLOAD_TOO_LARGE",
                          json={"model": "k2p5", "task": "x" * 1100})
    assert "1024" in error["message"] or "too large" in error["message"]


async def test_chunked_body_over_max_body_bytes(aiohttp_client, tmp_path):
    """No Content-Length: the cap is enforced while reading, still as the envelope."""
    client = await aiohttp_client(build_app(make_config(tmp_path, max_body_bytes=1024)))

    async def chunks():
        yield b'{"model": "k2p5", "task": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    await refused(client, "/api/spawn", status=413, type_="PAYLOAD_TOO_LARGE", data=chunks(),
                  headers={"Content-Type": "application/json"})


# -- team ----------------------------------------------------------------------------------
@pytest.mark.parametrize("team", ["team_nope", "", None, 7, ["team_coding"], "TEAM_CODING"])
async def test_unknown_team(client, config, team):
    error = await refused(client, "/api/spawn-team", json={"team": team, "task": "Design a landing page"})
    assert fields(error) == ["team"]
    for team_id in config.teams:
        assert team_id in error["message"]


async def test_missing_team(client):
    error = await refused(client, "/api/spawn-team", json={"task": "Design a landing page"})
    assert fields(error) == ["team"]


async def test_team_task_and_priority_rules(client):
    error = await refused(client, "/api/spawn-team",
                          json={"team": "team_coding", "task": " ", "priority": "asap", "timeout": 0})
    assert fields(error) == ["task", "priority", "timeout"]


async def test_team_task_too_long(client):
    error = await refused(client, "/api/spawn-team", json={"team": "team_coding", "task": "y" * 2001})
    assert fields(error) == ["task"]


# -- several errors at once ------------------------------------------------------------------
async def test_all_errors_reported_together(client):
    error = await refused(client, "/api/spawn",
                          json={"model": "gpt-9", "task": "", "priority": "asap", "timeout": True})
    assert sorted(fields(error)) == ["model", "priority", "task", "timeout"]
    assert error["message"] == "Task cannot be empty"


async def test_all_team_errors_reported_together(client):
    error = await refused(client, "/api/spawn-team", json={"team": "team_x", "task": 5, "priority": "HIGH"})
    assert sorted(fields(error)) == ["priority", "task", "team"]


# -- a valid spawn, for contrast ------------------------------------------------------------------
async def test_valid_spawn_creates_exactly_one(client):
    before = await agent_total(client)
    resp = await client.post("/api/spawn", json=SPAWN_OK)
    assert resp.status == 200
    body = await resp.json()
    assert set(body) >= {"success", "agent_id", "model", "status", "estimated_cost"}
    assert body["agent_id"].startswith("subagent_")
    prefix, seconds, digits = body["agent_id"].split("_")
    assert seconds.isdigit() and len(digits) == 4 and digits.isdigit()
    assert body["estimated_cost"] > 0
    await wait_status(client, body["agent_id"])
    assert await agent_total(client) == before + 1


# -- hostile input: a 400, never a 500 ----------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/spawn", "/api/spawn-team", "/api/spawn-batch"])
async def test_deeply_nested_json_is_invalid_json_not_500(client, path):
    raw = "[" * 100_000 + "]" * 100_000
    error = await refused(client, path, type_="INVALID_JSON", data=raw, headers={"Content-Type": "application/json"})
    assert "JSON" in error["message"]


LONE_SURROGATE = '{"model": "k2p5", "task": "caf\\ud800e"}'


async def test_lone_surrogate_task_refused(client):
    error = await refused(client, "/api/spawn", data=LONE_SURROGATE, headers={"Content-Type": "application/json"})
    assert fields(error) == ["task"] and "Unicode" in error["message"]


async def test_lone_surrogate_in_team_and_batch_refused(client):
    team = '{"team": "team_coding", "task": "\\udfff"}'
    error = await refused(client, "/api/spawn-team", data=team, headers={"Content-Type": "application/json"})
    assert fields(error) == ["task"]
    batch = '{"agents": [{"model": "k2p5", "task": "ok"}, %s]}' % LONE_SURROGATE
    error = await refused(client, "/api/spawn-batch", data=batch, headers={"Content-Type": "application/json"})
    assert fields(error) == ["agents[1].task"]


async def test_lone_surrogate_model_is_echoed_safely(client):
    raw = '{"model": "k\\ud800", "task": "hello"}'
    error = await refused(client, "/api/spawn", data=raw, headers={"Content-Type": "application/json"})
    assert fields(error) == ["model"]


async def test_valid_non_ascii_task_round_trips(client):
    task = "Résumé 履歴書 🚀 — naïve café"
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": task})
    assert resp.status == 200
    done = await wait_status(client, (await resp.json())["agent_id"])
    assert done["task"] == task and task.split()[0] in done["result"]
