"""The dashboard's Tasks view (issue 17) in a real headless Chromium (tests/browser.py) against a
real daemon whose task steps a loopback fake upstream answers (tests/test_tasks_scenarios.py's
:class:`RoleUpstream`: the critic asks to revise three times, so the task escalates above the
threshold and waits for a person).

- An admin:write key sees the pending escalation with Approve and Reject; Approve continues the
  task, and the list, the escalation and the open task's steps (outputs, models, costs) follow
  it live from the event stream the page already reads, to ``completed``.
- A developer key (agents:read, agents:write) sees its tasks and the pending escalation, without
  the buttons (deciding needs admin:write: the API refuses it too).
- Reject from the page fails the task.
- At 360 px nothing is wider than the screen.

Each test fails on any JavaScript exception, console error or CSP violation, and keeps a
screenshot of each view it covers (tests/test_dashboard_views.py's ``_shot``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.browser import Browser
from tests.test_dashboard import _login, _visible, chromium  # noqa: F401  (chromium: a fixture)
from tests.test_dashboard_views import _no_problems, _shot
from tests.test_tasks_scenarios import REVISE, THRESHOLD, Scenario, call_cost, escalate, scenario

WAIT = 30.0


@pytest.fixture
async def tasks_daemon(tmp_path: Path) -> Any:
    async with scenario(tmp_path, [REVISE] * 3) as run:
        yield run


@pytest.fixture
async def page(tmp_path: Path, chromium: str) -> Any:  # noqa: F811  (chromium: the fixture above)
    async with Browser.launch(tmp_path, chromium) as browser:
        yield browser


def _admin(run: Scenario) -> str:
    return str(json.loads((run.daemon.state_dir / "bootstrap-admin.key").read_text())["token"])


async def _open_tasks(browser: Browser, run: Scenario, token: str) -> None:
    await browser.navigate(f"http://127.0.0.1:{run.daemon.port}/")
    await browser.wait_for(_visible("#login-form"), what="the login form")
    await _login(browser, token)
    await browser.wait_for("document.getElementById('live').dataset.state === 'live'", what="the live stream")
    await browser.wait_for(_visible("#tab-tasks"), what="the Tasks tab")
    await browser.click("#tab-tasks")
    await browser.wait_for(_visible("#tasks-view"), what="the Tasks view")


def _task_row(task_id: str) -> str:
    return f"document.querySelector('#tasks tr[data-task-id=\"{task_id}\"]')"


def _esc_row(esc_id: str) -> str:
    return f"document.querySelector('#escalations tr[data-escalation-id=\"{esc_id}\"]')"


def _field(name: str) -> str:
    return f"(document.querySelector('#task-fields dd[data-field=\"{name}\"]') || {{}}).textContent"


def _money(v: float) -> str:  # app.js's money()
    return "$0.00" if v == 0 else f"${v:.2f}" if abs(v) >= 0.01 else f"${v:.6f}"


async def test_an_admin_approves_a_pending_escalation_and_follows_the_task_live(page, tasks_daemon, tmp_path,
                                                                                capsys):
    run = tasks_daemon
    task, escalation = await escalate(run)
    browser = page
    await _open_tasks(browser, run, _admin(run))
    esc = _esc_row(escalation["escalation_id"])
    row = _task_row(task["id"])
    await browser.wait_for(f"!!{esc}", what="the pending escalation")
    await browser.wait_for(f"{row} && {row}.dataset.status === 'awaiting_approval'", what="the waiting task")
    cells = (await browser.evaluate(f"[...{esc}.children].map(c => c.textContent)"))[1:]  # the buttons first
    assert cells[:4] == [escalation["escalation_id"], task["id"], "implementer", "cheap → strong"], cells
    assert cells[4] == _money(escalation["estimated_cost"]) and escalation["estimated_cost"] > THRESHOLD
    assert cells[5] == escalation["reason"] and "handle the empty input" in cells[5]
    assert cells[6] == "pending_approval"
    assert await browser.evaluate(f"[...{esc}.querySelectorAll('button')].map(b => b.textContent)") == \
        ["Approve", "Reject"]
    progress = task["progress"]
    assert await browser.evaluate(f"{row}.children[4].textContent") == \
        f" {progress['completed_steps']}/4 ({round(progress['percentage'])}%)"

    # The task's detail: its seven steps so far, each with its output, model and cost.
    await browser.click(f"#tasks tr[data-task-id=\"{task['id']}\"] button.link")
    await browser.wait_for(_visible("#task-card"), what="the task detail")
    await browser.wait_for("document.activeElement.id === 'task-title'", what="the focus on the detail")
    await browser.wait_for("document.querySelectorAll('#task-steps tbody tr[data-status]').length === 7",
                           what="seven steps")
    steps = await browser.evaluate("[...document.querySelectorAll('#task-steps tbody tr[data-status]')]"
                                   ".map(r => [...r.children].map(c => c.textContent))")
    assert [s[1] for s in steps] == ["architect", "implementer", "critic", "implementer", "critic", "implementer",
                                     "critic"]
    assert [s[2] for s in steps] == ["run", "run", "run", "revise", "run", "revise", "run"]
    assert {s[3] for s in steps} == {"cheap"} and {s[6] for s in steps} == {_money(call_cost("cheap", run.upstream))}
    assert steps[2][5].startswith("revise")
    outputs = await browser.evaluate("[...document.querySelectorAll('#task-steps tr.step-output pre')]"
                                     ".map(p => p.textContent)")
    assert outputs[0] == "Work of call 1 on cheap-up." and outputs[2].endswith("VERDICT: " + REVISE)
    await _shot(browser, tmp_path, capsys, "tasks-pending-escalation")

    # Approve: the task runs on, and the page follows it from the stream to completed.
    await browser.fill("#escalation-reason", "worth the strong model")
    await browser.click(f"#escalations tr[data-escalation-id=\"{escalation['escalation_id']}\"] button.approve")
    await browser.wait_for("document.getElementById('escalations-result').textContent.includes('approved')",
                           what="the decision")
    await browser.wait_for(f"{row}.dataset.status === 'completed'", timeout=WAIT, what="the task completed (live)")
    await browser.wait_for(f"{_field('progress')} === '4/4 (100%)'", timeout=WAIT, what="the detail, completed")
    await browser.wait_for("document.querySelectorAll('#task-steps tbody tr[data-status]').length === 10",
                           what="ten steps")
    await browser.wait_for(f"!{esc} || {esc}.dataset.status !== 'pending_approval'", what="the escalation decided")
    assert await browser.evaluate("document.getElementById('escalations-empty').hidden") is False
    done = await run.task(task["id"])
    assert done["status"] == "completed"
    assert done["escalations"][0]["decision_reason"] == "worth the strong model"
    assert await browser.evaluate(_field("charged")) == _money(done["cost"]["charged"])
    assert await browser.evaluate(_field("model_used")) == "cheap"
    strong = await browser.evaluate("[...document.querySelectorAll('#task-steps tbody tr[data-status]')][7]"
                                    ".children[3].textContent")
    assert strong == "strong"
    detail_escalation = await browser.evaluate("[...document.querySelectorAll('#task-escalations tbody tr')]"
                                               ".map(r => r.dataset.status)")
    assert detail_escalation == ["completed"]
    await _shot(browser, tmp_path, capsys, "tasks-completed")
    _no_problems(browser)


async def test_a_key_without_admin_write_sees_the_escalation_but_no_buttons(page, tasks_daemon, tmp_path, capsys):
    run = tasks_daemon
    made = await run.ok("POST", "/api/keys", {"name": "dev", "scopes": ["agents:read", "agents:write"]}, status=201)
    # The developer's own task (a key without admin:read sees only its own work).
    created = await asyncio.to_thread(
        run.daemon.request, "POST", "/api/tasks",
        {"title": "Dev task", "description": "x", "type": "implementation", "priority": "low"}, 10.0, made["token"])
    assert created[0] == 201, created
    task = await run.wait_task(created[1]["id"], ("awaiting_approval",))
    escalation = task["escalations"][0]
    browser = page
    await _open_tasks(browser, run, made["token"])
    esc = _esc_row(escalation["escalation_id"])
    await browser.wait_for(f"!!{esc}", what="the pending escalation")
    assert await browser.evaluate(f"{esc}.querySelectorAll('button').length") == 0
    assert await browser.evaluate(_visible("#escalation-decide")) is False
    await _shot(browser, tmp_path, capsys, "tasks-developer")
    # The API agrees: this key may not decide.
    status, body = await run.request("POST", f"/api/escalations/{escalation['escalation_id']}/decision",
                                     {"decision": "approved"}, token=made["token"])
    assert status == 403, body
    _no_problems(browser)


async def test_reject_from_the_page_fails_the_task(page, tasks_daemon):
    run = tasks_daemon
    task, escalation = await escalate(run)
    browser = page
    await _open_tasks(browser, run, _admin(run))
    await browser.wait_for(f"!!{_esc_row(escalation['escalation_id'])}", what="the pending escalation")
    await browser.click(f"#escalations tr[data-escalation-id=\"{escalation['escalation_id']}\"] button.danger")
    row = _task_row(task["id"])
    await browser.wait_for(f"{row}.dataset.status === 'failed'", timeout=WAIT, what="the task failed (live)")
    done = await run.task(task["id"])
    assert done["escalations"][0]["status"] == "rejected"
    # The list's cost (the task never opened): the sum of its steps' charges, from the stream.
    assert await browser.evaluate(f"{row}.querySelector('td.cost').textContent") == _money(done["cost"]["charged"])
    _no_problems(browser)


async def test_the_tasks_view_fits_a_360_px_phone(page, tasks_daemon, tmp_path, capsys):
    run = tasks_daemon
    task, _ = await escalate(run)
    # One long word as the title: it widened the task's detail to 2,000 px.
    await run.ok("PUT", f"/api/tasks/{task['id']}", {"title": "T" * 190})
    browser = page
    await browser.send("Emulation.setDeviceMetricsOverride",
                       {"width": 360, "height": 740, "deviceScaleFactor": 1, "mobile": True})
    await _open_tasks(browser, run, _admin(run))
    await browser.wait_for("!!document.querySelector('#escalations tbody tr')", what="the escalation")
    width = "document.documentElement.scrollWidth"
    assert await browser.evaluate("window.innerWidth") == 360
    assert await browser.evaluate(width) <= 360, await browser.evaluate(width)
    await _shot(browser, tmp_path, capsys, "phone-tasks")
    await browser.click(f"#tasks tr[data-task-id=\"{task['id']}\"] button.link")
    await browser.wait_for("document.querySelectorAll('#task-steps tbody tr[data-status]').length === 7",
                           what="the steps")
    assert await browser.evaluate(width) <= 360, await browser.evaluate(width)
    await _shot(browser, tmp_path, capsys, "phone-task-detail")
    _no_problems(browser)
