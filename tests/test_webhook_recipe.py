"""docs/webhooks.md's Python receiver, run as printed against the daemon's real deliveries.

The recipe is read from the document (its code block under "What a receiver gets"), its one
line that starts a server on port 9000 left out, and served on a free loopback port by the
test.  What it must do: take a delivery whose event is older than any freshness window (a retry
comes up to a day later, a redelivery by hand any time: the payload's ``timestamp`` is the
event's, the same in every attempt), and process a replayed body once, whatever
``X-J1MSKY-Delivery`` header the replay carries (that header is not signed; the body's event
``id`` is).  The recipe that refused payloads older than 5 minutes refused every late retry
for a day, and the one that deduplicated on the header processed replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import re
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from j1mskyd.app import build_app
from j1mskyd.config import WebhooksConfig
from tests import conftest
from tests.conftest import Clock

DOC = Path(__file__).resolve().parent.parent / "docs" / "webhooks.md"
RUN_LINE = "web.run_app(app, port=9000)"


def recipe() -> dict:
    """The recipe's names (``app``, ``webhook``, ``SECRET``, ``seen``...), as the document prints them."""
    text = DOC.read_text()
    section = text[text.index("### What a receiver gets"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert RUN_LINE in code, "the recipe no longer ends by starting its server as this test expects"
    names: dict = {}
    exec(compile(code.replace(RUN_LINE, ""), str(DOC), "exec"), names)  # noqa: S102 - our own document
    return names


async def test_the_documented_receiver_takes_late_retries_and_processes_a_replay_once(aiohttp_client, tmp_path):
    names = recipe()
    captured: list[tuple[bytes, dict[str, str]]] = []

    async def tapped(request: web.Request) -> web.Response:  # the recipe's handler, the wire tapped
        captured.append((await request.read(), dict(request.headers)))
        return await names["webhook"](request)

    receiver = web.Application()
    receiver.router.add_post("/webhook", tapped)
    server = await aiohttp_client(receiver)
    url = str(server.make_url("/webhook"))
    # The daemon's clock an hour behind: each event it tells is an hour old when it arrives, as
    # after a receiver's outage of an hour.
    cfg = dataclasses.replace(conftest.make_config(tmp_path),
                              webhooks=WebhooksConfig(allowed_networks=("127.0.0.0/8",)))
    daemon = await aiohttp_client(build_app(cfg, clock=Clock(time.time() - 3600)))
    resp = await daemon.post("/api/webhooks", json={"url": url, "events": ["webhook.test"],
                                                    "secret": names["SECRET"].decode()})
    hook = (await resp.json())["data"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert (await daemon.post(f"/api/webhooks/{hook['id']}/test")).status == 202
        for _ in range(250):  # until the first attempt is recorded
            rows = (await (await daemon.get(f"/api/webhooks/{hook['id']}/deliveries")).json())["data"]
            if rows[0]["attempts"]:
                break
            await asyncio.sleep(0.02)
        assert rows[0]["status"] == "delivered", rows  # an hour old, and taken
        body, headers = captured[0]
        replay = {k: v for k, v in headers.items() if k.startswith("X-J1MSKY") or k == "Content-Type"}
        replay["X-J1MSKY-Delivery"] = "dlv_replayed00000000"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=body, headers=replay) as again:
                assert again.status == 200
    assert printed.getvalue().splitlines() == ["webhook.test None"]  # processed once
    assert len(names["seen"]) == 1
