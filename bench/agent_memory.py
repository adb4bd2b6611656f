"""What a running agent holds in the daemon's Python heap, by the line that allocated it
(issue 13, debt 2: memory per running agent), for one source tree.

    .venv/bin/python bench/agent_memory.py [-n 2000] [--tree DIR] [--top 40]

A daemon from ``--tree`` (default: this checkout) under ``tracemalloc`` (30 frames), the bench
config of ``run_all.py``'s in-flight case (runtime and provider limits above ``-n``, a loopback
``fake_upstream.py`` that holds each call 60 s), one warm-up agent that times out first (what
the first spawn loads once is not per agent).  Then a snapshot, ``-n`` spawns from 32
connections, a wait until all of them run, and a second snapshot: the difference per agent,
each allocation counted at its innermost j1mskyd line (else its innermost aiohttp or asyncio
line).  Bytes traced, not resident: ``run_all.py --only running`` measures RSS against the
bare-client floor; this says where j1mskyd's share goes.  tracemalloc slows the daemon ~3x.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import load  # noqa: E402  (bench/ is the script directory)
import run_all  # noqa: E402

# Runs inside the daemon's process: ``j1mskyd serve`` whose wait for the stop is replaced by the
# measurement (the environment says how many agents, and the file that starts it / takes the result).
DAEMON = r'''
import asyncio, collections, gc, os, sys, tracemalloc
tracemalloc.start(30)
import j1mskyd.listener as listener
from j1mskyd.api.common import SERVICES

N, GO, TOP = int(os.environ["AGENT_MEMORY_N"]), os.environ["AGENT_MEMORY_GO"], int(os.environ["AGENT_MEMORY_TOP"])

def where(traceback):
    frames = list(traceback)[::-1]  # innermost first
    for f in frames:
        if "/j1mskyd/" in f.filename:
            return "j1mskyd/" + f.filename.split("/j1mskyd/")[-1] + ":" + str(f.lineno)
    for f in frames:
        if "aiohttp" in f.filename or "asyncio" in f.filename:
            return "/".join(f.filename.split("/")[-2:]) + ":" + str(f.lineno)
    return "other"

async def measure(app):
    while not os.path.exists(GO):
        await asyncio.sleep(0.1)
    gc.collect()
    before = tracemalloc.take_snapshot()
    runtime = app[SERVICES].agents.runtime
    while runtime.running_count() < N:
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)
    gc.collect()
    lines = collections.Counter()
    for stat in tracemalloc.take_snapshot().compare_to(before, "traceback"):
        lines[where(stat.traceback)] += stat.size_diff
    with open(GO + ".out", "w") as out:
        out.write(f"{sum(lines.values()) / N:.0f} bytes traced per running agent ({N} running)\n")
        for line, size in lines.most_common(TOP):
            out.write(f"{size / N:9.1f}  {line}\n")

listener._until_stopped = measure
import j1mskyd.__main__ as main
main.main()
'''


async def drive(url: str, token: str | None, n: int, go: str) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=34),
                                     headers=load.auth_headers(token)) as session:
        await load.spawn_many(session, url, 1, 1, "k2p5", timeout=load.WARMUP_TIMEOUT)
        await asyncio.sleep(load.WARMUP_TIMEOUT + 1)
        open(go, "w").close()
        await asyncio.sleep(1)
        await load.spawn_many(session, url, n, 32, "k2p5", timeout=3600.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--tree", default=os.path.dirname(HERE))
    p.add_argument("--top", type=int, default=40)
    a = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="j1b-mem-")
    up, up_port = run_all.upstream(workdir, 60.0)
    daemon = None
    try:
        config = os.path.join(workdir, "bench.toml")
        with open(config, "w") as f:
            f.write(run_all.bench_config(workdir, up_port, "full", a.n + 10, a.n + 10))
        port, go, state = run_all.free_port(), os.path.join(workdir, "go"), os.path.join(workdir, "state")
        daemon = subprocess.Popen(
            [sys.executable, "-c", DAEMON, "serve", "--host", "127.0.0.1", "--port", str(port),
             "--state-dir", state, "--config", config],
            env={**os.environ, "PYTHONPATH": a.tree, "AGENT_MEMORY_N": str(a.n), "AGENT_MEMORY_GO": go,
                 "AGENT_MEMORY_TOP": str(a.top)},
            cwd=a.tree,  # ``-c`` puts the working directory first on sys.path: the tree's package, not another
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "daemon.log"), "wb"))
        url = f"http://127.0.0.1:{port}"
        asyncio.run(load.wait_health(url, timeout=60))
        asyncio.run(drive(url, load.read_token(state, timeout=5), a.n, go))
        deadline = time.monotonic() + 600
        while daemon.poll() is None and time.monotonic() < deadline:  # it stops once it has measured
            time.sleep(0.2)
        if not os.path.exists(go + ".out"):
            raise SystemExit(f"the daemon measured nothing: see {workdir}/daemon.log")
        print(open(go + ".out").read(), end="")
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        up.stop()


if __name__ == "__main__":
    main()
