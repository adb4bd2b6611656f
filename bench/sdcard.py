"""Spawn throughput with a slow fsync: an SD card simulated on a fast disk (issue 19).

    .venv/bin/python bench/sdcard.py --workdir /tmp/j1b-sd              # both modes at +0 and +10 ms
    .venv/bin/python bench/sdcard.py --sync full --fsync-delay-ms 10 -n 2000 -c 32 --rounds 3

Each run starts a fresh daemon on the built-in offline provider (no upstream at all: what
is measured is the daemon and its disk) with bench/fsyncshim.c preloaded, which sleeps
``--fsync-delay-ms`` before every fsync/fdatasync (an SD card's is of the order of 10 ms)
and logs each one.  Then ``-n`` spawns from ``-c`` keep-alive connections
(load.throughput: completed/s until every agent's completion is committed, and the
client-side spawn latency).  Configurations alternate within a round, so that the
machine's other load falls on all of them alike; compare ratios within one run.
Needs gcc (apt-get install gcc libc6-dev).  Prints JSON; a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fsyncshim  # noqa: E402  (bench/ is the script directory)
import load  # noqa: E402
import run_all  # noqa: E402
from lifted import LIFTED_LIMITS, OFFLINE_CONFIG  # noqa: E402

CONFIG = OFFLINE_CONFIG


def one(workdir: str, shim: str, sync: str, delay_ms: float, n: int, c: int, name: str) -> dict:
    log = os.path.join(workdir, name + ".fsync.log")
    config = CONFIG.format(sync=sync, workdir=workdir, lifted=LIFTED_LIMITS)
    proc, url, db, tok = run_all.daemon(workdir, name, config, fsyncshim.env(shim, log, delay_ms))
    try:
        asyncio.run(load.throughput(url, db, 200, c, "k2p5", None, token=tok))  # warm-up
        before = len(fsyncshim.read_log(log))
        res = asyncio.run(load.throughput(url, db, n, c, "k2p5", None, token=tok))
        syncs = fsyncshim.read_log(log)[before:]
    finally:
        proc.stop()
    wal = [s for s in syncs if s.path.endswith("j1msky.db-wal")]
    return {"sync": sync, "fsync_delay_ms": delay_ms, "completed_per_s": res["completed_per_s"],
            "spawn_p50_ms": res["spawn_http_ms"].get("p50"), "spawn_p90_ms": res["spawn_http_ms"].get("p90"),
            "spawn_errors": res["spawn_errors"], "fsyncs": len(syncs), "wal_fsyncs": len(wal), "raw": res}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sync", choices=("normal", "full"), action="append", help="default: both")
    p.add_argument("--fsync-delay-ms", type=float, action="append", help="added to every fsync (default: 0 and 10)")
    p.add_argument("-n", type=int, default=2000, help="spawns per run")
    p.add_argument("-c", type=int, default=32, help="client connections")
    p.add_argument("--rounds", type=int, default=1, help="runs of each configuration (median reported)")
    p.add_argument("--workdir")
    a = p.parse_args()
    workdir, shim = fsyncshim.prepared(a.workdir, "j1b-sd-")
    configs = [(s, d) for s in a.sync or ["normal", "full"] for d in a.fsync_delay_ms or [0.0, 10.0]]
    runs: dict[tuple[str, float], list[dict]] = {cfg: [] for cfg in configs}
    for r in range(a.rounds):
        for sync, delay in configs:
            res = one(workdir, shim, sync, delay, a.n, a.c, f"sd-{sync}-{delay:g}-{r}")
            runs[(sync, delay)].append(res)
            print(json.dumps({k: v for k, v in res.items() if k != "raw"}), file=sys.stderr)
    table = []
    for (sync, delay), rs in runs.items():
        table.append({"sync": sync, "fsync_delay_ms": delay,
                      "completed_per_s": statistics.median(x["completed_per_s"] or 0.0 for x in rs),
                      "spawn_p50_ms": statistics.median(x["spawn_p50_ms"] or 0.0 for x in rs),
                      "wal_fsyncs": statistics.median(x["wal_fsyncs"] for x in rs),
                      "samples_completed_per_s": [x["completed_per_s"] for x in rs]})
    print("| mode | fsync + | completed/s | spawn p50 | WAL fsyncs |\n|---|---|---|---|---|", file=sys.stderr)
    for t in table:
        print(f"| {t['sync']} | {t['fsync_delay_ms']:g} ms | {t['completed_per_s']:,.0f} | "
              f"{t['spawn_p50_ms']:.1f} ms | {t['wal_fsyncs']:g} |", file=sys.stderr)
    print(json.dumps({"machine": run_all.machine(), "n": a.n, "c": a.c, "rounds": a.rounds, "table": table,
                      "runs": {f"{s}/{d:g}": rs for (s, d), rs in runs.items()}}, indent=1))


if __name__ == "__main__":
    main()
