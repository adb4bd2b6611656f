"""The Python SDK (j1msky, sdk/python/j1msky) against the real daemon and small fake servers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest
from aiohttp import web

from j1mskyd.app import build_app
from j1msky import (Agency, AsyncJ1MSKYClient, Config, J1MSKYClient, J1MSKYError, RateLimitError, TaskPriority,
                    WaitTimeout)
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
    # The same request again at once (a poll): its signature must differ, or the daemon's replay
    # guard refuses it (whole-second timestamps made every repeat within a second REPLAYED_REQUEST).
    for _ in range(5):
        assert (await asyncio.to_thread(signed.get_agent_status, agent.agent_id)).state == "completed"
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
    made = await asyncio.to_thread(sync.create_webhook, "https://hooks.invalid/hook", ["agent.completed"],
                                   "s3cret-long-enough")
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


# -- the reference's names and shapes ---------------------------------------------------------------
async def test_results_are_objects_and_dicts(client):
    sdk = J1MSKYClient(base_url=base_url(client))
    agent = await asyncio.to_thread(sdk.spawn, model="k2p5", task="shapes", priority=TaskPriority.HIGH)
    assert agent.id == agent.agent_id == agent["agent_id"] and agent.estimated_cost > 0  # a field by attribute
    result = await asyncio.to_thread(agent.wait_for_completion, timeout=10)
    raw = await (await client.get(f"/api/agent/{agent.id}")).json()
    assert dict(result) == raw and json.loads(json.dumps(result)) == raw  # every field, the unknown ones too
    assert result.status == result.state == "completed" and result.output == raw["result"] == result.result
    assert result.cost == raw["cost"] and result.priority == "high"  # TaskPriority.HIGH went as "high"
    status = await asyncio.to_thread(sdk.get_agent_status, agent.id)
    assert status.state == "completed" and status.result == result.output
    with pytest.raises(AttributeError, match="no field 'nope'"):
        status.nope


def test_client_reads_the_quick_start_environment(monkeypatch):
    monkeypatch.setenv("J1MSKY_API", "http://127.0.0.1:9/api")
    monkeypatch.setenv("J1MSKY_KEY", "jsk_env")
    monkeypatch.delenv("J1MSKY_SECRET", raising=False)
    env = J1MSKYClient()
    assert env.base_url == "http://127.0.0.1:9/api" and env.api_key == "jsk_env" and "jsk_env" not in repr(env)
    monkeypatch.setenv("J1MSKY_API", "http://127.0.0.1:9")  # the server, without /api: the same API
    assert J1MSKYClient().base_url == "http://127.0.0.1:9/api"
    # An argument beats the Config, which beats the environment.
    cfg = Config(base_url="http://127.0.0.1:8/", api_key="jsk_cfg", timeout=5, max_retries=1, retry_delay=0.1)
    from_config = J1MSKYClient(config=cfg)
    assert (from_config.base_url, from_config.api_key) == ("http://127.0.0.1:8/api", "jsk_cfg")
    both = J1MSKYClient(api_key="jsk_arg", config=cfg, timeout=7)
    assert (both.api_key, both.timeout, both.max_retries, both.base_url) == ("jsk_arg", 7, 1, "http://127.0.0.1:8/api")
    monkeypatch.delenv("J1MSKY_API")
    monkeypatch.delenv("J1MSKY_KEY")
    bare = J1MSKYClient()
    assert bare.base_url == "http://localhost:8080/api" and bare.api_key is None


@pytest.mark.parametrize("bad", [{"timeout": 0}, {"max_retries": -1}, {"max_retries": 1.5}, {"retry_delay": "1"},
                                 {"cache_ttl": -1}, {"timeout": True}])
def test_config_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="Config."):
        Config(**bad)


async def test_quotes_as_the_reference_reads_them_and_the_cache(client):
    sdk = J1MSKYClient(base_url=base_url(client))
    args = dict(model="k2p5", estimated_input_tokens=2000, estimated_output_tokens=800, complexity="medium",
                segment="mid_market")
    quote = await asyncio.to_thread(sdk.get_quote, **args)
    raw = await (await client.post("/api/pricing/quote", json={
        "model": "k2p5", "estimated_input": 2000, "estimated_output": 800, "complexity": "medium",
        "segment": "mid_market"})).json()
    assert quote.internal_cost == raw["quote"]["internal_cost"] and quote.segment == "mid_market"
    assert quote.recommended_price == raw["quote"]["recommended_price"]
    assert quote.gross_margin_pct == raw["quote"]["gross_margin_pct"]
    assert quote.guardrail_check.is_compliant is raw["guardrail_check"]["is_compliant"] is True
    # Off by default: each quote is the daemon's (a new quote_id); on, a repeat within cache_ttl is kept.
    assert (await asyncio.to_thread(sdk.get_quote, **args)).quote_id != quote.quote_id
    cached = J1MSKYClient(base_url=base_url(client), config=Config(cache_enabled=True, cache_ttl=60))
    first = await asyncio.to_thread(cached.get_quote, **args)
    first["quote"]["internal_cost"] = -1  # a caller's change does not reach what is kept
    again = await asyncio.to_thread(cached.get_quote, **args)
    assert again.quote_id == first.quote_id and again.internal_cost == raw["quote"]["internal_cost"]
    other = await asyncio.to_thread(cached.get_quote, **{**args, "segment": "smb"})
    assert other.quote_id != first.quote_id and other.segment == "smb"
    assert cached.clear_cache() == 2
    assert (await asyncio.to_thread(cached.get_quote, **args)).quote_id != first.quote_id
    expired = J1MSKYClient(base_url=base_url(client), config=Config(cache_enabled=True, cache_ttl=0))
    ids = {(await asyncio.to_thread(expired.get_quote, **args)).quote_id for _ in range(2)}
    assert len(ids) == 2


async def test_batch_quotes(client):
    async with AsyncJ1MSKYClient(base_url=base_url(client)) as sdk:
        quotes = await sdk.get_batch_quotes(model="sonnet", complexities=["low", "high"],
                                            segments=["enterprise", "smb"])
        assert [(q.complexity, q.segment) for q in quotes] == [("low", "enterprise"), ("low", "smb"),
                                                                ("high", "enterprise"), ("high", "smb")]
        one = await sdk.get_quote("sonnet", 3000, 1200, "high", "smb")
        assert quotes[3].recommended_price == one.recommended_price and quotes[3].guardrail_check.is_compliant
        everything = await sdk.get_batch_quotes(model="k2p5", complexities=["medium"])
        assert {q.segment for q in everything} == {"startup", "smb", "mid_market", "enterprise"}
        with pytest.raises(J1MSKYError) as err:  # the daemon's own refusal of a segment it does not price
            await sdk.get_batch_quotes(model="k2p5", complexities=["low"], segments=["galactic"])
        assert err.value.status == 400 and err.value.details[0]["field"] == "segment"
    sync = J1MSKYClient(base_url=base_url(client))
    assert len(await asyncio.to_thread(sync.get_batch_quotes, "k2p5", ["low"], ["smb"])) == 1


async def test_register_webhook_defaults_to_the_agent_end_events(client):
    sdk = J1MSKYClient(base_url=base_url(client))
    made = await asyncio.to_thread(sdk.register_webhook, url="https://hooks.invalid/x")
    assert made.webhook_id and made.secret  # shown once
    listed = await asyncio.to_thread(sdk.list_webhooks)
    assert sorted(listed.webhooks[0].events) == ["agent.cancelled", "agent.completed", "agent.failed"]


# -- waiting: the event stream, else polling --------------------------------------------------------
@pytest.fixture
async def slowish(aiohttp_client, tmp_path):
    """The daemon with agents that take 0.5 s."""
    base = make_config(tmp_path)
    slow = {"offline": dataclasses.replace(base.providers["offline"], options={"delay": 0.5})}
    return await aiohttp_client(build_app(make_config(tmp_path, providers=slow)))


def counting(sdk):
    """Count the client's status looks: a wait on the stream looks twice (after subscribing, at the end)."""
    looks = []
    real = sdk.get_agent_status

    def look(agent_id):
        looks.append(agent_id)
        return real(agent_id)

    async def alook(agent_id):
        looks.append(agent_id)
        return await real(agent_id)
    sdk.get_agent_status = alook if asyncio.iscoroutinefunction(real) else look
    return looks


async def test_wait_listens_on_the_event_stream(slowish):
    sdk = J1MSKYClient(base_url=base_url(slowish))
    looks = counting(sdk)
    agent = await asyncio.to_thread(sdk.spawn, model="k2p5", task="on the stream")
    result = await asyncio.to_thread(agent.wait_for_completion, 30, 0.01)  # polling would look ~50 times
    assert result.state == "completed" and len(looks) <= 3
    team = await asyncio.to_thread(sdk.spawn_team, team="team_coding", task="a team, on the stream")
    looks.clear()
    assert (await asyncio.to_thread(team.wait_for_completion, 30, 0.01)).state == "completed" and len(looks) <= 3
    async with AsyncJ1MSKYClient(base_url=base_url(slowish)) as asdk:
        alooks = counting(asdk)
        aagent = await asdk.spawn(model="sonnet", task="async, on the stream")
        assert (await aagent.wait_for_completion(30, 0.01)).state == "completed" and len(alooks) <= 3


async def test_wait_polls_when_the_daemon_has_no_stream(aiohttp_server):
    states = ["spawning", "running", "completed"]

    async def agent(request: web.Request) -> web.Response:
        state = states.pop(0) if len(states) > 1 else states[0]
        return web.json_response({"agent_id": "subagent_1_0001", "status": state, "result": "done", "cost": 0.1})

    app = web.Application()
    app.router.add_get("/api/agent/{id}", agent)  # no /api/events/stream: 404
    server = await aiohttp_server(app)
    sdk = J1MSKYClient(base_url=str(server.make_url("/")))
    result = await asyncio.to_thread(sdk.wait_for_completion, "subagent_1_0001", 10, 0.01)
    assert result.output == "done" and result.cost == 0.1 and not states[1:]
    states[:] = ["running", "running", "completed"]
    async with AsyncJ1MSKYClient(base_url=str(server.make_url("/"))) as asdk:
        assert (await asdk.wait_for_completion("subagent_1_0001", 10, 0.01)).state == "completed"


async def test_wait_times_out_on_the_stream_too(aiohttp_client, tmp_path):
    base = make_config(tmp_path)
    slow = {"offline": dataclasses.replace(base.providers["offline"], options={"delay": 5.0})}
    client = await aiohttp_client(build_app(make_config(tmp_path, providers=slow)))
    sdk = J1MSKYClient(base_url=base_url(client))
    agent = await asyncio.to_thread(sdk.spawn, model="k2p5", task="slow")
    with pytest.raises(WaitTimeout) as err:
        await asyncio.to_thread(agent.wait_for_completion, 0.3)
    assert isinstance(err.value, TimeoutError) and isinstance(err.value, J1MSKYError)
    assert err.value.agent_id == agent.id and err.value.state in ("spawning", "running")
    await asyncio.to_thread(agent.cancel)


# -- failure paths ---------------------------------------------------------------------------------
@pytest.fixture
async def scripted(aiohttp_server):
    """A server that answers each request with the next (status, headers, body bytes, delay) of its script."""
    seen: list[dict] = []
    script: list[tuple[int, dict, bytes, float]] = []

    async def any_request(request: web.Request) -> web.Response:
        seen.append({"method": request.method, "idem": request.headers.get("Idempotency-Key")})
        status, headers, body, delay = script.pop(0) if script else (200, {}, b'{"ok": true}', 0)
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, headers={"Content-Type": "application/json", **headers}, body=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_request)
    server = await aiohttp_server(app)
    return str(server.make_url("/")), script, seen


def envelope(status: int, message: str, **extra) -> bytes:
    return json.dumps({"success": False, "error": {"code": status, "message": message, **extra}}).encode()


async def test_5xx_is_retried_then_raised_with_its_envelope(scripted):
    url, script, seen = scripted
    script += [(502, {}, envelope(502, "upstream down", request_id="req_a"), 0)] * 3
    sdk = J1MSKYClient(base_url=url, max_retries=2, config=Config(retry_delay=0.01))
    with pytest.raises(J1MSKYError) as err:
        await asyncio.to_thread(sdk.spawn, model="k2p5", task="x")
    assert (err.value.status, err.value.message, err.value.request_id) == (502, "upstream down", "req_a")
    assert len(seen) == 3 and len({s["idem"] for s in seen}) == 1
    assert str(err.value) == "upstream down (HTTP 502, request req_a)"


async def test_a_4xx_is_not_retried_and_the_request_id_can_come_from_the_header(scripted):
    url, script, seen = scripted
    script.append((409, {"X-Request-Id": "req_hdr"}, b'{"success": false, "error": "Task cannot be empty"}', 0))
    sdk = J1MSKYClient(base_url=url, max_retries=3)
    with pytest.raises(J1MSKYError) as err:
        await asyncio.to_thread(sdk.get_agent_status, "a")
    assert (err.value.status, err.value.message, err.value.request_id) == (409, "Task cannot be empty", "req_hdr")
    assert len(seen) == 1 and seen[0]["idem"] is None  # a GET carries no Idempotency-Key


async def test_retry_after_as_an_http_date(scripted):
    url, script, _ = scripted
    from email.utils import formatdate
    script.append((429, {"Retry-After": formatdate(time.time() + 120, usegmt=True)}, b"not json", 0))
    with pytest.raises(RateLimitError) as err:
        await asyncio.to_thread(J1MSKYClient(base_url=url, max_retries=0).get_agent_status, "a")
    assert 100 < err.value.retry_after <= 120 and err.value.message == "HTTP 429"


@pytest.mark.parametrize("aio", [False, True])
async def test_a_retry_after_longer_than_the_cap_is_raised_at_once_not_retried_early(scripted, aio):
    # It waited retry_max_delay (30 s) and asked again, 5 s before the daemon's Retry-After:
    # another 429, and the caller learnt the wait only after both.
    url, script, seen = scripted
    script.extend([(429, {"Retry-After": "100"}, b"{}", 0)] * 3)
    options = {"base_url": url, "max_retries": 3, "retry_max_delay": 1.0}
    with pytest.raises(RateLimitError) as err:
        if aio:
            async with AsyncJ1MSKYClient(**options) as sdk:
                await sdk.get_agent_status("a")
        else:
            await asyncio.to_thread(J1MSKYClient(**options).get_agent_status, "a")
    assert err.value.retry_after == 100 and len(seen) == 1


def test_a_key_with_a_stray_newline_is_trimmed_and_a_bad_one_refused_without_echoing_it(monkeypatch):
    # `$(cat key.txt)` keeps a newline: the HTTP layer raised ValueError quoting the whole
    # "Bearer <key>" header, which the CLI printed in a traceback.
    assert J1MSKYClient(api_key="jsk_abc\n").api_key == "jsk_abc"
    monkeypatch.setenv("J1MSKY_KEY", " jsk_env\n")
    assert J1MSKYClient().api_key == "jsk_env"
    for bad in ("jsk_QQ ZZ", "jsk_QQ\nZZ", "jsk_€QQZZ"):
        with pytest.raises(J1MSKYError) as err:
            J1MSKYClient(api_key=bad)
        assert "api_key" in str(err.value) and "QQ" not in str(err.value) and "ZZ" not in str(err.value)
    with pytest.raises(J1MSKYError, match="api_secret"):
        J1MSKYClient(api_key="k", api_secret="s\x00")


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://127.0.0.1/", "http://[::1", "http://127.0.0.1:99999/api",
                                 "http:///api"])
def test_a_base_url_that_is_no_http_url_is_an_error_naming_it(url):
    with pytest.raises(J1MSKYError, match="base_url must be an http"):
        J1MSKYClient(base_url=url)


async def test_a_success_that_is_not_json_is_an_error(scripted):
    url, script, seen = scripted
    script.append((200, {"X-Request-Id": "req_html"}, b"<html>a proxy's page</html>", 0))
    with pytest.raises(J1MSKYError, match="not JSON") as err:
        await asyncio.to_thread(J1MSKYClient(base_url=url).get_agent_status, "a")
    assert err.value.status == 200 and err.value.request_id == "req_html" and len(seen) == 1
    script.append((200, {}, b"{broken", 0))
    async with AsyncJ1MSKYClient(base_url=url) as asdk:
        with pytest.raises(J1MSKYError, match="not JSON"):
            await asdk.get_agent_status("a")


async def test_a_slow_answer_times_out_and_is_retried_with_the_same_key(scripted):
    url, script, seen = scripted
    script += [(200, {}, b"{}", 1.0)] * 2
    sdk = J1MSKYClient(base_url=url, timeout=0.2, max_retries=1, config=Config(retry_delay=0.01))
    with pytest.raises(J1MSKYError, match="no answer from .* within 0.2 s") as err:
        await asyncio.to_thread(sdk.register_webhook, "https://hooks.invalid/h")
    assert err.value.status is None and len(seen) == 2 and len({s["idem"] for s in seen}) == 1
    script += [(200, {}, b"{}", 1.0)] * 2
    async with AsyncJ1MSKYClient(base_url=url, timeout=0.2, max_retries=1, config=Config(retry_delay=0.01)) as asdk:
        with pytest.raises(J1MSKYError, match="no answer"):
            await asdk.get_agent_status("a")


def test_the_sdk_never_imports_the_daemon():
    """j1msky installs without j1mskyd (tests/test_sdk_install.py), so no module of it may import j1mskyd."""
    import ast
    from pathlib import Path

    import j1msky
    imported = set()
    for path in Path(j1msky.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {(path.name, a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add((path.name, node.module))
    assert imported and not [(f, m) for f, m in imported if m.split(".")[0] == "j1mskyd"]
    assert {m.split(".")[0] for f, m in imported if f != "aio.py"} <= set(__import__("sys").stdlib_module_names)


async def test_one_client_keeps_its_connection_and_survives_the_server_closing_it(aiohttp_server):
    """The reference's Best Practice 1: the client reuses its connection.  One the server closed
    while it was idle is replaced, and the request it failed is sent again, with the same key."""
    peers, transports, keys = [], [], []

    async def any_request(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername"))
        transports.append(request.transport)
        keys.append(request.headers.get("Idempotency-Key"))
        return web.json_response({"agent_id": "subagent_1_0001", "status": "running"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_request)
    server = await aiohttp_server(app)
    with J1MSKYClient(base_url=str(server.make_url("/")), max_retries=0) as sdk:
        for _ in range(3):
            await asyncio.to_thread(sdk.get_agent_status, "subagent_1_0001")
        assert len(peers) == 3 and len(set(peers)) == 1  # one connection for the three
        for transport in transports:
            transport.close()  # the server's idle timeout, say
        await asyncio.to_thread(sdk.spawn, model="k2p5", task="after the close")  # max_retries=0: no retry but this
        assert len(set(peers)) == 2 and keys[-1] and keys.count(keys[-1]) == len(keys) - 3


async def test_threads_sharing_a_client_never_share_a_connection_at_once(aiohttp_server):
    peers: list = []
    busy: set = set()
    overlaps: list = []

    async def slow(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername")
        if peer in busy:
            overlaps.append(peer)  # two requests at once on one connection: mixed-up answers
        busy.add(peer)
        peers.append(peer)
        await asyncio.sleep(0.01)
        busy.discard(peer)
        return web.json_response({"agent_id": request.match_info["id"], "status": "running"})

    app = web.Application()
    app.router.add_get("/api/agent/{id}", slow)
    server = await aiohttp_server(app)
    with J1MSKYClient(base_url=str(server.make_url("/"))) as sdk:
        def worker(n: int) -> list[str]:
            return [sdk.get_agent_status(f"subagent_{n}_{i}").agent_id for i in range(5)]
        answers = await asyncio.gather(*(asyncio.to_thread(worker, n) for n in range(6)))
    assert answers == [[f"subagent_{n}_{i}" for i in range(5)] for n in range(6)]  # each its own answer
    assert not overlaps and len(peers) == 30 and len(set(peers)) <= 6
