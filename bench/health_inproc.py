"""GET /api/health in process: microseconds per request through the daemon's middleware and
handler (aiohttp's ``Application._handle``: routing, middleware, handler, the Response
object; no socket, no HTTP parsing), against the same for a "shaped" app (the daemon's
response, constant, through one trivial middleware, as ``bare_app.py --shaped``).

    .venv/bin/python bench/health_inproc.py                # the tree this script is in
    J1MSKY_ROOT=/tmp/j1-snap .venv/bin/python bench/health_inproc.py

Requests are made with aiohttp's ``make_mocked_request`` beforehand and not timed.  Far
less noisy than ``health_ratio.py`` on a shared machine (one thread, no load generator),
so the better number for "did this change make j1mskyd's own work cheaper"; it says
nothing about the socket and parser work, which is most of a real request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run_all import ROOT  # noqa: E402  (J1MSKY_ROOT or this checkout)
sys.path.insert(0, ROOT)

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import make_mocked_request  # noqa: E402

import health_ratio  # noqa: E402
from j1mskyd.app import build_app  # noqa: E402
from j1mskyd.config import load_config  # noqa: E402


class _Transport:
    """Just enough of a transport for request.remote (the IP guard reads it)."""

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def shaped_app() -> web.Application:
    ids = itertools.count(1)
    body = b"x" * 284
    rate = {"X-RateLimit-Limit": "100000000", "X-RateLimit-Remaining": "100000000",
            "X-RateLimit-Reset": "1795623355", "X-RateLimit-Reset-At": "2026-11-25T16:15:55Z"}

    @web.middleware
    async def one_middleware(request, handler):
        response = await handler(request)
        response.headers["X-Request-Id"] = f"req_0123abcd{next(ids):x}"
        response.headers.update(rate)
        return response

    async def shaped(request):
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    app = web.Application(middlewares=[one_middleware])
    app.router.add_get("/api/health", shaped)
    return app


async def per_request_us(app: web.Application, n: int, rounds: int) -> list[float]:
    runner = web.AppRunner(app)
    await runner.setup()  # the startup (services) without a socket
    transport = _Transport()
    times = []
    try:
        for _ in range(rounds):
            requests = [make_mocked_request("GET", "/api/health", app=app, transport=transport) for _ in range(n)]
            started = time.perf_counter()
            for request in requests:
                response = await app._handle(request)
            times.append((time.perf_counter() - started) / n * 1e6)
            assert response.status == 200, response.status
    finally:
        await runner.cleanup()
    return times


async def main(n: int, rounds: int) -> None:
    workdir = tempfile.mkdtemp(prefix="j1msky-inproc-")
    path = os.path.join(workdir, "health.toml")
    with open(path, "w") as f:
        f.write(health_ratio.health_config(workdir))
    cfg = load_config(path)
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, state_dir=os.path.join(workdir, "state")))
    for name, app in (("daemon", build_app(cfg)), ("shaped", shaped_app())):
        times = await per_request_us(app, n, rounds)
        print(f"{name}: min {min(times):.2f} us, median {statistics.median(times):.2f} us per request "
              f"({rounds} rounds of {n})")


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(os.environ.get("N", 10000)), int(os.environ.get("ROUNDS", 5))))
