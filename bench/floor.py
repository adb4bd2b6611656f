"""What the stack alone costs, for comparison with the daemon's numbers.

    python bench/floor.py latency  --upstream http://127.0.0.1:18100 --db /tmp/j1b/floor.db
    python bench/floor.py inflight --upstream http://127.0.0.1:18101 -n 10000   # a --delay 60 upstream

latency   p50/p99 of (a) one aiohttp client POST to the fake upstream (the provider call the
          daemon makes per agent), (b) one sqlite INSERT + COMMIT run through
          run_in_executor in WAL mode with synchronous NORMAL and FULL (what one store
          write costs).  An agent needs one of (a) and at least two awaited commits of (b)
          (the insert before the spawn answers, the final update), so (a) + 2 x (b) is the
          floor under the daemon's added latency.
inflight  RSS growth of a bare uvloop + aiohttp client process holding ``n`` POSTs open at
          once against a slow upstream: the part of "10,000 agents running" that is
          aiohttp's connections, sockets and responses rather than j1mskyd's.  Like for like
          with the daemon's calls: one task per call, the session and pool made as the
          daemon makes its providers' (app.upstream_connector: ``limit`` = the calls, no
          per-host limit; session timeout connect 30 s), each call posted as
          provider_http.HttpCaller posts (the openai_compat body of a bench spawn, JSON
          encoded, Content-Type, a per-call ClientTimeout, no redirects), its answer read
          and decoded.  RSS is read before the calls and 2 s after the upstream's /stats
          counts all ``n`` arrived (as load.inflight waits for /api/health), so
          ``run_all.py --only inflight`` takes both in one run against the same upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import rss_kb, summary_ms  # noqa: E402

BODY = json.dumps({"model": "k2p5", "messages": [{"role": "user", "content": "bench task: say ok"}],
                   "max_tokens": 4096}).encode()


async def latency(upstream: str, db: str, n: int) -> dict:
    url = upstream.rstrip("/") + "/v1/chat/completions"
    post: list[float] = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            t = time.perf_counter()
            async with s.post(url, data=BODY, headers={"Content-Type": "application/json"}) as r:
                json.loads(await r.read())
            post.append(time.perf_counter() - t)
    out = {"http_post_ms": summary_ms(post)}
    loop = asyncio.get_running_loop()
    for sync in ("NORMAL", "FULL"):
        if os.path.exists(db):
            os.unlink(db)
        conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={sync}")
        conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, a REAL, b TEXT)")

        def commit(i: int) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?, ?, ?)", (f"id{i}", time.time(), "x" * 200))
            conn.execute("COMMIT")

        ts = []
        for i in range(n):
            t = time.perf_counter()
            await loop.run_in_executor(None, commit, i)
            ts.append(time.perf_counter() - t)
        conn.close()
        out[f"executor_commit_{sync.lower()}_ms"] = summary_ms(ts)
    return out


async def inflight(upstream: str, n: int, settle: float = 2.0, call_timeout: float = 3600.0) -> dict:
    base = upstream.rstrip("/")
    url = base + "/v1/chat/completions"
    pid = os.getpid()
    started = 0
    connector = aiohttp.TCPConnector(limit=n, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None, connect=30)) as s, \
            aiohttp.ClientSession() as stats:
        async def upstream_calls() -> int:
            async with stats.get(base + "/stats") as r:
                return (await r.json())["calls"]

        before = await upstream_calls()
        idle = rss_kb(pid)

        async def one(i: int) -> dict:
            nonlocal started
            started += 1
            body = {"model": "k2p5", "messages": [{"role": "user", "content": f"bench task {i}: say ok"}],
                    "max_tokens": 4096}
            async with s.post(url, data=json.dumps(body, separators=(",", ":")).encode(),
                              headers={"Content-Type": "application/json"},
                              timeout=aiohttp.ClientTimeout(total=call_timeout), allow_redirects=False) as r:
                raw = await r.read()
            return json.loads(raw)

        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        while await upstream_calls() - before < n and time.perf_counter() - t0 < 120:
            await asyncio.sleep(0.2)
        arrived = await upstream_calls() - before
        await asyncio.sleep(settle)
        loaded = rss_kb(pid)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"n": n, "started": started, "arrived_upstream": arrived, "rss_idle_mb": round(idle / 1024, 1),
            "rss_loaded_mb": round(loaded / 1024, 1), "rss_delta_mb": round((loaded - idle) / 1024, 1),
            "per_call_kb": round((loaded - idle) / n, 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("latency", "inflight"))
    p.add_argument("--upstream", required=True)
    p.add_argument("--db", default="/tmp/j1msky-floor.db")
    p.add_argument("-n", type=int, default=0)
    a = p.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    if a.mode == "latency":
        out = asyncio.run(latency(a.upstream, a.db, a.n or 500))
    else:
        out = asyncio.run(inflight(a.upstream, a.n or 10_000))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
