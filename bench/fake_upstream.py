"""A fake OpenAI-compatible upstream for benchmarks: zero latency, or a fixed delay.

    python bench/fake_upstream.py --port 18100              # zero-latency
    python bench/fake_upstream.py --port 18101 --delay 60   # "slow upstream"

``POST /v1/chat/completions`` answers a fixed, pre-encoded body (no JSON decoding of
the request: the upstream's own cost is kept as small as possible so what is measured
is the daemon).  A request whose body says ``"stream": true`` (found by a byte search,
either spacing) gets the same answer as OpenAI's SSE chunks instead: a role chunk, the
text, the finish reason, the usage chunk and ``data: [DONE]``, pre-encoded too, the
first chunk flushed before the rest (``--chunk-delay S`` between chunks).  ``GET /stats`` returns the number of calls and the total and maximum
time spent inside the handler (the upstream's "own time", excluding its ``--delay``),
which the load script subtracts when it reports added latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

BODY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "model": "bench",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12},
}).encode()


def _sse(chunk: dict) -> bytes:
    return b"data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "bench",
                                   **chunk}).encode() + b"\n\n"


STREAM_CHUNKS = (
    _sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}),
    _sse({"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}]}),
    _sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    _sse({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12}}),
    b"data: [DONE]\n\n",
)
STREAM_MARKERS = (b'"stream": true', b'"stream":true')


def make_app(delay: float, chunk_delay: float = 0.0) -> web.Application:
    stats = {"calls": 0, "streams": 0, "in_flight": 0, "max_in_flight": 0, "own_time_total": 0.0, "own_time_max": 0.0}

    async def completions(request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        raw = await request.read()
        if any(marker in raw for marker in STREAM_MARKERS):
            return await streamed(request)
        stats["calls"] += 1
        stats["in_flight"] += 1
        stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
        try:
            if delay:
                own = time.perf_counter() - t0
                await asyncio.sleep(delay)
                t0 = time.perf_counter() - own
            resp = web.Response(body=BODY, content_type="application/json")
        finally:
            stats["in_flight"] -= 1
        own = time.perf_counter() - t0 - (delay if delay else 0.0)
        stats["own_time_total"] += own
        stats["own_time_max"] = max(stats["own_time_max"], own)
        return resp

    async def streamed(request: web.Request) -> web.StreamResponse:
        stats["streams"] += 1
        if delay:
            await asyncio.sleep(delay)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for chunk in STREAM_CHUNKS:
            await resp.write(chunk)
            if chunk_delay:
                await asyncio.sleep(chunk_delay)
        await resp.write_eof()
        return resp

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response({**stats, "delay": delay})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/stats", get_stats)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18100)
    p.add_argument("--delay", type=float, default=0.0, help="seconds to hold each answer (slow upstream)")
    p.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between the chunks of a streamed answer")
    args = p.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(args.delay, args.chunk_delay), host=args.host, port=args.port, print=None, access_log=None,
                backlog=4096)


if __name__ == "__main__":
    main()
