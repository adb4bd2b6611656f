"""CPU time of the daemon per agent, end to end, for one or more source trees side by side.

    .venv/bin/python bench/cpu_per_agent.py /tmp/j1-before /tmp/j1-after [-n 2000 -c 32 --rounds 5]
    .venv/bin/python bench/cpu_per_agent.py --profile /tmp/j1-after.prof /tmp/j1-after   # cProfile it
    .venv/bin/python bench/cpu_per_agent.py --callgrind -n 300 --rounds 1 /tmp/j1-before /tmp/j1-after
    .venv/bin/python bench/cpu_per_agent.py --upstream /tmp/j1-before /tmp/j1-after   # through HTTP

Each run: a fresh daemon from that tree (``python -m j1mskyd serve`` with PYTHONPATH and cwd
the tree) on the built-in offline provider (no upstream: the daemon's own work only), auth on
(the bootstrap token on every spawn: key lookup, audit, sealing), limits lifted, the shipped
``synchronous = "full"``; 300 warm-up spawns, then ``-n`` spawns from ``-c`` keep-alive
connections until every agent's end is committed (load.throughput, which counts completions
in the database file from outside the daemon).  CPU per agent = the daemon process's
utime + stime (all its threads, /proc/PID/stat) over the measured spawns / n: the spawn
request (HTTP, middleware, auth, parsing), admission, the run on the provider, the finish,
the store's commits, the audit and event rows.  Trees alternate within a round (the
machine's other load falls on all alike); the median per tree is reported.  Prints JSON.

``--callgrind``: the daemon runs under ``valgrind --tool=callgrind`` and the figure is the
instructions it executed (all threads, user space) per agent over the measured spawns
(``callgrind_control --dump`` before and after): ~50x slower, but the same count every
time on a machine whose CPU time swings by a third between runs.  It does not see the
kernel's share (system calls, thread wake-ups), which CPU time does.  Its dumps keep function
names uncompressed, so ``callgrind_annotate`` reads each one alone.

``--upstream``: the model is served by the ``openai_compat`` plugin from a zero-latency
``fake_upstream.py`` on loopback (the issue's own setup: spawn over HTTP, the call to the
upstream, the result stored) instead of the offline provider; the figure is still the daemon's
CPU alone (the upstream is another process).

``--floor`` (with ``--upstream``): each round also measures ``bench/bare_proxy.py`` on the same
upstream (as the tree ``bare-proxy``), ``-n`` ``POST /v1/chat/completions`` from ``-c``
connections: one request served and one upstream call made with aiohttp and nothing else, the
floor under "CPU per agent through HTTP" (under ``--callgrind``: its instructions per call).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import load  # noqa: E402  (bench/ is the script directory)
import run_all  # noqa: E402
from lifted import LIFTED_LIMITS, OFFLINE_CONFIG  # noqa: E402

CONFIG = OFFLINE_CONFIG

TICKS = os.sysconf("SC_CLK_TCK")
FLOOR = "bare-proxy"  # --floor's name among the trees


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def callgrind_dump(pid: int, out_prefix: str) -> int:
    """Dump the counters of a daemon run under callgrind (they restart from zero) and return
    the instructions counted since the previous dump."""
    before = set(glob.glob(out_prefix + "*"))
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, stdout=subprocess.DEVNULL)
    new = sorted(set(glob.glob(out_prefix + "*")) - before, key=os.path.getmtime)
    with open(new[-1]) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {new[-1]}")


def start(tree: str, workdir: str, name: str, sync: str, profile: str | None,
          callgrind: bool = False, up_port: int | None = None,
          extra_path: tuple[str, ...] = (), env: dict[str, str] | None = None,
          ) -> tuple[subprocess.Popen, str, str, str | None]:
    """A daemon from ``tree`` (``extra_path``: more of its PYTHONPATH, after the tree; ``env``:
    more of its environment, e.g. ``fsyncshim.env``), healthy; its process, URL, database path
    and bootstrap token."""
    state = os.path.join(workdir, name)
    os.makedirs(state, exist_ok=True)
    config = os.path.join(workdir, name + ".toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(sync=sync, workdir=workdir, lifted=LIFTED_LIMITS) if up_port is None
                else run_all.bench_config(workdir, up_port, sync))
    port = run_all.free_port()
    prefix = [sys.executable, "-m", "cProfile", "-o", profile, "-m"] if profile else [sys.executable, "-m"]
    if callgrind:
        prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={os.path.join(workdir, name)}.cg.%p",
                  "--compress-strings=no", "--compress-pos=no", *prefix]
    proc = subprocess.Popen([*prefix, "j1mskyd", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--state-dir", state, "--config", config],
                            cwd=tree,
                            env={**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join((tree, *extra_path))},
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, name + ".log"), "wb"))
    url = f"http://127.0.0.1:{port}"
    asyncio.run(load.wait_health(url, timeout=300 if callgrind else 30))
    return proc, url, os.path.join(state, "j1msky.db"), load.read_token(state, timeout=5)


def measured(proc: subprocess.Popen, dumps: str | None, warm: Callable[[], Awaitable[Any]],
             work: Callable[[], Awaitable[Any]]) -> tuple[Any, float, int | None]:
    """``work``'s result, the CPU seconds ``proc`` used meanwhile and, when it runs under
    callgrind (``dumps``: its dump files' prefix), the instructions; ``warm`` runs first, not
    counted.  Ends ``proc``."""
    instructions = None
    try:
        asyncio.run(warm())
        if dumps:
            callgrind_dump(proc.pid, dumps)
        before = cpu_seconds(proc.pid)
        res = asyncio.run(work())
        used = cpu_seconds(proc.pid) - before
        if dumps:
            instructions = callgrind_dump(proc.pid, dumps)
    finally:
        proc.terminate()
        proc.wait(120)
    return res, used, instructions


def one(tree: str, workdir: str, name: str, n: int, c: int, sync: str, profile: str | None = None,
        callgrind: bool = False, up_port: int | None = None) -> dict:
    proc, url, db, tok = start(tree, workdir, name, sync, profile, callgrind, up_port)
    res, used, instructions = measured(
        proc, os.path.join(workdir, name) + ".cg." if callgrind else None,
        lambda: load.throughput(url, db, min(300, n), c, "k2p5", None, token=tok),
        lambda: load.throughput(url, db, n, c, "k2p5", None, token=tok))
    out = {"cpu_ms_per_agent": round(used / n * 1000, 4), "completed_per_s": res["completed_per_s"],
           "spawned": res["spawned"], "spawn_errors": res["spawn_errors"], "statuses": res["statuses"]}
    if instructions is not None:
        out["instructions_per_agent"] = instructions // n
    return out


async def proxy_calls(url: str, n: int, c: int) -> int:
    """``n`` non-streamed chat calls through the bare proxy from ``c`` keep-alive connections;
    the number that answered 200."""
    import aiohttp
    body = json.dumps({"model": "k2p5", "messages": [{"role": "user", "content": "Say ok."}],
                       "max_tokens": 16}).encode()
    left, ok = [n], [0]

    async def worker(s: aiohttp.ClientSession) -> None:
        while left[0] > 0:
            left[0] -= 1
            async with s.post(url + "/v1/chat/completions", data=body,
                              headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                ok[0] += resp.status == 200

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as s:
        await asyncio.gather(*(worker(s) for _ in range(c)))
    return ok[0]


def one_floor(workdir: str, name: str, n: int, c: int, callgrind: bool, up_port: int) -> dict:
    """The bare proxy's CPU (or instructions) per call, measured as :func:`one` measures a daemon."""
    port = run_all.free_port()
    cmd = [sys.executable, os.path.join(HERE, "bare_proxy.py"), "--port", str(port),
           "--upstream", f"http://127.0.0.1:{up_port}"]
    if callgrind:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={os.path.join(workdir, name)}.cg.%p",
               "--compress-strings=no", "--compress-pos=no", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, name + ".log"), "wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        run_all.wait_port(port, timeout=300 if callgrind else 20)
    except TimeoutError:
        proc.kill()
        raise
    ok, used, instructions = measured(proc, os.path.join(workdir, name) + ".cg." if callgrind else None,
                                      lambda: proxy_calls(url, min(300, n), c), lambda: proxy_calls(url, n, c))
    out: dict = {"cpu_ms_per_agent": round(used / n * 1000, 4), "completed_per_s": None, "answered": ok}
    if instructions is not None:
        out["instructions_per_agent"] = instructions // n
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="+")
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("-c", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sync", choices=("normal", "full"), default="full")
    p.add_argument("--profile", help="cProfile the daemon of the (single) tree into this file; one round")
    p.add_argument("--callgrind", action="store_true", help="count instructions under valgrind (see above)")
    p.add_argument("--upstream", action="store_true",
                   help="serve the model from a loopback fake_upstream.py through openai_compat (see above)")
    p.add_argument("--floor", action="store_true",
                   help="with --upstream: bench/bare_proxy.py measured beside the trees (see above)")
    p.add_argument("--workdir")
    a = p.parse_args()
    if a.floor and not a.upstream:
        p.error("--floor needs --upstream")
    workdir = a.workdir or tempfile.mkdtemp(prefix="j1b-cpu-")
    os.makedirs(workdir, exist_ok=True)
    up, up_port = run_all.upstream(workdir) if a.upstream else (None, None)
    try:
        run(a, workdir, up_port)
    finally:
        if up is not None:
            up.stop()


def run(a: argparse.Namespace, workdir: str, up_port: int | None) -> None:
    if a.profile:
        print(json.dumps(one(a.trees[0], workdir, "profiled", a.n, a.c, a.sync, a.profile, up_port=up_port),
                         indent=1))
        return
    names = [*a.trees, *([FLOOR] if a.floor else [])]
    runs: dict[str, list[dict]] = {t: [] for t in names}
    for r in range(a.rounds):
        order = names if r % 2 == 0 else list(reversed(names))
        for i, tree in enumerate(order):
            if tree == FLOOR:
                assert up_port is not None  # --floor needs --upstream (main)
                res = one_floor(workdir, f"cpu-{r}-{i}", a.n, a.c, a.callgrind, up_port)
            else:
                res = one(tree, workdir, f"cpu-{r}-{i}", a.n, a.c, a.sync, callgrind=a.callgrind, up_port=up_port)
            runs[tree].append(res)
            print(json.dumps({"tree": tree, **res}), file=sys.stderr)
    print(json.dumps({"machine": run_all.machine(), "n": a.n, "c": a.c, "sync": a.sync, "rounds": a.rounds,
                      "provider": "openai_compat -> fake_upstream.py" if up_port else "offline",
                      "median_cpu_ms_per_agent": {t: statistics.median(x["cpu_ms_per_agent"] for x in rs)
                                                  for t, rs in runs.items()},
                      **({"median_instructions_per_agent": {
                          t: statistics.median(x["instructions_per_agent"] for x in rs) for t, rs in runs.items()}}
                         if a.callgrind else {}),
                      "median_completed_per_s": {t: statistics.median(x["completed_per_s"] or 0 for x in rs)
                                                 for t, rs in runs.items()},
                      "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
