"""Plugin factories are bounded like every other plugin call: a drop-in provider or sink
factory that blocks (a plain function that never returns) runs on a thread of its own, is
abandoned after ``[plugins] call_timeout`` and reported like any refusal; it stalls neither
the start, nor the event loop, nor a webhook's creation.  Until the hung call returns, its
kind is refused at once (one thread held, not one per attempt).

The drop-in's factories wait on a module-level ``threading.Event`` for at most HOLD seconds
(so every test ends by itself); the tests set it to let them return.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.plugin_api import ProviderSettings
from j1mskyd.plugins import PluginError, PluginRegistry, off_loop
from tests.conftest import wait_status
from tests.test_plugin_api import config_with, dropin
from tests.test_webhooks import LOOPBACK

HOLD = 20.0   # the longest a factory here blocks; far above the call_timeout the tests use
TIMEOUT = 0.5

STUCK = f'''
import threading
from j1mskyd.plugin_api import CompletionResult

J1MSKY_PLUGIN_API = 1
RELEASE = threading.Event()
CALLS = []

class Provider:
    def __init__(self, settings, session):
        CALLS.append(settings.name)
        RELEASE.wait({HOLD})      # blocks the calling thread, as a careless factory would
    async def complete(self, request):
        return CompletionResult(text="late", input_tokens=1, output_tokens=1)

class Sink:
    def __init__(self, settings, session):
        CALLS.append(settings["url"])
        RELEASE.wait({HOLD})
    async def deliver(self, payload, *, delivery_id, event):
        pass

async def async_factory(settings, session):
    return Sink(settings, session)

def register(registry):
    registry.add_provider("stuck", Provider)
    registry.add_sink("stuck_sink", Sink)
    registry.add_sink("async_sink", async_factory)
'''


def _plugin():
    return sys.modules["j1msky_plugins.stuck"]


@pytest.fixture
def stuck_dir(tmp_path):
    plugdir = dropin(tmp_path, "stuck", STUCK)
    yield plugdir
    module = sys.modules.get("j1msky_plugins.stuck")
    if module is not None:
        module.RELEASE.set()  # abandoned threads return and end


def _config(tmp_path, plugdir, **providers):
    cfg = config_with(tmp_path, plugdir, providers=providers or None, call_timeout=TIMEOUT)
    return dataclasses.replace(cfg, webhooks=LOOPBACK)


async def test_a_hung_provider_factory_does_not_stall_the_start(aiohttp_client, tmp_path, stuck_dir):
    cfg = _config(tmp_path, stuck_dir, slow=ProviderSettings(name="slow", plugin="stuck", base_url="http://127.0.0.1:9",
                                                             api_key="sk-test", timeout=10))
    async with asyncio.timeout(HOLD / 2):  # the start is not held for the factory's HOLD
        client = await aiohttp_client(build_app(cfg))
    slots = client.server.app[SERVICES].slots
    assert _plugin().CALLS == ["slow"]
    assert slots["slow"].client is None
    assert "factory did not return within 0.5 s" in slots["slow"].error
    health = await (await client.get("/api/health")).json()
    assert health["status"] in ("healthy", "degraded"), health
    # The other providers were built and serve: an agent on the offline provider completes.
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "still served"})
    assert resp.status == 200, await resp.text()
    agent = await wait_status(client, (await resp.json())["agent_id"], {"completed"})
    assert agent["status"] == "completed"


async def test_a_hung_sink_factory_refuses_the_webhook_and_not_the_others(aiohttp_client, tmp_path, stuck_dir):
    client = await aiohttp_client(build_app(_config(tmp_path, stuck_dir)))
    url = "http://127.0.0.1:9/hook"
    async with asyncio.timeout(HOLD / 2):
        resp = await client.post("/api/webhooks", json={"url": url, "sink": "stuck_sink"})
    answer = await resp.json()
    assert resp.status == 400, answer
    assert answer["error"]["details"] == [{"field": "url", "message": (
        "sink 'stuck_sink' refused this webhook: sink kind 'stuck_sink': its factory did not return within "
        "0.5 s ([plugins] call_timeout)")}]
    # While that call still hangs, the kind is refused at once: no second thread is held.
    resp = await client.post("/api/webhooks", json={"url": url, "sink": "stuck_sink"})
    answer = await resp.json()
    assert resp.status == 400 and "has not returned yet" in answer["error"]["message"], answer
    assert _plugin().CALLS == [url]
    # Other kinds are unaffected, and nothing of the refused ones was stored.
    resp = await client.post("/api/webhooks", json={"url": url})
    assert resp.status == 201, await resp.text()
    listed = await (await client.get("/api/webhooks")).json()
    assert [h["sink"] for h in listed["webhooks"]] == ["http"]

    # Once the hung call returns, the kind is usable again (and its factory answers at once now).
    _plugin().RELEASE.set()
    for _ in range(200):  # bounded: the abandoned thread returns within moments of the release
        resp = await client.post("/api/webhooks", json={"url": url, "sink": "stuck_sink"})
        if resp.status == 201:
            break
        await asyncio.sleep(0.05)
    assert resp.status == 201, await resp.text()


async def test_an_async_sink_factory_is_refused_with_a_clear_reason(aiohttp_client, tmp_path, stuck_dir):
    client = await aiohttp_client(build_app(_config(tmp_path, stuck_dir)))
    resp = await client.post("/api/webhooks", json={"url": "http://127.0.0.1:9/hook", "sink": "async_sink"})
    answer = await resp.json()
    assert resp.status == 400, answer
    assert "the factory must be a plain function (or class), not async" in answer["error"]["message"]


async def test_off_loop_returns_raises_and_times_out():
    registry = PluginRegistry()
    assert await off_loop(registry, "sink", "a", lambda: 42, 5) == 42

    def refuse():
        raise ValueError("bad settings")

    with pytest.raises(ValueError, match="bad settings"):
        await off_loop(registry, "sink", "a", refuse, 5)

    def plugin_timeout():  # the factory's own TimeoutError is its own failure, not the daemon's bound
        raise TimeoutError("upstream said no")

    with pytest.raises(TimeoutError, match="upstream said no"):
        await off_loop(registry, "sink", "a", plugin_timeout, 5)

    import threading
    release = threading.Event()
    with pytest.raises(PluginError, match="did not return within 0.1 s"):
        await off_loop(registry, "sink", "hangs", lambda: release.wait(HOLD), 0.1)
    with pytest.raises(PluginError, match="has not returned yet"):
        await off_loop(registry, "sink", "hangs", lambda: 1, 5)
    assert await off_loop(registry, "provider", "hangs", lambda: 2, 5) == 2  # another (what, kind)
    release.set()
    for _ in range(200):
        try:
            assert await off_loop(registry, "sink", "hangs", lambda: 3, 5) == 3
            break
        except PluginError:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the kind stayed refused after its hung call returned")
