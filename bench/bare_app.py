"""The RSS baseline: a bare aiohttp app that imports the libraries j1mskyd needs.

    python bench/bare_app.py --port 18200 --state-dir /tmp/bare

What it has, and nothing else: uvloop installed as the event loop (as ``j1mskyd serve``
does when uvloop is importable), aiohttp's server (``aiohttp.web``) answering
``GET /api/health`` with JSON, aiohttp's client (one ``ClientSession``, as the daemon
keeps for its HTTP providers), and ``sqlite3`` with one WAL database open on a read
and a write connection (as the store does).  So the ratio daemon/bare is the cost of
j1mskyd's own code and of whatever extra it imports, not of the stack it stands on.

``--minimal`` drops sqlite and the client session (aiohttp.web alone) for comparison.
``--hello`` is ``--minimal`` plus ``GET /`` answering "Hello, World!" (text/plain): the
hello-world baseline of ``bench/health_ratio.py``.
``--shaped`` is ``--hello`` plus ``GET /shaped``: the daemon's /api/health *response*
(a 283-byte JSON body, charset, X-Request-Id and the four X-RateLimit-* headers, all
constant) through one trivial ``@web.middleware``, with no work behind it: what aiohttp
alone costs for that response, i.e. the best ratio any j1mskyd change can reach
(``health_ratio.py --shaped`` measures it in the same run).
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18200)
    p.add_argument("--state-dir", default="/tmp/j1msky-bare")
    p.add_argument("--minimal", action="store_true")
    p.add_argument("--hello", action="store_true", help="--minimal plus a hello-world handler on GET /")
    p.add_argument("--shaped", action="store_true",
                   help="--hello plus GET /shaped: the daemon's health response, constant, via one middleware")
    args = p.parse_args()
    args.hello = args.hello or args.shaped
    args.minimal = args.minimal or args.hello
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    import json

    import aiohttp
    from aiohttp import web

    conns = []
    if not args.minimal:
        import sqlite3
        os.makedirs(args.state_dir, exist_ok=True)
        path = os.path.join(args.state_dir, "bare.db")
        for _ in range(2):
            c = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA journal_mode=WAL")
            conns.append(c)
        conns[0].execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v REAL)")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"status": "healthy"}), content_type="application/json")

    async def lifecycle(app: web.Application):
        session = None if args.minimal else aiohttp.ClientSession()
        yield
        if session is not None:
            await session.close()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="Hello, World!")

    middlewares = []
    if args.shaped:
        import itertools
        ids = itertools.count(1)
        shaped_body = json.dumps({
            "status": "healthy", "version": "0.1.0", "uptime_seconds": 2, "error_rate": 0.0, "models_configured": 1,
            "agents": {"queued": 0, "running": 0},
            "providers": {"offline": {"state": "closed", "consecutive_failures": 0, "failures": 0, "successes": 0,
                                      "times_opened": 0, "retry_in_seconds": 0.0, "available": True}}},
            separators=(",", ":")).encode()
        rate_headers = {"X-RateLimit-Limit": "100000000", "X-RateLimit-Remaining": "100000000",
                        "X-RateLimit-Reset": "1795623355", "X-RateLimit-Reset-At": "2026-11-25T16:15:55Z"}

        @web.middleware
        async def one_middleware(request: web.Request, handler):
            response = await handler(request)
            response.headers["X-Request-Id"] = f"req_0123abcd{next(ids):x}"
            response.headers.update(rate_headers)
            return response

        async def shaped(request: web.Request) -> web.Response:
            return web.Response(body=shaped_body, content_type="application/json", charset="utf-8")

        middlewares.append(one_middleware)

    app = web.Application(middlewares=middlewares)
    app.router.add_get("/api/health", health)
    if args.hello:
        app.router.add_get("/", hello)
    if args.shaped:
        app.router.add_get("/shaped", shaped)
    app.cleanup_ctx.append(lifecycle)
    print(f"bare app pid {os.getpid()} python {sys.version.split()[0]} aiohttp {aiohttp.__version__}",
          file=sys.stderr)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
