"""Running the Go toolchain from tests (the Go SDK's tests, the reference's Go example).

Go is Debian's ``golang-go`` (1.19 on bookworm), which CI installs.  Without it the tests
skip with the reason, unless ``J1MSKY_REQUIRE_GO=1`` (then they fail: a CI that installed
Go must not pass by skipping).  The build runs offline (``GOPROXY=off``: the SDK has no
dependencies) with its cache and GOPATH in a per-user directory under the system temp dir,
so root CI and a developer's run neither share nor fight over one, and a second run does
not recompile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tests.daemon import ROOT, child_env

SDK_DIR = ROOT / "sdk" / "go"
MODULE = "github.com/j1msky/sdk-go"


def go_binary() -> str:
    """The ``go`` command; skips (or fails, with J1MSKY_REQUIRE_GO=1) when it is absent."""
    found = shutil.which("go")
    if found is None:
        reason = "go is not installed (Debian: apt-get install golang-go)"
        if os.environ.get("J1MSKY_REQUIRE_GO") == "1":
            pytest.fail(f"{reason}, and J1MSKY_REQUIRE_GO=1 requires it")
        pytest.skip(f"{reason}; J1MSKY_REQUIRE_GO=1 turns this skip into a failure")
    return found


def _cache_root() -> Path:
    """``<tmp>/j1msky-go-<uid>``, private to this user; a fresh temp dir if someone else owns it."""
    root = Path(tempfile.gettempdir()) / f"j1msky-go-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        if root.stat().st_uid == os.getuid() and not root.is_symlink():
            return root
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="j1msky-go-"))


def go_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a hermetic, offline Go build, plus ``extra``."""
    cache = _cache_root()
    env = child_env()
    env.update({
        "GO111MODULE": "on", "GOPROXY": "off", "GOTOOLCHAIN": "local", "GOFLAGS": "", "GOWORK": "off",
        "GOENV": "off", "GOCACHE": str(cache / "build"), "GOPATH": str(cache / "path"),
        "CGO_ENABLED": "0",  # nothing here needs cgo, and it would need a C compiler
    })
    env.update(extra or {})
    return env


def run_go(args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``go ARGS`` in ``cwd`` to completion, output captured (the test prints it on failure)."""
    return subprocess.run([go_binary(), *args], cwd=cwd, env=go_env(env), capture_output=True, text=True,
                          timeout=timeout, check=False)


def gofmt_binary() -> str:
    """``gofmt`` of the same toolchain as ``go``."""
    goroot = run_go(["env", "GOROOT"], cwd=SDK_DIR, timeout=60).stdout.strip()
    path = Path(goroot) / "bin" / "gofmt"
    return str(path) if path.exists() else (shutil.which("gofmt") or "gofmt")


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
