"""Idle RSS at first start, two source trees side by side (e.g. `git archive` snapshots).

    .venv/bin/python bench/idle_rss.py /tmp/j1-before /tmp/j1-after

Each start: `python -m j1mskyd serve` from that tree on the embedded default, a fresh state
dir (so the first start's bootstrap key is sealed too), VmRSS read 2 s after the first
healthy answer.  Alternating, 4 starts each; prints each figure and the median.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROUNDS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def idle_rss_mb(tree: str) -> float:
    workdir = tempfile.mkdtemp(prefix="j1-rss-")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "j1mskyd", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--state-dir", os.path.join(workdir, "state")],
                            cwd=workdir, env=dict(os.environ, PYTHONPATH=tree),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):  # up to 30 s for the first healthy answer
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(2)
        with open(f"/proc/{proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS line")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    trees = {"before": sys.argv[1], "after": sys.argv[2]}
    found: dict[str, list[float]] = {name: [] for name in trees}
    for i in range(ROUNDS):
        for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
            found[name].append(idle_rss_mb(trees[name]))
    for name, values in found.items():
        print(name, [round(v, 1) for v in values], "median", round(statistics.median(values), 1))


if __name__ == "__main__":
    main()
