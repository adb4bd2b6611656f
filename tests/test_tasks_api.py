"""The native task API (/api/tasks, /roles, /workflows, /escalations, /tasks/costs): every bad
input a 400 (or 404/409) in the one error envelope that changes nothing, every JSON type in every
field, tenancy (another key's ids answer 404), role changes at run time (validated, stored,
audited, surviving a restart), costs, and the task events owned by the task's key."""

from __future__ import annotations

import pytest

from j1mskyd.app import build_app
from tests.conftest import auth_config, bearer, bootstrap_key, make_config
from tests.taskkit import events_of, wait_task

JSON_VALUES = [None, True, 0, 1.5, "", "x", [], ["x"], [1], {}, {"a": 1}]
BASE = {"title": "T", "type": "review", "start": False}


def _valid(field, value):
    """Which JSON values each field of POST /tasks takes (None: the field's default)."""
    lists = ("files_to_modify", "acceptance_criteria", "dependencies", "tags")
    return {
        "title": isinstance(value, str) and value.strip() != "",
        "description": value is None or isinstance(value, str),
        "type": value in (None, "review") and value is not None,
        "priority": value is None,
        "assignee_role": value is None,
        "deadline": value is None,
        "metadata": value is None or isinstance(value, dict),
        "start": value is None or value is True,
        **{name: value is None or value == [] or value == ["x"] for name in lists},
    }[field]


async def _count(client, path="/api/tasks"):
    return (await (await client.get(path)).json())["pagination"]["total"]


async def _assert_refused(resp, status, field=None):
    body = await resp.json()
    assert resp.status == status, body
    assert body["success"] is False and body["error"]["code"] == status and body["error"]["request_id"]
    if field is not None:
        assert field in [d["field"] for d in body["error"]["details"]], body


FIELDS = ["title", "description", "type", "priority", "assignee_role", "files_to_modify", "acceptance_criteria",
          "dependencies", "tags", "deadline", "metadata", "start"]


@pytest.mark.parametrize("field", FIELDS)
async def test_every_json_type_in_every_field_of_a_new_task(aiohttp_client, tmp_path, field):
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    made = 0
    for value in JSON_VALUES:
        body = {**BASE, field: value}
        if field == "start" and value is None:
            body["type"] = "review"
        resp = await client.post("/api/tasks", json=body)
        if _valid(field, value):
            assert resp.status == 201, (field, value, await resp.text())
            made += 1
        else:
            await _assert_refused(resp, 400, field)
        assert await _count(client) == made  # a refusal created nothing
    tasks = await (await client.get("/api/tasks?limit=200")).json()
    for t in tasks["tasks"]:  # the ones made with start (true or default) ran; the others wait
        await wait_task(client, t["id"], ("pending", "completed"))


@pytest.mark.parametrize("body", [[], "x", 1, None, True])
async def test_a_body_that_is_not_an_object_is_refused(client, body):
    for method, path in (("POST", "/api/tasks"), ("POST", "/api/escalations")):
        resp = await client.request(method, path, json=body)
        await _assert_refused(resp, 400)
    assert await _count(client) == 0


async def test_deadline_and_lists_are_stored_as_given(client):
    resp = await client.post("/api/tasks", json={**BASE, "deadline": "2024-01-20T23:59:59Z", "tags": ["a", "b"],
                                                "files_to_modify": ["x.py"], "metadata": {"estimated_hours": 8},
                                                "priority": "critical", "assignee_role": "critic"})
    task = await resp.json()
    assert task["deadline"] == "2024-01-20T23:59:59Z" and task["tags"] == ["a", "b"]
    assert task["metadata"]["estimated_hours"] == 8 and task["priority"] == "critical"
    assert task["assignee_role"] == "critic" and task["created_by"] == "anonymous"
    bad = await client.post("/api/tasks", json={**BASE, "deadline": "tomorrow"})
    await _assert_refused(bad, 400, "deadline")


_CLEARED = {"tags": [], "acceptance_criteria": [], "metadata": {}}  # what null leaves


def _shown(field, task):
    """The field as the task view shows it (metadata without the figures the view adds)."""
    if field == "metadata":
        return {k: v for k, v in task["metadata"].items() if k not in ("actual_hours", "model_used", "cost")}
    return task[field]


@pytest.mark.parametrize("field, good", [
    ("title", "New"), ("description", None), ("priority", "high"), ("tags", ["t"]), ("deadline", None),
    ("metadata", {"k": 1}), ("acceptance_criteria", []), ("feedback", "ok"), ("results", [1, "x"]),
])
async def test_every_json_type_in_every_field_of_a_change(client, field, good):
    task = await (await client.post("/api/tasks", json=BASE)).json()
    for value in JSON_VALUES:
        resp = await client.put(f"/api/tasks/{task['id']}", json={field: value})
        after = await (await client.get(f"/api/tasks/{task['id']}")).json()
        if resp.status == 200:
            assert _shown(field, after) == (value if value is not None else _CLEARED.get(field)), (field, value)
        else:
            await _assert_refused(resp, 400, field)
            assert after["updated_at"] == task["updated_at"] or after[field] != value
    resp = await client.put(f"/api/tasks/{task['id']}", json={field: good})
    assert resp.status == 200


async def test_a_change_of_status_takes_only_completed_or_cancelled(client):
    task = await (await client.post("/api/tasks", json=BASE)).json()
    for value in [*JSON_VALUES, "in_progress", "failed", "pending"]:
        resp = await client.put(f"/api/tasks/{task['id']}", json={"status": value})
        await _assert_refused(resp, 400, "status")
    empty = await client.put(f"/api/tasks/{task['id']}", json={})
    await _assert_refused(empty, 400, "body")
    assert (await (await client.get(f"/api/tasks/{task['id']}")).json())["status"] == "pending"
    done = await client.put(f"/api/tasks/{task['id']}", json={"status": "cancelled", "reason": "no"})
    assert (await done.json())["status"] == "cancelled"


@pytest.mark.parametrize("field", ["role", "context", "preferences"])
async def test_every_json_type_in_every_field_of_a_submission(client, field):
    task = await (await client.post("/api/tasks", json=BASE)).json()
    for value in JSON_VALUES:
        body = {"role": "critic", field: value}
        if field == "role" and value is None:
            body.pop("role")
        resp = await client.post(f"/api/tasks/{task['id']}/submit", json=body)
        ok = {"role": False, "context": value is None or isinstance(value, dict),
              "preferences": value is None or isinstance(value, dict)}[field]  # unknown preferences: ignored
        if ok:
            assert resp.status == 200, (value, await resp.text())
            await wait_task(client, task["id"])
            task = await (await client.post("/api/tasks", json=BASE)).json()
        else:
            await _assert_refused(resp, 400, field)
            assert (await (await client.get(f"/api/tasks/{task['id']}")).json())["status"] == "pending"


@pytest.mark.parametrize("pref, bad", [("model", "gpt-9"), ("model", 1), ("temperature", 3), ("temperature", "1"),
                                       ("max_tokens", 1.5), ("max_tokens", 0), ("timeout", 0), ("timeout", True)])
async def test_bad_preferences_are_refused_by_name(client, pref, bad):
    task = await (await client.post("/api/tasks", json=BASE)).json()
    resp = await client.post(f"/api/tasks/{task['id']}/submit", json={"role": "critic", "preferences": {pref: bad}})
    await _assert_refused(resp, 400, f"preferences.{pref}")


async def test_a_preferred_model_outside_the_roles_models_is_refused(client):
    task = await (await client.post("/api/tasks", json=BASE)).json()
    resp = await client.post(f"/api/tasks/{task['id']}/submit",
                             json={"role": "critic", "preferences": {"model": "k2p5"}})
    await _assert_refused(resp, 400, "preferences.model")
    other = await client.post(f"/api/tasks/{task['id']}/submit", json={"role": "architect"})
    body = await other.json()
    await _assert_refused(other, 400, "role")
    assert "critic, integrator" in body["error"]["details"][0]["message"]


@pytest.mark.parametrize("field", ["task_id", "reason", "original_model", "target_model", "context",
                                   "estimated_cost", "priority"])
async def test_every_json_type_in_every_field_of_an_escalation(client, field):
    task = await (await client.post("/api/tasks", json=BASE)).json()
    made = 0
    for value in JSON_VALUES:
        body = {"task_id": task["id"], "reason": "why", field: value}
        resp = await client.post("/api/escalations", json=body)
        ok = {"task_id": False, "reason": value == "x", "original_model": value is None,
              "target_model": value is None, "context": value is None or isinstance(value, dict),
              "estimated_cost": value is None or value == 0 or value == 1.5, "priority": value is None}[field]
        if field == "task_id" and value == "x":
            await _assert_refused(resp, 404)
        elif ok:
            assert resp.status == 201, (value, await resp.text())
            made += 1
            # Decided, so that the next may be asked for (one waits for a person at a time).
            decided = await client.post(f"/api/escalations/{(await resp.json())['escalation_id']}/decision",
                                        json={"decision": "rejected"})
            assert decided.status == 200
        else:
            await _assert_refused(resp, 400, field)
        assert await _count(client, "/api/escalations") == made


async def test_every_json_type_in_a_decision(client):
    task = await (await client.post("/api/tasks", json=BASE)).json()
    esc = await (await client.post("/api/escalations", json={"task_id": task["id"], "reason": "r"})).json()
    path = f"/api/escalations/{esc['escalation_id']}/decision"
    for field in ("decision", "reason", "approver_comments"):
        for value in JSON_VALUES:
            if field == "decision" or not (value is None or isinstance(value, str)):
                body = {"decision": "approved", field: value}
                resp = await client.post(path, json=body)
                await _assert_refused(resp, 400, field)
    assert (await (await client.get(f"/api/escalations/{esc['escalation_id']}")).json())["status"] == \
        "pending_approval"
    missing = await client.post("/api/escalations/esc_nope/decision", json={"decision": "approved"})
    await _assert_refused(missing, 404)


@pytest.mark.parametrize("query, field", [
    ("status=nope", "status"), ("priority=urgent", "priority"), ("sort_by=title", "sort_by"),
    ("sort_order=up", "sort_order"), ("limit=0", "limit"), ("limit=201", "limit"), ("limit=x", "limit"),
    ("offset=-1", "offset"), ("limit=1_0", "limit"), ("limit=%2B5", "limit"), ("limit=%EF%BC%95", "limit"),
    ("offset=%EF%BC%91", "offset"),
    # One condition per tag: ~1,000 of them went past sqlite's expression depth (a 500).  No task
    # holds more than 100.
    ("tags=" + ",".join(["t"] * 101), "tags"), ("tags=" + ",".join(["t"] * 1000), "tags"),
])
async def test_bad_list_queries_are_refused_by_name(client, query, field):
    await _assert_refused(await client.get(f"/api/tasks?{query}"), 400, field)


@pytest.mark.parametrize("query, field", [("status=open", "status"), ("from_date=yesterday", "from_date"),
                                          ("limit=1000", "limit")])
async def test_bad_escalation_queries_are_refused_by_name(client, query, field):
    await _assert_refused(await client.get(f"/api/escalations?{query}"), 400, field)


@pytest.mark.parametrize("query, field", [("period=2w", "period"), ("group_by=day", "group_by")])
async def test_bad_cost_queries_are_refused_by_name(client, query, field):
    await _assert_refused(await client.get(f"/api/tasks/costs?{query}"), 400, field)


async def test_listing_filters_sorts_and_pages(client):
    for i, (priority, tags) in enumerate([("low", ["a"]), ("critical", ["a", "b"]), ("medium", ["b"])]):
        await client.post("/api/tasks", json={**BASE, "title": f"t{i}", "priority": priority, "tags": tags})
    page = await (await client.get("/api/tasks?sort_by=priority&sort_order=desc&limit=2")).json()
    assert [t["priority"] for t in page["tasks"]] == ["critical", "medium"]
    assert page["pagination"] == {"total": 3, "limit": 2, "offset": 0, "has_more": True}
    tagged = await (await client.get("/api/tasks?tags=a,b")).json()
    assert [t["title"] for t in tagged["tasks"]] == ["t1"]
    most = await (await client.get("/api/tasks?tags=" + ",".join(["a"] * 99 + ["b"]))).json()  # as many as a task holds
    assert [t["title"] for t in most["tasks"]] == ["t1"]
    low = await (await client.get("/api/tasks?priority=low&status=pending&type=review")).json()
    assert [t["title"] for t in low["tasks"]] == ["t0"]
    assert set(low["tasks"][0]) == {"id", "title", "status", "type", "priority", "assignee_role", "created_at",
                                    "updated_at", "deadline", "progress"}


async def test_unknown_ids_answer_404_in_the_envelope(client):
    for method, path in (("GET", "/api/tasks/task_0"), ("PUT", "/api/tasks/task_0"),
                         ("DELETE", "/api/tasks/task_0"), ("POST", "/api/tasks/task_0/submit"),
                         ("GET", "/api/escalations/esc_0"), ("GET", "/api/roles/nobody"),
                         ("GET", "/api/roles/nobody/status"), ("PUT", "/api/roles/nobody")):
        body = {"role": "critic"} if path.endswith("submit") else \
            {"title": "x", "temperature": 0.5} if method == "PUT" and "roles" not in path else \
            {"temperature": 0.5} if method == "PUT" else None
        resp = await client.request(method, path, json=body)
        await _assert_refused(resp, 404)
    task = await (await client.get("/api/tasks/task_0")).json()
    assert task["error"]["type"] == "TASK_NOT_FOUND"


# -- roles ---------------------------------------------------------------------------------------
async def test_roles_and_workflows_are_listed_from_the_config(client):
    roles = (await (await client.get("/api/roles")).json())["roles"]
    assert [r["role"] for r in roles] == ["architect", "implementer", "critic", "integrator"]
    implementer = await (await client.get("/api/roles/implementer")).json()
    assert implementer["default_model"] == "k2p5" and implementer["available_models"] == ["k2p5", "sonnet", "opus"]
    assert implementer["preferences"] == {"temperature": 0.7, "max_tokens": 2000, "timeout": 300.0}
    assert implementer["constraints"] == {"max_files_per_task": 10}
    assert implementer["escalation_rules"]["cost_threshold"] == 0.05
    assert implementer["escalation_rules"]["max_revisions"] == 2
    workflows = (await (await client.get("/api/workflows")).json())["workflows"]
    assert workflows == {"implementation": ["architect", "implementer", "critic", "integrator"],
                         "review": ["critic", "integrator"], "design": ["architect", "critic", "integrator"],
                         "testing": ["implementer", "critic"]}
    status = await (await client.get("/api/roles/critic/status")).json()
    assert status["role"] == "critic" and status["active_tasks"] == 0 and status["success_rate"] is None


@pytest.mark.parametrize("patch, field", [
    ({"temperature": "hot"}, "temperature"), ({"temperature": 3}, "temperature"),
    ({"default_model": "gpt-9"}, "default_model"), ({"models": []}, "models"), ({"models": ["gpt-9"]}, "models"),
    ({"default_model": "opus", "models": ["k2p5"]}, "default_model"), ({"escalation": 1}, "escalation"),
    ({"escalation": {"cost_threshold": -1}}, "escalation.cost_threshold"),
    ({"escalation": {"nope": 1}}, "escalation.nope"), ({"constraints": []}, "constraints"),
    ({"preferences": {"timeout": 0}}, "preferences.timeout"), ({"preferences": {"colour": 1}}, "preferences.colour"),
    ({"escalation_rules": {"cost_threshold": "x"}}, "escalation_rules.cost_threshold"),
    ({"available_models": ["gpt-9"]}, "available_models"), ({"timeout": 5, "preferences": {"timeout": 6}}, "timeout"),
    ({"preferences": 1}, "preferences"), ({"whatever": 1}, "whatever"), ({}, "body"), ({"enabled": "yes"}, "enabled"),
])
async def test_a_bad_role_change_is_refused_by_name_and_changes_nothing(client, patch, field):
    before = await (await client.get("/api/roles/implementer")).json()
    resp = await client.put("/api/roles/implementer", json=patch)
    await _assert_refused(resp, 400, field)
    assert await (await client.get("/api/roles/implementer")).json() == before


async def test_a_role_change_is_applied_stored_audited_and_survives_a_restart(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])
    resp = await client.put("/api/roles/implementer", headers=admin, json={
        "default_model": "sonnet", "preferences": {"temperature": 0.2}, "escalation_rules": {"cost_threshold": 1}})
    assert resp.status == 200, await resp.text()
    role = await resp.json()
    assert role["default_model"] == "sonnet" and role["preferences"]["temperature"] == 0.2
    assert role["escalation_rules"]["cost_threshold"] == 1 and role["changed_at_runtime"] is True
    audit = await (await client.get("/api/security/audit?event=config.change", headers=admin)).json()
    [entry] = [e for e in audit["data"] if (e["resource"] or {}).get("type") == "role"]
    assert entry["resource"]["id"] == "implementer" and entry["api_key_id"] == bootstrap_key(cfg)["key_id"]
    assert entry["details"]["change"]["default_model"] == "sonnet"
    # A second change merges over the first.
    await client.put("/api/roles/implementer", headers=admin, json={"escalation": {"max_revisions": 5}})
    await client.close()
    client = await aiohttp_client(build_app(cfg))
    role = await (await client.get("/api/roles/implementer", headers=admin)).json()
    assert role["default_model"] == "sonnet" and role["escalation_rules"]["cost_threshold"] == 1
    assert role["escalation_rules"]["max_revisions"] == 5 and role["preferences"]["temperature"] == 0.2
    task = await (await client.post("/api/tasks", headers=admin, json={**BASE, "type": "testing",
                                                                         "start": True})).json()
    assert task["steps"][0]["model"] == "sonnet"  # the next step uses the changed role


# -- tenancy ---------------------------------------------------------------------------------------
async def _two_keys(client, admin):
    keys = []
    for name in ("a", "b"):
        resp = await client.post("/api/keys", headers=admin, json={"name": name,
                                                                    "scopes": ["agents:read", "agents:write",
                                                                               "billing:read"]})
        assert resp.status == 201, await resp.text()
        keys.append(await resp.json())
    return [bearer(k["token"]) for k in keys], [k["key_id"] for k in keys]


async def test_another_keys_tasks_and_escalations_answer_404(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])
    (a, b), (a_id, _) = await _two_keys(client, admin)
    task = await (await client.post("/api/tasks", headers=a, json=BASE)).json()
    esc = await (await client.post("/api/escalations", headers=a, json={"task_id": task["id"], "reason": "r"})).json()
    tid, eid = task["id"], esc["escalation_id"]
    for method, path, body in (("GET", f"/api/tasks/{tid}", None), ("PUT", f"/api/tasks/{tid}", {"title": "x"}),
                               ("DELETE", f"/api/tasks/{tid}", None),
                               ("POST", f"/api/tasks/{tid}/submit", {"role": "critic"}),
                               ("POST", "/api/escalations", {"task_id": tid, "reason": "r"}),
                               ("GET", f"/api/escalations/{eid}", None)):
        resp = await client.request(method, path, headers=b, json=body)
        await _assert_refused(resp, 404)
    # B lists nothing of A's; A its own; the admin everyone's.
    assert await _count_as(client, "/api/tasks", b) == 0 and await _count_as(client, "/api/tasks", a) == 1
    assert await _count_as(client, "/api/escalations", b) == 0
    assert await _count_as(client, "/api/escalations?task_id=" + tid, a) == 1
    assert await _count_as(client, "/api/tasks", admin) == 1
    # Deciding needs admin:write (the route's scope): a key's own escalation too.
    await _assert_refused(await client.post(f"/api/escalations/{eid}/decision", headers=a,
                                            json={"decision": "approved"}), 403)
    ok = await client.post(f"/api/escalations/{eid}/decision", headers=admin, json={"decision": "rejected"})
    assert (await ok.json())["decided_by"] == bootstrap_key(cfg)["key_id"]
    # The task's events are A's: B does not see them, A does.
    assert await events_of(client, "task.", headers=b) == []
    assert [e["event"] for e in await events_of(client, "task.", headers=a)] == ["task.created"]
    assert [e["event"] for e in await events_of(client, "escalation.", headers=a)] == [
        "escalation.submitted", "escalation.rejected"]
    # Changing a role is an admin's.
    await _assert_refused(await client.put("/api/roles/critic", headers=a, json={"temperature": 0.1}), 403)
    assert (await (await client.get(f"/api/tasks/{tid}", headers=a)).json())["created_by"] == a_id


async def _count_as(client, path, headers):
    return (await (await client.get(path, headers=headers)).json())["pagination"]["total"]


# -- costs and webhooks ----------------------------------------------------------------------------
async def test_costs_add_up_by_every_grouping(client):
    for kind in ("testing", "review"):
        task = await (await client.post("/api/tasks", json={**BASE, "type": kind, "start": True})).json()
        await wait_task(client, task["id"])
    tasks = (await (await client.get("/api/tasks")).json())["tasks"]
    total = 0.0
    for t in tasks:
        total += (await (await client.get(f"/api/tasks/{t['id']}")).json())["cost"]["charged"]
    for group in ("model", "role", "task_type", "user"):
        costs = await (await client.get(f"/api/tasks/costs?period=1d&group_by={group}")).json()
        breakdown = costs["cost_breakdown"][f"by_{group}"]
        assert costs["total_cost"] == pytest.approx(total) and costs["period"] == "1d"
        assert sum(v["cost"] for v in breakdown.values()) == pytest.approx(total)
        assert sum(v["percentage"] for v in breakdown.values()) == pytest.approx(100, abs=0.1)
    by_type = (await (await client.get("/api/tasks/costs?group_by=task_type")).json())["cost_breakdown"]
    assert set(by_type["by_task_type"]) == {"testing", "review"}
    assert all(v["tasks"] == 1 for v in by_type["by_task_type"].values())


def test_webhooks_may_subscribe_to_the_task_and_escalation_events():
    from j1mskyd.webhook_request import _events
    events = ["task.created", "task.progress", "task.completed", "task.failed", "task.cancelled",
              "escalation.submitted", "escalation.approved", "escalation.rejected"]
    assert _events(events) == tuple(events)


async def test_the_event_stream_takes_the_task_events_as_types(client):
    resp = await client.get("/api/events?types=task.created")
    assert resp.status == 200


async def test_every_task_route_answers_under_both_prefixes(client):
    for prefix in ("/api", "/api/v1"):
        task = await (await client.post(f"{prefix}/tasks", json=BASE)).json()
        tid = task["id"]
        esc = await (await client.post(f"{prefix}/escalations", json={"task_id": tid, "reason": "r"})).json()
        eid = esc["escalation_id"]
        for method, path, body, status in (
                ("GET", "/tasks", None, 200), ("GET", f"/tasks/{tid}", None, 200),
                ("GET", "/tasks/costs", None, 200), ("PUT", f"/tasks/{tid}", {"feedback": "f"}, 200),
                ("GET", "/roles", None, 200), ("GET", "/roles/critic", None, 200),
                ("GET", "/roles/critic/status", None, 200), ("PUT", "/roles/critic", {"temperature": 0.3}, 200),
                ("GET", "/workflows", None, 200), ("GET", "/escalations", None, 200),
                ("GET", f"/escalations/{eid}", None, 200),
                ("POST", f"/escalations/{eid}/decision", {"decision": "rejected"}, 200),
                ("POST", f"/tasks/{tid}/submit", {"role": "critic"}, 200),
                ("DELETE", f"/tasks/{tid}", None, 200)):
            resp = await client.request(method, prefix + path, json=body)
            assert resp.status == status, (prefix, method, path, await resp.text())


async def test_model_selection_for_kyros_reasons_and_the_budget_left(client, config):
    from j1mskyd.api.common import SERVICES
    from j1mskyd.task_request import parse_model_selection
    tasks = client.app[SERVICES].tasks
    plain = await tasks.select_model(parse_model_selection({"task_description": "rename a variable",
                                                            "task_type": "implementation"}, config))
    assert plain["selected_model"] == "sonnet" and plain["role"] == "architect"  # its first role's default
    assert plain["reasoning"]["security_sensitive"] is False and plain["reasoning"]["business_impact"] == "low"
    assert plain["reasoning"]["chosen_because"] == "the role's default model"
    sensitive = await tasks.select_model(parse_model_selection({
        "task_description": "Implement OAuth2 authentication with SAML integration", "task_type": "testing",
        "files_to_modify": ["auth.py", "security/oauth2.py", "security/saml.py"],
        "complexity_indicators": {"file_count": 3, "service_count": 2, "security_sensitive": True,
                                  "business_critical": True},
        "context": {"budget_remaining": 100.0}}, config))
    assert sensitive["selected_model"] == "sonnet" and sensitive["role"] == "implementer"  # above k2p5
    assert sensitive["reasoning"]["security_sensitive"] is True and sensitive["reasoning"]["business_impact"] == "high"
    assert sensitive["fallback_model"] == "k2p5" and sensitive["estimated_cost"] > 0
    broke = await tasks.select_model(parse_model_selection({
        "task_description": "Implement OAuth2", "task_type": "testing",
        "complexity_indicators": {"security_sensitive": True}, "context": {"budget_remaining": 0.0}}, config))
    assert broke["selected_model"] == "k2p5" and "budget left" in broke["reasoning"]["chosen_because"]


async def test_a_roles_status_counts_its_steps_of_today(client):
    for _ in range(2):
        task = await (await client.post("/api/tasks", json={**BASE, "type": "testing", "start": True})).json()
        await wait_task(client, task["id"])
    status = await (await client.get("/api/roles/critic/status")).json()
    assert status["success_rate"] == 100.0 and status["current_models"] == {"sonnet": 100.0}
    assert status["performance"]["tasks_completed_today"] == 2 and status["performance"]["cost_per_task"] > 0
    assert status["active_tasks"] == 0 and status["queue_length"] == 0 and status["available_agents"] == 2


async def test_an_integer_of_too_many_digits_is_refused_in_plain_words(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    raw = b'{"title": "t", "type": "review", "start": false, "metadata": {"n": -' + b"7" * 5000 + b"}}"
    resp = await client.post("/api/tasks", data=raw, headers={"Content-Type": "application/json"})
    await _assert_refused(resp, 400, "body")
    error = (await resp.json())["error"]
    assert error["type"] == "INVALID_JSON" and error["message"] == (
        "Request body cannot be read: a number has more than 4300 digits")
    assert await _count(client) == 0


@pytest.mark.parametrize("number", [b"1e400", b"-1.5e999", b"9" * 400 + b".0"])
async def test_a_number_beyond_a_float_is_refused_not_stored_as_infinity(aiohttp_client, tmp_path, number):
    # The stdlib read 1e400 as inf: the task was stored, and its metadata sent back as Infinity,
    # which no strict JSON parser (a browser's, jq) reads.
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    raw = b'{"title": "t", "type": "review", "start": false, "metadata": {"n": ' + number + b"}}"
    resp = await client.post("/api/tasks", data=raw, headers={"Content-Type": "application/json"})
    await _assert_refused(resp, 400, "body")
    error = (await resp.json())["error"]
    assert error["type"] == "INVALID_JSON" and error["message"].startswith(
        "Request body cannot be read: a number is too large")
    assert await _count(client) == 0


async def test_a_finished_task_takes_only_its_outcome(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    task = await (await client.post("/api/tasks", json=BASE)).json()
    path = f"/api/tasks/{task['id']}"
    assert (await client.put(path, json={"status": "completed"})).status == 200
    resp = await client.put(path, json={"title": "changed after completion", "tags": ["x"], "feedback": "f"})
    await _assert_refused(resp, 409, "title")
    assert [d["field"] for d in (await resp.json())["error"]["details"]] == ["title", "tags"]
    after = await (await client.get(path)).json()
    assert after["title"] == "T" and after["tags"] == [] and after["feedback"] is None
    resp = await client.put(path, json={"feedback": "reviewed", "results": {"ok": True}})
    assert resp.status == 200 and (await resp.json())["feedback"] == "reviewed"


async def test_a_full_disk_answers_a_client_s_task_change_507_at_once(aiohttp_client, tmp_path):
    # A task made without starting it, changed, or escalated by hand waited for space (11 min
    # in the report), then committed after its client had given up.
    import asyncio

    from j1mskyd.api.common import SERVICES
    from tests.test_store_full import FullDisk

    client = await aiohttp_client(build_app(make_config(tmp_path)))
    task = await (await client.post("/api/tasks", json=BASE)).json()
    store = client.app[SERVICES].store
    disk = store._wconn = FullDisk(store._wconn)
    try:
        for method, path, body in (("POST", "/api/tasks", BASE), ("POST", "/kyros/v1/tasks", {
                "title": "t", "description": "d", "type": "implementation"}),
                ("PUT", f"/api/tasks/{task['id']}", {"title": "new"}),
                ("POST", "/api/escalations", {"task_id": task["id"], "reason": "hard", "target_model": "opus"})):
            resp = await asyncio.wait_for(client.request(method, path, json=body), 10)
            assert resp.status == 507, (path, await resp.text())
    finally:
        disk.full = False
    assert await _count(client) == 1 and (await (await client.get(f"/api/tasks/{task['id']}")).json())["title"] == "T"
