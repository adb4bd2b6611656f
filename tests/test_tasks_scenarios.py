"""Issue 17's "Proven" scenarios end to end: a real ``j1mskyd serve`` subprocess (tests/daemon.py)
driven over HTTP, its steps answered by a loopback fake upstream (tests/fakeupstream.py).

The upstream plays every role: a call whose prompt asks for the critic's ``VERDICT:`` line gets
the next scripted verdict, any other call a text naming the call.  Each step is one agent, each
agent one upstream call (``max_attempts = 1``: no retries), so the upstream's log, the task's
step list and the ledger (the ``usage`` table, read-only from the daemon's sqlite file) can be
compared one to one:

- the critic asks to revise three times: twice the implementer's step is revised (the shipped
  ``max_revisions = 2``), the third escalates it to the next stronger model, whose estimated cost
  is above the role's ``cost_threshold``, so the task waits ``awaiting_approval``; an admin
  approves (the escalated step runs, the critic approves, the integrator ends it) or rejects
  (the task fails): every step, cost, escalation field and event is as expected;
- ``kill -9`` (a real SIGKILL of the daemon) while a step's upstream call is in flight, between two
  steps (the next one admitted and queued behind another agent, no call of the task in flight), and
  while the task waits between two steps for an approval; restarted on the same state dir, the task
  completes once, with one step record per step, and its ledger holds exactly the upstream calls:
  those answered at their reported usage, the one the kill cut at its worst case (billed at the
  restart, docs/runtime.md "Stopping and crash recovery").

The upstream runs in the test's event loop; every blocking call to the daemon (urllib) goes
through a thread, so the upstream keeps answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from j1mskyd.tasks import VERDICT_REQUEST
from tests.daemon import Daemon
from tests.fakeupstream import FakeUpstream

WAIT = 60.0  # seconds: the bound of every wait (generous; nothing here is timed)
# Prices per 1k tokens: "strong" is 500 times dearer, so that its re-run's estimate is above
# the threshold while the cheap steps' are far below it.
# "solo" is "cheap" on a provider that runs one call at a time (a step queues behind another agent).
PRICES = {"cheap": (0.001, 0.002), "strong": (0.5, 1.0), "solo": (0.001, 0.002)}
THRESHOLD = 0.05  # USD: the implementer's cost_threshold (and [tasks] approval_threshold)
WORKFLOW = ["architect", "implementer", "critic", "integrator"]
REVISE = "REVISE: handle the empty input"
TASK_EVENTS = ("task.created", "task.progress", "task.completed", "task.failed", "task.cancelled",
               "escalation.submitted", "escalation.approved", "escalation.rejected")


def call_cost(model: str, upstream: FakeUpstream) -> float:
    """What one answered call costs: the fake's tokens at the model's prices."""
    inp, out = PRICES[model]
    return upstream.input_tokens * inp / 1000 + upstream.output_tokens * out / 1000


class RoleUpstream(FakeUpstream):
    """A fake upstream for task steps: a prompt that asks for the critic's verdict (the engine's
    VERDICT_REQUEST) is answered
    ``VERDICT: <next of verdicts>`` (APPROVE once they run out), any other prompt with a text
    naming the call.  ``hold_call`` (1-based): that call is recorded, then held until
    :meth:`release` (a step in flight, for the kill -9 test); ``held`` is set when it arrives."""

    def __init__(self, verdicts: list[str]) -> None:
        super().__init__()
        self.verdicts = list(verdicts)
        self.hold_call: int | None = None
        self.held = asyncio.Event()
        self._release = asyncio.Event()
        self.answered = 0  # calls whose answer was handed to aiohttp to send

    def release(self) -> None:
        self._release.set()

    async def _begin(self, request: web.Request) -> tuple[Any, web.Response | None]:
        payload, scripted = await super()._begin(request)
        if scripted is None and isinstance(payload, dict):
            number = len(self.calls)
            if number == self.hold_call:
                self.held.set()
                await self._release.wait()
            prompt = prompt_of(payload)
            if VERDICT_REQUEST in prompt:  # a critic's step (other prompts quote earlier verdicts)
                verdict = self.verdicts.pop(0) if self.verdicts else "APPROVE"
                self.reply_next(text=f"Review of call {number}.\nVERDICT: {verdict}")
            else:
                self.reply_next(text=f"Work of call {number} on {payload.get('model')}.")
            if number != self.hold_call:
                self.answered += 1
        return payload, scripted

    async def close(self) -> None:
        self.release()
        await super().close()

    def models(self) -> list[str]:
        """The model (our alias) of every call so far, in order."""
        return [str(body["model"]).removesuffix("-up") for body in self.bodies]


def prompt_of(payload: dict[str, Any]) -> str:
    parts: list[str] = []
    for message in payload.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [c.get("text", "") for c in content if isinstance(c, dict)]
    return "\n".join(parts)


def write_tasks_config(path: Path, upstream_url: str, threshold: float = THRESHOLD, implementer: str = "cheap") -> Path:
    models = "".join(
        f'[models.{alias}]\nprovider = "{"one" if alias == "solo" else "fake"}"\nupstream = "{alias}-up"\n'
        f"input_per_1k = {inp}\noutput_per_1k = {out}\nblended_per_1k = {out}\n\n"
        for alias, (inp, out) in PRICES.items())
    roles = "".join(
        f'[roles.{role}]\ndefault_model = "{default}"\nmodels = ["{default}"{extra}]\nmax_tokens = 200\n'
        f"[roles.{role}.escalation]\ncost_threshold = {threshold}\nmax_revisions = 2\n\n"
        for role, default, extra in (("architect", "cheap", ""), ("implementer", implementer, ', "strong"'),
                                     ("critic", "cheap", ""), ("integrator", "cheap", "")))
    workflows = "".join(f"[workflows.{kind}]\nsteps = {steps}\n\n" for kind, steps in (
        ("implementation", '["architect", "implementer", "critic", "integrator"]'),
        ("review", '["critic", "integrator"]'), ("design", '["architect", "critic", "integrator"]'),
        ("testing", '["implementer", "critic"]')))
    path.write_text(
        '[server]\nlog_level = "info"\n\n'
        # One attempt a call: each step is exactly one upstream call (nothing retried behind the test's back).
        "[runtime]\nmax_concurrency = 4\nmax_attempts = 1\n\n"
        f'[plugins]\ndropin_dir = "{path.parent / "no-plugins.d"}"\n\n'
        f'[providers.fake]\nplugin = "openai_compat"\nbase_url = "{upstream_url}/v1"\nmax_concurrency = 4\n\n'
        f'[providers.one]\nplugin = "openai_compat"\nbase_url = "{upstream_url}/v1"\nmax_concurrency = 1\n\n'
        f"{models}"
        f"[tasks]\nmax_revisions = 2\napproval_threshold = {threshold}\nmax_steps = 20\n\n"
        f"{roles}{workflows}",
        encoding="utf-8")
    return path


class Scenario:
    """The daemon (restartable on its state dir) and its upstream, with async helpers."""

    def __init__(self, tmp_path: Path, upstream: RoleUpstream, threshold: float = THRESHOLD,
                 implementer: str = "cheap") -> None:
        self.tmp_path = tmp_path
        self.upstream = upstream
        self.config = write_tasks_config(tmp_path / "tasks.toml", upstream.url, threshold, implementer)
        self.daemon = Daemon(tmp_path, tmp_path / "state", self.config, name="tasks-daemon")

    async def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        """With the bootstrap admin key, or ``token``."""
        return await asyncio.to_thread(self.daemon.request, method, path, body, 10.0, token)

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, answer = await self.request(method, path, body)
        assert got == status, (method, path, got, answer)
        return answer

    async def start(self) -> None:
        await asyncio.to_thread(self.daemon.start)

    async def kill_and_restart(self) -> None:
        """kill -9, then ``serve`` again on the same state dir (and config): a crash and a reboot."""
        assert await asyncio.to_thread(self.daemon.kill) == -9
        self.daemon = Daemon(self.tmp_path, self.tmp_path / "state", self.config, name="tasks-daemon-2")
        await self.start()

    async def admin_key_id(self) -> str:
        return str((await self.ok("GET", "/api/keys/me"))["key_id"])

    async def create(self, title: str = "Add a checksum to the export") -> dict[str, Any]:
        body = {"title": title, "description": "Every export file ends with a SHA-256 line.",
                "type": "implementation", "priority": "medium",
                "acceptance_criteria": ["the checksum line is the last line"]}
        task = await self.ok("POST", "/api/tasks", body, status=201)
        assert re.fullmatch(r"task_[0-9a-f]+", task["id"]), task
        return dict(task)

    async def task(self, task_id: str) -> dict[str, Any]:
        return dict(await self.ok("GET", f"/api/tasks/{task_id}"))

    async def wait_task(self, task_id: str, statuses: tuple[str, ...]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        end = loop.time() + WAIT
        while True:
            task = await self.task(task_id)
            if task["status"] in statuses:
                return task
            if loop.time() > end:
                raise AssertionError(f"task {task_id} never reached {statuses}: {task}\n{self.daemon.log()[-3000:]}")
            await asyncio.sleep(0.05)

    async def events(self, task_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The task's and its escalations' events (type, data), in order, through GET /api/events."""
        found: list[tuple[str, dict[str, Any]]] = []
        cursor = ""
        for _ in range(100):
            page = await self.ok("GET", f"/api/events?types={','.join(TASK_EVENTS)}&limit=500{cursor}")
            for event in page["data"]:
                data = event["data"]
                if data.get("task_id", data.get("id")) == task_id:
                    found.append((event["event"] if "event" in event else event["type"], data))
            if not page["pagination"]["has_more"]:
                return found
            cursor = "&cursor=" + urllib.parse.quote(page["pagination"]["cursor"])
        raise AssertionError("more than 100 pages of events")

    def running_on_disk(self, agent_id: str) -> bool:
        """Is this agent's row ``running`` in the daemon's database (its run counted, its cut
        call billable after a crash)?"""
        path = self.daemon.state_dir / "j1msky.db"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)) as conn:
            row = conn.execute("SELECT status FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
            return row is not None and row[0] == "running"

    def ledger(self, agent_ids: list[str]) -> list[dict[str, Any]]:
        """The ledger rows (usage) of these agents, read-only from the daemon's database."""
        path = self.daemon.state_dir / "j1msky.db"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)) as conn:
            conn.row_factory = sqlite3.Row
            marks = ",".join("?" * len(agent_ids))
            rows = conn.execute(f"SELECT * FROM usage WHERE agent_id IN ({marks}) ORDER BY id", agent_ids)
            return [dict(r) for r in rows]


@contextlib.asynccontextmanager
async def scenario(tmp_path: Path, verdicts: list[str], threshold: float = THRESHOLD,
                   implementer: str = "cheap") -> AsyncIterator[Scenario]:
    upstream = RoleUpstream(verdicts)
    await upstream.start()
    run = Scenario(tmp_path, upstream, threshold, implementer)
    try:
        await run.start()
        yield run
    finally:
        await asyncio.to_thread(run.daemon.close)
        await upstream.close()


def step_shape(task: dict[str, Any]) -> list[tuple[str, str, str, str | None]]:
    """(role, kind, model, verdict) of each step, in order."""
    return [(s["role"], s["kind"], s["model"], s["verdict"]) for s in sorted(task["steps"], key=lambda s: s["seq"])]


# What the critic's three "revise" verdicts make of the workflow, up to the escalation.
UNTIL_ESCALATION = [
    ("architect", "run", "cheap", None),
    ("implementer", "run", "cheap", None),
    ("critic", "run", "cheap", "revise"),
    ("implementer", "revise", "cheap", None),
    ("critic", "run", "cheap", "revise"),
    ("implementer", "revise", "cheap", None),
    ("critic", "run", "cheap", "revise"),
]
AFTER_APPROVAL = [
    ("implementer", "escalated", "strong", None),
    ("critic", "run", "cheap", "approve"),
    ("integrator", "run", "cheap", None),
]


async def escalate(run: Scenario) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create a task; the critic's three "revise" verdicts bring it to awaiting_approval.
    Returns (task, its pending escalation)."""
    created = await run.create()
    assert created["status"] in ("in_progress", "pending") and created["type"] == "implementation"
    task = await run.wait_task(created["id"], ("awaiting_approval", "completed", "failed", "cancelled"))
    assert task["status"] == "awaiting_approval", task
    assert step_shape(task) == UNTIL_ESCALATION
    assert run.upstream.models() == ["cheap"] * 7
    (escalation,) = task["escalations"]
    assert escalation["status"] == "pending_approval" and escalation["approval_required"] is True
    assert escalation["original_model"] == "cheap" and escalation["target_model"] == "strong"
    assert escalation["role"] == "implementer" and escalation["estimated_cost"] > THRESHOLD
    assert escalation["approved_by"] is None and escalation["approved_at"] is None
    assert task["assigned_to"] is None and task["progress"]["current_step"] == "implementer"
    # The escalation is listed as pending, and fetched alone the same.
    listed = await run.ok("GET", "/api/escalations?status=pending_approval")
    assert escalation["escalation_id"] in [e["escalation_id"] for e in listed["escalations"]], listed
    assert (await run.ok("GET", f"/api/escalations/{escalation['escalation_id']}"))["status"] == "pending_approval"
    return task, escalation


def check_costs(run: Scenario, task: dict[str, Any], answered_models: list[str]) -> None:
    """Each step's cost is its one call's; the ledger has one row per answered call, the same
    costs, and their sum is the task's charged cost."""
    steps = sorted(task["steps"], key=lambda s: s["seq"])
    rows = run.ledger([s["agent_id"] for s in steps])
    assert [r["model"] for r in rows] == answered_models == [s["model"] for s in steps]
    assert [r["agent_id"] for r in rows] == [s["agent_id"] for s in steps]  # one row a step, in order
    for step, row in zip(steps, rows):
        expected = call_cost(step["model"], run.upstream)
        assert row["cost"] == pytest.approx(expected) and step["cost"] == pytest.approx(expected), (step, row)
        assert (row["input_tokens"], row["output_tokens"]) == (run.upstream.input_tokens, run.upstream.output_tokens)
        assert (step["input_tokens"], step["output_tokens"]) == (row["input_tokens"], row["output_tokens"])
        assert step["status"] == "completed" and step["served_model"] == step["model"]
    total = sum(r["cost"] for r in rows)
    assert task["cost"]["charged"] == pytest.approx(total)
    assert task["metadata"]["cost"] == pytest.approx(total)


def check_outputs(task: dict[str, Any]) -> None:
    """Each step's output is what the upstream answered it (the calls are the steps, in order)."""
    for number, step in enumerate(sorted(task["steps"], key=lambda s: s["seq"]), start=1):
        if step["role"] == "critic":
            assert step["output"].startswith(f"Review of call {number}.\nVERDICT: "), step
        else:
            assert step["output"] == f"Work of call {number} on {step['model']}-up.", step


# -- the critic asks to revise, the escalation is approved -----------------------------------------------
async def test_revise_twice_then_an_escalation_above_the_threshold_approved_completes(tmp_path):
    async with scenario(tmp_path, [REVISE] * 3) as run:
        task, escalation = await escalate(run)
        admin = await run.admin_key_id()
        decided = await run.ok("POST", f"/api/escalations/{escalation['escalation_id']}/decision",
                               {"decision": "approved", "reason": "the cheap model cannot do it",
                                "approver_comments": "go ahead on the strong model"})
        assert decided["status"] == "approved" and decided["approved_by"] == admin, decided
        done = await run.wait_task(task["id"], ("completed", "failed", "cancelled"))
        assert done["status"] == "completed", done
        assert step_shape(done) == UNTIL_ESCALATION + AFTER_APPROVAL
        check_outputs(done)
        # The upstream's calls are the steps, one each, in order, on the step's model.
        assert run.upstream.models() == ["cheap"] * 7 + ["strong", "cheap", "cheap"]
        assert run.upstream.answered == len(run.upstream.calls) == 10
        # Each revision's prompt carried the critic's reasons (calls 4 and 6: the implementer again).
        for revision in (3, 5):
            assert "handle the empty input" in prompt_of(run.upstream.bodies[revision])
        assert "handle the empty input" not in prompt_of(run.upstream.bodies[1])  # the first run had none
        check_costs(run, done, run.upstream.models())
        assert done["progress"] == {"completed_steps": 4, "total_steps": 4, "percentage": 100, "current_step": None}
        assert done["metadata"]["model_used"] == "cheap" and done["error"] is None and done["assigned_to"] is None
        (closed,) = done["escalations"]
        assert closed["escalation_id"] == escalation["escalation_id"]
        assert closed["status"] == "completed" and closed["approved_by"] == admin and closed["approved_at"]
        assert closed["decision_reason"] == "the cheap model cannot do it"
        assert closed["approver_comments"] == "go ahead on the strong model"
        strong_step = next(s for s in done["steps"] if s["kind"] == "escalated")
        assert closed["actual_cost"] == pytest.approx(strong_step["cost"])

        events = await run.events(task["id"])
        kinds = [kind for kind, _ in events]
        assert kinds.count("task.created") == 1 and kinds[0] == "task.created"
        assert [k for k in kinds if k.startswith("escalation.")] == ["escalation.submitted", "escalation.approved"]
        assert kinds[-1] == "task.completed" and kinds.count("task.completed") == 1
        assert not {"task.failed", "task.cancelled", "escalation.rejected"} & set(kinds)
        assert kinds.index("escalation.submitted") < kinds.index("escalation.approved")
        # Every step started and ended: a task.progress each time, naming the step.
        progress = [data for kind, data in events if kind == "task.progress"]
        assert len(progress) == 2 * len(done["steps"]), kinds
        assert [p["step"]["id"] for p in progress][::2] == [s["id"] for s in sorted(done["steps"],
                                                                                       key=lambda s: s["seq"])]
        # Between submitted and approved nothing ran: the task waited.
        waiting = kinds[kinds.index("escalation.submitted") + 1:kinds.index("escalation.approved")]
        assert waiting == [], waiting
        submitted = next(data for kind, data in events if kind == "escalation.submitted")
        assert submitted["escalation_id"] == escalation["escalation_id"] and submitted["status"] == "pending_approval"


async def test_the_approved_escalations_re_run_carries_the_critics_reasons(tmp_path):
    """The step re-run on the stronger model after a person approved is told what the critic asked
    for, as each revision was and as the re-run of an escalation within the threshold is (below):
    otherwise the dearer model redoes the work blind."""
    async with scenario(tmp_path, [REVISE] * 3) as run:
        task, escalation = await escalate(run)
        await run.ok("POST", f"/api/escalations/{escalation['escalation_id']}/decision", {"decision": "approved"})
        assert (await run.wait_task(task["id"], ("completed", "failed", "cancelled")))["status"] == "completed"
        assert run.upstream.models()[7] == "strong"
        assert "handle the empty input" in prompt_of(run.upstream.bodies[7])


async def test_an_escalation_within_the_threshold_runs_at_once(tmp_path):
    """With the threshold above the strong model's estimate, the third "revise" escalates at once:
    recorded approved by "auto", no person asked, no escalation.submitted; the re-run carries the
    critic's reasons; the task completes."""
    async with scenario(tmp_path, [REVISE] * 3, threshold=100.0) as run:
        created = await run.create()
        done = await run.wait_task(created["id"], ("completed", "failed", "cancelled", "awaiting_approval"))
        assert done["status"] == "completed", done
        assert step_shape(done) == UNTIL_ESCALATION + AFTER_APPROVAL
        assert run.upstream.models() == ["cheap"] * 7 + ["strong", "cheap", "cheap"]
        assert "handle the empty input" in prompt_of(run.upstream.bodies[7])
        check_costs(run, done, run.upstream.models())
        (auto,) = done["escalations"]
        assert auto["approved_by"] == "auto" and auto["approval_required"] is False
        assert auto["status"] == "completed" and auto["estimated_cost"] <= 100.0
        kinds = [kind for kind, _ in await run.events(created["id"])]
        assert [k for k in kinds if k.startswith("escalation.")] == ["escalation.approved"]
        assert kinds[-1] == "task.completed" and kinds.count("task.completed") == 1


# -- ... and rejected ---------------------------------------------------------------------------------
async def test_revise_twice_then_an_escalation_rejected_fails_the_task(tmp_path):
    async with scenario(tmp_path, [REVISE] * 3) as run:
        task, escalation = await escalate(run)
        admin = await run.admin_key_id()
        decided = await run.ok("POST", f"/api/escalations/{escalation['escalation_id']}/decision",
                               {"decision": "rejected", "reason": "too dear for this", "approver_comments": "no"})
        assert decided["status"] == "rejected", decided
        done = await run.wait_task(task["id"], ("completed", "failed", "cancelled"))
        assert done["status"] == "failed" and done["error"], done
        assert "reject" in done["error"].lower(), done["error"]
        assert step_shape(done) == UNTIL_ESCALATION  # nothing ran after the rejection
        check_outputs(done)
        assert run.upstream.models() == ["cheap"] * 7 and run.upstream.answered == 7
        check_costs(run, done, ["cheap"] * 7)
        (closed,) = done["escalations"]
        assert closed["status"] == "rejected" and closed["decision_reason"] == "too dear for this"
        assert decided["decided_by"] == admin
        assert closed["approver_comments"] == "no" and closed["actual_cost"] in (None, 0)
        # A decided escalation is not decided again: 409, and nothing changes.
        status, again = await run.request("POST", f"/api/escalations/{escalation['escalation_id']}/decision",
                                           {"decision": "approved"})
        assert status == 409, again
        assert (await run.task(task["id"]))["status"] == "failed" and len(run.upstream.calls) == 7

        kinds = [kind for kind, _ in await run.events(task["id"])]
        assert [k for k in kinds if k.startswith("escalation.")] == ["escalation.submitted", "escalation.rejected"]
        assert kinds[-1] == "task.failed" and kinds.count("task.failed") == 1
        assert "task.completed" not in kinds and kinds.count("task.created") == 1
        assert kinds.count("task.progress") == 2 * 7
        # The decision was the admin's: its key id is on the escalation (not as an approver).
        fetched = await run.ok("GET", f"/api/escalations/{escalation['escalation_id']}")
        assert fetched["decided_by"] == admin and fetched["approved_by"] is None and fetched["decided_at"]


async def test_deciding_needs_admin_write_and_a_known_decision(tmp_path):
    """A key without admin:write may not decide (403); a decision other than approved/rejected is a
    422/400 naming the field; an unknown escalation is a 404; none of these change anything."""
    async with scenario(tmp_path, [REVISE] * 3) as run:
        task, escalation = await escalate(run)
        made = await run.ok("POST", "/api/keys", {"name": "dev", "scopes": ["agents:read", "agents:write"]}, status=201)
        path = f"/api/escalations/{escalation['escalation_id']}/decision"
        status, body = await run.request("POST", path, {"decision": "approved"}, token=made["token"])
        assert status == 403, body
        status, body = await run.request("POST", path, {"decision": "maybe"})
        assert status in (400, 422) and "decision" in str(body), body
        status, body = await run.request("POST", "/api/escalations/esc_0000000000000000/decision",
                                         {"decision": "approved"})
        assert status == 404, body
        still = await run.task(task["id"])
        assert still["status"] == "awaiting_approval" and still["escalations"][0]["status"] == "pending_approval"
        assert len(run.upstream.calls) == 7


# -- kill -9 ------------------------------------------------------------------------------------------
async def test_kill_9_during_a_step_resumes_it_and_the_task_completes_once(tmp_path):
    """The implementer's call (the 2nd) is held at the upstream; the daemon is killed with the
    step in flight and started again: the step is re-run (a second call), the task completes
    once, four step records, and the ledger holds the five upstream calls: the four answered at
    what the upstream reported, the one the kill cut at its worst case (the provider may bill
    it whole: its prompt's bytes and the chat template's 64 tokens in, its ``max_tokens`` out),
    billed to the implementer's step."""
    async with scenario(tmp_path, []) as run:
        run.upstream.hold_call = 2
        created = await run.create()
        await asyncio.wait_for(run.upstream.held.wait(), WAIT)
        mid = await run.task(created["id"])
        assert mid["status"] == "in_progress" and mid["progress"]["current_step"] == "implementer", mid
        # The kill comes once the step's `running` write is on disk (a group commit after its call
        # went out): a call cut younger than that is not billed (docs/runtime.md), which is not
        # what this test is about.
        step = max(mid["steps"], key=lambda s: s["seq"])
        async with asyncio.timeout(WAIT):
            while not run.running_on_disk(step["agent_id"]):
                await asyncio.sleep(0.01)
        await run.kill_and_restart()
        run.upstream.release()  # its answer goes to a dead connection: the daemon never learns it
        done = await run.wait_task(created["id"], ("completed", "failed", "cancelled"))
        assert done["status"] == "completed", done
        assert [(s["role"], s["kind"]) for s in sorted(done["steps"], key=lambda s: s["seq"])] == \
            [(role, "run") for role in WORKFLOW]
        assert run.upstream.models() == ["cheap"] * 5  # architect, implementer (cut), implementer, critic, integrator
        assert run.upstream.answered == 4
        steps = sorted(done["steps"], key=lambda s: s["seq"])
        rows = run.ledger([s["agent_id"] for s in steps])
        assert [r["agent_id"] for r in rows] == [steps[i]["agent_id"] for i in (0, 1, 1, 2, 3)]
        assert len(rows) == len(run.upstream.calls) == 5
        cut = run.upstream.bodies[1]
        worst = (len(prompt_of(cut).encode()) + 64, cut["max_tokens"])
        assert (rows[1]["input_tokens"], rows[1]["output_tokens"]) == worst
        inp, out = PRICES["cheap"]
        assert rows[1]["cost"] == pytest.approx(worst[0] * inp / 1000 + worst[1] * out / 1000)
        answered = [rows[i] for i in (0, 2, 3, 4)]
        for row in answered:
            assert (row["input_tokens"], row["output_tokens"]) == (run.upstream.input_tokens, run.upstream.output_tokens)
            assert row["cost"] == pytest.approx(call_cost("cheap", run.upstream))
        # The re-run was sent what the first run was: the cut call's bill did not shrink it.
        assert run.upstream.bodies[2]["max_tokens"] == cut["max_tokens"]
        assert steps[1]["cost"] == pytest.approx(rows[1]["cost"] + rows[2]["cost"])
        for step, row in zip([steps[0], steps[2], steps[3]], [rows[0], rows[3], rows[4]]):
            assert step["cost"] == pytest.approx(row["cost"])
        assert done["cost"]["charged"] == pytest.approx(sum(r["cost"] for r in rows))
        kinds = [kind for kind, _ in await run.events(created["id"])]
        assert kinds.count("task.created") == 1 and kinds.count("task.completed") == 1 and kinds[-1] == "task.completed"
        assert "task.failed" not in kinds


async def test_kill_9_between_steps_while_awaiting_approval_then_approved_completes_once(tmp_path):
    """Killed while the task waits between two steps for an approval (no step running): after the
    restart it still waits, the approval continues it, and it completes once."""
    async with scenario(tmp_path, [REVISE] * 3) as run:
        task, escalation = await escalate(run)
        await run.kill_and_restart()
        waiting = await run.task(task["id"])
        assert waiting["status"] == "awaiting_approval" and step_shape(waiting) == UNTIL_ESCALATION
        assert len(run.upstream.calls) == 7  # the restart ran nothing
        await run.ok("POST", f"/api/escalations/{escalation['escalation_id']}/decision",
                     {"decision": "approved", "reason": "after the restart"})
        done = await run.wait_task(task["id"], ("completed", "failed", "cancelled"))
        assert done["status"] == "completed", done
        assert step_shape(done) == UNTIL_ESCALATION + AFTER_APPROVAL
        assert run.upstream.models() == ["cheap"] * 7 + ["strong", "cheap", "cheap"]
        assert run.upstream.answered == len(run.upstream.calls) == 10
        check_costs(run, done, run.upstream.models())
        kinds = [kind for kind, _ in await run.events(task["id"])]
        assert kinds.count("task.completed") == 1 and kinds[-1] == "task.completed"
        assert [k for k in kinds if k.startswith("escalation.")] == ["escalation.submitted", "escalation.approved"]


async def test_kill_9_between_two_steps_with_the_next_one_queued_runs_it_once(tmp_path):
    """The implementer's model runs one call at a time, and another agent holds it: the architect's
    step ends, the implementer's step is admitted and waits in the queue, no call of the task in
    flight.  Killed then and restarted, the step runs exactly once (one upstream call, one step
    record, one ledger row) and the task completes once."""
    async with scenario(tmp_path, [], implementer="solo") as run:
        run.upstream.hold_call = 1
        blocker = await asyncio.to_thread(run.daemon.spawn, "a blocker holding the solo provider", "solo")
        await asyncio.wait_for(run.upstream.held.wait(), WAIT)
        created = await run.create()
        loop = asyncio.get_running_loop()
        end = loop.time() + WAIT
        while True:  # the architect's step ended, the implementer's queued behind the blocker
            task = await run.task(created["id"])
            steps = sorted(task["steps"], key=lambda s: s["seq"])
            if len(steps) == 2 and steps[0]["status"] == "completed":
                agent = await run.ok("GET", f"/api/agent/{steps[1]['agent_id']}")
                if agent["status"] == "queued":
                    break
            assert loop.time() < end, task
            await asyncio.sleep(0.05)
        assert len(run.upstream.calls) == 2  # the blocker's and the architect's
        await run.kill_and_restart()
        run.upstream.release()
        done = await run.wait_task(created["id"], ("completed", "failed", "cancelled"))
        assert done["status"] == "completed", done
        steps = sorted(done["steps"], key=lambda s: s["seq"])
        assert [(s["role"], s["kind"], s["model"]) for s in steps] == [
            ("architect", "run", "cheap"), ("implementer", "run", "solo"), ("critic", "run", "cheap"),
            ("integrator", "run", "cheap")]
        # The task's calls (not the blocker's): one a step, the implementer's after the restart only.
        task_calls = [m for m, body in zip(run.upstream.models(), run.upstream.bodies)
                      if "a blocker" not in prompt_of(body)]
        assert task_calls == ["cheap", "solo", "cheap", "cheap"]
        check_costs(run, done, task_calls)
        assert (await asyncio.to_thread(run.daemon.wait_agent, blocker))["status"] == "completed"
        kinds = [kind for kind, _ in await run.events(created["id"])]
        assert kinds.count("task.completed") == 1 and kinds[-1] == "task.completed"
        assert kinds.count("task.created") == 1 and "task.failed" not in kinds


# -- cancel --------------------------------------------------------------------------------------------
async def test_cancelling_a_task_cancels_its_running_step_and_refunds_it(tmp_path):
    """DELETE while the implementer's call is in flight: the task is cancelled, its step's agent
    too, charged as every agent whose call is abandoned in flight is (the call's worst case: the
    provider may bill it; docs/runtime.md) and refunded the rest of its reservation; the task's
    costs and the ledger say the same; nothing runs after; one task.cancelled."""
    async with scenario(tmp_path, []) as run:
        run.upstream.hold_call = 2
        created = await run.create()
        await asyncio.wait_for(run.upstream.held.wait(), WAIT)
        cancelled = await run.ok("DELETE", f"/api/tasks/{created['id']}", {"reason": "not needed any more"})
        assert cancelled["status"] == "cancelled", cancelled
        done = await run.wait_task(created["id"], ("cancelled",))
        steps = sorted(done["steps"], key=lambda s: s["seq"])
        assert [(s["role"], s["status"]) for s in steps] == [("architect", "completed"), ("implementer", "cancelled")]
        agent = await run.ok("GET", f"/api/agent/{steps[1]['agent_id']}")
        charges = agent["charges"]
        assert agent["status"] == "cancelled" and charges["charged"] > call_cost("cheap", run.upstream)
        assert steps[1]["cost"] == pytest.approx(charges["charged"])
        assert done["cost"]["charged"] == pytest.approx(call_cost("cheap", run.upstream) + charges["charged"])
        assert done["cost"]["refunded"] == pytest.approx(charges["refunded"])
        run.upstream.release()
        rows = run.ledger([s["agent_id"] for s in steps])
        assert [r["agent_id"] for r in rows] == [s["agent_id"] for s in steps]  # the abandoned call at its worst case
        assert rows[1]["cost"] == pytest.approx(charges["charged"])
        kinds = [kind for kind, _ in await run.events(created["id"])]
        assert kinds.count("task.cancelled") == 1 and kinds[-1] == "task.cancelled" and "task.completed" not in kinds
        assert len(run.upstream.calls) == 2  # nothing ran after the cancel
