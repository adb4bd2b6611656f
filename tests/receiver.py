"""A webhook receiver for tests: a real aiohttp server on loopback.

It checks ``X-J1MSKY-Signature`` against the HMAC-SHA256 of the *raw* body with the
shared secret (computed here with hmac/hashlib, not with the daemon's helper), records
every request it accepts (by ``X-J1MSKY-Delivery`` id), and can be told to fail
(``fail = True``: HTTP 500) or be stopped and started again on the same port, as a
receiver that goes down and comes back.  A request with a bad signature is answered
401 and recorded in ``rejected``.  With ``secret=None`` nothing is checked (Slack).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Received:
    delivery_id: str | None
    event: str | None
    signature: str | None
    body: bytes
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


def expected_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Receiver:
    def __init__(self, secret: str | None = "receiver-secret-123", port: int | None = None,
                 path: str = "/hook", host: str = "127.0.0.1") -> None:
        self.secret = secret
        self.host = host               # another loopback address (127.0.0.2) plays a second machine
        self.port = port or _free_port(host)
        self.path = path
        self.fail = False              # answer 500 (after recording the attempt in ``failed``)
        self.endless = False           # answer 200 with a body that never ends (until the sender hangs up)
        self.hang = False              # never answer (recorded in ``hung``)
        self.hung: list[Received] = []
        self.hung_up = 0               # endless answers whose reader closed the connection
        self.received: list[Received] = []
        self.failed: list[Received] = []
        self.rejected: list[Received] = []
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        got = Received(request.headers.get("X-J1MSKY-Delivery"), request.headers.get("X-J1MSKY-Event"),
                       request.headers.get("X-J1MSKY-Signature"), body, dict(request.headers))
        if self.secret is not None and not hmac.compare_digest(
                got.signature or "", expected_signature(self.secret, body)):
            self.rejected.append(got)
            self._changed.set()
            return web.json_response({"error": "bad signature"}, status=401)
        if self.hang:
            self.hung.append(got)
            self._changed.set()
            await self._stopping.wait()  # never answers: released when the receiver stops
        if self.fail:
            self.failed.append(got)
            self._changed.set()
            return web.json_response({"error": "receiver is failing"}, status=500)
        self.received.append(got)
        self._changed.set()
        if self.endless:
            return await self._endless(request)
        return web.json_response({"ok": True})

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"x" * 65536)
                await asyncio.sleep(0)
        except (ConnectionError, RuntimeError):  # the reader hung up (aiohttp 3.8: RuntimeError on a closed transport)
            self.hung_up += 1
            self._changed.set()
        return resp

    async def start(self) -> Receiver:
        self._stopping.clear()
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, host=self.host, port=self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        self._stopping.set()  # hung handlers end, so the server need not wait for them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- what arrived -----------------------------------------------------------------------
    def delivery_ids(self) -> list[str | None]:
        return [r.delivery_id for r in self.received]

    def payloads(self) -> list[dict[str, Any]]:
        return [r.payload for r in self.received]

    def events(self) -> list[str]:
        return [r.payload["event"] for r in self.received]

    async def wait_for(self, count: int, timeout: float = 10.0, what: str = "received") -> list[Received]:
        """Wait until ``len(self.<what>) >= count``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(getattr(self, what)) < count:
            left = end - loop.time()
            if left <= 0:
                raise AssertionError(f"receiver: {len(getattr(self, what))} {what} after {timeout:g} s, "
                                     f"wanted {count}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.2))
            except asyncio.TimeoutError:
                pass
        return getattr(self, what)
