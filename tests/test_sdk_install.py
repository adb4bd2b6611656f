"""``pip install ./sdk/python`` on a machine without the daemon: a fresh venv gets the j1msky
distribution (no dependencies), and its blocking client, from the venv alone, spawns and
waits on a real daemon.  Offline: the build uses the interpreter's own setuptools and wheel
(``--no-build-isolation --no-index``; on a laptop with a network plain ``pip install`` works)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.daemon import ROOT, Daemon

SDK = ROOT / "sdk" / "python"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("J1MSKY_", "PIP_", "VIRTUAL_ENV")) and k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("sdk-venv")
    venv = home / "venv"
    # The system site packages give the build its setuptools and wheel offline; j1msky itself is
    # found nowhere but in the venv (the test checks where it comes from).
    # Debian's python3 where there is one (python3-wheel is beside it), else this interpreter.
    base = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    subprocess.run([base, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120,
                   env=_clean_env())
    python = venv / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation",
                           "--no-deps", str(SDK)], cwd=home, capture_output=True, text=True, timeout=300,
                          env=_clean_env())
    if done.returncode != 0 and ("invalid command 'bdist_wheel'" in done.stderr or
                                 "No module named 'setuptools'" in done.stderr):
        pytest.skip(f"no setuptools/wheel for an offline build: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stdout + done.stderr
    return python


def test_the_distribution_installs_alone_and_imports_from_the_venv(venv):
    done = subprocess.run([str(venv), "-c", textwrap.dedent("""
        import importlib.metadata, j1msky
        from j1msky import J1MSKYClient, Agency, Config, TaskPriority, J1MSKYError, RateLimitError
        print(j1msky.__file__)
        print(importlib.metadata.version("j1msky"), importlib.metadata.requires("j1msky"))
        """)], cwd=venv.parent.parent, capture_output=True, text=True, timeout=60, env=_clean_env())
    assert done.returncode == 0, done.stderr
    where, meta = done.stdout.splitlines()
    assert where.startswith(str(venv.parent.parent)) and not where.startswith(str(ROOT))
    assert meta == "4.1.0 [\"aiohttp (>=3.8.4) ; extra == 'async'\"]"  # no dependency but the async extra's


def test_the_installed_client_spawns_and_waits_on_a_real_daemon(venv, tmp_path):
    with Daemon(tmp_path, tmp_path / "state") as daemon:
        key = daemon.auth_headers()["Authorization"].split(" ", 1)[1]
        script = ("from j1msky import J1MSKYClient\n"
                  "client = J1MSKYClient()\n"
                  "result = client.spawn(model='k2p5', task='from a laptop').wait_for_completion(timeout=60)\n"
                  "print(result.status, result.output)\n")
        done = subprocess.run([str(venv), "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env=_clean_env(J1MSKY_API=f"http://127.0.0.1:{daemon.port}", J1MSKY_KEY=key))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("completed [offline:k2p5] from a laptop")
