"""Issue 3: requests/s of GET /api/health through the daemon's full middleware chain, as a
ratio to a bare aiohttp hello-world handler measured in the same run (target >= 0.7).

    .venv/bin/python bench/health_ratio.py --workdir /tmp/j1b-health            # wrk if installed
    .venv/bin/python bench/health_ratio.py --client aiohttp                     # no wrk
    .venv/bin/python bench/health_ratio.py --rounds 3 --duration 10 -c 64 --threads 1

Both servers run at once, started fresh by this script, and are loaded *alternately*
(daemon, bare, daemon, bare, ...; the first of each pair alternates too), each round
after a short warm-up; the result is the median requests/s of each over ``--rounds``
rounds, and their ratio.  Nothing is pinned: on this 2-core machine the load generator
and the server under load share both cores, the same way for both servers.

The daemon: ``j1mskyd serve`` with ``health_config()`` below: the offline provider (so
/health says "healthy" and answers 200), every rate limit lifted so no request is
refused, but the whole chain active: request id + metrics, error envelope, body limit,
IP allowlist, per-key *and* per-IP token buckets, X-RateLimit-* headers.  A refused
(non-2xx) response would make the number meaningless, so any is reported as an error.

The bare app: ``bench/bare_app.py --hello``: uvloop (as the daemon installs it), the same
aiohttp.web, one handler returning "Hello, World!" as text/plain, no middleware, no
access log (the daemon runs without one too).

``--shaped`` adds a third server to every round, ``bench/bare_app.py --shaped`` (its own
process): the daemon's exact /api/health response (body and headers, constant) through
one trivial middleware.  shaped / bare is the ceiling of the ratio for that response on
this aiohttp, whatever j1mskyd does; daemon / shaped is what j1mskyd's own code costs.

Each measurement also reads the server's CPU time (utime + stime from /proc) and reports
CPU microseconds per request; ``median_cpu_ratio`` is bare's CPU per request over the
daemon's.  On a shared machine requests/s swing with whatever else runs; CPU per request
swings much less, so it is the number to compare between runs (requests/s within a run).

/api/health is public: no API key is sent (the daemon runs with auth on, as shipped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import load  # noqa: E402
from run_all import PY, Proc, free_port, wait_port  # noqa: E402
from lifted import LIFTED_LIMITS  # bench/ is the script directory, so on sys.path

HEALTH_CONFIG = """
[server]
log_level = "warning"

[plugins]
dropin_dir = "{workdir}/no-plugins"

{lifted}

[providers.offline]
plugin = "offline"
max_concurrency = 16
hourly_limit = 100000000

[models.k2p5]
provider = "offline"
upstream = "k2p5"
input_per_1k = 0.0005
output_per_1k = 0.0015
blended_per_1k = 0.001
"""


def health_config(workdir: str) -> str:
    return HEALTH_CONFIG.format(workdir=workdir, lifted=LIFTED_LIMITS)


# ------------------------------------------------------------------ load generators

_UNITS = {"": 1.0, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}


def run_wrk(url: str, duration: float, conns: int, threads: int) -> dict:
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration:g}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    lat = {}
    for p in ("50", "99"):
        mm = re.search(rf"^\s+{p}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if mm:
            lat[f"p{p}_ms"] = float(mm.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[mm.group(2)]
    return {"rps": rps, "requests": int(m.group(1)) if m else None,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errs.group(1) if errs else None,
            **lat}


async def _aiohttp_load(url: str, duration: float, conns: int) -> dict:
    import aiohttp
    count = 0
    bad = 0
    lat: list[float] = []
    stop = time.perf_counter() + duration
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as s:
        async def worker() -> None:
            nonlocal count, bad
            while time.perf_counter() < stop:
                t = time.perf_counter()
                async with s.get(url) as r:
                    await r.read()
                    if r.status != 200:
                        bad += 1
                lat.append(time.perf_counter() - t)
                count += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.perf_counter() - t0
    ms = load.summary_ms(lat)
    return {"rps": round(count / elapsed, 1), "requests": count, "non_2xx": bad, "socket_errors": None,
            "p50_ms": ms.get("p50"), "p99_ms": ms.get("p99")}


def run_aiohttp(url: str, duration: float, conns: int, threads: int) -> dict:
    return asyncio.run(_aiohttp_load(url, duration, conns))


# ------------------------------------------------------------------ the run

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(run, pid: int, *args) -> dict:
    """run(*args) plus the server's CPU time per request.  On a shared machine requests/s
    drop whenever other processes take the cores; CPU microseconds per request are much
    less disturbed, so their ratio is reported next to the requests/s one."""
    before = cpu_seconds(pid)
    res = run(*args)
    if res.get("requests"):
        res["cpu_us_per_request"] = round((cpu_seconds(pid) - before) / res["requests"] * 1e6, 1)
    return res


def start_daemon(workdir: str) -> tuple[Proc, str]:
    state = os.path.join(workdir, "health-daemon")
    shutil.rmtree(state, ignore_errors=True)
    os.makedirs(state)
    cfg = os.path.join(workdir, "health.toml")
    with open(cfg, "w") as f:
        f.write(health_config(workdir))
    port = free_port()
    proc = Proc([PY, "-m", "j1mskyd", "serve", "--port", str(port), "--state-dir", state, "--config", cfg],
                os.path.join(workdir, "health-daemon.log"))
    url = f"http://127.0.0.1:{port}"
    asyncio.run(load.wait_health(url))
    return proc, url


def start_bare(workdir: str, mode: str = "--hello") -> tuple[Proc, str]:
    port = free_port()
    proc = Proc([PY, os.path.join(HERE, "bare_app.py"), "--port", str(port), mode],
                os.path.join(workdir, f"health-bare{mode.replace('--', '-')}.log"))
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"


def _cpu_ratio(bare: dict, daemon: dict) -> float | None:
    if not bare.get("cpu_us_per_request") or not daemon.get("cpu_us_per_request"):
        return None
    return round(bare["cpu_us_per_request"] / daemon["cpu_us_per_request"], 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir")
    p.add_argument("--client", choices=("wrk", "aiohttp"), help="default: wrk when installed, else aiohttp")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement")
    p.add_argument("-c", "--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--shaped", action="store_true",
                   help="also measure bare_app.py --shaped (the daemon's response, no work behind it)")
    a = p.parse_args()
    client = a.client or ("wrk" if shutil.which("wrk") else "aiohttp")
    if client == "aiohttp":
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
    run = run_wrk if client == "wrk" else run_aiohttp
    workdir = a.workdir or tempfile.mkdtemp(prefix="j1msky-health-")
    os.makedirs(workdir, exist_ok=True)

    daemon, durl = start_daemon(workdir)
    bare, burl = start_bare(workdir)
    targets = {"daemon": durl + "/api/health", "bare": burl + "/"}
    pids = {"daemon": daemon.pid, "bare": bare.pid}
    names = ["daemon", "bare"]
    shaped = None
    if a.shaped:
        shaped, surl = start_bare(workdir, "--shaped")
        targets["shaped"] = surl + "/shaped"
        pids["shaped"] = shaped.pid
        names.append("shaped")
    rounds: list[dict] = []
    try:
        for r in range(a.rounds):
            order = tuple(names) if r % 2 == 0 else tuple(reversed(names))
            res = {}
            for name in order:
                if a.warmup > 0:
                    run(targets[name], a.warmup, a.connections, a.threads)
                res[name] = measured(run, pids[name], targets[name], a.duration, a.connections, a.threads)
                print(json.dumps({"round": r + 1, "server": name, **res[name]}), file=sys.stderr)
            res["ratio"] = round(res["daemon"]["rps"] / res["bare"]["rps"], 3)
            res["cpu_ratio"] = _cpu_ratio(res["bare"], res["daemon"])
            if shaped is not None:
                res["ratio_shaped_over_bare"] = round(res["shaped"]["rps"] / res["bare"]["rps"], 3)
                res["ratio_daemon_over_shaped"] = round(res["daemon"]["rps"] / res["shaped"]["rps"], 3)
            rounds.append(res)
        # what the daemon answered, for the record (headers show the whole chain ran)
        import urllib.request
        with urllib.request.urlopen(targets["daemon"]) as resp:
            sample = {"status": resp.status, "headers": dict(resp.headers), "body_bytes": len(resp.read())}
    finally:
        daemon.stop()
        bare.stop()
        if shaped is not None:
            shaped.stop()

    med = {k: statistics.median(r[k]["rps"] for r in rounds) for k in names}
    out = {
        "client": client, "connections": a.connections, "threads": a.threads if client == "wrk" else None,
        "duration_s": a.duration, "rounds": rounds,
        "median_rps": {k: round(v, 1) for k, v in med.items()},
        "ratio_of_medians": round(med["daemon"] / med["bare"], 3),
        "median_of_round_ratios": round(statistics.median(r["ratio"] for r in rounds), 3),
        # bare's CPU per request / the daemon's: the ratio if each had a core to itself
        "median_cpu_ratio": statistics.median(r["cpu_ratio"] for r in rounds if r["cpu_ratio"] is not None)
        if any(r["cpu_ratio"] is not None for r in rounds) else None,
        "target": 0.7,
        "non_2xx_total": sum(r[k]["non_2xx"] for r in rounds for k in names),
        "daemon_sample_response": sample,
    }
    if shaped is not None:
        out["ratio_of_medians_shaped_over_bare"] = round(med["shaped"] / med["bare"], 3)
        out["ratio_of_medians_daemon_over_shaped"] = round(med["daemon"] / med["shaped"], 3)
    out["met"] = out["ratio_of_medians"] >= 0.7
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
