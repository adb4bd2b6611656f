"""One call at a time through the front door of two source trees, interleaved call by call
(issue 14's latency targets on a machine too noisy for runs minutes apart).

    .venv/bin/python bench/frontdoor_ab.py /tmp/j1-before /tmp/j1-after [-n 1000] [--sync full]

One zero-latency ``fake_upstream.py`` and a daemon from each tree (``cpu_per_agent.start``: the
bench config of ``frontdoor.py``, auth on, ``synchronous = "full"`` as shipped), all running
at once; then ``-n`` times: a direct call to the upstream and one call through each daemon's
``POST /v1/chat/completions``, in an order that rotates, first not streamed (time to the whole
answer), then streamed (time to the first body bytes).  ``--consecutive K``: K calls back to
back to each target in turn (what a call leaves behind, a trailing commit, then meets the next).
``--upstream-delay S``: an upstream that takes S seconds, as a real provider does (its time then
hides the commit of the call's insert, dispatched on submit; the added time is what is left).
Whatever else loads the machine falls on the trees alike within a few milliseconds, so the medians and the per-step differences
compare them where runs minutes apart cannot (the fsync time of a shared disk swings by
several milliseconds).  ``--bursts N``: first, N rounds of 2 s of 32-connection load on each
daemon in turn, the daemon's CPU ms per call (/proc/PID/stat).  Prints JSON: per target the p50/p90 of both, "added" = p50 minus the
direct call's.

``--instructions N``: no timing; each tree's daemon in turn under callgrind, its instructions per
call over N calls of each kind one at a time (needs valgrind; a few minutes).

``--fsync-ms X``: a steady disk instead of the machine's own, whose fsync swings by
milliseconds from one minute to the next under other work (the medians of two identical trees
then differ by up to ~1 ms, and runs of the same pair by several): the daemons' state
directories go to a tmpfs (``--tmpfs``, default /dev/shm) and every fsync/fdatasync is made to
take X ms more by the fsync shim (``fsyncshim.py``), so what differs between trees is their
own work (CPU, thread hops, commits per call).  ``--fsync-ms 0`` on a tmpfs: no disk at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cpu_per_agent  # noqa: E402  (bench/ is the script directory)
import fsyncshim  # noqa: E402
import load  # noqa: E402
import run_all  # noqa: E402
from frontdoor import Target, closed_loop  # noqa: E402


async def once(s: aiohttp.ClientSession, target: Target, body: bytes) -> float | None:
    """Seconds to the first body bytes (the whole answer when not streamed: it comes in one piece)."""
    t0 = time.perf_counter()
    async with s.post(target.url + "/v1/chat/completions", data=body,
                      headers={**target.headers, "Content-Type": "application/json"}) as resp:
        first = await resp.content.readany()
        took = time.perf_counter() - t0
        await resp.read()
        return took if resp.status == 200 and first else None


async def interleaved(targets: list[Target], n: int, stream: bool, consecutive: int = 1) -> dict[str, list[float]]:
    """``n`` calls to each target, ``consecutive`` at a time to the same one (back to back, as
    frontdoor.py's one-at-a-time pass makes them), the targets' order rotating."""
    found: dict[str, list[float]] = {t.name: [] for t in targets}
    bodies = {t.name: t.body(stream) for t in targets}
    async with aiohttp.ClientSession() as s:
        for i in range(0, n + 20, consecutive):  # the first 20 warm up
            k = i // consecutive % len(targets)
            for target in targets[k:] + targets[:k]:
                for j in range(i, i + consecutive):
                    took = await once(s, target, bodies[target.name])
                    if j >= 20 and took is not None:
                        found[target.name].append(took * 1000)
    return found


def summary(found: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    direct = statistics.median(found["direct"])
    out = {}
    for name, values in found.items():
        values = sorted(values)
        p50 = statistics.median(values)
        out[name] = {"calls": len(values), "p50_ms": round(p50, 3), "p90_ms": round(values[int(len(values) * 0.9)], 3),
                     "added_p50_ms": round(p50 - direct, 3)}
    return out


async def one_at_a_time(target: Target, n: int, stream: bool) -> int:
    """``n`` calls one after the other; the number that answered 200."""
    ok = 0
    body = target.body(stream)
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            ok += await once(s, target, body) is not None
    return ok


def instructions_per_call(trees: list[str], workdir: str, up_port: int, sync: str, n: int) -> dict[str, dict[str, Any]]:
    """Each tree's daemon in turn under callgrind (``cpu_per_agent.start``): 30 calls to warm up,
    then ``n`` non-streamed and ``n`` streamed calls one at a time, the daemon's instructions per
    call for each (``callgrind_control --dump`` between the passes).  Deterministic where the
    wall clock of this machine is not: the decision figure for a change of CPU on the call's path."""
    out: dict[str, dict[str, Any]] = {}
    for i, tree in enumerate(trees):
        name = f"cg{i}"
        proc, url, _, token = cpu_per_agent.start(tree, workdir, name, sync, None, callgrind=True, up_port=up_port)
        target = Target(name, url, load.auth_headers(token), proc.pid)
        dumps = os.path.join(workdir, name) + ".cg."
        try:
            asyncio.run(one_at_a_time(target, 30, stream=False))
            asyncio.run(one_at_a_time(target, 30, stream=True))
            cpu_per_agent.callgrind_dump(proc.pid, dumps)
            row: dict[str, Any] = {"tree": tree}
            for stream in (False, True):
                ok = asyncio.run(one_at_a_time(target, n, stream))
                row["streamed" if stream else "whole"] = round(cpu_per_agent.callgrind_dump(proc.pid, dumps) / max(ok, 1))
                row["ok_streamed" if stream else "ok_whole"] = ok
            out[f"tree{i}"] = row
        finally:
            proc.terminate()
            proc.wait(120)
    return out


def cpu_per_call(targets: list[Target], bursts: int, seconds: float, connections: int) -> dict[str, dict[str, float]]:
    """``bursts`` rounds of ``seconds`` of ``connections``-connection load on each daemon in
    turn (order rotating): the serving process's CPU ms per call, median and range of the bursts."""
    found: dict[str, list[float]] = {t.name: [] for t in targets}
    for i in range(bursts):
        k = i % len(targets)
        for target in targets[k:] + targets[:k]:
            res = asyncio.run(closed_loop(target, connections, seconds, stream=False, warmup=0.5))
            found[target.name].append(res["cpu_ms_per_call"])
    return {name: {"median": round(statistics.median(v), 4), "min": min(v), "max": max(v)} for name, v in found.items()}


@contextlib.contextmanager
def daemon_env(extra: dict[str, str]) -> Iterator[None]:
    """``extra`` in the environment while a daemon starts (cpu_per_agent.start passes it on)."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trees", nargs=2)
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--sync", choices=("normal", "full"), default="full")
    p.add_argument("--sync-after", choices=("normal", "full"),
                   help="the second tree's synchronous (default: --sync); the same tree twice with "
                        "--sync full --sync-after normal: what the fsyncs cost a call")
    p.add_argument("--instructions", type=int, default=0, metavar="N",
                   help="instead of the timed calls: each daemon under callgrind, N calls of each kind one at a time, "
                        "its instructions per call")
    p.add_argument("--bursts", type=int, default=0,
                   help="also this many rounds of 32-connection load on each daemon: CPU ms per call")
    p.add_argument("--upstream-delay", type=float, default=0.0,
                   help="seconds the fake upstream holds each answer (its first chunk when streamed): a "
                        "provider's own time, which the call's first commit overlaps")
    p.add_argument("--consecutive", type=int, default=1,
                   help="calls made back to back to one target before the next (1: strictly interleaved)")
    p.add_argument("--workdir")
    p.add_argument("--fsync-ms", type=float, default=None,
                   help="state directories on a tmpfs, each fsync made to take this many ms (a steady disk)")
    p.add_argument("--tmpfs", default="/dev/shm", help="where the state directories go with --fsync-ms")
    a = p.parse_args()
    workdir = a.workdir or tempfile.mkdtemp(prefix="j1b-fdab-")
    os.makedirs(workdir, exist_ok=True)
    up, up_port = run_all.upstream(workdir, a.upstream_delay)
    state_dir, shim_env = workdir, {}
    if a.fsync_ms is not None:
        state_dir = tempfile.mkdtemp(prefix="j1b-fdab-", dir=a.tmpfs)
        shim_env = fsyncshim.env(fsyncshim.build(state_dir), delay_ms=a.fsync_ms)
    if a.instructions:
        try:
            found = instructions_per_call(a.trees, state_dir, up_port, a.sync, a.instructions)
        finally:
            up.stop()
        print(json.dumps({"machine": run_all.machine(), "trees": a.trees, "n": a.instructions, "sync": a.sync,
                          "instructions_per_call": found}, indent=1))
        return
    procs = []
    try:
        targets = [Target("direct", f"http://127.0.0.1:{up_port}")]
        for i, tree in enumerate(a.trees):
            with daemon_env(shim_env):
                sync = a.sync_after if i == 1 and a.sync_after else a.sync
                proc, url, _, token = cpu_per_agent.start(tree, state_dir, f"tree{i}", sync, None, up_port=up_port)
            procs.append(proc)
            targets.append(Target(f"tree{i}", url, load.auth_headers(token), proc.pid))
        cpu = cpu_per_call(targets[1:], a.bursts, 2.0, 32) if a.bursts else None
        whole = summary(asyncio.run(interleaved(targets, a.n, stream=False, consecutive=a.consecutive)))
        first = summary(asyncio.run(interleaved(targets, a.n, stream=True, consecutive=a.consecutive)))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(60)
        up.stop()
        if state_dir != workdir:
            shutil.rmtree(state_dir, ignore_errors=True)
    print(json.dumps({"machine": run_all.machine(), "trees": a.trees, "n": a.n, "sync": a.sync, "sync_after": a.sync_after or a.sync, "fsync_ms": a.fsync_ms,
                      "consecutive": a.consecutive, "upstream_delay": a.upstream_delay,
                      "whole_answer": whole, "first_streamed_byte": first,
                      "cpu_ms_per_call_at_32": cpu}, indent=1))


if __name__ == "__main__":
    main()
