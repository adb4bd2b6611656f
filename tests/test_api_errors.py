"""The error envelope and request ids, unknown routes and methods, the sunset v3 endpoints,
the /api/v1 alias, and DELETE /agent/{id} (cancel) — all through real HTTP."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from j1mskyd.api.routes import ROUTES
from j1mskyd.app import build_app
from tests.conftest import make_config, wait_status


def assert_envelope(body: dict, status: int, type_: str, request_id: str | None = None) -> dict:
    assert body["success"] is False
    error = body["error"]
    assert error["code"] == status and error["type"] == type_
    assert isinstance(error["message"], str) and error["message"]
    assert error["request_id"].startswith("req_") if request_id is None else error["request_id"] == request_id
    assert "Traceback" not in str(body)
    return error


def slow_config(tmp_path, delay: float = 2.0, **runtime):
    """One agent at a time, each taking ``delay`` seconds: later agents wait in the queue."""
    base = make_config(tmp_path)
    offline = dataclasses.replace(base.providers["offline"], options={"delay": delay})
    return make_config(tmp_path, runtime={"max_concurrency": 1, **runtime}, providers={"offline": offline})


@pytest.fixture
async def slow_client(aiohttp_client, tmp_path):
    return await aiohttp_client(build_app(slow_config(tmp_path)))


async def spawn(client, task: str = "Write a Python function to calculate fibonacci", model: str = "k2p5",
                **extra) -> dict:
    resp = await client.post("/api/spawn", json={"model": model, "task": task, **extra})
    assert resp.status == 200, await resp.text()
    return await resp.json()


# -- request id -------------------------------------------------------------------------------
@pytest.mark.parametrize("rid", ["trace-123", "abc.DEF_9:1", "x" * 128])
async def test_sane_request_id_is_echoed(client, rid):
    resp = await client.get("/api/health", headers={"X-Request-Id": rid})
    assert resp.status == 200
    assert resp.headers["X-Request-Id"] == rid


@pytest.mark.parametrize("rid", ["", "has space", "x" * 129, "<script>", "a/b", "ümlaut"])
async def test_insane_request_id_is_replaced(client, rid):
    resp = await client.get("/api/agent/subagent_0_0000", headers={"X-Request-Id": rid.encode().decode("latin-1")})
    assert resp.status == 404
    generated = resp.headers["X-Request-Id"]
    assert generated != rid and generated.startswith("req_") and len(generated) > 8
    assert_envelope(await resp.json(), 404, "NOT_FOUND", request_id=generated)


async def test_request_id_generated_when_absent_and_unique(client):
    ids = set()
    for _ in range(5):
        resp = await client.get("/api/agents")
        ids.add(resp.headers["X-Request-Id"])
    assert len(ids) == 5 and all(i.startswith("req_") for i in ids)


async def test_request_id_in_error_body_matches_header(client):
    resp = await client.post("/api/spawn", json={"model": "k2p5"}, headers={"X-Request-Id": "client-7"})
    assert resp.status == 400 and resp.headers["X-Request-Id"] == "client-7"
    assert_envelope(await resp.json(), 400, "VALIDATION_ERROR", request_id="client-7")


# -- 404 / 405 -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/nope", "/api/nope", "/api/v1/nope", "/api/v2/agents", "/api/agents/x/y",
                                  "/api/agent/"])
async def test_unknown_route_is_a_404_envelope(client, path):
    resp = await client.get(path)
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert_envelope(await resp.json(), 404, "NOT_FOUND", request_id=resp.headers["X-Request-Id"])


@pytest.mark.parametrize("prefix", ["/api", "/api/v1"])
async def test_unknown_agent_is_a_404_envelope(client, prefix):
    resp = await client.get(f"{prefix}/agent/subagent_1234567890_1234")
    assert resp.status == 404
    error = assert_envelope(await resp.json(), 404, "NOT_FOUND")
    assert "subagent_1234567890_1234" in error["message"]


@pytest.mark.parametrize("method,path,allowed", [
    ("GET", "/api/spawn", {"POST"}),
    ("PUT", "/api/spawn", {"POST"}),
    ("DELETE", "/api/agents", {"GET"}),
    ("POST", "/api/agents", {"GET"}),
    ("PATCH", "/api/agent/subagent_1_0001", {"GET", "DELETE"}),
    ("GET", "/api/v1/spawn-team", {"POST"}),
    ("DELETE", "/api/v1/spawn-batch", {"POST"}),
])
async def test_wrong_method_is_a_405_with_allow(client, method, path, allowed):
    resp = await client.request(method, path)
    assert resp.status == 405
    assert {m.strip() for m in resp.headers["Allow"].split(",")} >= allowed
    error = assert_envelope(await resp.json(), 405, "METHOD_NOT_ALLOWED")
    assert method in error["message"]


# -- sunset v3 endpoints ------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["/api", "/api/v1"])
@pytest.mark.parametrize("method,path,successor", [
    ("POST", "/agent", "/api/v1/spawn"),
    ("GET", "/status", "/api/v1/agent/{agent_id}"),
    ("DELETE", "/cancel", "/api/v1/agent/{agent_id}"),
])
async def test_sunset_v3_endpoints_are_gone(client, prefix, method, path, successor):
    kwargs = {"json": {"model": "k2p5", "task": "hello"}} if method == "POST" else {}
    resp = await client.request(method, prefix + path, **kwargs)
    assert resp.status == 410
    assert resp.headers["Link"] == f'<{successor}>; rel="successor-version"'
    assert resp.headers.get("Sunset")
    error = assert_envelope(await resp.json(), 410, "GONE")
    assert successor in error["message"]
    # A sunset POST must not have created anything.
    assert (await (await client.get("/api/agents")).json())["pagination"]["total"] == 0


# -- /api/v1 alias ------------------------------------------------------------------------------
def test_every_route_is_exercised_below():
    covered = {("POST", "/spawn"), ("POST", "/spawn-team"), ("POST", "/spawn-batch"), ("GET", "/agents"),
               ("GET", "/agents/active"), ("GET", "/agent/{agent_id}"), ("DELETE", "/agent/{agent_id}"),
               ("GET", "/health"), ("GET", "/plugins"), ("GET", "/rate-limits"), ("GET", "/system"),
               ("GET", "/metrics"), ("GET", "/billing/usage")}
    # Key and security routes have their own test modules (test_auth.py, test_security_api.py).
    # Routes of later capabilities have their own test modules (auth, security API, webhooks, live
    # events, OpenAPI, pricing and orchestrator).
    later = ("/keys", "/security", "/webhooks", "/events", "/ws", "/openapi.json", "/pricing", "/orchestrator",
             "/models", "/cache", "/projects",  # projects: test_projects.py
             "/metrics/timeseries",  # test_timeseries.py
             "/tasks", "/roles", "/workflows", "/escalations")  # test_tasks_api.py (both prefixes too)
    own = ("/data", "/deliveries")  # /agent/{id}/deliveries: tests/test_agent_detail_api.py
    assert {(m, p) for m, p, *_ in ROUTES if not p.startswith(later) and not p.endswith(own)} == covered


@pytest.mark.parametrize("prefix", ["/api", "/api/v1"])
async def test_every_route_under_both_prefixes(client, prefix):
    resp = await client.post(f"{prefix}/spawn", json={"model": "k2p5", "task": "alias check"})
    assert resp.status == 200
    agent_id = (await resp.json())["agent_id"]

    resp = await client.post(f"{prefix}/spawn-team", json={"team": "team_coding", "task": "alias check"})
    assert resp.status == 200 and (await resp.json())["team"] == "team_coding"

    resp = await client.post(f"{prefix}/spawn-batch", json={"agents": [{"model": "sonnet", "task": "a"}]})
    assert resp.status == 200 and len((await resp.json())["agents"]) == 1

    resp = await client.get(f"{prefix}/agent/{agent_id}")
    assert resp.status == 200 and (await resp.json())["agent_id"] == agent_id

    resp = await client.get(f"{prefix}/agents?limit=5")
    body = await resp.json()
    assert resp.status == 200 and body["pagination"]["total"] == 3
    assert body["links"]["self"].startswith(f"{prefix}/agents?")

    resp = await client.get(f"{prefix}/agents/active")
    assert resp.status == 200 and set(await resp.json()) >= {"agents", "count", "total_cost_today"}

    resp = await client.get(f"{prefix}/health")
    assert resp.status == 200 and (await resp.json())["status"] == "healthy"

    resp = await client.get(f"{prefix}/plugins")
    assert resp.status == 200 and "plugins" in await resp.json()

    for path, field in (("/rate-limits", "limits"), ("/system", "cpu_temp"), ("/metrics", "requests_total"),
                        ("/billing/usage", "by_model")):
        resp = await client.get(prefix + path)
        assert resp.status == 200 and field in await resp.json(), path

    await wait_status(client, agent_id)
    resp = await client.delete(f"{prefix}/agent/{agent_id}")
    assert resp.status == 409


# -- cancel -------------------------------------------------------------------------------------
async def test_cancel_unknown_agent_is_404(client):
    resp = await client.delete("/api/agent/subagent_1_0001")
    assert resp.status == 404
    assert_envelope(await resp.json(), 404, "NOT_FOUND")


async def test_cancel_completed_agent_is_409(client):
    agent = await spawn(client)
    done = await wait_status(client, agent["agent_id"])
    assert done["status"] == "completed"
    resp = await client.delete(f"/api/agent/{agent['agent_id']}")
    assert resp.status == 409
    error = assert_envelope(await resp.json(), 409, "CONFLICT")
    assert "completed" in error["message"]
    after = await (await client.get(f"/api/agent/{agent['agent_id']}")).json()
    assert after["status"] == "completed" and after["cost"] == done["cost"]


async def test_cancel_queued_agent_refunds_its_estimate(slow_client):
    running = await spawn(slow_client, task="hold the only slot")
    queued = await spawn(slow_client, task="wait in line", model="opus")
    await wait_status(slow_client, running["agent_id"], ("running",))
    assert (await wait_status(slow_client, queued["agent_id"], ("queued",)))["status"] == "queued"

    resp = await slow_client.delete(f"/api/agent/{queued['agent_id']}")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["success"] is True and body["message"] == "Agent cancelled"
    assert body["refund"] == queued["estimated_cost"] > 0

    got = await (await slow_client.get(f"/api/agent/{queued['agent_id']}")).json()
    assert got["status"] == "cancelled" and got["started"] is None and got["completed"].endswith("Z")
    listed = await (await slow_client.get("/api/agents?status=cancelled")).json()
    assert [a["agent_id"] for a in listed["data"]] == [queued["agent_id"]]

    again = await slow_client.delete(f"/api/agent/{queued['agent_id']}")
    assert again.status == 409
    assert "cancelled" in assert_envelope(await again.json(), 409, "CONFLICT")["message"]


async def test_cancel_running_agent(slow_client):
    running = await spawn(slow_client, task="hold the only slot")
    await wait_status(slow_client, running["agent_id"], ("running",))
    resp = await slow_client.delete(f"/api/v1/agent/{running['agent_id']}")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["success"] is True and body["message"] == "Agent cancelled"
    got = await wait_status(slow_client, running["agent_id"], ("cancelled",), timeout=1.0)
    assert got["started"] is not None and got["result"] is None
    # A call under way counts at its worst case (the provider may bill it): the refund is the rest.
    assert body["refund"] == pytest.approx(max(running["estimated_cost"] - (got["cost"] or 0.0), 0.0))


async def test_concurrent_cancels_cancel_once(slow_client):
    await spawn(slow_client, task="hold the only slot")
    queued = await spawn(slow_client, task="wait in line")
    await wait_status(slow_client, queued["agent_id"], ("queued",))
    first, second = await asyncio.gather(slow_client.delete(f"/api/agent/{queued['agent_id']}"),
                                         slow_client.delete(f"/api/agent/{queued['agent_id']}"))
    assert sorted([first.status, second.status]) == [200, 409], (await first.text(), await second.text())


async def test_cancelled_agent_frees_its_place_in_the_queue(slow_client):
    """Cancelling the queued head lets the next one run when the slot frees up."""
    running = await spawn(slow_client, task="hold the only slot")
    doomed = await spawn(slow_client, task="cancel me")
    kept = await spawn(slow_client, task="then me")
    await wait_status(slow_client, running["agent_id"], ("running",))
    assert (await slow_client.delete(f"/api/agent/{doomed['agent_id']}")).status == 200
    assert (await slow_client.delete(f"/api/agent/{running['agent_id']}")).status == 200
    got = await wait_status(slow_client, kept["agent_id"], ("running",), timeout=2.0)
    assert got["status"] == "running"


# -- never a 500 for bad input ----------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/agent/%00", "/api/agent/' OR 1=1 --", "/api/agent/" + "x" * 2000])
async def test_odd_agent_ids_are_404_not_500(client, path):
    resp = await client.get(path)
    assert resp.status == 404
    assert_envelope(await resp.json(), 404, "NOT_FOUND")


async def test_health_counts_no_server_errors_after_bad_input(client):
    await client.post("/api/spawn", data=b"{", headers={"Content-Type": "application/json"})
    await client.post("/api/spawn", json={"model": ["k2p5"], "task": {"a": 1}, "priority": ["x"]})
    await client.get("/api/agents?filter=[1]")
    health = await (await client.get("/api/health")).json()
    assert health["error_rate"] == 0.0
