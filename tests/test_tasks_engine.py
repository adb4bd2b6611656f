"""The task engine (j1mskyd/tasks.py) through the native API, on a real app, a real sqlite and a
fake upstream on loopback (tests/fakeupstream.py) that scripts each step's answer in order."""

from __future__ import annotations

import dataclasses

import pytest

from j1mskyd import agent_record
from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.task_config import by_price
from j1mskyd.tasks import NO_VERDICT, VERDICT_REQUEST, parse_verdict
from tests.conftest import make_config
from tests.taskkit import events_of, upstream_config, wait_task, with_role

TASK = {"title": "Add a reverse function", "type": "implementation", "description": "reverse a string",
        "acceptance_criteria": ["reverses ascii", "has a test"]}


# -- verdicts -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("looks good\nVERDICT: APPROVE", ("approve", None)),
    ("verdict: approve (nothing to add)", ("approve", None)),
    ("  VERDICT:   REVISE: add tests  ", ("revise", "add tests")),
    ("VERDICT: REVISE - no tests", ("revise", "- no tests")),
    ("VERDICT: REVISE", ("revise", "the critic asked for a revision without reasons")),
    # the LAST verdict line counts
    ("VERDICT: REVISE: first\nthen\nVERDICT: APPROVE", ("approve", None)),
    ("VERDICT: APPROVE\nVERDICT: REVISE: on second thought", ("revise", "on second thought")),
    ("I approve of this", ("revise", NO_VERDICT)),
    ("VERDICT: APPROVED", ("revise", NO_VERDICT)),  # a word boundary: not the protocol's word
    ("", ("revise", NO_VERDICT)),
    (None, ("revise", NO_VERDICT)),
])
def test_verdict_parsing(text, expected):
    assert parse_verdict(text) == expected


def test_escalation_order_is_by_price_cheapest_first(tmp_path):
    cfg = make_config(tmp_path)
    # input + output per 1k: minimax 0.0002 < k2p5 0.002 < codex 0.004 < sonnet 0.018 < opus 0.09
    assert by_price(["opus", "sonnet", "codex", "k2p5", "minimax-m2.5"], cfg.models) == \
        ("minimax-m2.5", "k2p5", "codex", "sonnet", "opus")


# -- the embedded default: offline answers, the critic's verdict approves -------------------
async def test_a_task_runs_through_its_workflow_on_the_embedded_default(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    resp = await client.post("/api/tasks", json=TASK)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["status"] == "in_progress" and created["id"].startswith("task_")
    task = await wait_task(client, created["id"])
    assert task["status"] == "completed", task
    steps = task["steps"]
    assert [s["role"] for s in steps] == ["architect", "implementer", "critic", "integrator"]
    assert [s["kind"] for s in steps] == ["run"] * 4
    assert steps[2]["verdict"] == "approve" and "offline provider: no review was performed" in steps[2]["output"]
    assert task["progress"] == {"completed_steps": 4, "total_steps": 4, "percentage": 100, "current_step": None}
    # Each step is an ordinary agent: listed, billed; the task's cost is theirs.
    costs = []
    for s in steps:
        agent = await (await client.get(f"/api/agent/{s['agent_id']}")).json()
        assert agent["status"] == "completed" and agent["cost"] == s["cost"]
        costs.append(agent["cost"])
    assert task["cost"]["charged"] == pytest.approx(sum(costs))
    assert task["metadata"]["cost"] == task["cost"]["charged"] and task["metadata"]["model_used"] == "k2p5"
    # The critic's prompt asked for the verdict; the implementer's carried the architect's output.
    agent = await (await client.get(f"/api/agent/{steps[2]['agent_id']}")).json()
    assert agent["task"].endswith(VERDICT_REQUEST)
    implementer = await (await client.get(f"/api/agent/{steps[1]['agent_id']}")).json()
    assert steps[0]["output"] in implementer["task"] and "- has a test" in implementer["task"]
    events = [e["event"] for e in await events_of(client, "task.")]
    assert events[0] == "task.created" and events[-1] == "task.completed"
    assert events.count("task.progress") == 8  # each step started and ended


async def test_a_task_created_without_start_waits_and_submit_starts_it_at_that_role(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    task = await (await client.post("/api/tasks", json={**TASK, "start": False})).json()
    assert task["status"] == "pending" and task["steps"] == []
    resp = await client.post(f"/api/tasks/{task['id']}/submit",
                             json={"role": "implementer", "context": {"repository_state": "abc123"},
                                   "preferences": {"model": "sonnet", "timeout": 120}})
    assert resp.status == 200, await resp.text()
    sub = await resp.json()
    assert sub["submission_id"].startswith("sub_") and sub["role"] == "implementer"
    assert sub["status"] == "accepted" and sub["model_assigned"] == "sonnet" and sub["agent_id"]
    done = await wait_task(client, task["id"])
    assert done["status"] == "completed"
    assert [s["role"] for s in done["steps"]] == ["implementer", "critic", "integrator"]
    assert done["steps"][0]["model"] == "sonnet" and done["steps"][0]["selection"]["chosen_because"] == \
        "the submission's preferences"
    first = await (await client.get(f"/api/agent/{sub['agent_id']}")).json()
    assert "abc123" in first["task"] and first["timeout"] == 120
    # A task no longer pending cannot be submitted again (409), nor to a role outside its workflow (400).
    again = await client.post(f"/api/tasks/{task['id']}/submit", json={"role": "implementer"})
    assert again.status == 409
    wrong = await client.post(f"/api/tasks/{task['id']}/submit", json={"role": "nobody"})
    assert wrong.status == 400


# -- the fake upstream scripts each step's answer ----------------------------------------------
async def _app(aiohttp_client, cfg):
    return await aiohttp_client(build_app(cfg))


async def _revised_twice(aiohttp_client, tmp_path, up):
    """An implementation task the critic sent back three times (the implementer's threshold at 0):
    the client, and the task as it waits for approval."""
    cfg = with_role(upstream_config(tmp_path, up), "implementer", escalation={"cost_threshold": 0.0})
    client = await _app(aiohttp_client, cfg)
    _revise_twice(up)
    task = await (await client.post("/api/tasks", json=TASK)).json()
    return client, await wait_task(client, task["id"], ("awaiting_approval", "completed", "failed"))


def _revise_twice(up):
    """architect, implementer, critic revise, implementer, critic revise, implementer, critic revise"""
    up.reply_next(text="the design")
    up.reply_next(text="impl v1")
    up.reply_next(text="no tests\nVERDICT: REVISE: add tests")
    up.reply_next(text="impl v2")
    up.reply_next(text="VERDICT: REVISE: still no tests")
    up.reply_next(text="impl v3")
    up.reply_next(text="VERDICT: REVISE: tests do not run")


async def test_revise_twice_then_an_escalation_above_the_threshold_waits_then_approval_completes(
        aiohttp_client, tmp_path, fake_upstream):
    up = fake_upstream
    client, waiting = await _revised_twice(aiohttp_client, tmp_path, up)
    task = waiting
    assert waiting["status"] == "awaiting_approval", waiting
    assert [(s["role"], s["kind"]) for s in waiting["steps"]] == [
        ("architect", "run"), ("implementer", "run"), ("critic", "run"), ("implementer", "revise"),
        ("critic", "run"), ("implementer", "revise"), ("critic", "run")]
    assert [s["verdict"] for s in waiting["steps"] if s["role"] == "critic"] == ["revise"] * 3
    assert waiting["progress"]["current_step"] == "implementer" and waiting["assigned_to"] is None
    # The revision's prompt carries the reviewer's reasons and runs on the same model.
    revise = await (await client.get(f"/api/agent/{waiting['steps'][3]['agent_id']}")).json()
    assert "add tests" in revise["task"] and waiting["steps"][3]["model"] == "k2p5"
    [esc] = waiting["escalations"]
    assert esc["status"] == "pending_approval" and esc["approval_required"] is True
    assert esc["original_model"] == "k2p5" and esc["target_model"] == "sonnet" and esc["role"] == "implementer"
    assert "tests do not run" in esc["reason"] and esc["workflow_id"] == task["id"]
    assert len(up.calls) == 7

    up.reply_next(text="impl v4 with tests")
    up.reply_next(text="VERDICT: APPROVE")
    up.reply_next(text="merged")
    resp = await client.post(f"/api/escalations/{esc['escalation_id']}/decision",
                             json={"decision": "approved", "reason": "worth it", "approver_comments": "go"})
    assert resp.status == 200, await resp.text()
    decided = await resp.json()
    assert decided["status"] == "approved" and decided["approved_by"] == "anonymous"
    assert decided["decision_reason"] == "worth it" and decided["approver_comments"] == "go"
    done = await wait_task(client, task["id"])
    assert done["status"] == "completed", done
    assert [(s["role"], s["kind"], s["model"]) for s in done["steps"][7:]] == [
        ("implementer", "escalated", "sonnet"), ("critic", "run", "sonnet"), ("integrator", "run", "k2p5")]
    assert done["steps"][7]["escalation_id"] == esc["escalation_id"]
    # Ten steps, ten upstream calls, each its own agent's one ledger row; the escalated call went to sonnet.
    assert len(up.calls) == 10 and up.bodies[7]["model"] == "claude-sonnet-4-6"
    [final] = done["escalations"]
    assert final["status"] == "completed" and final["actual_cost"] == done["steps"][7]["cost"]
    assert done["cost"]["charged"] == pytest.approx(sum(s["cost"] for s in done["steps"]))
    store = client.app[SERVICES].store
    billed = await store.read(lambda c: c.execute(
        "SELECT COUNT(*), SUM(cost) FROM usage WHERE agent_id IN (%s)" % ",".join("?" * 10),
        [s["agent_id"] for s in done["steps"]]).fetchone())
    assert billed[0] == 10 and billed[1] == pytest.approx(done["cost"]["charged"])
    kinds = [e["event"] for e in await events_of(client) if e["event"].startswith(("task.", "escalation."))]
    assert kinds.count("escalation.submitted") == 1 and kinds.count("escalation.approved") == 1
    assert kinds.index("escalation.submitted") < kinds.index("escalation.approved") < kinds.index("task.completed")
    assert kinds[-1] == "task.completed" and "task.failed" not in kinds


async def test_a_rejected_escalation_fails_the_task_and_nothing_more_runs(aiohttp_client, tmp_path, fake_upstream):
    up = fake_upstream
    client, waiting = await _revised_twice(aiohttp_client, tmp_path, up)
    task = waiting
    [esc] = waiting["escalations"]
    # While the engine's escalation waits, a person cannot ask for another: 409 naming the waiting one.
    manual = await client.post("/api/escalations", json={"task_id": task["id"], "reason": "me too"})
    assert manual.status == 409, await manual.text()
    refusal = (await manual.json())["error"]
    assert refusal["type"] == "ESCALATION_PENDING" and refusal["escalation_id"] == esc["escalation_id"]
    resp = await client.post(f"/api/escalations/{esc['escalation_id']}/decision",
                             json={"decision": "rejected", "reason": "too dear"})
    assert resp.status == 200
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed" and "rejected" in done["error"] and "too dear" in done["error"]
    assert done["escalations"][0]["status"] == "rejected" and done["escalations"][0]["decided_by"] == "anonymous"
    assert len(done["steps"]) == 7 and len(up.calls) == 7
    kinds = [e["event"] for e in await events_of(client) if e["event"].startswith(("task.", "escalation."))]
    assert kinds[-2:] == ["escalation.rejected", "task.failed"]
    # Deciding it again: 409, nothing changes.
    again = await client.post(f"/api/escalations/{esc['escalation_id']}/decision", json={"decision": "approved"})
    assert again.status == 409 and (await again.json())["error"]["type"] == "ESCALATION_NOT_PENDING"
    assert (await (await client.get(f"/api/escalations/{esc['escalation_id']}")).json())["status"] == "rejected"


async def _critic_fails(aiohttp_client, tmp_path, up, threshold=None, *then):
    """A testing task whose critic's call is refused (the step fails and escalates), with the
    critic's cost threshold at ``threshold`` (None: the default) and ``then`` answered after."""
    cfg = upstream_config(tmp_path, up)
    if threshold is not None:
        cfg = with_role(cfg, "critic", escalation={"cost_threshold": threshold})
    client = await _app(aiohttp_client, cfg)
    up.reply_next(text="impl")
    up.fail_next(1, 400)
    for text in then:
        up.reply_next(text=text)
    task = await (await client.post("/api/tasks", json={**TASK, "type": "testing"})).json()
    return client, cfg, task


async def test_a_failed_step_escalates_and_waits_when_its_estimate_is_above_the_threshold(
        aiohttp_client, tmp_path, fake_upstream):
    up = fake_upstream
    client, _, task = await _critic_fails(aiohttp_client, tmp_path, up)
    waiting = await wait_task(client, task["id"], ("awaiting_approval", "completed", "failed"))
    assert waiting["status"] == "awaiting_approval", waiting
    assert [(s["role"], s["status"], s["model"]) for s in waiting["steps"]] == [
        ("implementer", "completed", "k2p5"), ("critic", "failed", "sonnet")]
    [esc] = waiting["escalations"]
    # opus's estimate (its typical 800 output tokens at $0.075/1k) is above the 0.05 default
    assert esc["target_model"] == "opus" and esc["estimated_cost"] > 0.05 and esc["status"] == "pending_approval"
    assert "critic step failed" in esc["reason"]
    assert [e["event"] for e in await events_of(client, "escalation.")] == ["escalation.submitted"]


async def test_the_threshold_decides_between_automatic_and_waiting(aiohttp_client, tmp_path, fake_upstream):
    up = fake_upstream
    client, _, task = await _critic_fails(aiohttp_client, tmp_path, up, 1.0, "VERDICT: APPROVE")
    done = await wait_task(client, task["id"])
    assert done["status"] == "completed", done
    [esc] = done["escalations"]
    assert esc["status"] == "completed" and esc["approved_by"] == "auto" and esc["approval_required"] is False
    assert esc["estimated_cost"] <= 1.0 and esc["target_model"] == "opus" and esc["original_model"] == "sonnet"
    kinds = [e["event"] for e in await events_of(client, "escalation.")]
    assert kinds == ["escalation.approved"]  # decided at once: never "submitted" to a person


async def test_no_stronger_model_left_fails_the_task_saying_so(aiohttp_client, tmp_path, fake_upstream):
    up = fake_upstream
    cfg = with_role(upstream_config(tmp_path, up), "integrator", models=("k2p5",))
    client = await _app(aiohttp_client, cfg)
    up.reply_next(text="VERDICT: APPROVE")
    up.fail_next(1, 400)
    task = await (await client.post("/api/tasks", json={**TASK, "type": "review"})).json()
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed"
    assert "no stronger model is left for the integrator role" in done["error"] and done["escalations"] == []
    assert [e["event"] for e in await events_of(client, "task.")][-1] == "task.failed"


async def _testing_task(aiohttp_client, cfg, up, *texts):
    """A testing task (implementer, critic) on ``cfg``, the upstream answering ``texts``: as it ended."""
    client = await _app(aiohttp_client, cfg)
    for text in texts:
        up.reply_next(text=text)
    task = await (await client.post("/api/tasks", json={**TASK, "type": "testing"})).json()
    return await wait_task(client, task["id"])


async def test_max_steps_bounds_a_task(aiohttp_client, tmp_path, fake_upstream):
    up = fake_upstream
    base = upstream_config(tmp_path, up)
    cfg = dataclasses.replace(base, tasks=dataclasses.replace(base.tasks, max_steps=3))
    done = await _testing_task(aiohttp_client, cfg, up, "impl", "VERDICT: REVISE: again", "impl 2")
    assert done["status"] == "failed" and "max_steps (3 steps)" in done["error"], done
    assert len(done["steps"]) == 3 and len(up.calls) == 3


# -- budgets -----------------------------------------------------------------------------------
async def test_a_step_refused_by_the_budget_fails_the_task_with_its_message(aiohttp_client, tmp_path, fake_upstream):
    up = fake_upstream
    base = upstream_config(tmp_path, up)
    # The implementer's worst case (k2p5, its role's 2000 tokens: ~$0.003) fits; the critic's on
    # sonnet (its role's 1500 tokens: ~$0.0225) does not.
    cfg = dataclasses.replace(base, budget=dataclasses.replace(base.budget, daily_budget=0.02))
    done = await _testing_task(aiohttp_client, cfg, up, "impl")
    assert done["status"] == "failed" and "budget" in done["error"].lower(), done
    assert [s["role"] for s in done["steps"]] == ["implementer"] and len(up.calls) == 1


async def test_a_start_refused_by_the_budget_is_refused_whole(aiohttp_client, tmp_path):
    base = make_config(tmp_path)
    cfg = dataclasses.replace(base, budget=dataclasses.replace(base.budget, daily_budget=0.0001))
    client = await aiohttp_client(build_app(cfg))
    resp = await client.post("/api/tasks", json=TASK)
    assert resp.status == 402 and (await resp.json())["error"]["type"] == "BUDGET_EXCEEDED"
    listed = await (await client.get("/api/tasks")).json()
    assert listed["pagination"]["total"] == 0 and await events_of(client, "task.") == []
    agents = await (await client.get("/api/agents")).json()
    assert agents["pagination"]["total"] == 0


# -- one transaction ---------------------------------------------------------------------------------
async def test_a_step_and_its_agent_are_written_together_or_not_at_all(aiohttp_client, tmp_path, monkeypatch):
    from j1mskyd import task_store
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    original = task_store._Codec.insert

    def broken(self, record, cipher):  # the step's row fails to insert (an unknown column)
        sql, args = original(self, record, cipher)
        if self.table != "task_steps":
            return sql, args
        return sql.replace("task_steps (", "task_steps (no_such_column, ").replace("VALUES (", "VALUES (?, "), \
            (None, *args)

    monkeypatch.setattr(task_store._Codec, "insert", broken)
    resp = await client.post("/api/tasks", json=TASK)
    assert resp.status == 500
    store = client.app[SERVICES].store
    counts = await store.read(lambda c: [c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                                         for t in ("agents", "tasks", "task_steps", "events")])
    assert counts == [0, 0, 0, 0]
    assert client.app[SERVICES].budget.snapshot()["reserved"] == 0


# -- cancel ------------------------------------------------------------------------------------------
async def test_cancel_stops_the_running_step_refunds_it_and_rejects_pending_escalations(
        aiohttp_client, tmp_path, fake_upstream):
    up = fake_upstream
    up.delay = 30.0  # the step is running when it is cancelled
    client = await _app(aiohttp_client, upstream_config(tmp_path, up))
    task = await (await client.post("/api/tasks", json=TASK)).json()
    agent_id = task["assigned_to"]
    await up.wait_calls(1)
    esc = await (await client.post("/api/escalations", json={"task_id": task["id"], "reason": "please"})).json()
    assert esc["status"] == "pending_approval" and esc["target_model"] == "opus"  # the architect runs on sonnet
    resp = await client.delete(f"/api/tasks/{task['id']}", json={"reason": "not needed"})
    assert resp.status == 200, await resp.text()
    done = await resp.json()
    assert done["status"] == "cancelled" and done["assigned_to"] is None
    [step] = done["steps"]
    assert step["status"] == "cancelled" and step["agent_id"] == agent_id
    agent = await (await client.get(f"/api/agent/{agent_id}")).json()
    assert agent["status"] == "cancelled"
    # The refund is an agent's: the unspent part of its estimate (a call abandoned mid-way is billed
    # what it may have used, so this one may refund nothing); the reservation is released whole.
    assert step["cost"] == agent["cost"]
    assert done["cost"]["refunded"] == pytest.approx(max(step["estimated_cost"] - step["cost"], 0.0))
    assert done["escalations"][0]["status"] == "rejected"
    assert done["escalations"][0]["decision_reason"] == "task cancelled"
    assert client.app[SERVICES].budget.snapshot()["reserved"] == 0
    kinds = [e for e in await events_of(client) if e["event"] in ("task.cancelled", "escalation.rejected")]
    assert [e["event"] for e in kinds] == ["escalation.rejected", "task.cancelled"]
    assert kinds[-1]["data"]["reason"] == "not needed"
    again = await client.delete(f"/api/tasks/{task['id']}")
    assert again.status == 409


async def test_completing_by_hand_cancels_the_running_step_and_keeps_the_results(
        aiohttp_client, tmp_path, fake_upstream):
    up = fake_upstream
    up.delay = 30.0
    client = await _app(aiohttp_client, upstream_config(tmp_path, up))
    task = await (await client.post("/api/tasks", json=TASK)).json()
    resp = await client.put(f"/api/tasks/{task['id']}", json={
        "status": "completed", "results": {"files_modified": 3}, "feedback": "done by hand"})
    assert resp.status == 200, await resp.text()
    done = await resp.json()
    assert done["status"] == "completed" and done["results"] == {"files_modified": 3}
    assert done["feedback"] == "done by hand" and done["steps"][0]["status"] == "cancelled"
    # A finished task keeps taking feedback, but not another status.
    more = await client.put(f"/api/tasks/{task['id']}", json={"feedback": "and reviewed"})
    assert (await more.json())["feedback"] == "and reviewed"
    assert (await client.put(f"/api/tasks/{task['id']}", json={"status": "cancelled"})).status == 409


# -- escalations by hand ---------------------------------------------------------------------------
async def test_a_manual_escalation_approved_before_the_start_runs_that_step_on_its_target(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    task = await (await client.post("/api/tasks", json={**TASK, "start": False})).json()
    resp = await client.post("/api/escalations", json={"task_id": task["id"], "reason": "security critical",
                                                        "target_model": "opus", "context": {"impact": "high"}})
    assert resp.status == 201
    esc = await resp.json()
    assert esc["status"] == "pending_approval" and esc["submitted_by"] == "anonymous" and esc["role"] == "architect"
    await client.post(f"/api/escalations/{esc['escalation_id']}/decision", json={"decision": "approved"})
    await client.post(f"/api/tasks/{task['id']}/submit", json={"role": "architect"})
    done = await wait_task(client, task["id"])
    assert done["steps"][0]["model"] == "opus" and done["steps"][0]["kind"] == "escalated"
    assert done["escalations"][0]["status"] == "completed"
    assert done["escalations"][0]["actual_cost"] == done["steps"][0]["cost"]
    # A finished task cannot be escalated.
    late = await client.post("/api/escalations", json={"task_id": task["id"], "reason": "late"})
    assert late.status == 409
    listed = await (await client.get("/api/escalations?status=completed")).json()
    assert [e["escalation_id"] for e in listed["escalations"]] == [esc["escalation_id"]]
    assert (await (await client.get("/api/escalations?status=pending")).json())["pagination"]["total"] == 0
    # Asked for while pending, it applies to whichever step the task starts at.
    other = await (await client.post("/api/tasks", json={**TASK, "type": "testing", "start": False})).json()
    esc = await (await client.post("/api/escalations", json={"task_id": other["id"], "reason": "r"})).json()
    assert esc["role"] == "implementer" and esc["target_model"] == "sonnet"
    await client.post(f"/api/escalations/{esc['escalation_id']}/decision", json={"decision": "approved"})
    sub = await (await client.post(f"/api/tasks/{other['id']}/submit", json={"role": "critic"})).json()
    assert sub["model_assigned"] == "sonnet"
    done = await wait_task(client, other["id"])
    assert done["assignee_role"] == "critic" and done["steps"][0]["kind"] == "escalated"


# -- recovery ----------------------------------------------------------------------------------------

async def _stopped_during_a_step(aiohttp_client, cfg, up):
    """A testing task whose first step is running (the upstream holds its call) when the daemon
    stops; the task's creation answer and the database's path."""
    up.delay = 30.0
    client = await _app(aiohttp_client, cfg)
    task = await (await client.post("/api/tasks", json={**TASK, "type": "testing"})).json()
    await up.wait_calls(1)
    path = client.app[SERVICES].store.path
    await client.close()  # a stop: the running agent goes back to queued
    up.delay = 0.0
    return task, path


async def test_a_step_running_at_stop_is_run_again_and_the_task_completes(aiohttp_client, tmp_path, fake_upstream):
    up = fake_upstream
    cfg = upstream_config(tmp_path, up)
    task, _ = await _stopped_during_a_step(aiohttp_client, cfg, up)
    up.reply_next(text="impl")
    up.reply_next(text="VERDICT: APPROVE")
    client = await _app(aiohttp_client, cfg)
    done = await wait_task(client, task["id"])
    assert done["status"] == "completed", done
    assert [s["role"] for s in done["steps"]] == ["implementer", "critic"]
    assert done["steps"][0]["agent_id"] == task["assigned_to"]  # the same step, re-run, not a new one


async def test_a_step_whose_agent_ended_while_down_is_processed_at_start(aiohttp_client, tmp_path, fake_upstream):
    up = fake_upstream
    cfg = upstream_config(tmp_path, up)
    task, path = await _stopped_during_a_step(aiohttp_client, cfg, up)
    # The database as a crash can leave it: the step's agent ended (its final write committed),
    # the engine's write that follows it did not happen.
    from j1mskyd.store import Store
    db = Store(path)
    db.open()
    agent = db.read_sync(lambda c: agent_record.load(c, task["assigned_to"], db.cipher))
    agent.status, agent.result, agent.cost, agent.served_model = "completed", "impl done offline", 0.001, "k2p5"
    agent.completed_at = agent.created_at + 1
    await db.write(agent_record.update(agent, "status", "result", "cost", "served_model", "completed_at",
                                       cipher=db.cipher))
    await db.close()
    calls = len(up.calls)
    up.reply_next(text="VERDICT: APPROVE")
    client = await _app(aiohttp_client, cfg)
    done = await wait_task(client, task["id"])
    assert done["status"] == "completed"
    assert done["steps"][0]["output"] == "impl done offline" and done["steps"][0]["status"] == "completed"
    assert len(up.calls) == calls + 1  # only the critic ran: the ended step was not re-run


async def test_an_escalation_approved_while_down_continues_at_start(aiohttp_client, tmp_path, fake_upstream):
    from j1mskyd import task_store
    up = fake_upstream
    client, cfg, task = await _critic_fails(aiohttp_client, tmp_path, up, 0.0)
    waiting = await wait_task(client, task["id"], ("awaiting_approval",))
    store = client.app[SERVICES].store
    await client.close()
    from j1mskyd.store import Store
    db = Store(store.path)
    db.open()  # another process (the CLI) approves it while the daemon is down
    esc = db.read_sync(lambda c: task_store.load_escalation(c, waiting["escalations"][0]["escalation_id"], db.cipher))
    esc.status, esc.decided_by, esc.decided_at = "approved", "key_admin", esc.submitted_at + 5
    await db.write(task_store.ESCALATIONS.update(esc, ("status", "decided_by", "decided_at"), db.cipher))
    await db.close()
    up.reply_next(text="VERDICT: APPROVE")
    client = await _app(aiohttp_client, cfg)
    done = await wait_task(client, task["id"])
    assert done["status"] == "completed", done
    assert done["steps"][-1]["kind"] == "escalated" and done["steps"][-1]["model"] == "opus"
    assert done["escalations"][0]["status"] == "completed" and done["escalations"][0]["approved_by"] == "key_admin"


async def test_a_steps_calls_carry_its_roles_or_its_submissions_max_tokens_and_temperature(
        aiohttp_client, tmp_path, fake_upstream):
    """The role's preferences are sent, not only shown: each step's call asks for its role's
    output cap and temperature; a submission's preferences for the role come first."""
    up = fake_upstream
    cfg = upstream_config(tmp_path, up)
    client = await _app(aiohttp_client, cfg)
    up.reply_next(text="impl")
    up.reply_next(text="VERDICT: APPROVE")
    task = await (await client.post("/api/tasks", json={**TASK, "type": "testing", "start": False})).json()
    resp = await client.post(f"/api/tasks/{task['id']}/submit", json={
        "role": "implementer", "preferences": {"max_tokens": 321, "temperature": 0.1}})
    assert resp.status == 200, await resp.text()
    done = await wait_task(client, task["id"])
    assert done["status"] == "completed", done
    implementer, critic = up.bodies
    assert (implementer["max_tokens"], implementer["temperature"]) == (321, 0.1)
    role = cfg.roles["critic"]
    assert (critic["max_tokens"], critic["temperature"]) == (role.max_tokens, role.temperature)
    assert role.max_tokens < cfg.models[critic_model(done)].max_tokens  # the role's cap, not the model's


def critic_model(task):
    return next(s["model"] for s in task["steps"] if s["role"] == "critic")
