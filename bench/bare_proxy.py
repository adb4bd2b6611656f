"""The floor of any Python aiohttp proxy (issues 13 and 14): ``POST /v1/chat/completions``
forwarded to one upstream and its answer handed back, nothing else.

    python bench/bare_proxy.py --port 18300 --upstream http://127.0.0.1:18100

What a front door cannot do without: uvloop, an ``aiohttp.web`` server, one shared
``aiohttp.ClientSession`` (a pool as large as the calls, as the daemon sizes its own), the
request body passed on as bytes, the upstream's answer read whole and returned
(``application/json``) or, when the upstream streams (``text/event-stream``), passed on
chunk by chunk as it comes.  No auth, no parsing, no records, no budget: what is left of
a call here is the HTTP server's and the HTTP client's own CPU, so its calls/s at 32
connections beside the bare upstream's (``bench/frontdoor.py``, target ``proxy``) is the
best ratio any aiohttp proxy can show on this machine, and its CPU per call the floor
under "CPU per agent through HTTP".
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

PATH = "/v1/chat/completions"


def make_app(upstream: str) -> web.Application:
    target = upstream.rstrip("/") + PATH
    app = web.Application()

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=0)  # no cap of its own, as the daemon's pool
        async with aiohttp.ClientSession(connector=connector) as session:
            app["session"] = session
            yield

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        session: aiohttp.ClientSession = request.app["session"]
        async with session.post(target, data=body, headers={"Content-Type": "application/json"}) as up:
            if up.content_type != "text/event-stream":
                return web.Response(body=await up.read(), status=up.status, content_type="application/json")
            resp = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post(PATH, forward)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="base URL of the upstream, e.g. http://127.0.0.1:18100")
    args = p.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(args.upstream), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
