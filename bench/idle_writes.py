"""Issue 3: what the daemon's persistence costs when it is idle (target: zero writes per
minute when nothing changed; after traffic, the writes stop within one interval).

    .venv/bin/python bench/idle_writes.py --workdir /tmp/j1b-idle
    .venv/bin/python bench/idle_writes.py --idle 60 --after 90 --config my.toml

Starts a fresh ``j1mskyd serve`` (the embedded default config unless ``--config``:
offline provider, shipped limits, ``persist_interval`` 5 s) and watches its state
directory from the outside, every ``--poll`` seconds:

* ``ratelimits.json``: a save is a temp file + fsync + rename, so each one gives a new
  inode (and mtime); each change of (inode, mtime_ns, size) counts as one write;
* ``j1msky.db``, ``j1msky.db-wal`` (and ``-shm``): each change of (mtime_ns, size) counts
  as one write (several commits inside one poll interval count once: a lower bound
  under load, exact when idle, which is what this measures);
* ``/proc/<pid>/io``: ``write_bytes`` (bytes the process sent towards the disk) and
  ``syscw`` (write syscalls of any kind, sockets included) as a cross-check that
  catches writes to any other file too.

Phases:
1. ``idle-from-start``: from the moment the port opens, with no request at all, for
   ``--idle`` seconds (start-up writes, e.g. migrations, show up at t ~ 0).
2. ``traffic``: ``--requests`` GET /api/health, then ``--spawns`` POST /api/spawn
   (offline model, completes at once), waiting for each agent to finish.  Auth is on
   (the shipped default): spawns and agent reads carry the bootstrap admin key the
   daemon wrote to ``<state>/bootstrap-admin.key`` at first start (before its port
   opened, so that start-up write precedes phase 1); /api/health needs no key.
3. ``idle-after-traffic``: ``--after`` seconds without a request; every write is listed
   with its time after the last request, so "stops after one interval" is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from load import auth_headers, read_token  # noqa: E402
from run_all import PY, Proc, free_port, wait_port  # noqa: E402

FILES = ("ratelimits.json", "j1msky.db", "j1msky.db-wal", "j1msky.db-shm")


def stat_key(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if path.endswith(".json"):
        return (st.st_ino, st.st_mtime_ns, st.st_size)
    return (st.st_mtime_ns, st.st_size)


def proc_io(pid: int) -> dict[str, int]:
    try:
        with open(f"/proc/{pid}/io") as f:
            return {k: int(v) for k, v in (line.split(": ") for line in f)}
    except (OSError, ValueError):
        return {}


class Watcher:
    def __init__(self, state: str, pid: int) -> None:
        self.state = state
        self.pid = pid
        self.last = {name: stat_key(os.path.join(state, name)) for name in FILES}

    def poll(self) -> list[str]:
        changed = []
        for name in FILES:
            key = stat_key(os.path.join(self.state, name))
            if key != self.last[name]:
                changed.append(name)
                self.last[name] = key
        return changed

    def watch(self, seconds: float, poll: float, t_ref: float) -> dict:
        """Watch for ``seconds``; event times are relative to ``t_ref`` (perf_counter)."""
        io0 = proc_io(self.pid)
        events: list[tuple[float, str]] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            time.sleep(poll)
            now = time.perf_counter()
            for name in self.poll():
                events.append((round(now - t_ref, 2), name))
        io1 = proc_io(self.pid)
        counts = {name: sum(1 for _, n in events if n == name) for name in FILES}
        return {
            "seconds": seconds,
            "writes": counts,
            "writes_per_minute": {k: round(v * 60 / seconds, 2) for k, v in counts.items()},
            "events": events,
            "proc_io_delta": {k: io1.get(k, 0) - io0.get(k, 0) for k in ("write_bytes", "syscw", "wchar")}
            if io0 and io1 else None,
        }


async def traffic(url: str, requests: int, spawns: int, token: str | None = None) -> dict:
    import aiohttp
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession(headers=auth_headers(token)) as s:
        for _ in range(requests):
            async with s.get(url + "/api/health") as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1
        for i in range(spawns):
            async with s.post(url + "/api/spawn", json={"model": "k2p5", "task": f"idle bench {i}"}) as r:
                data = await r.json()
                statuses[r.status] = statuses.get(r.status, 0) + 1
            if r.status != 200:
                continue
            while True:  # wait for the agent to finish (GET /api/agent counts as traffic too)
                async with s.get(f"{url}/api/agent/{data['agent_id']}") as r:
                    st = (await r.json()).get("status")
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                if st in ("completed", "failed", "cancelled"):
                    break
                await asyncio.sleep(0.02)
    return {"http_statuses": statuses}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir")
    p.add_argument("--config", help="daemon config (default: the embedded one)")
    p.add_argument("--idle", type=float, default=60.0, help="seconds idle from start")
    p.add_argument("--after", type=float, default=90.0, help="seconds idle after the traffic")
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--spawns", type=int, default=10)
    p.add_argument("--poll", type=float, default=0.05)
    a = p.parse_args()
    workdir = a.workdir or tempfile.mkdtemp(prefix="j1msky-idle-")
    state = os.path.join(workdir, "idle-state")
    shutil.rmtree(state, ignore_errors=True)
    os.makedirs(state)
    port = free_port()
    args = [PY, "-m", "j1mskyd", "serve", "--port", str(port), "--state-dir", state]
    if a.config:
        args += ["--config", a.config]
    out: dict = {"config": a.config or "<embedded>", "state_dir": state, "poll_s": a.poll}
    daemon = Proc(args, os.path.join(workdir, "idle-daemon.log"))
    try:
        wait_port(port)
        t_start = time.perf_counter()
        w = Watcher(state, daemon.pid)
        out["files_at_start"] = {n: w.last[n] is not None for n in FILES}
        print(f"phase 1: {a.idle:g} s idle from start, no requests", file=sys.stderr)
        out["idle_from_start"] = w.watch(a.idle, a.poll, t_start)
        print(json.dumps(out["idle_from_start"]), file=sys.stderr)
        token = read_token(state, timeout=0)
        out["auth_token_used"] = token is not None
        t0 = time.perf_counter()
        out["traffic"] = asyncio.run(traffic(f"http://127.0.0.1:{port}", a.requests, a.spawns, token))
        t_last = time.perf_counter()
        out["traffic"].update(requests=a.requests, spawns=a.spawns, seconds=round(t_last - t0, 2))
        print(f"phase 3: {a.after:g} s idle after traffic", file=sys.stderr)
        # writes during the traffic itself are counted by the first poll of the watch
        out["idle_after_traffic"] = w.watch(a.after, a.poll, t_last)
        ev = out["idle_after_traffic"]["events"]
        out["idle_after_traffic"]["last_write_after_s"] = max((t for t, _ in ev), default=None)
        print(json.dumps(out["idle_after_traffic"]), file=sys.stderr)
    finally:
        daemon.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
