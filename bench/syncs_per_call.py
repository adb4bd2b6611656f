"""fsyncs per front-door call, for source trees side by side: how many durable commits a chat call
costs the store (on an SD card each one is an fsync of 5-20 ms, and a write on the card).

    .venv/bin/python bench/syncs_per_call.py /tmp/j1-before /tmp/j1-after [-n 20] [--delay 0.05]

One ``fake_upstream.py`` that takes ``--delay`` seconds per call (0.05: a call that outlasts the
runtime's 10 ms insert deferral, as a real provider's does; 0: the zero-latency upstream of
``frontdoor_ab.py``), and per tree a daemon (``cpu_per_agent.start``: the bench config, auth on,
``synchronous = "full"`` as shipped) with ``fsyncshim.c`` preloaded, which logs every
``fsync``/``fdatasync``.  After warm-up calls, ``-n`` calls to ``POST /v1/chat/completions`` one
at a time, not streamed, then ``-n`` streamed, each batch followed by a pause for trailing
commits; the figure is the syncs logged during a batch over ``-n``.  Needs gcc (the shim).
Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cpu_per_agent  # noqa: E402  (bench/ is the script directory)
import fsyncshim  # noqa: E402
import load  # noqa: E402
import run_all  # noqa: E402
from frontdoor import Target  # noqa: E402

TRAILING = 0.5  # seconds after a batch: the last call's trailing commits land in its batch


async def calls(url: str, token: str | None, n: int, stream: bool) -> None:
    body = Target("daemon", url, {}, 0).body(stream)
    headers = {**load.auth_headers(token), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"the daemon answered {resp.status}: {await resp.text()}")
                await resp.read()
        await asyncio.sleep(TRAILING)


def one(tree: str, workdir: str, name: str, shim: str, n: int, up_port: int) -> dict[str, float]:
    log = os.path.join(workdir, name + ".fsync.log")
    proc, url, _db, token = cpu_per_agent.start(tree, workdir, name, "full", None, up_port=up_port,
                                                env=fsyncshim.env(shim, log))
    try:
        asyncio.run(calls(url, token, 5, False))  # warm-up
        out = {}
        for stream in (False, True):
            before = len(fsyncshim.read_log(log))
            asyncio.run(calls(url, token, n, stream))
            out["streamed" if stream else "not_streamed"] = round((len(fsyncshim.read_log(log)) - before) / n, 3)
        return out
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trees", nargs="+")
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--delay", type=float, default=0.05, help="the upstream's seconds per call")
    p.add_argument("--workdir")
    a = p.parse_args()
    workdir, shim = fsyncshim.prepared(a.workdir, "j1-syncs-")
    upstream, up_port = run_all.upstream(workdir, a.delay)
    try:
        result = {"n": a.n, "upstream_delay_s": a.delay, "syncs_per_call": {
            tree: one(tree, workdir, f"t{i}", shim, a.n, up_port) for i, tree in enumerate(a.trees)}}
    finally:
        upstream.stop()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
