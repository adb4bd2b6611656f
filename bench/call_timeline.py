"""Where one front-door call's time goes, step by step: a daemon from a source tree with
``bench/timeline/`` on its PYTHONPATH (its ``sitecustomize`` marks the entry and exit of each
step of a call, on CLOCK_MONOTONIC), ``-n`` non-streamed calls to ``POST /v1/chat/completions``
one at a time against a zero-latency ``fake_upstream.py``, and per step the median time from the
client sending the call (the same clock), in the order the steps happen.

    .venv/bin/python bench/call_timeline.py [TREE] [-n 300] [--sync full|normal] [--stream]

Marking a step costs ~1.2 us (its two marks, measured in a loop): ~30 us over a call's ~25
steps, so the figures are a little above an unmarked call's
(``frontdoor_ab.py`` measures those); what they show is the order and the gaps: a thread hop
(``submit<`` to ``commit>``), the commit itself, a loop step that nobody waits for on the way.
Prints a table (``--json``: the figures as JSON).  Steps named in ``timeline/sitecustomize.py``;
``label#k`` is the k-th time a step is entered within the call.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import json
import os
import statistics
import sys
import tempfile
import time

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cpu_per_agent  # noqa: E402  (bench/ is the script directory)
import load  # noqa: E402
import run_all  # noqa: E402
from frontdoor import Target  # noqa: E402


async def calls(url: str, token: str | None, n: int, stream: bool) -> list[tuple[int, int]]:
    """``n`` calls after 30 to warm up, one at a time, 2 ms apart: (sent, whole answer read) in ns."""
    body = Target("daemon", url, {}, 0).body(stream)
    headers = {**load.auth_headers(token), "Content-Type": "application/json"}
    out = []
    async with aiohttp.ClientSession() as s:
        for i in range(n + 30):
            t0 = time.perf_counter_ns()
            async with s.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
                await resp.read()
                t1 = time.perf_counter_ns()
                if resp.status != 200:
                    raise RuntimeError(f"the call answered {resp.status}")
            if i >= 30:
                out.append((t0, t1))
            await asyncio.sleep(0.002)
    return out


def timeline(calls_ns: list[tuple[int, int]], marks_file: str) -> dict[str, float]:
    """Per ``label#k``, the median ms from the call's start, for steps seen in most calls."""
    marks = sorted((int(t), name) for t, name, _ in (line.split() for line in open(marks_file)))
    times = [t for t, _ in marks]
    found: dict[str, list[float]] = collections.defaultdict(list)
    for t0, t1 in calls_ns:
        seen: collections.Counter[str] = collections.Counter()
        for t, name in marks[bisect.bisect_left(times, t0):bisect.bisect_right(times, t1)]:
            seen[name] += 1
            found[f"{name}#{seen[name]}"].append((t - t0) / 1e6)
        found["client_has_it_all"].append((t1 - t0) / 1e6)
    steps = {k: statistics.median(v) for k, v in found.items() if len(v) >= len(calls_ns) / 2}
    return dict(sorted(steps.items(), key=lambda kv: kv[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tree", nargs="?", default=os.environ.get("J1MSKY_ROOT", os.path.dirname(HERE)))
    p.add_argument("-n", type=int, default=300)
    p.add_argument("--sync", choices=("full", "normal"), default="full")
    p.add_argument("--stream", action="store_true", help="streamed calls (the marks up to the whole answer)")
    p.add_argument("--workdir")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    workdir = a.workdir or tempfile.mkdtemp(prefix="j1b-timeline-")
    os.makedirs(workdir, exist_ok=True)
    marks_file = os.path.join(workdir, "marks.txt")
    os.environ["TIMELINE_OUT"] = marks_file
    up, up_port = run_all.upstream(workdir)
    try:
        proc, url, _, token = cpu_per_agent.start(a.tree, workdir, "daemon", a.sync, None, up_port=up_port,
                                                  extra_path=(os.path.join(HERE, "timeline"),))
        try:
            made = asyncio.run(calls(url, token, a.n, a.stream))
        finally:
            proc.terminate()
            proc.wait(60)  # its marks are written at exit
    finally:
        up.stop()
    steps = timeline(made, marks_file)
    if a.json:
        print(json.dumps({"tree": a.tree, "n": a.n, "sync": a.sync, "stream": a.stream,
                          "median_ms_from_send": {k: round(v, 3) for k, v in steps.items()}}, indent=1))
        return
    before = 0.0
    print(f"{'step':28s} {'ms from send':>12s} {'since last':>10s}")
    for name, at in steps.items():
        print(f"{name:28s} {at:12.3f} {at - before:10.3f}")
        before = at


if __name__ == "__main__":
    main()
