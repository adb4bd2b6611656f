"""Kyros tasks, agents (roles), escalations, model selection, costs and configuration over
TaskService, through a real app: each success against the seed's example fields, the
document's error codes, tenancy (another key's task is TASK_NOT_FOUND, its escalation
NOT_FOUND), and every JSON type in every body field a VALIDATION_ERROR that changes nothing."""

from __future__ import annotations

import asyncio

import pytest

from tests.kyros_helpers import BASE, failure, start, success

JSON_VALUES = [None, True, 0, 1.5, "x", [], ["x"], {}, {"a": 1}]
SEED_TASK = {
    "title": "Implement user authentication",
    "description": "Add JWT-based authentication system with OAuth2 integration",
    "type": "implementation", "priority": "high", "assignee_role": "implementer",
    "files_to_modify": ["services/orchestrator/auth.py", "services/console/src/auth/index.ts"],
    "acceptance_criteria": ["Users can register with email/password", "JWT tokens are properly validated"],
    "dependencies": [], "tags": ["authentication", "security", "backend"], "deadline": "2024-01-20T23:59:59Z",
    "metadata": {"estimated_hours": 8, "complexity": "medium"},
}


async def _task(d, headers=None, **fields):
    return await success(await d.call("POST", "/tasks", headers, json={**SEED_TASK, **fields}), 201)


async def _until(d, task_id, statuses=("completed", "failed", "cancelled")):
    for _ in range(200):  # bounded: the offline provider answers at once
        data = await success(await d.call("GET", f"/tasks/{task_id}"))
        if data["status"] in statuses:
            return data
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} stayed {data['status']}")


async def test_the_documents_flow_create_submit_follow(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    created = await _task(d)
    assert {k: created[k] for k in ("title", "status", "assignee_role", "priority", "estimated_hours", "deadline")} \
        == {"title": SEED_TASK["title"], "status": "pending", "assignee_role": "implementer", "priority": "high",
            "estimated_hours": 8, "deadline": "2024-01-20T23:59:59Z"}
    assert created["id"].startswith("task_") and created["created_by"] == d.writer["key_id"]
    sub = await success(await d.call("POST", "/agents/implementer/submit", json={
        "task_id": created["id"], "context": {"repository_state": "main branch at commit abc123"},
        "preferences": {"temperature": 0.7, "max_tokens": 2000, "timeout": 300}}))
    assert {k: sub[k] for k in ("task_id", "role", "status")} == {"task_id": created["id"], "role": "implementer",
                                                                  "status": "accepted"}
    assert sub["submission_id"].startswith("sub_") and sub["agent_id"] and sub["model_assigned"]
    assert isinstance(sub["estimated_duration"], int) and sub["submitted_at"]
    done = await _until(d, created["id"])
    assert done["status"] == "completed", done
    assert done["progress"]["percentage"] == 100 and done["progress"]["completed_steps"] == done["progress"][
        "total_steps"]
    assert {"estimated_hours", "actual_hours", "model_used", "cost"} <= set(done["metadata"])
    assert done["metadata"]["model_used"] and done["results"] is not None
    assert [s["role"] for s in done["steps"]][0] == "implementer"
    # A second submission of a task that ran: the state does not allow it (409, VALIDATION_ERROR).
    await failure(await d.call("POST", "/agents/implementer/submit", json={"task_id": created["id"]}), 409,
                  "VALIDATION_ERROR")
    status = await success(await d.call("GET", "/agents/implementer/status", d.reader))
    assert {"role", "available_agents", "active_tasks", "queue_length", "average_response_time", "success_rate",
            "current_models", "performance"} <= set(status)
    costs = await success(await d.call("GET", "/monitoring/costs?period=7d&group_by=role", d.admin))
    assert costs["period"] == "7d" and costs["total_cost"] > 0 and "implementer" in costs["cost_breakdown"]["by_role"]
    await failure(await d.call("GET", "/monitoring/costs", d.writer), 403, "FORBIDDEN")
    await failure(await d.call("GET", "/monitoring/costs?group_by=planet", d.admin), 422, "VALIDATION_ERROR")


async def test_start_true_runs_at_once_and_a_role_outside_the_workflow_is_refused(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    task = await _task(d, type="review", start=True)
    assert task["status"] == "in_progress"
    pending = await _task(d, type="review")
    err = await failure(await d.call("POST", "/agents/architect/submit", json={"task_id": pending["id"]}), 422,
                        "VALIDATION_ERROR")
    assert err["details"]["field"] == "role" and "critic" in err["details"]["issue"]
    await failure(await d.call("POST", "/agents/nobody/submit", json={"task_id": pending["id"]}), 422,
                  "VALIDATION_ERROR")
    await failure(await d.call("POST", "/agents/critic/submit", json={}), 422, "VALIDATION_ERROR")
    assert (await success(await d.call("GET", f"/tasks/{pending['id']}")))["status"] == "pending"


async def test_list_filters_sort_pagination(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    a = await _task(d, priority="low", tags=["alpha"])
    b = await _task(d, priority="critical", tags=["beta"], type="design")
    await _task(d, d.other)
    page = await success(await d.call("GET", "/tasks?limit=1&sort_by=created_at&sort_order=asc"))
    assert [t["id"] for t in page["tasks"]] == [a["id"]]
    assert page["pagination"] == {"total": 2, "limit": 1, "offset": 0, "has_more": True}
    assert {"id", "title", "status", "type", "priority", "assignee_role", "created_at", "deadline"} <= set(
        page["tasks"][0])
    assert [t["id"] for t in (await success(await d.call("GET", "/tasks?tags=beta")))["tasks"]] == [b["id"]]
    assert [t["id"] for t in (await success(await d.call("GET", "/tasks?type=design")))["tasks"]] == [b["id"]]
    assert [t["id"] for t in (await success(await d.call("GET", "/tasks?priority=low")))["tasks"]] == [a["id"]]
    for query, field in (("status=sleeping", "status"), ("limit=201", "limit"), ("sort_by=size", "sort_by"),
                         ("sort_order=up", "sort_order"), ("offset=-1", "offset"),
                         ("tags=" + ",".join(["t"] * 1000), "tags")):  # was a 500 (sqlite's expression depth)
        err = await failure(await d.call("GET", f"/tasks?{query}"), 422, "VALIDATION_ERROR")
        assert err["details"]["field"] == field


async def test_update_and_cancel(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    task = await _task(d)
    changed = await success(await d.call("PUT", f"/tasks/{task['id']}", json={
        "results": {"files_modified": 3, "tests_added": 6}, "feedback": "All tests passing.", "priority": "low"}))
    assert changed["results"] == {"files_modified": 3, "tests_added": 6} and changed["priority"] == "low"
    cancelled = await success(await d.call("DELETE", f"/tasks/{task['id']}",
                                           json={"reason": "No longer needed due to requirement changes"}))
    assert cancelled["status"] == "cancelled"
    await failure(await d.call("DELETE", f"/tasks/{task['id']}"), 409, "VALIDATION_ERROR")
    await failure(await d.call("PUT", f"/tasks/{task['id']}", json={"status": "completed"}), 409, "VALIDATION_ERROR")


async def test_another_keys_task_and_escalation_are_not_found(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    task = await _task(d)
    esc = await success(await d.call("POST", "/escalation/submit", json={"task_id": task["id"], "reason": "hard"}))
    tid, eid = task["id"], esc["escalation_id"]
    for method, path, body in (("GET", f"/tasks/{tid}", None), ("PUT", f"/tasks/{tid}", {"feedback": "x"}),
                               ("DELETE", f"/tasks/{tid}", None),
                               ("POST", "/agents/implementer/submit", {"task_id": tid}),
                               ("POST", "/escalation/submit", {"task_id": tid, "reason": "mine now"}),
                               ("GET", "/tasks/task_doesnotexist", None)):
        await failure(await d.call(method, path, d.other, json=body), 404, "TASK_NOT_FOUND")
    await failure(await d.call("GET", f"/escalation/{eid}/status", d.other), 404, "NOT_FOUND")
    assert (await success(await d.call("GET", "/escalations", d.other)))["escalations"] == []
    assert (await success(await d.call("GET", "/tasks", d.other)))["tasks"] == []
    # Nothing the other key tried changed the task.
    again = await success(await d.call("GET", f"/tasks/{tid}"))
    assert again["status"] == "pending" and again["feedback"] is None and len(again["escalations"]) == 1


async def test_escalation_submit_approve_status_list(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    task = await _task(d)
    esc = await success(await d.call("POST", "/escalation/submit", json={
        "task_id": task["id"], "original_model": "sonnet", "target_model": "opus",
        "reason": "Security-critical authentication implementation", "context": {"security_impact": "high"},
        "estimated_cost": 15.0, "priority": "high"}))
    assert {k: esc[k] for k in ("task_id", "status", "estimated_cost", "approval_required")} == {
        "task_id": task["id"], "status": "pending_approval", "estimated_cost": 15.0, "approval_required": True}
    assert esc["escalation_id"].startswith("esc_") and esc["workflow_id"] and esc["submitted_at"]
    eid = esc["escalation_id"]
    pending = await success(await d.call("GET", "/escalations?status=pending"))
    assert [e["escalation_id"] for e in pending["escalations"]] == [eid]
    body = {"decision": "approved", "reason": "Security-critical", "approver_comments": "Approved"}
    await failure(await d.call("POST", f"/escalation/{eid}/approve", json=body), 403, "FORBIDDEN")
    approved = await success(await d.call("POST", f"/escalation/{eid}/approve", d.admin, json=body))
    assert approved["status"] == "approved" and approved["approved_by"] == d.admin_key_id
    status = await success(await d.call("GET", f"/escalation/{eid}/status"))
    assert {"escalation_id", "task_id", "status", "original_model", "target_model", "submitted_at", "approved_at",
            "approved_by", "estimated_cost", "actual_cost", "result"} <= set(status)
    assert status["target_model"] == "opus" and status["approver_comments"] == "Approved"
    # Deciding it again, either way: the document's ESCALATION_REJECTED.
    for decision in ("approved", "rejected"):
        await failure(await d.call("POST", f"/escalation/{eid}/approve", d.admin, json={"decision": decision}), 400,
                      "ESCALATION_REJECTED")
    await failure(await d.call("POST", "/escalation/esc_nothere/approve", d.admin, json=body), 404, "NOT_FOUND")
    await failure(await d.call("GET", "/escalation/esc_nothere/status"), 404, "NOT_FOUND")
    for query, field in (("status=open", "status"), ("from_date=yesterday", "from_date"), ("limit=0", "limit")):
        err = await failure(await d.call("GET", f"/escalations?{query}"), 422, "VALIDATION_ERROR")
        assert err["details"]["field"] == field


async def test_an_ended_task_cannot_be_escalated(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    task = await _task(d)
    await success(await d.call("DELETE", f"/tasks/{task['id']}"))
    err = await failure(await d.call("POST", "/escalation/submit", json={"task_id": task["id"], "reason": "late"}),
                        400, "ESCALATION_REJECTED")
    assert "cancelled" in err["message"]


async def test_model_selection(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    data = await success(await d.call("POST", "/models/select", json={
        "task_description": "Implement OAuth2 authentication with SAML integration", "task_type": "implementation",
        "files_to_modify": ["auth.py", "security/oauth2.py"],
        "complexity_indicators": {"file_count": 3, "security_sensitive": True, "business_critical": True},
        "context": {"budget_remaining": 100.0}, "preferences": {"cost_sensitive": True}}))
    assert {"selected_model", "confidence_score", "reasoning", "estimated_cost", "estimated_duration",
            "fallback_model"} <= set(data)
    assert data["reasoning"]["security_sensitive"] is True and "complexity_score" in data["reasoning"]
    await failure(await d.call("POST", "/models/select", d.reader, json={"task_description": "x"}), 403, "FORBIDDEN")


async def test_role_configuration_get_put(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    conf = await success(await d.call("GET", "/agents/implementer/configuration", d.reader))
    assert {"role", "default_model", "available_models", "capabilities", "preferences", "constraints",
            "escalation_rules"} <= set(conf)
    assert await success(await d.call("GET", "/configuration/agents/implementer", d.reader)) == conf
    await failure(await d.call("GET", "/agents/nobody/configuration", d.reader), 404, "NOT_FOUND")
    change = {"preferences": {"temperature": 0.8, "max_tokens": 2500, "timeout": 600},
              "escalation_rules": {"security_threshold": 0.9, "complexity_threshold": 0.8}}
    await failure(await d.call("PUT", "/agents/implementer/configuration", json=change), 403, "FORBIDDEN")
    new = await success(await d.call("PUT", "/agents/implementer/configuration", d.admin, json=change))
    assert new["preferences"] == {"temperature": 0.8, "max_tokens": 2500, "timeout": 600}
    assert new["escalation_rules"]["security_threshold"] == 0.9
    err = await failure(await d.call("PUT", "/agents/implementer/configuration", d.admin,
                                     json={"preferences": {"temperature": "hot"}}), 422, "VALIDATION_ERROR")
    assert "temperature" in err["details"]["field"]
    assert (await success(await d.call("GET", "/agents/implementer/configuration")))["preferences"][
        "temperature"] == 0.8


async def test_system_configuration(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    conf = await success(await d.call("GET", "/configuration", d.reader))
    assert {"system", "models", "escalation", "roles", "writable"} <= set(conf)
    assert conf["escalation"]["cost_threshold"] == 0.05 and conf["models"]["timeout"] == 300
    await failure(await d.call("PUT", "/configuration", json={"models": {"timeout": 600}}), 403, "FORBIDDEN")
    new = await success(await d.call("PUT", "/configuration", d.admin, json={
        "models": {"timeout": 600}, "escalation": {"cost_threshold": 0.25, "max_revisions": 3}}))
    assert new["models"]["timeout"] == 600 and new["escalation"]["cost_threshold"] == 0.25
    assert all(r["escalation_rules"]["max_revisions"] == 3 for r in new["roles"].values())
    critic = await success(await d.call("GET", "/agents/critic/configuration"))
    assert critic["escalation_rules"]["cost_threshold"] == 0.25 and critic["preferences"]["timeout"] == 600
    # The seed's example names settings that are the config file's: refused by name, nothing changes.
    err = await failure(await d.call("PUT", "/configuration", d.admin, json={
        "models": {"timeout": 900}, "escalation": {"auto_approve_threshold": 0.9},
        "monitoring": {"alert_enabled": True}}), 422, "VALIDATION_ERROR")
    assert {e["field"] for e in err["details"]["errors"]} == {"escalation.auto_approve_threshold",
                                                              "monitoring.alert_enabled"}
    for value in JSON_VALUES:
        if _same(value, [0, 1.5]):
            continue
        err = await failure(await d.call("PUT", "/configuration", d.admin,
                                         json={"escalation": {"cost_threshold": value}}), 422, "VALIDATION_ERROR")
        assert err["details"]["field"] == "escalation.cost_threshold", err
    await failure(await d.call("PUT", "/configuration", d.admin, json={"models": 5}), 422, "VALIDATION_ERROR")
    assert (await success(await d.call("GET", "/configuration")))["models"]["timeout"] == 600


# -- every JSON type in every body field ----------------------------------------------------------
# field -> the values of JSON_VALUES it accepts (the rest must be refused).
TASK_FIELDS = {"title": ["x"], "description": [None, "x"], "type": [], "priority": [None],
               "assignee_role": [None], "files_to_modify": [None, [], ["x"]],
               "acceptance_criteria": [None, [], ["x"]], "dependencies": [None, [], ["x"]],
               "tags": [None, [], ["x"]], "deadline": [None], "metadata": [None, {}, {"a": 1}], "start": [True]}


@pytest.mark.parametrize("field", sorted(TASK_FIELDS))
async def test_create_task_field_types(aiohttp_client, tmp_path, field):
    d = await start(aiohttp_client, tmp_path)
    for value in JSON_VALUES:
        if _same(value, TASK_FIELDS[field]):
            continue
        err = await failure(await d.call("POST", "/tasks", json={**SEED_TASK, field: value}), 422,
                            "VALIDATION_ERROR")
        assert err["details"]["field"] == field, (field, value, err)
    assert (await success(await d.call("GET", "/tasks")))["pagination"]["total"] == 0


BODIES = {
    "submit": ("POST", "/agents/implementer/submit", {"task_id": "{task}", "context": {}, "preferences": {}},
               {"task_id": ["x"], "context": [None, {}, {"a": 1}], "preferences": [None, {}, {"a": 1}]}),
    "escalation": ("POST", "/escalation/submit", {"task_id": "{task}", "reason": "why"},
                   {"task_id": ["x"], "reason": ["x"], "original_model": [None], "target_model": [None],
                    "context": [None, {}, {"a": 1}], "estimated_cost": [None, 0, 1.5], "priority": [None]}),
    "update": ("PUT", "/tasks/{task}", {"feedback": "ok"},
               {"title": ["x"], "description": [None, "x"], "priority": [], "tags": [None, [], ["x"]],
                "acceptance_criteria": [None, [], ["x"]], "deadline": [None], "metadata": [None, {}, {"a": 1}],
                "results": JSON_VALUES, "feedback": [None, "x"], "status": []}),
    "select": ("POST", "/models/select", {"task_description": "do it"},
               {"task_description": ["x"], "task_type": [None], "files_to_modify": [None, [], ["x"]],
                "complexity_indicators": [None, {}, {"a": 1}], "context": [None, {}, {"a": 1}],
                "preferences": [None, {}, {"a": 1}]}),
}


def _same(value, accepted):
    return any(value == v and type(value) is type(v) for v in accepted)


@pytest.mark.parametrize("name", sorted(BODIES))
async def test_body_field_types(aiohttp_client, tmp_path, name):
    d = await start(aiohttp_client, tmp_path)
    task = await _task(d)
    method, path, good, fields = BODIES[name]
    path = path.replace("{task}", task["id"])
    good = {k: (task["id"] if v == "{task}" else v) for k, v in good.items()}
    for field, accepted in fields.items():
        for value in JSON_VALUES:
            if _same(value, accepted):
                continue
            resp = await d.call(method, path, json={**good, field: value})
            err = await failure(resp, 422, "VALIDATION_ERROR")
            assert err["details"]["field"] == field, (field, value, err)
    after = await success(await d.call("GET", f"/tasks/{task['id']}"))
    assert after["status"] == "pending" and after["escalations"] == [] and after["feedback"] is None
    assert after["updated_at"] == task["updated_at"]


async def test_decision_field_types(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    task = await _task(d)
    eid = (await success(await d.call("POST", "/escalation/submit", json={"task_id": task["id"], "reason": "r"})))[
        "escalation_id"]
    for field, accepted in (("decision", []), ("reason", [None, "x"]), ("approver_comments", [None, "x"])):
        for value in JSON_VALUES:
            if _same(value, accepted):
                continue
            body = {"decision": "approved", field: value}
            err = await failure(await d.call("POST", f"/escalation/{eid}/approve", d.admin, json=body), 422,
                                "VALIDATION_ERROR")
            assert err["details"]["field"] == field
    assert (await success(await d.call("GET", f"/escalation/{eid}/status")))["status"] == "pending_approval"


ROLE_FIELDS = {"default_model": [], "available_models": [], "capabilities": [[], ["x"]],
               "preferences": [{}], "constraints": [{}, {"a": 1}], "escalation_rules": [{}]}


async def test_role_configuration_field_types(aiohttp_client, tmp_path):
    """Refused in Kyros's names (the config validator's models/escalation renamed back)."""
    d = await start(aiohttp_client, tmp_path)
    before = await success(await d.call("GET", "/agents/architect/configuration"))
    for field, accepted in ROLE_FIELDS.items():
        for value in JSON_VALUES:
            if _same(value, accepted):
                continue
            err = await failure(await d.call("PUT", "/agents/architect/configuration", d.admin, json={field: value}),
                                422, "VALIDATION_ERROR")
            assert err["details"]["field"].split(".")[0] == field, (field, value, err)
    assert await success(await d.call("GET", "/agents/architect/configuration")) == before


async def test_cancel_reason_types(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    task = await _task(d)
    for value in JSON_VALUES:
        if _same(value, [None, "x"]):
            continue
        err = await failure(await d.call("DELETE", f"/tasks/{task['id']}", json={"reason": value}), 422,
                            "VALIDATION_ERROR")
        assert err["details"]["field"] == "reason"
    assert (await success(await d.call("GET", f"/tasks/{task['id']}")))["status"] == "pending"


async def test_escalation_rate_in_the_metrics(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    first = await _task(d)
    await _task(d, d.other)
    await success(await d.call("POST", "/escalation/submit", json={"task_id": first["id"], "reason": "hard"}))
    data = await success(await d.call("GET", "/monitoring/metrics?period=1h&metrics=escalation_rate", d.admin))
    assert data["metrics"]["escalation_rate"]["data"] == [50.0]  # one escalation of two tasks, every key's
    day = await success(await d.call("GET", "/monitoring/metrics?period=7d&granularity=1d&metrics=escalation_rate",
                                     d.admin))
    assert day["metrics"]["escalation_rate"]["data"][-1] == 50.0 and day["metrics"]["escalation_rate"]["data"][0] is None


async def test_model_selection_refuses_indicators_and_budgets_of_the_wrong_type(aiohttp_client, tmp_path):
    """Each indicator the choice reads, and the budget, of the type it is read as: "true" was read
    as false, "3" ignored, -1 and 1e308 echoed as the budget, "100" replaced by the daemon's."""
    d = await start(aiohttp_client, tmp_path)
    good = {"task_description": "Implement OAuth2 authentication", "task_type": "implementation"}
    ind, ctx = "complexity_indicators", "context"
    for where, name, value in ((ind, "security_sensitive", "true"), (ind, "security_sensitive", 1),
                               (ind, "business_critical", "yes"), (ind, "file_count", "3"),
                               (ind, "file_count", -1), (ind, "file_count", 2.5), (ind, "service_count", True),
                               (ind, "complexity", "extreme"), (ind, "complexity", 3),
                               (ctx, "budget_remaining", -1), (ctx, "budget_remaining", 1e308),
                               (ctx, "budget_remaining", "100"), (ctx, "budget_remaining", True)):
        resp = await d.call("POST", "/models/select", json={**good, where: {name: value}})
        err = await failure(resp, 422, "VALIDATION_ERROR")
        assert err["details"]["field"] == f"{where}.{name}", (name, value, err)
        assert name in err["details"]["issue"]
    # The values of the right type are read: an explicit false beats the security words, a budget
    # of 0 cannot pay for a stronger model, and is the budget the answer reports.
    data = await success(await d.call("POST", "/models/select", json={
        **good, ind: {"security_sensitive": False, "business_critical": False, "file_count": 0, "service_count": 0,
                      "complexity": "low"}, ctx: {"budget_remaining": 0}}))
    assert data["reasoning"]["security_sensitive"] is False and data["reasoning"]["budget_remaining"] == 0
    rich = await success(await d.call("POST", "/models/select", json={
        **good, ind: {"security_sensitive": True, "file_count": 3}, ctx: {"budget_remaining": 100.0}}))
    assert rich["reasoning"]["security_sensitive"] is True and rich["reasoning"]["budget_remaining"] == 100.0
    assert rich["reasoning"]["complexity_score"] > data["reasoning"]["complexity_score"]  # file_count counted


async def test_a_finished_task_takes_only_its_outcome(aiohttp_client, tmp_path):
    """Once completed (or cancelled), results and feedback may still change (the seed completes a
    task with both; a review's feedback may come later); the rest is a 409 naming the field, and
    nothing changes (the title was changed after completion)."""
    d = await start(aiohttp_client, tmp_path)
    task = await _task(d)
    path = f"/tasks/{task['id']}"
    done = await success(await d.call("PUT", path, json={"status": "completed", "results": {"tests_added": 6},
                                                         "feedback": "All tests passing."}))
    assert done["status"] == "completed"
    for field, value in (("title", "changed after completion"), ("description", "d"), ("priority", "low"),
                         ("tags", ["x"]), ("deadline", "2030-01-01T00:00:00Z"), ("metadata", {"a": 1}),
                         ("acceptance_criteria", ["c"])):
        err = await failure(await d.call("PUT", path, json={field: value, "feedback": "sneaked in"}), 409,
                            "VALIDATION_ERROR")
        assert err["details"]["field"] == field and err["details"]["status"] == "completed", err
    after = await success(await d.call("GET", path))
    assert {k: after[k] for k in ("title", "feedback", "updated_at", "tags")} == {
        k: done[k] for k in ("title", "feedback", "updated_at", "tags")}
    # The outcome, with or without the status it already has.
    later = await success(await d.call("PUT", path, json={"feedback": "Reviewed: fine", "results": {"score": 95}}))
    assert later["feedback"] == "Reviewed: fine" and later["results"] == {"score": 95}
    again = await success(await d.call("PUT", path, json={"status": "completed", "feedback": "Final"}))
    assert again["feedback"] == "Final" and again["status"] == "completed"
    # A cancelled task alike.
    other = await _task(d)
    await success(await d.call("DELETE", f"/tasks/{other['id']}"))
    err = await failure(await d.call("PUT", f"/tasks/{other['id']}", json={"title": "t"}), 409, "VALIDATION_ERROR")
    assert err["details"]["field"] == "title"


async def test_a_rejected_manual_escalation_declines_the_upgrade_and_one_waits_at_a_time(aiohttp_client, tmp_path):
    """The seed's escalation is a request for a stronger model: rejected, the task goes on as it
    was (pending here, then on the role's own model).  A second request while one waits is
    ESCALATION_REJECTED naming the waiting one (both were accepted)."""
    d = await start(aiohttp_client, tmp_path)
    task = await success(await d.call("POST", "/tasks", json={"title": "rej", "type": "review"}), 201)
    tid = task["id"]
    first = await success(await d.call("POST", "/escalation/submit", json={"task_id": tid, "reason": "r",
                                                                           "target_model": "opus"}))
    eid = first["escalation_id"]
    err = await failure(await d.call("POST", "/escalation/submit", json={"task_id": tid, "reason": "again"}), 400,
                        "ESCALATION_REJECTED")
    assert eid in err["message"] and err["details"]["escalation_id"] == eid
    rejected = await success(await d.call("POST", f"/escalation/{eid}/approve", d.admin,
                                          json={"decision": "rejected", "reason": "not worth it"}))
    assert rejected["status"] == "rejected"
    after = await success(await d.call("GET", f"/tasks/{tid}"))
    assert after["status"] == "pending" and after["error"] is None
    assert [e["status"] for e in after["escalations"]] == ["rejected"]
    # Decided, it no longer holds the place: another may be asked for, and rejected too.
    second = await success(await d.call("POST", "/escalation/submit", json={"task_id": tid, "reason": "r2"}))
    await success(await d.call("POST", f"/escalation/{second['escalation_id']}/approve", d.admin,
                               json={"decision": "rejected"}))
    sub = await success(await d.call("POST", "/agents/critic/submit", json={"task_id": tid}))
    assert sub["model_assigned"] == "sonnet"  # the role's default, not the rejected target (opus)
    done = await _until(d, tid)
    assert done["status"] == "completed" and [s["kind"] for s in done["steps"]][0] == "run"
