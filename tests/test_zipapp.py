"""The single-file build: scripts/build-pyz makes j1mskyd.pyz with the stdlib zipapp;
``python3 j1mskyd.pyz`` runs the daemon, built-in plugins included, from the zip alone."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from j1mskyd import __version__

from .daemon import ROOT, Daemon, free_port, listens_on, wait_until

BUILTINS = sorted(p.stem for p in (ROOT / "j1mskyd" / "builtin_plugins").glob("*.py") if not p.name.startswith("_"))


def pyz_env() -> dict[str, str]:
    # Nothing may import j1mskyd from the source tree: no PYTHONPATH, cwd outside it.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("J1MSKY_") and k not in ("PYTHONPATH", "XDG_STATE_HOME", "PYTHONSTARTUP")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def pyz(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pyz") / "j1mskyd.pyz"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build-pyz"), "-o", str(out)],
                   check=True, capture_output=True, timeout=60)
    return out


def test_the_pyz_carries_the_package_and_builtin_plugins_and_no_bytecode(pyz):
    names = zipfile.ZipFile(pyz).namelist()
    assert "__main__.py" in names and "j1mskyd/__init__.py" in names
    sdk = {f"j1msky/{p.name}" for p in (ROOT / "sdk" / "python" / "j1msky").glob("*.py")}
    assert "j1msky/client.py" in sdk and sdk <= set(names)  # the SDK the daemon and its CLI import
    assert {f"j1mskyd/builtin_plugins/{n}.py" for n in BUILTINS} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_pyz_version(pyz, tmp_path):
    done = subprocess.run([sys.executable, str(pyz), "version"], cwd=tmp_path, env=pyz_env(),
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, f"j1mskyd {__version__}"), done.stderr


def serve_pyz(pyz: Path, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Daemon:
    """``python3 j1mskyd.pyz serve ...`` on a free loopback port, answering /api/health."""
    d = Daemon(tmp_path, tmp_path / "state", name="pyz")
    d.port = free_port()
    log = open(d.log_path, "ab")
    d.proc = subprocess.Popen(
        [sys.executable, str(pyz), "serve", "--host", "127.0.0.1", "--port", str(d.port),
         "--state-dir", str(d.state_dir), *args],
        cwd=tmp_path, env={**pyz_env(), **(env or {})}, stdin=subprocess.DEVNULL, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    log.close()

    def healthy():
        assert d.proc.poll() is None, d.log()
        try:
            return d.request("GET", "/api/health", timeout=2.0)[0] == 200 and listens_on(d.proc.pid, d.port)
        except OSError:
            return False
    try:
        wait_until(healthy, timeout=30, what="the pyz daemon's /api/health")
    except BaseException:
        d.close()
        raise
    return d


def test_pyz_serve_answers_health_and_loads_the_builtins(pyz, tmp_path):
    d = serve_pyz(pyz, tmp_path)  # no --config: the embedded default (offline)
    try:
        assert d.get("/api/health")["version"] == __version__
        report = d.get("/api/plugins")["plugins"]
        builtins = {p["name"]: p for p in report if p["source"] == "builtin"}
        assert sorted(builtins) == BUILTINS
        assert all(p["status"] == "loaded" for p in builtins.values()), builtins
        assert not any(p["path"].startswith(str(ROOT)) for p in report)  # from the zip, not the tree
        agent = d.wait_agent(d.spawn("hello from a zipapp"))
        assert agent["status"] == "completed" and agent["result"].startswith("[offline:k2p5]")
        code, _ = d.stop()
        assert code == 0
        assert "Traceback" not in d.log()
    finally:
        d.close()


def test_pyz_on_the_shipped_config_runs_the_offline_model_without_keys(pyz, tmp_path):
    """etc/j1msky/config.toml as the package installs it, no provider key anywhere: an agent
    on the shipped "offline" model completes, free (the business models would call the network)."""
    shipped = ROOT / "etc" / "j1msky" / "config.toml"
    env = {"J1MSKY_SECRETS_FILE": str(tmp_path / "absent.env"),   # not the host's /etc/j1msky
           "J1MSKY_PLUGINS_DIR": str(tmp_path / "no-plugins.d")}
    d = serve_pyz(pyz, tmp_path, "--config", str(shipped), env=env)
    try:
        agent = d.wait_agent(d.spawn("hello from a fresh install", model="offline"))
        assert agent["status"] == "completed", agent
        assert agent["result"].startswith("[offline:offline] hello from a fresh install")
        assert agent["cost"] == 0
        assert agent["served_by"] == {"model": "offline", "provider": "offline"}
        code, _ = d.stop()
        assert code == 0
        assert "Traceback" not in d.log()
    finally:
        d.close()


def test_pyz_cli_client_talks_to_the_daemon_through_the_sdk_it_carries(pyz, tmp_path):
    d = serve_pyz(pyz, tmp_path)
    try:
        key = d.auth_headers()["Authorization"].split(" ", 1)[1]
        env = {**pyz_env(), "J1MSKY_API": f"http://127.0.0.1:{d.port}", "J1MSKY_KEY": key}
        done = subprocess.run([sys.executable, str(pyz), "spawn", "hello from the pyz client", "--model", "k2p5", "--wait"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("[offline:k2p5] hello from the pyz client")
    finally:
        d.close()
