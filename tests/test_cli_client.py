"""The CLI's client commands (spawn, agents, agent, cancel, status) against a real daemon process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.daemon import ROOT, Daemon, child_env, write_config


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path, tmp_path / "state", write_config(tmp_path / "c.toml")).start()
    yield d
    d.close()


def cli(daemon: Daemon, *args: str, env_key: bool = True) -> subprocess.CompletedProcess:
    extra = {"J1MSKY_API": f"http://127.0.0.1:{daemon.port}/api"}
    if env_key:
        extra["J1MSKY_KEY"] = daemon.auth_headers()["Authorization"].split(" ", 1)[1]
    return subprocess.run([sys.executable, "-m", "j1mskyd", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=child_env(extra))


def test_spawn_wait_shows_progress_and_prints_the_result(daemon):
    out = cli(daemon, "spawn", "Write a Python function to reverse a string", "--model", "k2p5", "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("[offline:")  # the result, alone on stdout
    assert "completed" in out.stderr  # the progress line


def test_json_output_for_scripts(daemon):
    out = cli(daemon, "spawn", "hello", "--json")
    spawned = json.loads(out.stdout)
    assert spawned["success"] is True and spawned["status"] == "spawning"
    agent_id = spawned["agent_id"]
    shown = json.loads(cli(daemon, "agent", agent_id, "--json").stdout)
    assert shown["agent_id"] == agent_id
    listing = json.loads(cli(daemon, "agents", "--json").stdout)
    assert agent_id in [a["agent_id"] for a in listing["data"]]
    human = cli(daemon, "agents")
    assert agent_id in human.stdout and "(1 of 1)" in human.stdout


def test_cancel_and_errors_exit_non_zero_with_a_message(daemon):
    agent_id = json.loads(cli(daemon, "spawn", "done soon", "--model", "quick", "--json").stdout)["agent_id"]
    cli(daemon, "spawn", "wait", "--model", "quick", "--wait")  # let the queue drain
    out = cli(daemon, "cancel", agent_id)
    assert out.returncode == 1 and "already" in out.stderr and "HTTP 409" in out.stderr
    out = cli(daemon, "agent", "subagent_0_0000")
    assert out.returncode == 1 and "HTTP 404" in out.stderr
    out = cli(daemon, "agents", env_key=False)
    assert out.returncode == 1 and "HTTP 401" in out.stderr


def test_status_summary(daemon):
    out = cli(daemon, "status")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("daemon      healthy") and "budget" in out.stdout and "providers" in out.stdout
    data = json.loads(cli(daemon, "status", "--json").stdout)
    assert data["health"]["status"] == "healthy" and "limits" in data["rate_limits"]
