"""Reload without restart (issue 18) on the aiohttp test server: POST /api/admin/reload
re-reads the config file the app was built from, applies what changed to everything at once,
and refuses an invalid file whole.  Providers are two fake upstreams on loopback (A and B);
A's calls can be held (``gate``) so agents are running and queued when the reload comes.

tests/test_reload_daemon.py does the same through SIGHUP on a real daemon process.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.config import load_config
from j1mskyd.ratelimit import ENDPOINT_CLASSES
from tests.conftest import bearer, bootstrap_key, make_config
from tests.fakeupstream import FakeUpstream

WAIT = 20.0  # the bound of every wait (generous: nothing here is timed)


class HeldUpstream(FakeUpstream):
    """A fake upstream whose calls wait while ``gate`` is clear (the test sets it to let them go)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def _pause(self, seconds: float) -> None:
        await self.gate.wait()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def write(path: Path, doc: dict[str, Any]) -> Path:
    """A TOML file of ``{"section": {key: value}}`` and ``{"models.x": {...}}`` tables."""
    path.write_text("".join(f"[{table}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items()) + "\n"
                            for table, values in doc.items()), encoding="utf-8")
    return path


def base_doc(tmp_path: Path, a: FakeUpstream, b: FakeUpstream) -> dict[str, Any]:
    """Provider a (one call at a time) and b; ma on a falls back to mb on b; solo on a has no fallback."""
    model = {"upstream": "up", "input_per_1k": 1.0, "output_per_1k": 2.0, "blended_per_1k": 1.0}
    return {
        "server": {"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "state")},
        "plugins": {"dropin_dir": str(tmp_path / "no-plugins.d")},
        "security": {"auth": True, "allowed_ips": ["127.0.0.0/8"], "enforce_allowlist": True},
        "limits": {c: 100_000 for c in ENDPOINT_CLASSES},
        "budget": {"max_agents_per_key": 100_000},
        "providers.a": {"plugin": "openai_compat", "base_url": f"{a.url}/v1", "max_concurrency": 1},
        "providers.b": {"plugin": "openai_compat", "base_url": f"{b.url}/v1", "max_concurrency": 8},
        "models.ma": {"provider": "a", **model, "fallback": "mb"},
        "models.mb": {"provider": "b", **model},
        "models.solo": {"provider": "a", **model},
        "teams.t": {"name": "T", "members": ["ma", "mb"]},
    }


class Reloadable:
    """The app built from a config file, its admin key, and the file to edit."""

    def __init__(self, client: Any, path: Path, doc: dict[str, Any], admin: dict[str, str]) -> None:
        self.client, self.path, self.doc, self.admin = client, path, doc, admin

    async def reload(self, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        resp = await self.client.post("/api/admin/reload", headers=self.admin if headers is None else headers)
        return resp.status, await resp.json()

    async def spawn(self, model: str, task: str = "hello") -> str:
        resp = await self.client.post("/api/spawn", json={"model": model, "task": task}, headers=self.admin)
        assert resp.status == 200, await resp.text()
        return (await resp.json())["agent_id"]

    async def agent(self, agent_id: str) -> dict[str, Any]:
        return await (await self.client.get(f"/api/agent/{agent_id}", headers=self.admin)).json()

    async def done(self, agent_id: str) -> dict[str, Any]:
        """The agent once it has ended."""
        seen: dict[str, Any] = {}

        async def ended() -> bool:
            seen["agent"] = await self.agent(agent_id)
            return seen["agent"]["status"] in ("completed", "failed", "cancelled")

        await until_async(ended, f"agent {agent_id} to end")
        return seen["agent"]

    async def audit(self) -> list[dict[str, Any]]:
        """The config.change entries of the audit log, oldest first."""
        await self.services().store.flush()  # the audit log's writes are queued
        resp = await self.client.get("/api/security/audit?event=config.change&limit=100", headers=self.admin)
        return list(reversed((await resp.json())["data"]))

    def services(self) -> Any:
        return self.client.server.app[SERVICES]


@pytest.fixture
async def upstreams_ab():
    a, b = await HeldUpstream().start(), await HeldUpstream().start()
    yield a, b
    a.gate.set()
    await a.close()
    await b.close()


@pytest.fixture
async def app(aiohttp_client, tmp_path, upstreams_ab):
    a, b = upstreams_ab
    doc = base_doc(tmp_path, a, b)
    path = write(tmp_path / "config.toml", doc)
    load = functools.partial(load_config, path, env={})
    client = await aiohttp_client(build_app(load(), reload_from=load))
    token = bootstrap_key(load())["token"]  # the app has started: its bootstrap key is on disk
    return Reloadable(client, path, doc, bearer(token))


async def until_async(predicate: Any, what: str) -> None:
    """Until ``await predicate()`` is true, for WAIT seconds at most."""
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT
    while not await predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def until(predicate: Any, what: str) -> None:
    async def check() -> bool:
        return bool(predicate())
    await until_async(check, what)


# -- prices, models, what the answer says ----------------------------------------------------------

async def test_a_price_change_applies_to_agents_spawned_after_it(app):
    before = await app.done(await app.spawn("mb"))
    assert before["cost"] == pytest.approx(0.011 * 1.0 + 0.007 * 2.0)  # 11 input, 7 output tokens
    app.doc["models.mb"] |= {"input_per_1k": 2.0, "output_per_1k": 4.0}
    app.doc["models.mc"] = {"provider": "b", "upstream": "c-up", "input_per_1k": 0.5, "output_per_1k": 0.5,
                            "blended_per_1k": 0.5}
    write(app.path, app.doc)
    status, answer = await app.reload()
    assert status == 200 and answer["reloaded"] is True, answer
    assert answer["changed"]["models"] == {
        "added": ["mc"],
        "changed": {"mb": [{"key": "input_per_1k", "old": 1.0, "new": 2.0},
                           {"key": "output_per_1k", "old": 2.0, "new": 4.0}]}}
    assert answer["needs_restart"] == [] and "mc" in answer["message"]
    after = await app.done(await app.spawn("mb"))
    assert after["cost"] == pytest.approx(0.011 * 2.0 + 0.007 * 4.0)
    assert (await app.done(await app.spawn("mc")))["status"] == "completed"  # the new model serves
    models = await (await app.client.get("/api/models/mb", headers=app.admin)).json()
    assert models["data"]["pricing"]["input_tokens"] == 2.0
    spec = await (await app.client.get("/api/openapi.json")).json()
    spawn = spec["paths"]["/api/spawn"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "mc" in spawn["properties"]["model"]["enum"]  # the document is built again
    assert before["cost"] == (await app.agent(before["agent_id"]))["cost"]  # the past is not repriced


async def test_an_invalid_file_keeps_the_old_config_and_the_answer_lists_every_problem(app, caplog):
    app.doc["models.ma"]["input_per_1k"] = "cheap"
    app.doc["runtime"] = {"max_concurency": 3}
    app.doc["models.mb"]["provider"] = "nope"
    app.doc["models.solo"]["input_per_1k"] = 9.0  # valid, but the file as a whole is not
    write(app.path, app.doc)
    with caplog.at_level(logging.ERROR, logger="j1mskyd.reload"):
        status, answer = await app.reload()
    assert status == 422, answer
    error = answer["error"]
    assert error["type"] == "INVALID_CONFIG" and "running configuration stays" in error["message"]
    fields = sorted(d["field"] for d in error["details"])
    assert fields == ["models.ma.input_per_1k", "models.mb.provider", "runtime.max_concurency"], error
    assert all(d["file"] == str(app.path) for d in error["details"])
    logged = caplog.text
    for field in fields:
        assert field in logged
    # Nothing changed: solo's old price, mb still served by b.
    solo = await (await app.client.get("/api/models/solo", headers=app.admin)).json()
    assert solo["data"]["pricing"]["input_tokens"] == 1.0
    assert (await app.done(await app.spawn("mb")))["served_by"] == {"model": "mb", "provider": "b"}


async def test_a_new_provider_of_a_plugin_that_is_not_loaded_is_refused(app):
    app.doc["providers.c"] = {"plugin": "no_such_plugin"}
    app.doc["models.mc"] = {"provider": "c", "upstream": "c", "input_per_1k": 0.1, "output_per_1k": 0.1,
                            "blended_per_1k": 0.1}
    write(app.path, app.doc)
    status, answer = await app.reload()
    assert status == 422 and [d["field"] for d in answer["error"]["details"]] == ["providers.c.plugin"]
    assert "c" not in app.services().slots


# -- agents under way ----------------------------------------------------------------------------

async def test_a_removed_providers_queued_agents_fall_back_or_fail_and_running_ones_finish_on_it(
        app, upstreams_ab):
    a, b = upstreams_ab
    a.gate.clear()
    running = await app.spawn("ma", "runs on a")
    await until(lambda: len(a.calls) == 1, "the first call to reach a")
    queued = [await app.spawn("ma", f"queued {n}") for n in range(3)]
    stranded = await app.spawn("solo", "no fallback")
    for agent_id in (*queued, stranded):
        assert (await app.agent(agent_id))["status"] == "queued"
    old_slot = app.services().slots["a"]
    # The operator removes provider a and its models (and from the team).
    for table in ("providers.a", "models.ma", "models.solo"):
        del app.doc[table]
    app.doc["teams.t"]["members"] = ["mb"]
    write(app.path, app.doc)
    status, answer = await app.reload()
    assert status == 200, answer
    assert answer["changed"]["providers"] == {"removed": ["a"]}
    assert answer["changed"]["models"]["removed"] == ["ma", "solo"]
    notes = " | ".join(answer["notes"])
    assert "3 queued agents moved" in notes and "1 queued agents failed" in notes and "retired: a" in notes
    for agent_id in queued:  # fell back along the chain they had: ma -> mb
        agent = await app.done(agent_id)
        assert agent["status"] == "completed" and agent["served_by"] == {"model": "mb", "provider": "b"}, agent
    failed = await app.done(stranded)
    assert failed["status"] == "failed"
    assert "model 'solo' was removed from the configuration" in failed["error"]
    # The running call is still on a's old slot; it finishes there, at ma's price.
    assert (await app.agent(running))["status"] == "running" and old_slot.active == 1
    a.gate.set()
    first = await app.done(running)
    assert first["status"] == "completed" and first["served_by"] == {"model": "ma", "provider": "a"}
    await until(lambda: old_slot.active == 0, "the retired slot to drain")
    assert len(a.calls) == 1 and len(b.calls) == 3  # every agent ran exactly once
    assert "a" not in app.services().slots


async def test_a_provider_whose_address_changes_gets_a_new_client_and_its_old_calls_finish(app, upstreams_ab):
    a, b = upstreams_ab
    a.gate.clear()
    first = await app.spawn("solo", "on the old address")
    await until(lambda: len(a.calls) == 1, "the first call to reach a")
    app.doc["providers.a"]["base_url"] = f"{b.url}/v1"  # a now points at b's server
    app.doc["providers.a"]["max_concurrency"] = 4
    write(app.path, app.doc)
    status, answer = await app.reload()
    assert status == 200
    assert answer["changed"]["providers"] == {"changed": {"a": [
        {"key": "base_url", "old": f"{a.url}/v1", "new": f"{b.url}/v1"},
        {"key": "max_concurrency", "old": 1, "new": 4}]}}
    second = await app.done(await app.spawn("solo", "on the new address"))  # not behind the held call
    assert second["status"] == "completed" and len(b.calls) == 1
    a.gate.set()
    assert (await app.done(first))["status"] == "completed" and len(a.calls) == 1


# -- limits, allowlist, budgets, restart-only settings ------------------------------------------------

async def test_a_limit_change_applies(app):
    app.doc["limits"]["spawn"] = 2
    write(app.path, app.doc)
    status, answer = await app.reload()
    assert status == 200 and {"key": "limits.spawn", "old": 100_000, "new": 2} in answer["changed"]["settings"]
    codes = []
    for _ in range(3):
        resp = await app.client.post("/api/spawn", json={"model": "mb", "task": "x"}, headers=app.admin)
        codes.append((resp.status, resp.headers.get("X-RateLimit-Limit")))
    assert codes[:2] == [(200, "2"), (200, "2")] and codes[2][0] == 429


async def test_a_budget_change_applies(app):
    app.doc["budget"]["daily_budget"] = 0.0001
    write(app.path, app.doc)
    assert (await app.reload())[0] == 200
    limits = await (await app.client.get("/api/rate-limits", headers=app.admin)).json()
    assert limits["budget"]["daily_budget"] == 0.0001
    resp = await app.client.post("/api/spawn", json={"model": "mb", "task": "x"}, headers=app.admin)
    assert resp.status == 402


async def test_the_allowlist_change_applies_and_an_allowlist_set_over_the_api_wins(app):
    url = str(app.client.make_url("/api/agents"))

    async def from_127_0_0_2() -> int:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as other:
            async with other.get(url, headers=app.admin) as resp:
                return resp.status

    assert await from_127_0_0_2() == 200
    app.doc["security"]["allowed_ips"] = ["127.0.0.1/32"]
    write(app.path, app.doc)
    status, answer = await app.reload()
    assert status == 200 and answer["changed"]["settings"] == [
        {"key": "security.allowed_ips", "old": ["127.0.0.0/8"], "new": ["127.0.0.1/32"]}]
    assert await from_127_0_0_2() == 403
    # An admin sets the list over the API: it wins over the file until changed again, as at a start.
    put = await app.client.put("/api/security/ip-whitelist", json={"allowed_ips": ["127.0.0.0/8"]},
                               headers=app.admin)
    assert put.status == 200
    app.doc["security"]["allowed_ips"] = ["127.0.0.1/32", "10.0.0.0/8"]
    write(app.path, app.doc)
    status, answer = await app.reload()
    assert status == 200 and any("set over the API" in n for n in answer["notes"]), answer
    assert await from_127_0_0_2() == 200


async def test_settings_that_need_a_restart_are_reported_and_keep_their_running_value(app, caplog):
    state_dir = app.doc["server"]["state_dir"]
    app.doc["server"] |= {"port": 9, "state_dir": state_dir + "-elsewhere"}
    app.doc["plugins"]["call_timeout"] = 5.0
    app.doc["budget"]["daily_budget"] = 12.0  # and one that applies
    write(app.path, app.doc)
    with caplog.at_level(logging.WARNING, logger="j1mskyd.reload"):
        status, answer = await app.reload()
    assert status == 200
    needs = {e["key"]: (e["running"], e["in_file"]) for e in answer["needs_restart"]}
    assert needs == {"server.port": (0, 9), "server.state_dir": (state_dir, state_dir + "-elsewhere"),
                     "plugins.call_timeout": (30.0, 5.0)}
    assert all(e["why"] for e in answer["needs_restart"])
    assert answer["changed"] == {"settings": [{"key": "budget.daily_budget", "old": 50.0, "new": 12.0},
                                              # its default follows (daily x 30): said too
                                              {"key": "budget.monthly_ceiling", "old": 1500.0, "new": 360.0}]}
    for key in needs:
        assert f"{key} changed in the file" in caplog.text and "needs a restart" in caplog.text
    from j1mskyd.api.common import CONFIG
    running = app.client.server.app[CONFIG].current
    assert running.server.state_dir == state_dir and running.budget.daily_budget == 12.0
    # Reloading the same file again reports them again (still pending) and changes nothing else.
    status, again = await app.reload()
    assert {e["key"] for e in again["needs_restart"]} == set(needs) and again["changed"] == {}


# -- who may reload, and how often ------------------------------------------------------------------

async def test_only_an_admin_key_may_reload(app):
    made = await (await app.client.post("/api/keys", json={"name": "w", "scopes": ["agents:write", "agents:read",
                                                                                     "billing:read"]},
                                        headers=app.admin)).json()
    app.doc["models.mb"]["input_per_1k"] = 3.0
    write(app.path, app.doc)
    for path in ("/api/admin/reload", "/api/v1/admin/reload"):
        resp = await app.client.post(path, headers=bearer(made["token"]))
        assert resp.status == 403 and (await resp.json())["error"]["type"] in ("FORBIDDEN", "INSUFFICIENT_SCOPE")
        assert (await app.client.post(path)).status == 401
    mb = await (await app.client.get("/api/models/mb", headers=app.admin)).json()
    assert mb["data"]["pricing"]["input_tokens"] == 1.0  # not reloaded
    assert (await app.reload())[0] == 200


async def test_concurrent_reloads_run_one_after_the_other_and_are_audited(app):
    app.doc["models.mb"]["input_per_1k"] = 3.0
    write(app.path, app.doc)
    answers = await asyncio.gather(app.reload(), app.reload(), app.reload())
    assert [status for status, _ in answers] == [200, 200, 200]
    changed = [answer["changed"] for _, answer in answers]
    # One applied the change; the others, serialized behind it, found nothing left to change.
    # (The roles the file does not name are derived with their models cheapest first: mb's new
    # price reorders them, and the answer says so too.)
    applied = [c for c in changed if c]
    assert len(applied) == 1 and changed.count({}) == 2, changed
    assert applied[0]["models"] == {"changed": {"mb": [{"key": "input_per_1k", "old": 1.0, "new": 3.0}]}}
    assert set(applied[0]) <= {"models", "roles"}
    assert all(change == [{"key": "models", "old": ["ma", "mb", "solo"], "new": ["ma", "solo", "mb"]}]
               for change in applied[0].get("roles", {}).get("changed", {}).values()), applied[0]
    entries = await app.audit()
    assert len(entries) == 3 and all(e["details"]["result"] == "applied" for e in entries), entries


async def test_a_refused_reload_is_audited_too(app):
    write(app.path, {**app.doc, "nonsense": {"x": 1}})
    assert (await app.reload())[0] == 422
    entries = await app.audit()
    assert [e["details"]["result"] for e in entries] == ["refused"]
    assert entries[0]["severity"] == "warning" and "nonsense" in entries[0]["details"]["problems"][0]
    metrics = await (await app.client.get("/metrics", headers=app.admin)).text()
    assert 'j1msky_config_reloads_total{result="refused"} 1' in metrics
    assert "j1msky_config_last_reload_successful 0" in metrics


async def test_the_embedded_default_reloads_as_a_no_op_that_says_so(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    resp = await client.post("/api/admin/reload")
    body = await resp.json()
    assert resp.status == 200 and body["reloaded"] is False and "embedded default" in body["message"]


async def test_a_service_that_fails_to_take_the_config_does_not_hold_back_the_others(app, caplog):
    def broken(config):
        raise RuntimeError("a bug")

    app.services().reloader.appliers.insert(0, broken)
    app.doc["models.mb"]["input_per_1k"] = 3.0
    write(app.path, app.doc)
    with caplog.at_level(logging.ERROR, logger="j1mskyd.reload"):
        status, answer = await app.reload()
    assert status == 200 and any("RuntimeError" in n for n in answer["notes"])
    assert "could not take the new configuration" in caplog.text
    mb = await (await app.client.get("/api/models/mb", headers=app.admin)).json()
    assert mb["data"]["pricing"]["input_tokens"] == 3.0  # the services after it took it
