"""Run ``python -m j1mskyd`` as a real subprocess for the process-level tests.

A :class:`Daemon` is one ``j1mskyd serve`` on a free loopback port, with its own
state dir and (optionally) a config file written by :func:`write_config`.  It is
started with the interpreter running the tests (``sys.executable``) and this source
tree first on ``PYTHONPATH``, so the child runs the same code on the same stack
(the venv, or Debian's ``/usr/bin/python3``).  Its output goes to a log file, never
to a pipe that could fill up and block it.

Only stdlib here (urllib, sqlite3): the test process never needs an event loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment minus anything that would steer the daemon, plus this tree."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("J1MSKY_") and k not in ("XDG_STATE_HOME", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(*args: str, cwd: Path, timeout: float = 60.0,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m j1mskyd ARGS`` to completion, output captured."""
    return subprocess.run([sys.executable, "-m", "j1mskyd", *args], cwd=cwd, env=child_env(env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listens_on(pid: int, port: int) -> bool:
    """Does process ``pid`` hold the TCP socket listening on ``port``?"""
    import psutil
    proc = psutil.Process(pid)
    try:  # psutil 6 renamed connections() (Debian bookworm has 5.9.4)
        conns = proc.net_connections("tcp") if hasattr(proc, "net_connections") else proc.connections("tcp")
    except psutil.NoSuchProcess:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)


def wait_until(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Poll until ``predicate()`` is truthy; return that value."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def write_config(path: Path, *, delay: float = 0.0, max_concurrency: int = 2,
                 restart_attempts: int | None = None, plugins_dir: Path | None = None,
                 drop_models: Iterable[str] = ()) -> Path:
    """A small config: models k2p5/sonnet/opus on ``offline`` (``delay`` s per call),
    ``quick`` on a second offline provider that never waits, and two teams.
    ``drop_models`` leaves models out (and out of the teams), as an operator's edit would."""
    dropped = set(drop_models)
    dropin = plugins_dir or path.parent / "no-plugins.d"  # absent: no drop-ins, hermetic
    runtime = f"max_concurrency = {max_concurrency}\n"
    if restart_attempts is not None:
        runtime += f"restart_attempts = {restart_attempts}\n"
    models = "".join(
        f'[models.{alias}]\nprovider = "{provider}"\nupstream = "{alias}-up"\n'
        f"input_per_1k = 0.001\noutput_per_1k = 0.002\nblended_per_1k = 0.001\n\n"
        for alias, provider in (("k2p5", "offline"), ("sonnet", "offline"), ("opus", "offline"),
                                ("quick", "quick"))
        if alias not in dropped
    )

    def team(*members: str) -> str:
        return json.dumps([m for m in members if m not in dropped])

    path.write_text(
        f'[server]\nlog_level = "info"\n\n'
        f"[runtime]\n{runtime}\n"
        f'[plugins]\ndropin_dir = "{dropin}"\n\n'
        f'[providers.offline]\nplugin = "offline"\nmax_concurrency = 16\n'
        f"[providers.offline.options]\ndelay = {float(delay)!r}\n\n"
        f'[providers.quick]\nplugin = "offline"\nmax_concurrency = 16\n\n'
        f"{models}"
        f'[teams.team_coding]\nname = "Code Team"\nmembers = {team("k2p5", "sonnet")}\n\n'
        f'[teams.team_mixed]\nname = "Mixed Team"\nmembers = {team("quick", "k2p5", "sonnet", "opus")}\n',
        encoding="utf-8",
    )
    return path


class Daemon:
    """One ``j1mskyd serve`` subprocess; use as a context manager or call :meth:`close`."""

    def __init__(self, workdir: Path, state_dir: Path, config: Path | None = None, name: str = "daemon",
                 env: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.env = dict(env or {})  # added to child_env(): e.g. LD_PRELOAD (tests/test_durability.py)
        self.state_dir = state_dir
        self.config = config
        self.log_path = workdir / f"{name}.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Daemon:
        for _ in range(3):  # the free port may be taken between our probe and its bind
            self.port = free_port()
            args = [sys.executable, "-m", "j1mskyd", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                    "--state-dir", str(self.state_dir)]
            if self.config is not None:
                args += ["--config", str(self.config)]
            self._close_log()
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(args, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=child_env(self.env))
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    break
                # ValueError: an answer that is not JSON, from another test's server (a fake
                # upstream, a receiver: aiohttp's "404: Not Found") that bound the port first.
                with contextlib.suppress(OSError, ValueError):
                    status, _ = self.request("GET", "/api/health", timeout=2.0)
                    # Only our daemon's answer counts: another test's daemon may have bound the
                    # same free port first (ours then fails to bind and is started again).
                    if status == 200 and listens_on(self.proc.pid, self.port):
                        return self
                time.sleep(0.05)
            else:
                self.close()
                raise AssertionError(f"daemon did not answer /api/health within {timeout:g} s:\n{self.log()}")
            self.proc.wait()
            if "in use" not in self.log().lower():
                break
        self._close_log()
        raise AssertionError(f"daemon exited with {self.proc.returncode} at start:\n{self.log()}")

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.returncode is not None:
                self._close_log()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        """Send ``sig`` and wait; returns (exit code, seconds taken)."""
        began = time.monotonic()
        self.send(sig)
        try:
            code = self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(f"daemon still running {timeout:g} s after signal {sig}:\n{self.log()}") from None
        return code, time.monotonic() - began

    def kill(self) -> int:
        """SIGKILL: no cleanup, no flush, exactly a crash."""
        code, _ = self.stop(signal.SIGKILL)
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Daemon:
        try:
            return self.start()
        except BaseException:  # __exit__ does not run for a failed __enter__: no process or log left open
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # -- HTTP --------------------------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        """The bootstrap admin key the daemon made at its first start (auth is on by default)."""
        path = self.state_dir / "bootstrap-admin.key"
        if not path.exists():
            return {}
        return {"Authorization": "Bearer " + json.loads(path.read_text())["token"]}

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0,
                token: str | None = None) -> tuple[int, Any]:
        """One request with the bootstrap admin key, or with ``token`` (another key's) when given."""
        data = None if body is None else json.dumps(body).encode()
        auth = self.auth_headers() if token is None else {"Authorization": f"Bearer {token}"}
        headers = auth | ({"Content-Type": "application/json"} if data else {})
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read() or b"null")

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        assert status == 200, (status, body)
        return body

    def post(self, path: str, body: Any) -> Any:
        status, answer = self.request("POST", path, body)
        assert status == 200, (status, answer)
        return answer

    def spawn(self, task: str, model: str = "k2p5", **extra: Any) -> str:
        return self.post("/api/spawn", {"task": task, "model": model, **extra})["agent_id"]

    def wait_agent(self, agent_id: str, statuses: Iterable[str] = ("completed", "failed", "cancelled"),
                   timeout: float = 20.0) -> dict[str, Any]:
        wanted = set(statuses)
        seen: dict[str, Any] = {}

        def reached() -> dict[str, Any] | None:
            seen["last"] = self.get(f"/api/agent/{agent_id}")
            return seen["last"] if seen["last"]["status"] in wanted else None

        try:
            return wait_until(reached, timeout, what=f"agent {agent_id} to reach {sorted(wanted)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {seen.get('last')}") from None


# -- the database, read as the daemon left it ----------------------------------------------

def db_agents(state_dir: Path) -> dict[str, dict[str, Any]]:
    """agent_id -> row, read-only (safe while the daemon runs: WAL readers never block it)."""
    path = state_dir / "j1msky.db"
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)) as conn:
        conn.row_factory = sqlite3.Row
        return {r["agent_id"]: dict(r) for r in conn.execute("SELECT * FROM agents ORDER BY rowid")}


def db_usage(state_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """agent_id -> its ledger rows (``usage``) in the order they were written, read-only."""
    path = state_dir / "j1msky.db"
    rows: dict[str, list[dict[str, Any]]] = {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)) as conn:
        conn.row_factory = sqlite3.Row
        for r in conn.execute("SELECT * FROM usage ORDER BY id"):
            rows.setdefault(r["agent_id"], []).append(dict(r))
    return rows


def statuses(state_dir: Path, ids: Iterable[str] | None = None) -> dict[str, str]:
    rows = db_agents(state_dir)
    return {i: rows[i]["status"] for i in (rows if ids is None else ids) if i in rows}
