"""The Python SDK (j1msky, sdk/python/j1msky) against the real daemon and small fake servers."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from aiohttp import web

from j1mskyd.app import build_app
from j1msky import Agency, AsyncJ1MSKYClient, J1MSKYClient, J1MSKYError, RateLimitError
from tests.conftest import auth_config, bootstrap_key, make_config


def base_url(client) -> str:
    return str(client.make_url("/"))


async def test_seed_quick_start_spawn_and_wait(client):
    agency = Agency(api_key="unused-auth-off", base_url=base_url(client))
    agent = await asyncio.to_thread(agency.spawn, model="k2p5", task="Write a blog post about AI", priority="normal")
    assert agent.agent_id.startswith("subagent_")
    result = await asyncio.to_thread(agent.wait_for_completion, 10, 0.02)
    assert result.state == "completed" and "offline" in result.output and result.cost > 0
    assert result.result == result.output and result.agent_id == agent.agent_id


async def test_errors_carry_status_type_and_request_id(client):
    sdk = J1MSKYClient(base_url=base_url(client) + "api")  # an explicit /api is kept as it is
    with pytest.raises(J1MSKYError) as err:
        await asyncio.to_thread(sdk.spawn, model="k2p5", task="")
    assert err.value.status == 400 and err.value.type == "VALIDATION_ERROR"
    assert err.value.request_id and err.value.details[0]["field"] == "task"
    with pytest.raises(J1MSKYError) as err:
        await asyncio.to_thread(sdk.get_agent_status, "subagent_0_0000")
    assert err.value.status == 404


@pytest.fixture
async def flaky(aiohttp_server):
    """A server that answers 429 (Retry-After), then 503, then 200; it records what it saw."""
    seen: list[dict] = []
    script = [(429, {"Retry-After": "0.2"}), (503, {})]

    async def spawn(request: web.Request) -> web.Response:
        seen.append({"idem": request.headers.get("Idempotency-Key"), "at": asyncio.get_running_loop().time()})
        if script:
            status, headers = script.pop(0)
            body = {"success": False, "error": {"code": status, "type": "X", "message": "try again",
                                                "request_id": "req_1", "retry_after": 1}}
            return web.json_response(body, status=status, headers=headers)
        return web.json_response({"success": True, "agent_id": "subagent_1_0001", "model": "k2p5",
                                  "status": "spawning", "estimated_cost": 0.01})

    app = web.Application()
    app.router.add_post("/api/spawn", spawn)
    app.router.add_post("/api/webhooks", spawn)  # any write: the same script
    server = await aiohttp_server(app)
    return server, seen, script


async def test_retries_honour_retry_after_and_keep_the_idempotency_key(flaky):
    server, seen, _ = flaky
    sdk = J1MSKYClient(base_url=str(server.make_url("/")), max_retries=3)
    agent = await asyncio.to_thread(sdk.spawn, model="k2p5", task="x")
    assert agent.agent_id == "subagent_1_0001" and len(seen) == 3
    assert seen[1]["at"] - seen[0]["at"] >= 0.2  # Retry-After is a floor
    assert len({s["idem"] for s in seen}) == 1 and seen[0]["idem"]  # one spawn, however many tries


async def test_every_write_keeps_one_idempotency_key_over_its_retries(flaky):
    server, seen, _ = flaky
    sdk = J1MSKYClient(base_url=str(server.make_url("/")), max_retries=3)
    await asyncio.to_thread(sdk.create_webhook, "https://hooks.invalid/h", ["agent.completed"])
    assert len(seen) == 3 and len({s["idem"] for s in seen}) == 1 and seen[0]["idem"]


async def test_rate_limit_error_when_retries_run_out(flaky):
    server, seen, _ = flaky
    sdk = J1MSKYClient(base_url=str(server.make_url("/")), max_retries=0)
    with pytest.raises(RateLimitError) as err:
        await asyncio.to_thread(sdk.spawn, model="k2p5", task="x")
    assert err.value.retry_after == 0.2 and err.value.status == 429 and len(seen) == 1


async def test_async_client_retries_too(flaky):
    server, seen, _ = flaky
    async with AsyncJ1MSKYClient(base_url=str(server.make_url("/")), max_retries=2) as sdk:
        agent = await sdk.spawn(model="k2p5", task="x")
    assert agent.agent_id == "subagent_1_0001" and len(seen) == 3


async def test_signed_requests_with_api_secret(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path, require_signatures=True)
    client = await aiohttp_client(build_app(cfg))
    boot = bootstrap_key(cfg)
    signed = J1MSKYClient(api_key=boot["token"], api_secret=boot["secret"], base_url=base_url(client))
    agent = await asyncio.to_thread(signed.spawn, model="k2p5", task="signed spawn")
    result = await asyncio.to_thread(agent.wait_for_completion, 10, 0.02)
    assert result.state == "completed"
    listing = await asyncio.to_thread(signed.list_agents, status="completed")
    assert listing["pagination"]["total"] == 1  # a GET with a query string, signed
    unsigned = J1MSKYClient(api_key=boot["token"], base_url=base_url(client))
    with pytest.raises(J1MSKYError) as err:
        await asyncio.to_thread(unsigned.get_agent_status, agent.agent_id)
    assert err.value.status == 401 and err.value.type == "SIGNATURE_REQUIRED"


async def test_async_client_against_the_daemon(client):
    async with AsyncJ1MSKYClient(base_url=base_url(client)) as sdk:
        agent = await sdk.spawn(model="sonnet", task="async spawn")
        result = await agent.wait_for_completion(timeout=10, poll_interval=0.02)
        assert result.state == "completed" and result.cost > 0
        team = await sdk.spawn_team(team="team_coding", task="a team")
        assert (await team.wait_for_completion(10, 0.02)).state == "completed"


async def test_wait_for_completion_times_out_on_a_slow_agent(aiohttp_client, tmp_path):
    base = make_config(tmp_path)
    slow = {"offline": dataclasses.replace(base.providers["offline"], options={"delay": 5.0})}
    client = await aiohttp_client(build_app(make_config(tmp_path, providers=slow)))
    async with AsyncJ1MSKYClient(base_url=base_url(client)) as sdk:
        agent = await sdk.spawn(model="k2p5", task="takes a while")
        with pytest.raises(TimeoutError, match="still"):
            await agent.wait_for_completion(timeout=0.2, poll_interval=0.05)
        assert (await sdk.cancel(agent.agent_id))["message"] == "Agent cancelled"


async def test_unreachable_daemon_is_a_clear_error():
    sdk = J1MSKYClient(base_url="http://127.0.0.1:9", max_retries=1, timeout=2)
    with pytest.raises(J1MSKYError, match="cannot reach"):
        await asyncio.to_thread(sdk.get_agent_status, "x")


async def test_webhooks_quotes_and_listing_sync_and_async(client):
    sync = J1MSKYClient(base_url=base_url(client))
    made = await asyncio.to_thread(sync.create_webhook, "https://hooks.invalid/hook", ["agent.completed"], "s3cret-long-enough")
    assert made["success"] is True and "secret" not in made  # a secret we chose is not echoed
    listed = await asyncio.to_thread(sync.list_webhooks)
    assert [w["webhook_id"] for w in listed["webhooks"]] == [made["webhook_id"]]
    async with AsyncJ1MSKYClient(base_url=base_url(client)) as sdk:
        other = await sdk.create_webhook("https://hooks.invalid/other", ["agent.failed"])
        assert other["secret"]  # generated, shown once
        assert len((await sdk.list_webhooks())["webhooks"]) == 2
        await sdk.delete_webhook(other["webhook_id"])
        assert [w["webhook_id"] for w in (await sdk.list_webhooks())["webhooks"]] == [made["webhook_id"]]
        with pytest.raises(J1MSKYError) as err:
            await sdk.delete_webhook(other["webhook_id"])
        assert err.value.status == 404
        quote = await sdk.get_quote(model="sonnet", estimated_input=3000, estimated_output=1200, complexity="high",
                                    segment="enterprise")
        assert quote["quote"]["recommended_price"] == 0.5
        agent = await sdk.spawn(model="k2p5", task="listed")
        await agent.wait_for_completion(10, 0.02)
        listing = await sdk.list_agents(status="completed")
        assert agent.agent_id in [a["agent_id"] for a in listing["data"]]
    await asyncio.to_thread(sync.delete_webhook, made["webhook_id"])
    assert (await asyncio.to_thread(sync.list_webhooks))["webhooks"] == []
