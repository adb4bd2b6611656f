"""Run every benchmark of docs/performance.md in one go and print the results as JSON.

    .venv/bin/python bench/run_all.py                  # everything (~5 min on 2 cores)
    .venv/bin/python bench/run_all.py --only idle      # idle | throughput | inflight
    .venv/bin/python bench/run_all.py --sync full -n 5000

Each measurement starts fresh processes (daemon, fake upstream, bare app) with a fresh
state directory under --workdir, so runs do not contaminate each other.  Ratios are
taken within one run (same machine, same moment).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# The tree whose j1mskyd is measured (daemons run `python -m j1mskyd` from there).  Set
# J1MSKY_ROOT to a frozen copy (`git archive COMMIT | tar -x -C DIR`) to measure one commit
# while the working tree keeps changing.
ROOT = os.path.abspath(os.environ.get("J1MSKY_ROOT") or os.path.dirname(HERE))
sys.path.insert(0, HERE)
import load  # noqa: E402
from lifted import LIFTED_LIMITS  # bench/ is the script directory, so on sys.path

PY = sys.executable

CONFIG = """
[server]
log_level = "warning"

[runtime]
max_concurrency = {runtime_conc}

[store]
synchronous = "{sync}"

# Authentication as shipped (on): the load driver sends the bootstrap admin key's token.
# run_all.py --no-auth sets it to false, for comparison.
[security]
auth = {auth}

[plugins]
dropin_dir = "{workdir}/no-plugins"

# The seed's limits (100 spawns/h per key and per IP, $50/day, 50 live agents per key)
# would refuse a benchmark after its first hundred spawns: lift them all.
{lifted}

[providers.fast]
plugin = "openai_compat"
base_url = "http://127.0.0.1:{up_port}/v1"
timeout = 3600.0
max_concurrency = {prov_conc}
hourly_limit = 100000000

[models.k2p5]
provider = "fast"
upstream = "k2p5"
input_per_1k = 0.0005
output_per_1k = 0.0015
blended_per_1k = 0.001
"""


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, args: list[str], log: str, env: dict[str, str] | None = None) -> None:
        self.log = open(log, "wb")
        self.p = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                  env=None if env is None else {**os.environ, **env})
        self.pid = self.p.pid

    def stop(self, timeout: float = 30.0) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def wait_port(port: int, timeout: float = 20.0) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


def daemon(workdir: str, name: str, config: str | None,
           env: dict[str, str] | None = None) -> tuple[Proc, str, str, str | None]:
    """A fresh daemon (``env``: added to this environment, e.g. LD_PRELOAD); returns
    (process, url, database path, bootstrap admin token or None)."""
    state = os.path.join(workdir, name)
    os.makedirs(state, exist_ok=True)
    port = free_port()
    args = [PY, "-m", "j1mskyd", "serve", "--port", str(port), "--state-dir", state]
    if config is not None:
        path = os.path.join(workdir, name + ".toml")
        with open(path, "w") as f:
            f.write(config)
        args += ["--config", path]
    proc = Proc(args, os.path.join(workdir, name + ".log"), env)
    url = f"http://127.0.0.1:{port}"
    asyncio.run(load.wait_health(url))
    # written before the port opens when auth is on; absent when auth = false
    token = load.read_token(state, timeout=0)
    return proc, url, os.path.join(state, "j1msky.db"), token


def upstream(workdir: str, delay: float = 0.0) -> tuple[Proc, int]:
    port = free_port()
    proc = Proc([PY, os.path.join(HERE, "fake_upstream.py"), "--port", str(port), "--delay", str(delay)],
                os.path.join(workdir, f"upstream-{port}.log"))
    wait_port(port)
    return proc, port


AUTH = True  # run_all.py --no-auth turns it off


def bench_config(workdir: str, up_port: int, sync: str, runtime_conc: int = 64, prov_conc: int = 256,
                 auth: bool | None = None) -> str:
    auth = AUTH if auth is None else auth
    return CONFIG.format(workdir=workdir, lifted=LIFTED_LIMITS, up_port=up_port, sync=sync,
                         runtime_conc=runtime_conc,
                         prov_conc=prov_conc, auth="true" if auth else "false")


# ----------------------------------------------------------------- measurements

def idle_rss(workdir: str, repeats: int) -> dict:
    out: dict[str, list[float]] = {"daemon": [], "bare": [], "bare_minimal": []}
    for i in range(repeats):
        proc, _, _, _ = daemon(workdir, f"idle-{i}", None)   # embedded default config (auth on)
        time.sleep(2)
        out["daemon"].append(load.rss_kb(proc.pid) / 1024)
        proc.stop()
        for key, extra in (("bare", []), ("bare_minimal", ["--minimal"])):
            port = free_port()
            p = Proc([PY, os.path.join(HERE, "bare_app.py"), "--port", str(port),
                      "--state-dir", os.path.join(workdir, f"bare-{i}"), *extra],
                     os.path.join(workdir, f"bare-{i}.log"))
            asyncio.run(load.wait_health(f"http://127.0.0.1:{port}"))
            time.sleep(2)
            out[key].append(load.rss_kb(p.pid) / 1024)
            p.stop()
    med = {k: round(statistics.median(v), 1) for k, v in out.items()}
    return {"samples_mb": {k: [round(x, 1) for x in v] for k, v in out.items()}, "median_mb": med,
            "ratio_daemon_over_bare": round(med["daemon"] / med["bare"], 3),
            "ratio_daemon_over_bare_minimal": round(med["daemon"] / med["bare_minimal"], 3)}


def throughput(workdir: str, sync: str, n: int, c: int, lat_rate: float) -> dict:
    up, up_port = upstream(workdir)
    up_url = f"http://127.0.0.1:{up_port}"
    proc, url, db, tok = daemon(workdir, f"tp-{sync}", bench_config(workdir, up_port, sync))
    try:
        asyncio.run(load.throughput(url, db, 500, c, "k2p5", up_url, token=tok))   # warm-up
        res = {"auth": tok is not None,
               "throughput": asyncio.run(load.throughput(url, db, n, c, "k2p5", up_url, token=tok))}
        res["rss_after_mb"] = round(load.rss_kb(proc.pid) / 1024, 1)
        # quiet passes (no HTTP polling while agents run): the in-daemon added latency
        res["latency_quiet_sequential"] = asyncio.run(load.latency(url, db, 0, 0, "k2p5", up_url, 300, "db",
                                                                   token=tok))
        res["latency_quiet_open_loop"] = asyncio.run(load.latency(url, db, lat_rate, 10, "k2p5", up_url, None,
                                                                  "none", token=tok))
        # watched passes: what a client sees (HTTP polling) and when the row is durable (db polling)
        res["latency_watched_sequential"] = asyncio.run(load.latency(url, db, 0, 0, "k2p5", up_url, 200,
                                                                     token=tok))
        res["latency_watched_open_loop"] = asyncio.run(load.latency(url, db, lat_rate, 10, "k2p5", up_url,
                                                                    token=tok))
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            res["db_synchronous"] = sync
            res["db_rows"] = conn.execute("SELECT COUNT(*) FROM agents").fetchone()[0]
    finally:
        proc.stop()
        up.stop()
    return res


def inflight(workdir: str, n: int, c: int, delay: float, runtime_conc: int, prov_conc: int,
             floor: bool = False) -> dict:
    """The daemon's RSS with ``n`` agents in flight; with ``floor``, then (same run, same upstream)
    a bare aiohttp client holding ``n`` calls the same way (floor.py inflight), and the ratio."""
    up, up_port = upstream(workdir, delay)
    name = f"inflight-{runtime_conc}-{prov_conc}"
    proc, url, _, tok = daemon(workdir, name, bench_config(workdir, up_port, "normal", runtime_conc, prov_conc))
    try:
        time.sleep(2)
        res = asyncio.run(load.inflight(url, proc.pid, n, c, "k2p5", token=tok))
        res.update(runtime_max_concurrency=runtime_conc, provider_max_concurrency=prov_conc,
                   upstream_delay_s=delay)
        proc.stop(120)
        if floor:
            out = subprocess.run([PY, os.path.join(HERE, "floor.py"), "inflight", "--upstream",
                                  f"http://127.0.0.1:{up_port}", "-n", str(n)], capture_output=True, check=True)
            res["floor"] = json.loads(out.stdout)
            res["ratio_to_floor"] = round(res["rss_delta_mb"] / res["floor"]["rss_delta_mb"], 3)
    finally:
        proc.stop(120)
        up.stop()
    return res


def machine() -> dict:
    import aiohttp
    try:
        import uvloop
        uv = uvloop.__version__
    except ImportError:
        uv = None
    return {"root": ROOT, "nproc": os.cpu_count(), "sched_cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "aiohttp": aiohttp.__version__, "uvloop": uv,
            "sqlite": sqlite3.sqlite_version, "kernel": platform.release(), "machine": platform.machine()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=("idle", "throughput", "inflight", "running"), action="append",
                   help="running: only the all-running in-flight case and its bare-client floor")
    p.add_argument("--sync", choices=("normal", "full"), action="append")
    p.add_argument("-n", type=int, default=10_000, help="agents per throughput run")
    p.add_argument("-c", type=int, default=64, help="client connections")
    p.add_argument("--rate", type=float, default=100.0, help="open-loop spawns/s for the latency run")
    p.add_argument("--inflight-n", type=int, default=10_000)
    p.add_argument("--delay", type=float, default=60.0, help="slow upstream delay for the in-flight run")
    p.add_argument("--repeats", type=int, default=3, help="idle RSS samples per process")
    p.add_argument("--workdir")
    p.add_argument("--no-auth", action="store_true",
                   help="[security] auth = false in the bench configs (default: on, the bootstrap token is sent)")
    a = p.parse_args()
    global AUTH
    AUTH = not a.no_auth
    try:  # the load generator shares the 2 cores: give it the fast loop too
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    only = a.only or ["idle", "throughput", "inflight"]
    workdir = a.workdir or tempfile.mkdtemp(prefix="j1msky-bench-")
    os.makedirs(workdir, exist_ok=True)
    results: dict = {"machine": machine(), "workdir": workdir, "auth": AUTH}
    print(json.dumps(results["machine"]), file=sys.stderr)
    if "idle" in only:
        results["idle"] = idle_rss(workdir, a.repeats)
        print(json.dumps(results["idle"]), file=sys.stderr)
    if "throughput" in only:
        for sync in a.sync or ["normal", "full"]:
            results[f"throughput_{sync}"] = throughput(workdir, sync, a.n, a.c, a.rate)
            print(json.dumps(results[f"throughput_{sync}"]), file=sys.stderr)
    if "inflight" in only:
        # queued: most agents wait in the daemon's queue; running: every agent holds an upstream call
        results["inflight_queued"] = inflight(workdir, a.inflight_n, a.c, a.delay, 64, 256)
        print(json.dumps(results["inflight_queued"]), file=sys.stderr)
    if "inflight" in only or "running" in only:
        results["inflight_running"] = inflight(workdir, a.inflight_n, a.c, a.delay, a.inflight_n, a.inflight_n,
                                               floor=True)
        print(json.dumps(results["inflight_running"]), file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
