"""The front door side by side (issue 14): one fake upstream called directly, through the
daemon's ``/v1/chat/completions``, through a bare aiohttp proxy (the floor) and through
LiteLLM Proxy, in one run.

    .venv/bin/python bench/frontdoor.py --workdir /tmp/j1b-fd > /tmp/fd.json        # progress on stderr
    .venv/bin/python bench/frontdoor.py --litellm /work/litellm-venv/bin/litellm \\
        --base-tree /tmp/e2e-base --workdir /tmp/j1b-fd > /tmp/fd.json

Processes (all on 127.0.0.1, all started fresh here): ``bench/fake_upstream.py`` (zero
latency; streams OpenAI's SSE chunks when asked), a daemon routed to it through the
``openai_compat`` plugin (``run_all.bench_config``: every limit lifted, runtime concurrency
64 and provider 256 so that 32 connections never queue, auth on with the bootstrap key),
``bench/bare_proxy.py`` on the same upstream (``proxy``: an ``aiohttp.web`` server forwarding
each call with one shared client session and nothing else, the floor of any aiohttp proxy on
this machine; ``--no-proxy`` leaves it out), and LiteLLM Proxy with one model on the same
upstream when ``--litellm PATH`` or
``$J1MSKY_BENCH_LITELLM`` names its ``litellm`` executable (install it apart, never into
the project: ``python3 -m venv /work/litellm-venv && /work/litellm-venv/bin/pip install
'litellm[proxy]'``); skipped with a message otherwise.

Each round (``--rounds``, default 3) measures every target in turn, the order reversed
every other round:

* ``load``: ``-c`` (32) keep-alive connections each sending the next non-streamed call as
  soon as the last one answered, for ``--duration`` seconds after one second of warm-up:
  calls/s, latency p50 / p99 per call (client side: request sent -> body read).
* ``sequential``: ``--sequential`` (300) non-streamed calls one at a time: latency p50 /
  p99; "added p50" is the target's p50 minus the direct one's of the same round, i.e. what
  the hop adds to one call when nothing queues.
* ``ttfb``: the same number of streamed calls (``"stream": true``) one at a time: time
  from the request sent to the first body bytes, p50 / p99, and the same at 32
  connections (``ttfb_load``).

The load pass also reads the serving process's CPU time (``/proc/PID/stat``): CPU ms per
call, steadier than calls/s on a shared machine (direct: the upstream's own).  After the
rounds, ``breakdown_ms``: where a daemon call's time goes, one call at a time, from the
agent's own timestamps against the client's clock (:func:`breakdown`).

Ratios (target / direct) are taken within each round; the summary gives each round's
figure and the min and median over the rounds.  ``--base-tree DIR`` adds the idle RSS of a
daemon started from DIR (e.g. ``git worktree add /tmp/e2e-base 8f7140d``, main before the
front door) and from this tree, alternating (``bench/idle_rss.py``: embedded default
config, fresh state dir, VmRSS 2 s after the first healthy answer, 4 starts each).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import idle_rss  # noqa: E402  (bench/ is the script directory)
import load  # noqa: E402
import run_all  # noqa: E402

MODEL = "k2p5"
MESSAGES = [{"role": "user", "content": "Say ok."}]
LITELLM_CONFIG = """model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: http://127.0.0.1:{up_port}/v1
      api_key: sk-bench
litellm_settings:
  telemetry: false
general_settings:
  master_key: {master_key}
"""


@dataclass
class Target:
    """One way to reach the upstream: a base URL whose ``/v1/chat/completions`` answers."""

    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    pid: int | None = None     # the process that serves it: its CPU time per call is reported
    model: str = MODEL

    def body(self, stream: bool) -> bytes:
        payload: dict[str, Any] = {"model": self.model, "messages": MESSAGES, "max_tokens": 16}
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return json.dumps(payload).encode()


# ------------------------------------------------------------------ one call

@dataclass
class Samples:
    """The calls of one pass: time to the first body bytes and to the end of each good one."""

    firsts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    errors: int = 0

    async def call(self, session: aiohttp.ClientSession, target: Target, body: bytes) -> None:
        headers = {**target.headers, "Content-Type": "application/json"}
        t0 = time.perf_counter()
        try:
            async with session.post(target.url + "/v1/chat/completions", data=body, headers=headers) as resp:
                first = await resp.content.readany()
                t_first = time.perf_counter() - t0
                rest = await resp.read()
                t_end = time.perf_counter() - t0
                ok = resp.status == 200 and bool(first or rest)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            ok = False
        if ok:
            self.firsts.append(t_first)
            self.ends.append(t_end)
        else:
            self.errors += 1

    def report(self) -> dict[str, Any]:
        return {"calls": len(self.ends), "errors": self.errors, "latency_ms": load.summary_ms(self.ends),
                "ttfb_ms": load.summary_ms(self.firsts)}


def session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections),
                                 timeout=aiohttp.ClientTimeout(total=120))


async def closed_loop(target: Target, connections: int, duration: float, stream: bool,
                      warmup: float = 1.0) -> dict[str, Any]:
    """``connections`` workers calling back to back for ``duration`` s (after ``warmup``)."""
    body = target.body(stream)

    async def worker(samples: Samples, until: float) -> None:
        while time.perf_counter() < until:
            await samples.call(s, target, body)

    async with session(connections) as s:
        ignored, samples = Samples(), Samples()
        await asyncio.gather(*(worker(ignored, time.perf_counter() + warmup) for _ in range(connections)))
        cpu, began = cpu_seconds(target.pid), time.perf_counter()
        await asyncio.gather(*(worker(samples, began + duration) for _ in range(connections)))
        elapsed, cpu = time.perf_counter() - began, cpu_seconds(target.pid) - cpu
    calls = len(samples.ends)
    return {**samples.report(), "seconds": round(elapsed, 3), "calls_per_s": round(calls / elapsed, 1),
            "cpu_ms_per_call": round(cpu * 1000 / calls, 3) if calls and target.pid else None}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of ``pid`` so far (0 without one): less noisy than wall time on a
    shared machine."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_at_a_time(target: Target, n: int, stream: bool, warmup: int = 20) -> dict[str, Any]:
    body = target.body(stream)
    async with session(1) as s:
        ignored, samples = Samples(), Samples()
        for _ in range(warmup):
            await ignored.call(s, target, body)
        for _ in range(n):
            await samples.call(s, target, body)
    return samples.report()


async def measure(target: Target, connections: int, duration: float, sequential: int) -> dict[str, Any]:
    return {
        "load": await closed_loop(target, connections, duration, stream=False),
        "sequential": await one_at_a_time(target, sequential, stream=False),
        "ttfb": await one_at_a_time(target, sequential, stream=True),
        "ttfb_load": await closed_loop(target, connections, duration, stream=True),
    }


async def breakdown(target: Target, db: str, n: int, stream: bool) -> dict[str, float]:
    """Where one call's time goes in the daemon, one call at a time: the client's clock at
    send and end against the agent's own timestamps (same machine, same wall clock), p50
    of each phase in ms.  ``created`` is stamped when the handler starts the call, ``started``
    when the runtime dispatches it (a chat call: as soon as its insert is submitted, before its
    commit), ``first_token`` at the first delta from the upstream, ``completed`` before the
    final commit."""
    body = target.body(stream)
    headers = {**target.headers, "Content-Type": "application/json"}
    sent: dict[str, tuple[float, float, float]] = {}
    async with session(1) as s:
        for _ in range(n):
            t0 = time.time()
            async with s.post(target.url + "/v1/chat/completions", data=body, headers=headers) as resp:
                first = await resp.content.readany()
                t1 = time.time()
                raw = first + await resp.read()
                t2 = time.time()
            agent_id = raw.split(b'"chatcmpl-', 1)[1].split(b'"', 1)[0].decode()
            sent[agent_id] = (t0, t1, t2)
    await asyncio.sleep(0.5)  # the last final commit
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT agent_id, created_at, started_at, first_token_at, completed_at FROM agents WHERE kind = 'chat'")
            if r[0] in sent}
    phases: dict[str, list[float]] = {}
    for agent_id, (created, started, first, completed) in rows.items():
        t0, t1, t2 = sent[agent_id]
        for name, value in (("request -> created", created - t0), ("created -> started", started - created),
                            ("started -> first token", (first or completed) - started),
                            ("started -> completed", completed - started),
                            ("completed -> client has it all", t2 - completed), ("client: first bytes", t1 - t0),
                            ("client: whole answer", t2 - t0)):
            phases.setdefault(name, []).append(value * 1000)
    return {name: round(statistics.median(v), 3) for name, v in phases.items()}


# ------------------------------------------------------------------ the processes

def start_litellm(executable: str, workdir: str, up_port: int) -> tuple[run_all.Proc, Target]:
    """LiteLLM Proxy with auth on (a master key, sent as Bearer), as the daemon has its key."""
    master_key = "sk-bench-" + secrets.token_hex(16)
    config = os.path.join(workdir, "litellm.yaml")
    with open(config, "w") as f:
        f.write(LITELLM_CONFIG.format(model=MODEL, up_port=up_port, master_key=master_key))
    port = run_all.free_port()
    # The local cost map: LiteLLM would otherwise fetch it from the network at import.
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR"}
    proc = run_all.Proc([executable, "--config", config, "--host", "127.0.0.1", "--port", str(port)],
                        os.path.join(workdir, "litellm.log"), env)
    deadline = time.monotonic() + 180  # it takes a while to import
    while proc.p.poll() is None and time.monotonic() < deadline:
        try:
            run_all.wait_port(port, timeout=1)
            return proc, Target("litellm", f"http://127.0.0.1:{port}", load.auth_headers(master_key), proc.pid)
        except TimeoutError:
            pass
    proc.stop()
    raise RuntimeError(f"LiteLLM Proxy did not start; see {proc.log.name}")


def start_proxy(workdir: str, up_port: int) -> tuple[run_all.Proc, Target]:
    """``bench/bare_proxy.py`` on the same upstream: the floor of any aiohttp proxy."""
    port = run_all.free_port()
    proc = run_all.Proc([run_all.PY, os.path.join(HERE, "bare_proxy.py"), "--port", str(port),
                         "--upstream", f"http://127.0.0.1:{up_port}"], os.path.join(workdir, "proxy.log"))
    run_all.wait_port(port)
    return proc, Target("proxy", f"http://127.0.0.1:{port}", pid=proc.pid)


def find_litellm(flag: str | None) -> str | None:
    path = flag or os.environ.get("J1MSKY_BENCH_LITELLM")
    if not path:
        print("LiteLLM Proxy: skipped (no --litellm PATH and no $J1MSKY_BENCH_LITELLM)", file=sys.stderr)
        return None
    if not os.access(path, os.X_OK):
        print(f"LiteLLM Proxy: skipped ({path} is not an executable)", file=sys.stderr)
        return None
    return path


# ------------------------------------------------------------------ the summary

def p50(part: dict[str, Any], what: str = "latency_ms", p: str = "p50") -> float:
    return float(part[what].get(p, float("nan")))  # nan: no call of that pass succeeded


def stats(values: list[float]) -> dict[str, Any]:
    return {"rounds": [round(v, 3) for v in values], "min": round(min(values), 3),
            "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per target: its figures over the rounds, and its ratios to ``direct`` in each round."""
    out: dict[str, Any] = {}
    for name in rounds[0]:
        per: dict[str, list[float]] = {}

        def put(key: str, value: float) -> None:
            per.setdefault(key, []).append(value)

        for r in rounds:
            me, direct = r[name], r["direct"]
            put("calls_per_s", me["load"]["calls_per_s"])
            put("load_p50_ms", p50(me["load"]))
            put("load_p99_ms", p50(me["load"], p="p99"))
            put("sequential_p50_ms", p50(me["sequential"]))
            put("sequential_p99_ms", p50(me["sequential"], p="p99"))
            put("ttfb_p50_ms", p50(me["ttfb"], "ttfb_ms"))
            put("ttfb_p99_ms", p50(me["ttfb"], "ttfb_ms", "p99"))
            put("ttfb_load_p50_ms", p50(me["ttfb_load"], "ttfb_ms"))
            put("stream_calls_per_s", me["ttfb_load"]["calls_per_s"])
            if me["load"]["cpu_ms_per_call"] is not None:
                put("cpu_ms_per_call", me["load"]["cpu_ms_per_call"])
            put("errors", sum(me[k]["errors"] for k in ("load", "sequential", "ttfb", "ttfb_load")))
            if name != "direct":
                put("calls_per_s_ratio", me["load"]["calls_per_s"] / direct["load"]["calls_per_s"])
                put("added_p50_ms_sequential", p50(me["sequential"]) - p50(direct["sequential"]))
                put("added_p50_ms_load", p50(me["load"]) - p50(direct["load"]))
                put("added_ttfb_p50_ms", p50(me["ttfb"], "ttfb_ms") - p50(direct["ttfb"], "ttfb_ms"))
        out[name] = {k: stats(v) for k, v in per.items()}
    return out


def verdict(summary: dict[str, Any], rss: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's four targets against the daemon's medians (min/median both reported), and
    the bare proxy's figures for the same three where it ran (the floor: what any aiohttp
    proxy reaches here)."""
    d = summary["daemon"]
    out = {
        "calls_per_s_ratio >= 0.5": d["calls_per_s_ratio"],
        "added_p50_ms (sequential) <= 2": d["added_p50_ms_sequential"],
        "added_ttfb_p50_ms <= 2": d["added_ttfb_p50_ms"],
    }
    if "proxy" in summary:
        floor = summary["proxy"]
        out["floor: bare proxy"] = {k: floor[k]["median"] for k in (
            "calls_per_s_ratio", "added_p50_ms_sequential", "added_ttfb_p50_ms", "cpu_ms_per_call")}
    if rss is not None:
        out["idle_rss_growth_mb <= 3"] = rss["growth_mb"]
    return out


def rss_pair(base_tree: str, rounds: int) -> dict[str, Any]:
    """Idle RSS of the base tree and this one, alternating (bench/idle_rss.py's start)."""
    trees = {"base": os.path.abspath(base_tree), "this": run_all.ROOT}
    found: dict[str, list[float]] = {name: [] for name in trees}
    for i in range(rounds):
        for name in (("base", "this") if i % 2 == 0 else ("this", "base")):
            found[name].append(idle_rss.idle_rss_mb(trees[name]))
            print(f"idle RSS {name}: {found[name][-1]:.1f} MB", file=sys.stderr)
    med = {name: statistics.median(v) for name, v in found.items()}
    return {"trees": trees, "samples_mb": {k: [round(x, 1) for x in v] for k, v in found.items()},
            "median_mb": {k: round(v, 1) for k, v in med.items()}, "growth_mb": round(med["this"] - med["base"], 1)}


# ------------------------------------------------------------------ main

def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = args.workdir or tempfile.mkdtemp(prefix="j1msky-fd-")
    os.makedirs(workdir, exist_ok=True)
    litellm = find_litellm(args.litellm)
    results: dict[str, Any] = {"machine": run_all.machine(), "workdir": workdir, "connections": args.c,
                               "duration_s": args.duration, "sequential_calls": args.sequential,
                               "sync": args.sync, "litellm": litellm}
    print(json.dumps(results["machine"]), file=sys.stderr)
    up, up_port = run_all.upstream(workdir)
    procs: list[run_all.Proc] = [up]
    try:
        config = run_all.bench_config(workdir, up_port, args.sync)
        daemon, url, db, token = run_all.daemon(workdir, "daemon", config)
        procs.append(daemon)
        targets = [Target("direct", f"http://127.0.0.1:{up_port}", pid=up.pid),
                   Target("daemon", url, load.auth_headers(token), daemon.pid)]
        if not args.no_proxy:
            proc, target = start_proxy(workdir, up_port)
            procs.append(proc)
            targets.append(target)
        if litellm:
            proc, target = start_litellm(litellm, workdir, up_port)
            procs.append(proc)
            targets.append(target)
        rounds: list[dict[str, dict[str, Any]]] = []
        for i in range(args.rounds):
            order = targets if i % 2 == 0 else targets[::-1]
            found: dict[str, dict[str, Any]] = {}
            for target in order:
                found[target.name] = asyncio.run(measure(target, args.c, args.duration, args.sequential))
                m = found[target.name]
                print(f"round {i + 1} {target.name}: {m['load']['calls_per_s']}/s at {args.c} conns "
                      f"(p50 {m['load']['latency_ms'].get('p50')} ms), sequential p50 "
                      f"{m['sequential']['latency_ms'].get('p50')} ms, ttfb p50 {m['ttfb']['ttfb_ms'].get('p50')} ms",
                      file=sys.stderr)
            rounds.append({t.name: found[t.name] for t in targets})
        results["rounds"] = rounds
        results["breakdown_ms"] = {
            "whole": asyncio.run(breakdown(targets[1], db, args.sequential, stream=False)),
            "streamed": asyncio.run(breakdown(targets[1], db, args.sequential, stream=True))}
        print(json.dumps(results["breakdown_ms"]), file=sys.stderr)
        results["daemon_rss_after_mb"] = round(load.rss_kb(daemon.pid) / 1024, 1)
    finally:
        for proc in reversed(procs):
            proc.stop()
    results["summary"] = summarise(rounds)
    results["idle_rss"] = rss_pair(args.base_tree, args.rss_rounds) if args.base_tree else None
    results["targets"] = verdict(results["summary"], results["idle_rss"])
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir")
    p.add_argument("-c", type=int, default=32, help="client connections of the load passes")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per load pass")
    p.add_argument("--sequential", type=int, default=300, help="calls per one-at-a-time pass")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sync", choices=("normal", "full"), default="full",
                   help="the daemon's [store] synchronous (default: full, as shipped)")
    p.add_argument("--litellm", help="path of LiteLLM Proxy's `litellm` executable ($J1MSKY_BENCH_LITELLM)")
    p.add_argument("--no-proxy", action="store_true",
                   help="leave out bench/bare_proxy.py (the floor of any aiohttp proxy)")
    p.add_argument("--base-tree", help="a tree without the front door, for the idle RSS growth")
    p.add_argument("--rss-rounds", type=int, default=4, help="idle RSS starts per tree")
    args = p.parse_args()
    try:  # the load generator shares the cores: give it the fast loop too
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    results = run(args)
    print(json.dumps(results["targets"], indent=1), file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
