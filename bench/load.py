"""Drive a running j1mskyd over HTTP and measure it.

    python bench/load.py throughput --url http://127.0.0.1:18080 --db STATE/j1msky.db -n 10000 -c 64
    python bench/load.py latency    --url http://127.0.0.1:18080 --db STATE/j1msky.db --rate 50 --duration 10
    python bench/load.py inflight   --url http://127.0.0.1:18080 --pid PID -n 10000 -c 64

throughput  spawns ``n`` agents from ``c`` concurrent keep-alive clients (POST /api/spawn)
            and counts ended agents in the database file every 50 ms, from outside the
            daemon (a read-only sqlite connection of this process: committed rows only; the
            daemon serves nothing but the spawns) until all ``n`` have ended.  Rate = n /
            (time of the first spawn request -> time the last completion is visible in the
            database).  Afterwards the database gives each agent's in-daemon latency.
            (Until issue 13 the count was ``GET /api/agents?status=completed`` inside the
            daemon, four queries over the whole table every 50 ms: 12 % of its samples.)
latency     open-loop: one spawn every 1/rate seconds (``--rate 0``: one at a time).  Each
            agent is then watched two ways until completed: GET /api/agent/{id} over HTTP,
            and its row in the database (read-only sqlite connection: a committed, durable
            "completed").  Reports client-side and in-daemon latency percentiles.
inflight    spawns one warm-up agent (it times out after 1 s), reads VmRSS of ``--pid``,
            spawns ``n`` agents (against a slow upstream they all stay queued or running),
            waits until /api/health counts them all, sleeps 2 s and reads VmRSS again.

Authentication: the daemon requires an API key on every /api route but /api/health (since
commit 3dbd4e0, ``[security] auth = true`` by default).  Every request of this driver
carries ``Authorization: Bearer <token>``: ``--token``, or ``--token-file``, or by
default the bootstrap admin key the daemon wrote at first start,
``<state_dir>/bootstrap-admin.key`` (JSON with "token"), found next to ``--db``.  With
``auth = false`` in the daemon's config no token is needed (``--token ""``).

Added latency (the number compared with the 2 ms target) is defined as

    completed_at - created_at   (from the agent's row: the daemon's own clock)
    minus the upstream's own time per call (fake upstream's /stats, normally ~0.1 ms,
    and excluding its configured --delay)

i.e. everything the daemon adds between accepting a spawn and recording the result:
insert commit, queueing, dispatch, the HTTP round trip to the upstream, parsing.  It
does not include the final commit (completed_at is stamped before it); the latency mode's
"durable" column, seen by polling the database, does, and the HTTP column adds the
client's request round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import time
from typing import Any

import aiohttp


# ------------------------------------------------------------------ helpers

BOOTSTRAP_FILE = "bootstrap-admin.key"  # keys.KeyService.BOOTSTRAP_FILE


def read_token(state_dir: str, timeout: float = 10.0) -> str | None:
    """The bootstrap admin token the daemon wrote at first start (None if there is none:
    auth is off, or keys existed already)."""
    path = os.path.join(state_dir, BOOTSTRAP_FILE)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                return json.load(f)["token"]
        except FileNotFoundError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}



def rss_kb(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    if not ms:
        return {}
    return {"n": len(ms), "p50": round(pct(ms, 50), 3), "p90": round(pct(ms, 90), 3),
            "p99": round(pct(ms, 99), 3), "max": round(max(ms), 3), "mean": round(statistics.fmean(ms), 3)}


async def upstream_stats(session: aiohttp.ClientSession, url: str | None) -> dict[str, Any] | None:
    if not url:
        return None
    async with session.get(url.rstrip("/") + "/stats") as r:
        return await r.json()


def upstream_own_time(before: dict | None, after: dict | None) -> float:
    """Mean seconds the upstream spent per call between two /stats snapshots (0 if unknown)."""
    if not before or not after:
        return 0.0
    calls = after["calls"] - before["calls"]
    return (after["own_time_total"] - before["own_time_total"]) / calls if calls else 0.0


def db_rows(db: str, ids: list[str]) -> list[sqlite3.Row]:
    """The rows of exactly these agents (read-only connection: committed rows only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    wanted = set(ids)
    try:
        rows = conn.execute("SELECT agent_id, status, error, created_at, started_at, completed_at, attempts "
                            "FROM agents WHERE kind = 'agent'").fetchall()
        return [r for r in rows if r["agent_id"] in wanted]
    finally:
        conn.close()


def db_latencies(rows: list[sqlite3.Row], upstream_own: float) -> dict[str, Any]:
    done = [r for r in rows if r["status"] == "completed"]
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    errors: dict[str, int] = {}
    for r in rows:
        if r["error"]:
            errors[r["error"][:80]] = errors.get(r["error"][:80], 0) + 1
    return {
        "statuses": by_status,
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        "added_ms": summary_ms([r["completed_at"] - r["created_at"] - upstream_own for r in done]),
        "queue_wait_ms": summary_ms([r["started_at"] - r["created_at"] for r in done]),
        "run_ms": summary_ms([r["completed_at"] - r["started_at"] for r in done]),
        "upstream_own_ms": round(upstream_own * 1000, 4),
        "attempts_gt1": sum(1 for r in done if r["attempts"] > 1),
    }


def spawn_body(model: str, i: int, timeout: float | None) -> bytes:
    body: dict[str, Any] = {"model": model, "task": f"bench task {i}: say ok"}
    if timeout:
        body["timeout"] = timeout
    return json.dumps(body).encode()


async def spawn_many(session: aiohttp.ClientSession, url: str, n: int, c: int, model: str,
                     timeout: float | None = None) -> tuple[list[str], list[float], list[str]]:
    """POST /api/spawn n times from c workers; returns (ids, per-request seconds, errors)."""
    ids: list[str] = []
    lat: list[float] = []
    errors: list[str] = []
    counter = iter(range(n))
    headers = {"Content-Type": "application/json"}

    async def worker() -> None:
        for i in counter:
            t = time.perf_counter()
            try:
                async with session.post(url + "/api/spawn", data=spawn_body(model, i, timeout),
                                        headers=headers) as r:
                    data = await r.read()
                    if r.status != 200:
                        errors.append(f"HTTP {r.status}: {data[:200]!r}")
                        continue
                    ids.append(json.loads(data)["agent_id"])
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            lat.append(time.perf_counter() - t)

    await asyncio.gather(*(worker() for _ in range(c)))
    return ids, lat, errors


class EndedCounter:
    """Agents that ended (completed, failed or cancelled), counted in the database file from
    outside the daemon: a read-only connection of the load process, so the count costs the
    daemon nothing (an index-only count over ``agents_status``; a WAL reader never blocks the
    writer) and sees committed rows only."""

    ENDED = ("completed", "failed", "cancelled")

    def __init__(self, db: str) -> None:
        self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)

    def __call__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM agents WHERE kind = 'agent' AND status IN (?, ?, ?)",
                                 self.ENDED).fetchone()[0]

    def close(self) -> None:
        self.conn.close()


async def wait_health(url: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url + "/api/health") as r:
                    if r.status == 200:
                        return await r.json()
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not healthy after {timeout} s")
            await asyncio.sleep(0.05)


# ------------------------------------------------------------------ modes

async def throughput(url: str, db: str, n: int, c: int, model: str, upstream: str | None,
                     max_wait: float = 600.0, token: str | None = None) -> dict[str, Any]:
    conn = aiohttp.TCPConnector(limit=c + 2)
    ended = EndedCounter(db)
    async with aiohttp.ClientSession(connector=conn, headers=auth_headers(token)) as session:
        base = ended()
        before = await upstream_stats(session, upstream)
        t0 = time.perf_counter()
        spawner = asyncio.ensure_future(spawn_many(session, url, n, c, model))
        t_done = None
        while True:
            await asyncio.sleep(0.05)
            done = ended() - base
            if done >= n:
                t_done = time.perf_counter()
                break
            if spawner.done() and spawner.exception() is None and spawner.result()[2]:
                ids, _, errs = spawner.result()
                if done >= len(ids):
                    t_done = time.perf_counter()
                    break
            if time.perf_counter() - t0 > max_wait:
                break
        ids, spawn_lat, errors = await spawner
        after = await upstream_stats(session, upstream)
    ended.close()
    own = upstream_own_time(before, after)
    rows = db_rows(db, ids)
    first_created = min((r["created_at"] for r in rows), default=0.0)
    last_completed = max((r["completed_at"] or 0 for r in rows), default=0.0)
    elapsed = (t_done - t0) if t_done else float("nan")
    out = {
        "mode": "throughput", "n": n, "concurrency": c, "spawned": len(ids), "spawn_errors": len(errors),
        "spawn_error_sample": errors[:3],
        "elapsed_s": round(elapsed, 3),
        "completed_per_s": round(len(ids) / elapsed, 1) if t_done else None,
        "completed_per_s_daemon_clock": round(len(ids) / (last_completed - first_created), 1)
        if last_completed > first_created else None,
        "spawn_http_ms": summary_ms(spawn_lat),
        "upstream_calls": (after["calls"] - before["calls"]) if before and after else None,
        **db_latencies(rows, own),
    }
    return out


async def latency(url: str, db: str, rate: float, duration: float, model: str, upstream: str | None,
                  count: int | None = None, watch: str = "http", token: str | None = None) -> dict[str, Any]:
    """``watch``: "http" polls GET /api/agent/{id} and the database file for each agent;
    "db" polls the database file only (the daemon serves nothing but spawns); "none"
    polls nothing while agents run (open loop only: the quietest, in-daemon measurement),
    waiting for all of them at the end."""
    if watch == "none" and not rate:
        raise ValueError("watch='none' needs an open-loop rate")
    n = count if count else max(1, int(rate * duration)) if rate else 200
    rconn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
    http_lat: list[float] = []       # spawn request sent -> GET /api/agent says completed
    http_after_resp: list[float] = []  # spawn response received -> GET says completed
    durable_lat: list[float] = []    # spawn request sent -> row committed as completed (db poll)
    spawn_lat: list[float] = []
    errors: list[str] = []
    ids: list[str] = []
    headers = {"Content-Type": "application/json"}

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        t0 = time.perf_counter()
        async with session.post(url + "/api/spawn", data=spawn_body(model, i, None), headers=headers) as r:
            if r.status != 200:
                errors.append(f"HTTP {r.status}")
                return
            agent_id = (await r.json())["agent_id"]
        t1 = time.perf_counter()
        spawn_lat.append(t1 - t0)
        ids.append(agent_id)
        if watch == "none":
            return
        seen_http = None if watch == "http" else 0.0
        seen_db = None
        while seen_http is None or seen_db is None:
            if seen_db is None:
                row = rconn.execute("SELECT status FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
                if row and row[0] in ("completed", "failed", "cancelled"):
                    seen_db = time.perf_counter()
            if seen_http is None:
                async with session.get(f"{url}/api/agent/{agent_id}") as r:
                    status = (await r.json())["status"]
                if status in ("completed", "failed", "cancelled"):
                    seen_http = time.perf_counter()
            if seen_http is None or seen_db is None:
                await asyncio.sleep(0.0005)
        if watch == "http":
            http_lat.append(seen_http - t0)
            http_after_resp.append(seen_http - t1)
        durable_lat.append(seen_db - t0)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256),
                                     headers=auth_headers(token)) as session:
        before = await upstream_stats(session, upstream)
        if rate:
            tasks = []
            start = time.perf_counter()
            for i in range(n):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(one(session, i)))
            await asyncio.gather(*tasks)
        else:
            for i in range(n):
                await one(session, i)
        if watch == "none":  # wait for the last one, then read the rows
            while rconn.execute("SELECT COUNT(*) FROM agents WHERE status IN ('queued', 'running', 'spawning')"
                                ).fetchone()[0]:
                await asyncio.sleep(0.1)
        after = await upstream_stats(session, upstream)
    rconn.close()
    own = upstream_own_time(before, after)
    return {
        "mode": "latency", "rate": rate or "sequential", "watch": watch, "n": n, "spawn_errors": len(errors),
        "spawn_http_ms": summary_ms(spawn_lat),
        "client_spawn_to_completed_http_ms": summary_ms(http_lat),
        "client_spawn_response_to_completed_http_ms": summary_ms(http_after_resp),
        "client_spawn_to_completed_durable_ms": summary_ms(durable_lat),
        **db_latencies(db_rows(db, ids), own),
    }


WARMUP_TIMEOUT = 1.0  # seconds: the warm-up agent of inflight() times out against a slow upstream


async def inflight(url: str, pid: int, n: int, c: int, model: str, settle: float = 2.0,
                   token: str | None = None) -> dict[str, Any]:
    """RSS before and with ``n`` agents in flight.  "Before" is read after one warm-up agent
    ran and ended (it times out against the slow upstream): what the first spawn loads once
    (``cryptography`` for sealing its task, the code paths of a spawn and a provider call) is
    not a cost per agent, and a daemon that loads it at start would otherwise look cheaper."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c + 2),
                                     headers=auth_headers(token)) as session:
        await spawn_many(session, url, 1, 1, model, timeout=WARMUP_TIMEOUT)
        await asyncio.sleep(WARMUP_TIMEOUT + settle)
        idle = rss_kb(pid)
        t0 = time.perf_counter()
        ids, spawn_lat, errors = await spawn_many(session, url, n, c, model, timeout=3600.0)
        t_spawned = time.perf_counter() - t0
        while True:
            async with session.get(url + "/api/health") as r:
                health = await r.json()
            live = health["agents"]["queued"] + health["agents"]["running"]
            if live >= len(ids) or time.perf_counter() - t0 > 120:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(settle)
        loaded = rss_kb(pid)
        async with session.get(url + "/api/health") as r:
            health = await r.json()
    return {
        "mode": "inflight", "n": n, "spawned": len(ids), "spawn_errors": len(errors),
        "spawn_error_sample": errors[:3], "spawn_s": round(t_spawned, 2),
        "queued": health["agents"]["queued"], "running": health["agents"]["running"],
        "rss_idle_mb": round(idle / 1024, 1), "rss_loaded_mb": round(loaded / 1024, 1),
        "rss_delta_mb": round((loaded - idle) / 1024, 1), "vmhwm_mb": round(rss_kb(pid, "VmHWM") / 1024, 1),
        "spawn_http_ms": summary_ms(spawn_lat),
    }


def main() -> None:
    p = argparse.ArgumentParser(description="j1mskyd load driver")
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("throughput", "latency", "inflight"):
        s = sub.add_parser(name)
        s.add_argument("--url", default="http://127.0.0.1:18080")
        s.add_argument("--model", default="k2p5")
        if name != "inflight":
            s.add_argument("--db", required=True, help="the daemon's STATE_DIR/j1msky.db")
            s.add_argument("--upstream", help="fake upstream root, for its /stats (e.g. http://127.0.0.1:18100)")
        else:
            s.add_argument("--pid", type=int, required=True, help="pid of j1mskyd serve")
            s.add_argument("--db", help="the daemon's STATE_DIR/j1msky.db (only to find the bootstrap key)")
        s.add_argument("--token", help="API key token ('' = none: the daemon runs with auth = false)")
        s.add_argument("--token-file", help="a bootstrap-admin.key file (default: next to --db)")
        if name in ("throughput", "inflight"):
            s.add_argument("-n", type=int, default=10_000)
            s.add_argument("-c", type=int, default=64, help="concurrent client connections")
        if name == "latency":
            s.add_argument("--rate", type=float, default=50.0, help="spawns per second; 0 = one at a time")
            s.add_argument("--duration", type=float, default=10.0)
            s.add_argument("--count", type=int, help="number of agents (default rate x duration, 200 sequential)")
            s.add_argument("--watch", choices=("http", "db", "none"), default="http",
                           help="how completion is watched while agents run (see latency())")
    a = p.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    token = a.token
    if token is None:
        if a.token_file:
            with open(a.token_file) as f:
                token = json.load(f)["token"]
        elif a.db:
            token = read_token(os.path.dirname(os.path.abspath(a.db)), timeout=0)
    if a.mode == "throughput":
        out = asyncio.run(throughput(a.url, a.db, a.n, a.c, a.model, a.upstream, token=token))
    elif a.mode == "latency":
        out = asyncio.run(latency(a.url, a.db, a.rate, a.duration, a.model, a.upstream, a.count, a.watch,
                                  token=token))
    else:
        out = asyncio.run(inflight(a.url, a.pid, a.n, a.c, a.model, token=token))
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
