"""Build and read bench/fsyncshim.c, the LD_PRELOAD library that records every
fsync/fdatasync (and may add a delay to each: an SD card on a fast disk).

Used by tests/test_durability.py (is a spawn's 200 sent after its commit was synced?)
and bench/sdcard.py (throughput with a slow fsync).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fsyncshim.c")


@dataclass(frozen=True)
class Sync:
    call: str      # fsync | fdatasync
    fd: int
    start: float   # CLOCK_MONOTONIC seconds, comparable with time.monotonic()
    end: float
    rc: int
    path: str      # what the descriptor named ('' when unknown)


def compiler() -> str | None:
    return shutil.which("gcc")


def build(dest_dir: str) -> str:
    """Compile the shim into ``dest_dir``; returns the .so path.  Needs gcc and libc6-dev."""
    cc = compiler()
    if cc is None:
        raise FileNotFoundError("gcc not found (apt-get install gcc libc6-dev)")
    out = os.path.join(dest_dir, "fsyncshim.so")
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", out, SOURCE, "-ldl", "-lpthread"],
                   check=True, capture_output=True, text=True, timeout=120)
    return out


def prepared(workdir: str | None, prefix: str) -> tuple[str, str]:
    """A bench script's work directory (``workdir``, or a new temporary one named ``prefix``...)
    with the shim built in it: (the directory, the shim's path)."""
    workdir = workdir or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(workdir, exist_ok=True)
    return workdir, build(workdir)


def env(shim: str, log: str | None = None, delay_ms: float = 0.0) -> dict[str, str]:
    """Environment variables that load the shim into a child process."""
    out = {"LD_PRELOAD": shim, "FSYNC_DELAY_MS": f"{delay_ms:g}"}
    if log is not None:
        out["FSYNC_LOG"] = log
    return out


def read_log(path: str) -> list[Sync]:
    syncs = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                call, fd, start, end, rc, *rest = line.rstrip("\n").split(" ", 5)
                syncs.append(Sync(call, int(fd), float(start), float(end), int(rc), rest[0] if rest else ""))
    except FileNotFoundError:
        pass
    return syncs
