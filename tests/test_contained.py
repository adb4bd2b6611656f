"""Drop-in plugins that misbehave at the edge of what Python allows (contained.py), loaded from a
real drop-in directory: a plugin that swallows its cancellation, that raises SystemExit or
KeyboardInterrupt, whose close() never returns; and the built-in plugins called directly."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.contained import ContainedProvider
from j1mskyd.providers import ProviderSettings
from tests.conftest import make_config, route_models, wait_status

STUBBORN = '''
J1MSKY_PLUGIN_API = 1
import asyncio
from j1mskyd.providers import CompletionResult

STARTED = []
SAW_ALL = []  # the closes that saw all four closes started: they ran at once
ALL_STARTED = asyncio.Event()

class Stubborn:
    def __init__(self, settings, session):
        self.mode = settings.options.get("mode")
        self.name = settings.name
    async def complete(self, request):
        if self.mode == "exit":
            raise SystemExit(3)
        if self.mode == "interrupt":
            raise KeyboardInterrupt
        if self.mode == "fine":
            return CompletionResult(text="fine", input_tokens=1, output_tokens=1)
        while True:  # swallows every cancellation
            try:
                await asyncio.sleep(1000)
            except asyncio.CancelledError:
                pass
    async def close(self):
        STARTED.append(self.name)
        if len(STARTED) == 4:
            ALL_STARTED.set()
        if self.mode == "fine":
            try:
                await asyncio.wait_for(ALL_STARTED.wait(), 0.5)  # one after another, none would come
                SAW_ALL.append(self.name)
            except asyncio.TimeoutError:
                pass
        while self.mode == "stubborn":
            try:
                await asyncio.sleep(1000)
            except asyncio.CancelledError:
                pass

def register(registry):
    registry.add_provider("stubborn", Stubborn)
'''


def with_dropins(tmp_path, **modes: str):
    """k2p5 -> the first provider named; each provider a Stubborn in its mode."""
    plugdir = tmp_path / "plugins.d"
    plugdir.mkdir(mode=0o755, parents=True)
    (plugdir / "stubborn.py").write_text(STUBBORN)
    (plugdir / "stubborn.py").chmod(0o644)
    base = make_config(tmp_path, runtime={"retry_base_delay": 0.01, "retry_max_delay": 0.02, "max_attempts": 2})
    providers = {name: ProviderSettings(name=name, plugin="stubborn", timeout=1, options={"mode": mode})
                 for name, mode in modes.items()}
    return dataclasses.replace(
        base, plugins=dataclasses.replace(base.plugins, dropin_dir=str(plugdir), call_timeout=1.0),
        providers=dict(base.providers) | providers, models=route_models(base, {"k2p5": next(iter(modes))}))


async def test_a_plugin_that_swallows_its_cancellation_times_out_and_is_left_behind(aiohttp_client, tmp_path):
    # Its agent stayed running, the agent's cancel never answered and the stop hung.
    client = await aiohttp_client(build_app(with_dropins(tmp_path, s="swallow")))
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "x", "timeout": 30})
    agent_id = (await resp.json())["agent_id"]
    done = await wait_status(client, agent_id, timeout=20)  # each attempt: 1 s + 1 s grace + 1 s left behind
    assert done["status"] == "failed" and "no answer within 1 s (cancelled by the daemon)" in done["error"], done
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "y", "timeout": 30})
    agent_id = (await resp.json())["agent_id"]
    resp = await asyncio.wait_for(client.delete(f"/api/agent/{agent_id}"), 20)  # the cancel answers
    assert resp.status == 200
    await asyncio.wait_for(client.close(), 30)  # and so does the stop


async def test_system_exit_or_keyboard_interrupt_from_a_plugin_is_a_plugin_bug(aiohttp_client, tmp_path):
    # SystemExit stopped the daemon, and the agent, still queued, stopped every restart again.
    for mode in ("exit", "interrupt"):
        client = await aiohttp_client(build_app(with_dropins(tmp_path / mode, e=mode)))
        resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "x"})
        done = await wait_status(client, (await resp.json())["agent_id"])
        assert done["status"] == "completed" and done["served_by"] != "k2p5", done  # fell back, as from a bug
        health = await (await client.get("/api/health")).json()  # still serving
        assert health["providers"]["e"]["failures"] == 2, health  # both attempts counted against it
        await client.close()


async def test_close_calls_run_at_once_and_a_stubborn_one_does_not_hold_the_stop(aiohttp_client, tmp_path):
    # One after another, each for call_timeout: four stuck close()s took four times that, past
    # systemd's TimeoutStopSec; one that swallowed its cancellation held the stop for ever.
    cfg = with_dropins(tmp_path, a="fine", b="stubborn", c="stubborn", d="fine")
    client = await aiohttp_client(build_app(cfg))
    done = await wait_status(client, (await (await client.post("/api/spawn", json={"model": "k2p5", "task": "x"}))
                                      .json())["agent_id"])
    assert done["result"] == "fine"
    slots = client.app[SERVICES].slots
    assert all(isinstance(slots[n].client, ContainedProvider) for n in "abcd")
    started = slots["a"].client._inner.__class__.__module__
    plugin = __import__(started, fromlist=["STARTED"])
    await asyncio.wait_for(client.close(), 30)
    assert sorted(plugin.STARTED) == ["a", "b", "c", "d"]
    assert sorted(plugin.SAW_ALL) == ["a", "d"]  # every close had started before either fine one ended


async def test_built_in_providers_are_called_directly(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    slot = client.app[SERVICES].slots["offline"]
    assert not isinstance(slot.client, ContainedProvider)


class _Streams:
    """A provider whose stream swallows its cancellation (mode "stubborn") or behaves."""

    def __init__(self, mode: str) -> None:
        self.mode, self.closed = mode, False

    async def complete(self, request):
        raise AssertionError("not called")

    async def stream(self, request):
        try:
            yield "a"
            yield "b"
            while self.mode == "stubborn":
                try:
                    await asyncio.sleep(1000)
                except asyncio.CancelledError:
                    pass
        finally:
            self.closed = True


async def test_a_stream_that_swallows_its_cancellation_still_times_out_and_cancels(monkeypatch):
    # Its aclose() raised "asynchronous generator is already running" in place of the
    # cancellation: the runtime saw a plugin error and fell back instead of ending the agent.
    from j1mskyd import contained
    from j1mskyd.deadline import within

    monkeypatch.setattr(contained, "ABANDON_AFTER", 0.2)
    provider = contained.contained_provider(_Streams("stubborn"), "s")

    async def read() -> list:
        return [item async for item in provider.stream(None)]

    with pytest.raises(LookupError, match="ours"):
        await within(0.2, read(), lambda: LookupError("ours"))
    task = asyncio.ensure_future(read())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_stream_read_to_its_end_or_left_early_is_closed():
    from j1mskyd.contained import contained_provider

    plugin = _Streams("fine")
    assert [item async for item in contained_provider(plugin, "s").stream(None)] == ["a", "b"] and plugin.closed
    plugin = _Streams("fine")
    reader = contained_provider(plugin, "s").stream(None)
    assert await reader.__anext__() == "a"
    await reader.aclose()  # the reader stops early: the plugin's stream is closed too
    assert plugin.closed
