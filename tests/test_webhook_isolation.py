"""A receiver that hangs (a real aiohttp server on loopback that takes requests and never
answers) beside a healthy one: the healthy one keeps getting its deliveries while the hung
one is stuck, and the daemon gives up on the hung call after ``[plugins] call_timeout``,
counts it as a failed attempt and sends it again.

Loopback targets are allowed in these configs (``[webhooks] allowed_networks``), as in
tests/test_webhooks.py.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from aiohttp import web

from j1mskyd.app import build_app
from tests.conftest import wait_status
from tests.receiver import _free_port
from tests.test_webhooks import SECRET, create_hook, deliveries, eventually, make_config, spawn
from tests.test_webhooks import fast_retries, receiver  # noqa: F401  (fixtures)


class HungReceiver:
    """Accepts each POST, records its delivery id, and holds it unanswered until ``release``
    is set (then answers 200)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.arrived: list[str | None] = []
        self.open = 0
        self.release = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrived.append(request.headers.get("X-J1MSKY-Delivery"))
        self.open += 1
        self._changed.set()
        try:
            await self.release.wait()
        finally:
            self.open -= 1
        return web.json_response({"ok": True})

    async def start(self) -> HungReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        self.release.set()  # let held handlers finish so the server can close
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_arrived(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.arrived) < count:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def hung():
    rec = await HungReceiver().start()
    yield rec
    await rec.stop()


async def test_a_hung_receiver_stalls_only_its_own_deliveries(aiohttp_client, tmp_path, receiver, hung):
    client = await aiohttp_client(build_app(make_config(tmp_path)))  # call_timeout: the default 30 s
    stuck = await create_hook(client, url=hung.url, events=["agent.completed"], secret=SECRET)
    await create_hook(client, url=receiver.url, events=["agent.completed"], secret=SECRET)
    first = await spawn(client)
    await hung.wait_arrived(1)
    later = [await spawn(client) for _ in range(3)]
    for agent_id in later:
        await wait_status(client, agent_id)
    # Generous bound for what takes milliseconds: the healthy receiver is not held behind
    # the hung one (which an HTTP sink would wait on for 10 s, the daemon for 30 s).
    await receiver.wait_for(4, timeout=5)
    assert sorted(p["data"]["agent_id"] for p in receiver.payloads()) == sorted([first, *later])
    # All the while the hung receiver holds its first delivery, and the later ones wait behind
    # it (its order is kept).
    assert hung.open == 1 and len(hung.arrived) == 1
    rows = await deliveries(client, stuck["id"])
    assert len(rows) == 4 and {r["status"] for r in rows} == {"pending"} and {r["attempts"] for r in rows} == {0}


async def test_a_hung_delivery_is_timed_out_and_retried(aiohttp_client, tmp_path, hung, fast_retries):
    base = make_config(tmp_path)
    cfg = dataclasses.replace(base, plugins=dataclasses.replace(base.plugins, call_timeout=0.3))
    client = await aiohttp_client(build_app(cfg))
    hook = await create_hook(client, url=hung.url, events=["agent.completed"], secret=SECRET)
    await wait_status(client, await spawn(client))
    await hung.wait_arrived(2)  # sent again: the daemon gave up on the first call
    assert len(set(hung.arrived)) == 1  # the same delivery each time
    [row] = await deliveries(client, hook["id"])
    assert row["status"] == "pending" and row["attempts"] >= 1
    assert row["last_error"] == "sink did not return within 0.3 s (cancelled by the daemon)"
    hung.release.set()  # the receiver recovers: the next attempt is answered

    async def delivered():
        [row] = await deliveries(client, hook["id"])
        return row if row["status"] == "delivered" else None

    row = await eventually(delivered, what="the delivery once the receiver answers")
    assert row["attempts"] >= 2 and row["last_error"] is None
