"""What GET /system reports about the machine.  psutil is imported on first use, not at
start: an idle daemon should not pay for it.  Every reading degrades to null instead of
failing, because hardened systemd units (ProcSubset=pid) hide parts of /proc."""

from __future__ import annotations

import glob
import os
import shutil
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def cpu_temp(thermal_glob: str = "/sys/class/thermal/thermal_zone*/temp") -> float | None:
    """The Pi's SoC temperature in °C (thermal_zone0 is the CPU there); None without sensors."""
    for path in sorted(glob.glob(thermal_glob)):
        try:
            with open(path) as fh:
                return round(int(fh.read().strip()) / 1000, 1)
        except (OSError, ValueError):
            continue
    return None


def human_bytes(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit in ("B", "K") or n >= 10 else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """Hours and minutes, as the API reference shows uptime ("24h 15m"): hours do not roll over into days."""
    hours, rem = divmod(max(int(seconds), 0), 3600)
    return f"{hours}h {rem // 60}m"


def snapshot(state_dir: str, active_agents: int) -> dict[str, Any]:
    import psutil  # lazy: see module docstring

    def attempt(fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - a missing reading is null, never a 500
            return None

    boot = attempt(psutil.boot_time)
    uptime_s = time.time() - boot if boot else None
    disk = attempt(lambda: shutil.disk_usage(state_dir))
    return {
        "cpu_temp": cpu_temp(),
        "load_average": attempt(lambda: round(os.getloadavg()[0], 2)),
        "load": attempt(lambda: [round(x, 2) for x in os.getloadavg()]),
        "cpu_count": os.cpu_count(),
        "memory_usage": attempt(lambda: psutil.virtual_memory().percent),
        "uptime": human_duration(uptime_s) if uptime_s is not None else None,
        "uptime_seconds": int(uptime_s) if uptime_s is not None else None,
        "disk_free": human_bytes(disk.free) if disk else None,
        "disk_free_bytes": disk.free if disk else None,
        "disk_usage_pct": round(disk.used / disk.total * 100, 1) if disk and disk.total else None,
        "daemon_rss_bytes": attempt(lambda: psutil.Process().memory_info().rss),
        "active_agents": active_agents,
    }
