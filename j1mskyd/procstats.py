"""The process's own figures, named and read as the Prometheus client libraries do
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ...): from ``/proc/self``,
without psutil (the daemon does not import it until ``GET /system`` asks, to keep an idle
daemon small).  A reading that fails (not Linux; a hardened unit that hides ``/proc/stat``)
leaves its metric out, as the client libraries do, instead of failing the scrape."""

from __future__ import annotations

import os
import time

from .metrics import Family

__all__ = ["process_families"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_IMPORTED = time.time()  # the start time's fallback when /proc/stat's btime is hidden


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _max_fds() -> int | None:
    try:
        with open("/proc/self/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    return None if soft == "unlimited" else int(soft)
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_families() -> list[Family]:
    """The process collector's families, those that could be read."""
    out: list[Family] = []
    try:
        with open("/proc/self/stat", "rb") as f:
            # Fields after the command (which may hold spaces and parentheses): state is field 3.
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        fields = []
    if len(fields) > 21:
        utime, stime, starttime = int(fields[11]), int(fields[12]), int(fields[19])
        out.append(("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
                    [({}, (utime + stime) / _TICKS)]))
        out.append(("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
                    [({}, int(fields[20]))]))
        out.append(("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                    [({}, int(fields[21]) * _PAGE)]))
        boot = _boot_time()
        start = boot + starttime / _TICKS if boot is not None else _IMPORTED
        out.append(("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
                    [({}, start)]))
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = None
    if fds is not None:
        out.append(("process_open_fds", "gauge", "Number of open file descriptors.", [({}, fds)]))
    limit = _max_fds()
    if limit is not None:
        out.append(("process_max_fds", "gauge", "Maximum number of open file descriptors.", [({}, limit)]))
    return out
