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


def test_api_text_reaches_the_terminal_escaped(daemon):
    # A task's ESC sequences (colours, the window title, OSC 52 writing the clipboard) and bidi
    # overrides were printed raw by `agents`, `agent` and `spawn --wait`.
    task = "\u202e<svg> reversed \x1b]52;c;ZXZpbA==\x07 \x1b[31m red"
    agent_id = json.loads(cli(daemon, "spawn", task, "--json").stdout)["agent_id"]
    outputs = [cli(daemon, "agents").stdout, cli(daemon, "agent", agent_id).stdout,
               cli(daemon, "spawn", task, "--wait").stdout]
    for out in outputs:
        assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out, out
    assert "\\x1b[31m" in outputs[1] and "\\u202e" in outputs[1]  # shown, escaped


def test_bad_options_are_one_line_not_a_traceback_and_a_zero_agent_timeout_is_sent(daemon):
    for args in (["agents", "--timeout", "0"], ["agents", "--timeout", "-1"], ["spawn", "x", "--agent-timeout", "nan"]):
        out = cli(daemon, *args)
        assert out.returncode == 2 and "Traceback" not in out.stderr and "error: argument" in out.stderr, out.stderr
    out = cli(daemon, "agents", "--api", f"127.0.0.1:{daemon.port}")  # no scheme
    assert out.returncode == 1 and "Traceback" not in out.stderr and "base_url must be" in out.stderr
    out = cli(daemon, "spawn", "x", "--agent-timeout", "0")  # was dropped: the agent ran with 300 s
    assert out.returncode == 1 and "HTTP 400" in out.stderr and "Timeout must be" in out.stderr


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


# --------------------------------------------------------------- issue 18: the CLI as a newcomer uses it

def test_spawn_without_model_uses_the_daemons_default_model(daemon):
    default = daemon.get("/api/models")["data"]["default_model"]
    assert default and default != "k2p5"  # the old hard-coded default would not pass this
    spawned = json.loads(cli(daemon, "spawn", "no model given", "--json").stdout)
    assert spawned["model"] == default


def test_global_options_before_or_after_the_command(daemon, tmp_path):
    for args in (("--json", "agents"), ("agents", "--json")):
        out = cli(daemon, *args)
        assert out.returncode == 0, out.stderr
        assert "pagination" in json.loads(out.stdout)
    url = f"http://127.0.0.1:{daemon.port}/api"
    out = cli(daemon, "--api", url, "--json", "status")
    assert out.returncode == 0 and json.loads(out.stdout)["health"]["status"] == "healthy", out.stderr
    missing = tmp_path / "nowhere"
    out = cli(daemon, "--state-dir", str(missing), "keys", "list")
    assert out.returncode == 1 and f"state dir {missing}" in out.stderr, out.stderr


def test_status_says_ok_for_a_healthy_provider(daemon):
    out = cli(daemon, "status")
    providers = next(line for line in out.stdout.splitlines() if line.startswith("providers"))
    assert "offline ok" in providers and "closed" not in providers, providers


def test_ctrl_c_while_waiting_leaves_the_agent_running_and_says_how_to_follow_it(tmp_path):
    import signal
    import time as _time

    from tests.daemon import wait_until
    with Daemon(tmp_path, tmp_path / "state", write_config(tmp_path / "c.toml", delay=30.0)) as d:
        key = d.auth_headers()["Authorization"].split(" ", 1)[1]
        env = child_env({"J1MSKY_API": f"http://127.0.0.1:{d.port}/api", "J1MSKY_KEY": key})
        # As from a terminal: SIGINT at its default, even when this suite runs as a background job
        # of a non-interactive shell (which starts its children with SIGINT ignored, and Python
        # then never turns it into KeyboardInterrupt).
        proc = subprocess.Popen([sys.executable, "-m", "j1mskyd", "spawn", "a long task", "--model", "k2p5",
                                 "--wait"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            running = wait_until(lambda: [a for a in d.get("/api/agents")["data"] if a["status"] == "running"],
                                 20.0, what="the agent to run")
            _time.sleep(0.3)  # inside the wait loop
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()  # closes its pipes
        agent_id = running[0]["agent_id"]
        assert proc.returncode == 130, (out, err)
        assert "Traceback" not in err, err
        assert f"agent {agent_id} keeps running" in err and f"j1mskyd agent {agent_id}" in err, err
        assert d.get(f"/api/agent/{agent_id}")["status"] == "running"  # Ctrl-C did not cancel it


async def test_status_shows_an_unhealthy_daemon_s_reasons(aiohttp_server):
    # The 503 that /health answers for an unhealthy daemon was an error after 2 s of retries:
    # `status` printed "HTTP 503" and lost the reasons, exactly when they were needed.
    import asyncio

    from aiohttp import web

    health = {"status": "unhealthy", "reasons": ["provider up: unavailable (OPENAI_KEY not set)"],
              "version": "x", "uptime_seconds": 5, "agents": {"running": 0, "queued": 0}, "providers": {}}
    calls = []

    async def health_route(request):
        calls.append(request.path)
        return web.json_response(health, status=503)

    async def limits_route(request):
        return web.json_response({"limits": {}, "budget": {"today_spend": 0, "daily_budget": 50,
                                                           "budget_alert_level": "ok"}})

    app = web.Application()
    app.router.add_get("/api/health", health_route)
    app.router.add_get("/api/rate-limits", limits_route)
    server = await aiohttp_server(app)
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "j1mskyd", "status", "--api", str(server.make_url("/api"))],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=child_env({}))
    assert out.returncode == 1, out.stderr
    assert out.stdout.startswith("daemon      unhealthy") and "OPENAI_KEY not set" in out.stdout, out.stdout
    assert calls == ["/api/health"]  # asked once: an answer, not a failure to retry
