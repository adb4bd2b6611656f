"""Tasks attacked as a hostile client would: values at the edges of what JSON and ISO 8601
allow, which once answered 500 or, worse, were stored and then broke every later read of the
task and the engine's next step.  Real app, real sqlite, a fake upstream on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from tests.conftest import make_config
from tests.daemon import Daemon, wait_until
from tests.taskkit import upstream_config, wait_task
from tests.test_tasks_engine import _revised_twice

TASK = {"title": "Add a reverse function", "type": "testing", "description": "reverse a string"}
HUGE = 10 ** 400  # a valid JSON integer no float holds
# Valid ISO 8601 date-times whose UTC instant lies outside years 1-9999.
OUT_OF_RANGE = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"]


async def _refused(resp, field):
    body = await resp.json()
    assert resp.status == 400, body
    assert body["error"]["type"] == "VALIDATION_ERROR" and [d["field"] for d in body["error"]["details"]] == [field]


@pytest.mark.parametrize("deadline", OUT_OF_RANGE)
async def test_a_deadline_outside_the_years_utc_can_write_is_refused(client, deadline):
    """Was a 500 (the view could not write the year 10000 back)."""
    await _refused(await client.post("/api/tasks", json={**TASK, "deadline": deadline}), "deadline")
    assert (await (await client.get("/api/tasks")).json())["pagination"]["total"] == 0
    resp = await client.post("/kyros/v1/tasks", json={**TASK, "deadline": deadline})
    body = await resp.json()
    assert resp.status == 422 and body["error"]["code"] == "VALIDATION_ERROR", body


@pytest.mark.parametrize("deadline", OUT_OF_RANGE)
async def test_a_change_to_such_a_deadline_is_refused_and_the_task_stays_readable(client, deadline):
    """Was stored, then the answer, every GET of the task and the whole list answered 500."""
    task = await (await client.post("/api/tasks", json={**TASK, "start": False})).json()
    await _refused(await client.put(f"/api/tasks/{task['id']}", json={"deadline": deadline}), "deadline")
    again = await client.get(f"/api/tasks/{task['id']}")
    assert again.status == 200 and (await again.json())["deadline"] is None
    assert (await client.get("/api/tasks")).status == 200


@pytest.mark.parametrize("key", ["file_count", "service_count"])
async def test_a_huge_count_in_the_metadata_does_not_break_the_model_choice(client, key):
    """Was an OverflowError (500) in the step model's choice, on create and on Kyros's select."""
    resp = await client.post("/api/tasks", json={**TASK, "metadata": {key: HUGE}})
    assert resp.status == 201, await resp.text()
    done = await wait_task(client, (await resp.json())["id"])
    assert done["status"] == "completed", (done["error"], done["steps"])
    resp = await client.post("/kyros/v1/models/select",
                             json={"task_description": "x", "complexity_indicators": {key: HUGE}})
    assert resp.status == 200, await resp.text()
    assert 0 <= (await resp.json())["data"]["confidence_score"] <= 1


async def test_a_huge_count_set_on_a_running_task_does_not_wedge_it(aiohttp_client, tmp_path, fake_upstream):
    """Its next step's start raised in the engine's watcher: the task stayed in_progress for ever."""
    up = fake_upstream
    gate = asyncio.Event()
    up.reply_next(text="impl")
    up.reply_next(text="VERDICT: APPROVE")
    client = await aiohttp_client(build_app(upstream_config(tmp_path, up)))
    original = up._pause

    async def held(seconds):  # the first step's call waits until the metadata has changed (bounded)
        await asyncio.wait_for(gate.wait(), 15)
        await original(seconds)
    up._pause = held
    task = await (await client.post("/api/tasks", json=TASK)).json()
    resp = await client.put(f"/api/tasks/{task['id']}", json={"metadata": {"file_count": HUGE}})
    assert resp.status == 200, await resp.text()
    gate.set()
    done = await wait_task(client, task["id"])
    assert done["status"] == "completed", (done["error"], done["steps"])
    assert [s["role"] for s in done["steps"]] == ["implementer", "critic"]


async def test_a_role_change_with_a_huge_number_is_refused_by_name(aiohttp_client, tmp_path):
    """Was a 500 (the config's number check overflowed), natively and through Kyros's configuration."""
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    before = await (await client.get("/api/roles/critic")).json()
    for patch, field in (({"escalation": {"cost_threshold": HUGE}}, "escalation.cost_threshold"),
                         ({"temperature": -HUGE}, "temperature")):
        await _refused(await client.put("/api/roles/critic", json=patch), field)
    resp = await client.put("/kyros/v1/configuration", json={"escalation": {"cost_threshold": HUGE}})
    assert resp.status == 422, await resp.text()
    assert await (await client.get("/api/roles/critic")).json() == before


async def test_an_unexpected_error_after_a_step_fails_the_task_instead_of_leaving_it_running(
        aiohttp_client, tmp_path, monkeypatch):
    """A bug in processing a step's end (here: forced) once left the task in_progress until a
    restart, which met the same bug; now it fails, saying so, and its step is recorded."""
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    service = client.app[SERVICES].tasks

    async def broken(task, position, before, events):
        raise RuntimeError("a bug")
    monkeypatch.setattr(service, "_advance", broken)
    task = await (await client.post("/api/tasks", json=TASK)).json()
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed" and "RuntimeError" in done["error"], done
    assert [(s["role"], s["status"]) for s in done["steps"]] == [("implementer", "completed")]


async def test_the_step_re_run_after_a_person_approved_is_told_what_the_reviewer_asked(
        aiohttp_client, tmp_path, fake_upstream):
    """The critic sent the implementation back three times ("tests do not run" the last); the
    escalation waited; once approved, the stronger model's prompt lacked the critic's reasons
    (the automatic path passed them, the approved one did not): it redid the work blind."""
    up = fake_upstream
    client, waiting = await _revised_twice(aiohttp_client, tmp_path, up)
    assert waiting["status"] == "awaiting_approval", waiting
    [esc] = waiting["escalations"]
    up.reply_next(text="impl v4 with tests")
    up.reply_next(text="VERDICT: APPROVE")
    up.reply_next(text="merged")
    resp = await client.post(f"/api/escalations/{esc['escalation_id']}/decision", json={"decision": "approved"})
    assert resp.status == 200, await resp.text()
    done = await wait_task(client, waiting["id"])
    assert done["status"] == "completed", (done["error"], done["steps"])
    rerun = done["steps"][7]
    assert (rerun["kind"], rerun["model"]) == ("escalated", "sonnet")
    prompt = (await (await client.get(f"/api/agent/{rerun['agent_id']}")).json())["task"]
    assert "tests do not run" in prompt and "asked for a revision" in prompt, prompt


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_not_json_on_any_stack(client, constant):
    """The stdlib parser (bookworm, no orjson) took them: the task was stored with NaN in its
    metadata and every later answer carrying it was JSON that strict clients (the dashboard's
    and the Kyros JavaScript client's JSON.parse) cannot read.  orjson refused them already."""
    body = '{"title": "t", "type": "testing", "start": false, "metadata": {"n": %s}}' % constant
    for path, status in (("/api/tasks", 400), ("/kyros/v1/tasks", 422)):
        resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
        assert resp.status == status, await resp.text()
        assert "is not a JSON value" in (await resp.json())["error"]["message"]
    assert (await (await client.get("/api/tasks")).json())["pagination"]["total"] == 0


# -- kill -9 of a real daemon right after an approval ----------------------------------------
_KILL_CONFIG = """
[server]
log_level = "info"

[plugins]
dropin_dir = "{dropin}"

# cheap answers after 120 s, past the implementer's 6 s timeout: its step fails and escalates.  The
# timeout runs from an agent's creation (queue time and a restart count): 6 s leaves the re-run
# time to be recovered after the kill.
[providers.slow]
plugin = "offline"
options = { delay = 120.0 }

[providers.quick]
plugin = "offline"
options = { delay = 0.3 }

[models]
cheap = { provider = "slow", upstream = "c", input_per_1k = 0.001, output_per_1k = 0.002, blended_per_1k = 0.001 }
strong = { provider = "quick", upstream = "s", input_per_1k = 0.01, output_per_1k = 0.02, blended_per_1k = 0.01 }

[tasks]
approval_threshold = 0.0

[roles.implementer]
default_model = "cheap"
models = ["cheap", "strong"]
timeout = 6

[roles.critic]
default_model = "strong"
models = ["strong"]

[workflows.testing]
steps = ["implementer", "critic"]
"""


def test_kill_9_right_after_an_approval_continues_the_task_exactly_once(tmp_path):
    """The approval's unit (escalation, task, the re-run's step and agent) is one transaction:
    killed the moment it answered, the restarted daemon runs the re-run once (re-queued as any
    agent), then the critic, and the ledger holds each step's charge once."""
    config = tmp_path / "config.toml"
    config.write_text(_KILL_CONFIG.replace("{dropin}", str(tmp_path / "no-plugins.d")), encoding="utf-8")
    state = tmp_path / "state"
    with Daemon(tmp_path, state, config) as d:
        status, task = d.request("POST", "/api/tasks", {"title": "t", "type": "testing"})
        assert status == 201, task

        def waiting():
            body = d.get(f"/api/tasks/{task['id']}")
            return body if body["status"] != "in_progress" else None
        waiting_task = wait_until(waiting, 30, what="the task to wait for approval")
        assert waiting_task["status"] == "awaiting_approval", waiting_task
        [esc] = waiting_task["escalations"]
        status, decided = d.request("POST", f"/api/escalations/{esc['escalation_id']}/decision",
                                    {"decision": "approved"})
        assert status == 200 and decided["status"] == "approved", decided
        d.kill()
        d.start()

        def ended():
            body = d.get(f"/api/tasks/{task['id']}")
            return body if body["status"] in ("completed", "failed", "cancelled") else None
        done = wait_until(ended, 30, what="the task to end after the restart")
    assert done["status"] == "completed", (done["error"], done["steps"])
    assert [(s["role"], s["kind"], s["model"], s["status"]) for s in done["steps"]] == [
        ("implementer", "run", "cheap", "failed"), ("implementer", "escalated", "strong", "completed"),
        ("critic", "run", "strong", "completed")], done["steps"]
    assert done["escalations"][0]["status"] == "completed"
    ids = [s["agent_id"] for s in done["steps"]]
    db = state / "j1msky.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        agents = conn.execute("SELECT COUNT(*) FROM agents WHERE kind = 'agent'").fetchone()[0]
        rows = conn.execute("SELECT agent_id, cost, cut FROM usage WHERE agent_id IN (?, ?, ?)", ids).fetchall()
    assert agents == 3  # no step agent doubled
    answered = [r[0] for r in rows if r[0] != ids[0] and not r[2]]
    assert sorted(answered) == sorted(ids[1:])  # each completed step's answer billed once
    # When the kill came while the re-run's call was in flight, that cut call is billed too, once
    # (docs/runtime.md, "Stopping and crash recovery"); no other call can have been cut.
    assert [r[0] for r in rows if r[2]] in ([], [ids[1]])
    assert done["cost"]["charged"] == pytest.approx(sum(r[1] for r in rows))


@pytest.mark.parametrize("tag", ["a,b", " a", "a "])
async def test_a_tag_the_list_filter_could_never_find_is_refused(client, tag):
    """GET /tasks?tags= splits on commas and trims: a tag "a,b" was stored and never found."""
    await _refused(await client.post("/api/tasks", json={**TASK, "start": False, "tags": [tag]}), "tags")
    task = await (await client.post("/api/tasks", json={**TASK, "start": False, "tags": ["x"]})).json()
    await _refused(await client.put(f"/api/tasks/{task['id']}", json={"tags": ["x", tag]}), "tags")
    found = await (await client.get("/api/tasks?tags=x")).json()
    assert [t["id"] for t in found["tasks"]] == [task["id"]]
