"""Reload without restart on a real daemon process, with real SIGHUP (what ``systemctl reload
j1msky`` sends: packaging/debian/j1msky.service's ExecReload), under load: agents running and
queued against a slow fake upstream on loopback when the reload comes.

The upstream's calls are held by the test (tests/test_reload.py's HeldUpstream), so "running"
and "queued" are states the test arranges, not timing it hopes for.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, wait_until
from tests.test_reload import HeldUpstream, write

WAIT = 30.0  # every wait's bound (generous; nothing is timed)
AGENTS_BEFORE = 6  # spawned before the reload: 2 running (the provider's limit), 4 queued
AGENTS_AFTER = 2


def doc(tmp_path: Path, slow: HeldUpstream, fast: HeldUpstream, price: float = 1.0) -> dict[str, Any]:
    model = {"upstream": "up", "output_per_1k": 2.0, "blended_per_1k": 1.0, "max_tokens": 100}
    return {
        "runtime": {"max_concurrency": 16},
        "plugins": {"dropin_dir": str(tmp_path / "no-plugins.d")},
        "limits": {"spawn": 10_000, "agent_read": 100_000},
        "providers.slow": {"plugin": "openai_compat", "base_url": f"{slow.url}/v1", "max_concurrency": 2},
        "providers.fast": {"plugin": "openai_compat", "base_url": f"{fast.url}/v1", "max_concurrency": 8},
        "models.m1": {"provider": "slow", **model, "input_per_1k": price, "fallback": "m2"},
        "models.m2": {"provider": "fast", **model, "input_per_1k": 1.0},
    }


async def in_thread(call: Any, *args: Any) -> Any:
    return await asyncio.to_thread(call, *args)


@contextlib.asynccontextmanager
async def reloading_daemon(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Path, HeldUpstream, HeldUpstream]]:
    """A daemon on doc()'s config file, the file, and its two upstreams (the slow one held)."""
    slow, fast = await HeldUpstream().start(), await HeldUpstream().start()
    config = write(tmp_path / "config.toml", doc(tmp_path, slow, fast))
    daemon = Daemon(tmp_path, tmp_path / "state", config)
    try:
        await in_thread(daemon.start)
        slow.gate.clear()
        yield daemon, config, slow, fast
        code, _ = await in_thread(daemon.stop)  # retired clients and all, a clean stop
        assert code == 0 and "Traceback" not in daemon.log(), daemon.log()
    finally:
        slow.gate.set()
        await in_thread(daemon.close)
        await slow.close()
        await fast.close()


async def reloaded(daemon: Daemon, config: Path, new: dict[str, Any]) -> None:
    """The file rewritten, SIGHUP (as systemctl reload sends it), and the reload in the log."""
    done = daemon.log().count("config reloaded from")
    write(config, new)
    daemon.send(signal.SIGHUP)
    await in_thread(wait_until, lambda: daemon.log().count("config reloaded from") > done, WAIT, 0.05, "the reload")


async def test_sighup_under_load_every_agent_finishes_once_and_new_prices_apply(tmp_path):
    async with reloading_daemon(tmp_path) as (daemon, config, slow, fast):
        pid = daemon.proc.pid
        before = [await in_thread(daemon.spawn, f"task {n}", "m1") for n in range(AGENTS_BEFORE)]
        await in_thread(wait_until, lambda: len(slow.calls) == 2, WAIT, 0.05, "two calls held upstream")
        statuses = [(await in_thread(daemon.get, f"/api/agent/{a}"))["status"] for a in before]
        assert sorted(statuses) == ["queued"] * 4 + ["running"] * 2

        # The operator doubles m1's input price and adds a model; systemctl reload sends SIGHUP.
        edited = doc(tmp_path, slow, fast, price=2.0)
        edited["models.m3"] = {"provider": "fast", "upstream": "m3-up", "input_per_1k": 0.5,
                               "output_per_1k": 0.5, "blended_per_1k": 0.5}
        await reloaded(daemon, config, edited)
        assert "models +m3 ~m1" in daemon.log()
        after = [await in_thread(daemon.spawn, f"late {n}", "m1") for n in range(AGENTS_AFTER)]
        m3 = await in_thread(daemon.spawn, "new model", "m3")

        slow.gate.set()
        ended = {a: await in_thread(daemon.wait_agent, a, ("completed", "failed", "cancelled"), WAIT)
                 for a in (*before, *after, m3)}
        assert {a["status"] for a in ended.values()} == {"completed"}, ended
        # Every agent ran exactly once: one call each, none repeated, none lost.
        assert len(slow.calls) == AGENTS_BEFORE + AGENTS_AFTER and len(fast.calls) == 1
        assert all(a["attempts"] == 1 for a in ended.values())
        old, new = 0.011 * 1.0 + 0.007 * 2.0, 0.011 * 2.0 + 0.007 * 2.0
        costs = sorted(ended[a]["cost"] for a in before)
        # The two calls under way kept the prices they started with; the queued ones started
        # after the reload, at the new ones; so did every agent spawned after it.
        assert costs == [pytest.approx(old)] * 2 + [pytest.approx(new)] * 4
        assert [ended[a]["cost"] for a in after] == [pytest.approx(new)] * AGENTS_AFTER
        assert ended[m3]["served_by"] == {"model": "m3", "provider": "fast"}
        assert daemon.proc.pid == pid and daemon.proc.poll() is None  # the same process throughout

        # An invalid file: SIGHUP logs every problem and changes nothing; the API says the same.
        broken = dict(edited)
        broken["models.m1"] = {**edited["models.m1"], "input_per_1k": -1}
        broken["runtime"] = {"max_concurrency": 16, "max_atempts": 2}
        write(config, broken)
        daemon.send(signal.SIGHUP)
        await in_thread(wait_until, lambda: "config reload refused: 2 problem(s)" in daemon.log(), WAIT, 0.05,
                        "the refusal in the log")
        log = daemon.log()
        assert "models.m1.input_per_1k: must be >= 0" in log and "runtime.max_atempts: unknown key" in log
        status, answer = await in_thread(daemon.request, "POST", "/api/admin/reload")
        assert status == 422 and sorted(d["field"] for d in answer["error"]["details"]) == [
            "models.m1.input_per_1k", "runtime.max_atempts"]
        m1 = (await in_thread(daemon.get, "/api/models/m1"))["data"]["pricing"]
        assert m1["input_tokens"] == 2.0  # the last good configuration is in force
        assert (await in_thread(daemon.wait_agent, await in_thread(daemon.spawn, "still", "m1"),
                                ("completed",), WAIT))["cost"] == pytest.approx(new)


async def test_sighup_removing_a_provider_moves_its_queued_agents_down_their_chain(tmp_path):
    async with reloading_daemon(tmp_path) as (daemon, config, slow, fast):
        agents = [await in_thread(daemon.spawn, f"task {n}", "m1") for n in range(4)]
        await in_thread(wait_until, lambda: len(slow.calls) == 2, WAIT, 0.05, "two calls held upstream")
        status = {a: (await in_thread(daemon.get, f"/api/agent/{a}"))["status"] for a in agents}
        running = [a for a in agents if status[a] == "running"]
        assert len(running) == 2 and sorted(status.values()) == ["queued", "queued", "running", "running"]
        edited = doc(tmp_path, slow, fast)
        del edited["providers.slow"], edited["models.m1"]
        await reloaded(daemon, config, edited)
        for agent_id in agents:
            if agent_id in running:
                continue
            agent = await in_thread(daemon.wait_agent, agent_id, ("completed", "failed"), WAIT)
            assert agent["served_by"] == {"model": "m2", "provider": "fast"}, agent  # down the chain m1 had
        for agent_id in running:  # their calls are held upstream, on the removed provider's client
            assert (await in_thread(daemon.get, f"/api/agent/{agent_id}"))["status"] == "running"
        slow.gate.set()
        for agent_id in running:
            agent = await in_thread(daemon.wait_agent, agent_id, ("completed", "failed"), WAIT)
            assert agent["served_by"] == {"model": "m1", "provider": "slow"}, agent
        assert len(slow.calls) == 2 and len(fast.calls) == 2
        assert "1 provider client(s) retired: slow" in daemon.log()
