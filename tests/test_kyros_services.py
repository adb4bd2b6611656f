"""Kyros routes over services that need no task: models, webhooks, monitoring; each success
against the seed's example fields, each refusal in the envelope, tenancy (another key's
webhook is NOT_FOUND), and bad bodies (every JSON type in every field) a VALIDATION_ERROR
that changes nothing."""

from __future__ import annotations

import pytest

from j1mskyd.api.common import CONFIG
from tests.kyros_helpers import failure, start, success

JSON_VALUES = [None, True, 0, 1.5, "x", [], ["x"], {}, {"a": 1}]


async def test_models_list_and_one_model(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    data = await success(await d.call("GET", "/models", d.reader))
    assert {"models", "default_model", "escalation_model"} <= set(data)
    assert {"name", "provider", "status", "recommended_usage"} <= set(data["models"][0])
    one = await success(await d.call("GET", "/models/opus", d.reader))
    assert {"name", "provider", "capabilities", "limits", "pricing", "performance"} <= set(one)
    opus = d.client.app[CONFIG].current.models["opus"]
    assert one["pricing"]["currency"] == "USD" and one["pricing"]["per"] == "1k tokens"
    assert (one["pricing"]["input_tokens"], one["pricing"]["output_tokens"]) == (opus.input_per_1k,
                                                                                 opus.output_per_1k)
    await failure(await d.call("GET", "/models/no-such-model", d.reader), 404, "NOT_FOUND")


async def test_webhooks_crud_and_test(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    created = await success(await d.call("POST", "/webhooks", json={
        "url": "http://127.0.0.1:9/kyros-events", "events": ["agent.completed", "budget.warning"],
        "secret": "your_webhook_secret", "description": "Webhook for task and escalation events"}), 201)
    assert {"id", "url", "events", "status", "created_at", "last_triggered"} <= set(created)
    assert created["status"] == "active" and created["last_triggered"] is None
    hook = created["id"]
    listed = await success(await d.call("GET", "/webhooks"))
    assert [h["id"] for h in listed["webhooks"]] == [hook] and listed["total"] == 1
    changed = await success(await d.call("PUT", f"/webhooks/{hook}", json={"events": ["agent.failed"],
                                                                            "status": "paused"}))
    assert changed["status"] == "paused" and changed["events"] == ["agent.failed"]
    assert (await success(await d.call("GET", f"/webhooks/{hook}")))["status"] == "paused"
    tested = await success(await d.call("POST", f"/webhooks/{hook}/test"), 202)
    assert tested["delivery_id"]
    # Another key's webhook is not there for it, whatever it does.
    for method in ("GET", "PUT", "DELETE"):
        await failure(await d.call(method, f"/webhooks/{hook}", d.other, json={"status": "active"}),
                      404, "NOT_FOUND")
    await failure(await d.call("POST", f"/webhooks/{hook}/test", d.other), 404, "NOT_FOUND")
    assert (await success(await d.call("GET", "/webhooks", d.other)))["webhooks"] == []
    await success(await d.call("DELETE", f"/webhooks/{hook}"))
    await failure(await d.call("GET", f"/webhooks/{hook}"), 404, "NOT_FOUND")


@pytest.mark.parametrize("field", ["url", "events", "secret", "description"])
async def test_webhook_bad_fields_are_validation_errors_that_change_nothing(aiohttp_client, tmp_path, field):
    d = await start(aiohttp_client, tmp_path)
    good = {"url": "http://127.0.0.1:9/h", "events": ["agent.completed"], "secret": "a-long-secret",
            "description": "d"}
    hook = (await success(await d.call("POST", "/webhooks", json=good), 201))["id"]
    for value in JSON_VALUES:
        if (field == "description" and (value is None or isinstance(value, str))) or (field == "secret" and value
                                                                                         is None):
            continue  # null and text are descriptions; a null secret is generated
        err = await failure(await d.call("POST", "/webhooks", json={**good, field: value}), 422, "VALIDATION_ERROR")
        assert err["details"]["field"] == field and err["details"]["issue"], err
        assert err["details"]["errors"][0]["field"] == field
        await failure(await d.call("PUT", f"/webhooks/{hook}", json={field: value}), 422, "VALIDATION_ERROR")
    listed = (await success(await d.call("GET", "/webhooks")))["webhooks"]
    assert len(listed) == 1 and {k: listed[0][k] for k in ("url", "events", "description")} == {
        "url": good["url"], "events": good["events"], "description": "d"}


async def test_webhook_status_field_types(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    hook = (await success(await d.call("POST", "/webhooks", json={"url": "http://127.0.0.1:9/h"}), 201))["id"]
    for value in JSON_VALUES + ["stopped"]:
        err = await failure(await d.call("PUT", f"/webhooks/{hook}", json={"status": value}), 422, "VALIDATION_ERROR")
        assert err["details"]["field"] == "status"
        # A new webhook's too (it was ignored, and the webhook registered active).
        err = await failure(await d.call("POST", "/webhooks", json={"url": "http://127.0.0.1:9/h", "status": value}),
                            422, "VALIDATION_ERROR")
        assert err["details"]["field"] == "status"
    assert (await success(await d.call("GET", f"/webhooks/{hook}")))["status"] == "active"
    assert (await success(await d.call("GET", "/webhooks")))["total"] == 1
    paused = await success(await d.call("POST", "/webhooks", json={"url": "http://127.0.0.1:9/p", "status": "paused"}),
                           201)
    assert paused["status"] == "paused" and paused["active"] is False


async def test_health(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    data = await success(await d.call("GET", "/monitoring/health", d.reader))
    assert data["overall_status"] in ("healthy", "degraded", "unhealthy")
    assert {"services", "database", "models"} <= set(data)
    assert data["database"]["status"] == "healthy"
    assert data["models"]["k2p5"]["status"] == "available"


async def test_metrics_periods_granularities_and_filter(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    data = await success(await d.call("GET", "/monitoring/metrics", d.admin))
    assert data["period"] == "24h" and data["granularity"] == "1h" and len(data["buckets"]) == 24
    assert set(data["metrics"]) == {"task_completion_rate", "average_response_time", "cost_per_task",
                                    "escalation_rate"}
    for metric in data["metrics"].values():
        assert {"data", "unit", "average"} <= set(metric) and len(metric["data"]) == 24
    month = await success(await d.call("GET", "/monitoring/metrics?period=30d&metrics=cost_per_task", d.admin))
    assert month["granularity"] == "1d" and len(month["buckets"]) == 30 and set(month["metrics"]) == {"cost_per_task"}
    for query, field in (("granularity=1m", "granularity"), ("granularity=5m", "granularity"),
                         ("period=30d&granularity=1h", "granularity"), ("period=2h", "period"),
                         ("metrics=bogus", "metrics"), ("granularity=1w", "granularity")):
        err = await failure(await d.call("GET", f"/monitoring/metrics?{query}", d.admin), 422, "VALIDATION_ERROR")
        assert err["details"]["field"] == field
    # Every key's series: an admin read, as the native /metrics/timeseries.
    await failure(await d.call("GET", "/monitoring/metrics", d.writer), 403, "FORBIDDEN")


async def test_metrics_count_finished_agents(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    from tests.conftest import wait_status
    admin = d.admin
    spawned = await (await d.client.post("/api/spawn", json={"model": "k2p5", "task": "hi"}, headers=admin)).json()
    await wait_status(_Authed(d.client, admin), spawned["agent_id"])
    data = await success(await d.call("GET", "/monitoring/metrics?period=1h", d.admin))
    assert data["metrics"]["task_completion_rate"]["data"] == [100.0]
    assert data["metrics"]["average_response_time"]["data"][0] is not None


class _Authed:
    """The test client with a key on every GET (wait_status polls with a bare client)."""

    def __init__(self, client, headers):
        self.client, self.headers = client, headers

    async def get(self, path, **kw):
        return await self.client.get(path, headers=self.headers, **kw)


async def test_alerts_from_budget_events(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    assert (await success(await d.call("GET", "/monitoring/alerts", d.reader)))["alerts"] == []
    for limit in ("--5", "\u00b2", "1_0", "0"):  # "--5" and "²" passed isdigit() and failed int(): a 500
        err = await failure(await d.call("GET", f"/monitoring/alerts?limit={limit}", d.reader), 422, "VALIDATION_ERROR")
        assert err["details"]["field"] == "limit"
    events = d.services.events
    await events.emit("budget.notice", {"budget_alert_level": "notice", "budget_utilization_pct": 50.0})
    await events.emit("budget.warning", {"budget_alert_level": "warning", "budget_utilization_pct": 75.0})
    data = await success(await d.call("GET", "/monitoring/alerts", d.reader))
    alerts = data["alerts"]
    assert [a["type"] for a in alerts] == ["budget_warning", "budget_notice"]
    assert {"id", "type", "severity", "status", "message", "details", "created_at"} <= set(alerts[0])
    assert alerts[0]["severity"] == "warning" and alerts[1]["status"] == "resolved"
    only = await success(await d.call("GET", "/monitoring/alerts?severity=info", d.reader))
    assert [a["type"] for a in only["alerts"]] == ["budget_notice"]
    for query, field in (("status=open", "status"), ("severity=fatal", "severity"), ("limit=0", "limit"),
                         ("offset=-1", "offset")):
        err = await failure(await d.call("GET", f"/monitoring/alerts?{query}", d.reader), 422, "VALIDATION_ERROR")
        assert err["details"]["field"] == field
