"""The daemon as an operator runs it: a real ``python -m j1mskyd`` process, real signals.

Covers the CLI (``version``, ``check-config``, ``serve`` flags), graceful shutdown on
SIGTERM/SIGINT (exit 0 within 10 s, in-flight agents persisted and re-run at the next
start) and crash safety under SIGKILL (every agent survives; queued ones run, running
ones are re-run at most ``runtime.restart_attempts`` times, then fail as ``interrupted``).

Slow work is the built-in ``offline`` provider with ``options.delay``; the restart uses
the same state dir with a config whose delay is 0, so recovered agents finish at once.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from j1mskyd import __version__
from tests.daemon import (ROOT, Daemon, child_env, db_agents, db_usage, free_port, run_cli, statuses,
                          wait_until, write_config)

SLOW = 30.0  # seconds per provider call: "running" for the whole test unless interrupted


@pytest.fixture
def make_daemon(tmp_path):
    """Daemons sharing one state dir (tmp_path/state); all killed at teardown, if still alive."""
    started: list[Daemon] = []

    def make(config: Path | None = None, name: str | None = None) -> Daemon:
        d = Daemon(tmp_path, tmp_path / "state", config, name=name or f"daemon{len(started)}")
        started.append(d)
        return d.start()

    yield make
    for d in started:
        d.close()


def slow_config(tmp_path: Path, **kw) -> Path:
    return write_config(tmp_path / "slow.toml", delay=SLOW, **kw)


def fast_config(tmp_path: Path, **kw) -> Path:
    return write_config(tmp_path / "fast.toml", delay=0.0, **kw)


def wait_on_disk(state_dir: Path, want: dict[str, int], ids: list[str]) -> dict[str, str]:
    """Wait until the database (not the API, which shows memory) holds ``want`` statuses."""
    def reached():
        now = statuses(state_dir, ids)
        counts = {s: sum(1 for v in now.values() if v == s) for s in want}
        return now if counts == want and len(now) == len(ids) else None
    return wait_until(reached, timeout=15.0, what=f"{want} on disk among {len(ids)} agents")


def assert_no_traceback(*daemons: Daemon) -> None:
    for d in daemons:
        assert "Traceback" not in d.log(), d.log()


# ------------------------------------------------------------------------------ CLI

def test_version(tmp_path):
    out = run_cli("version", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"j1mskyd {__version__}\n"


def test_check_config_accepts_the_shipped_config(tmp_path):
    shipped = ROOT / "etc" / "j1msky" / "config.toml"
    keys = {var: "sk-test-0123456789" for var in ("ANTHROPIC_API_KEY", "KIMI_API_KEY", "MINIMAX_API_KEY",
                                                   "OPENAI_API_KEY")}
    out = run_cli("check-config", "--config", str(shipped), cwd=tmp_path, env=keys)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{shipped}: OK"), out.stdout
    assert out.stderr == ""
    # Without the keys it is still valid (exit 0), with one warning per provider that lacks its key.
    out = run_cli("check-config", "--config", str(shipped), cwd=tmp_path,
                  env={"J1MSKY_SECRETS_FILE": str(tmp_path / "none.env")})
    assert out.returncode == 0 and out.stdout.startswith(f"{shipped}: OK"), out.stderr
    assert sorted(line.split("provider ")[1].split(":")[0] for line in out.stderr.splitlines()) == [
        "anthropic", "kimi-coding", "minimax-portal", "openai-codex"]


def test_check_config_accepts_the_embedded_default(tmp_path):
    out = run_cli("check-config", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("<embedded>: OK")


BROKEN = """\
[server]
colour = "blue"

[runtime]
max_concurrency = "two"

[providers.offline]
plugin = "offline"

[models.k2p5]
provider = "offline"
upstream = "k2p5"
input_per_1k = 0.001
output_per_1k = 0.002
blended_per_1k = 0.001
fallback = "gone"
"""


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_broken_config_is_refused_with_file_key_and_reason(tmp_path, command):
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    extra = ["--state-dir", str(tmp_path / "state"), "--port", "1"] if command == "serve" else []
    out = run_cli(command, "--config", str(path), *extra, cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.splitlines()
    assert lines == [
        f"{path}: server.colour: unknown key",
        f"{path}: runtime.max_concurrency: must be an integer, not string",
        f"{path}: models.k2p5.fallback: no model named 'gone'",
    ], out.stderr
    assert out.stdout == ""
    assert not (tmp_path / "state").exists()  # serve never got as far as opening state


@pytest.mark.parametrize("content, reason", [
    ("[server\nport = 1\n", "invalid TOML:"),
    (None, "cannot read: No such file or directory"),
])
def test_check_config_whole_file_problems(tmp_path, content, reason):
    path = tmp_path / "config.toml"
    if content is not None:
        path.write_text(content)
    out = run_cli("check-config", "--config", str(path), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith(f"{path}: {reason}"), out.stderr  # no empty ": :" key


def test_serve_flags_override_the_config_and_port_defaults_to_8080(tmp_path):
    """`serve` hands the listener the config's host/port unless --host/--port say otherwise."""
    probe = textwrap.dedent("""
        import sys
        from j1mskyd import listener
        from j1mskyd.__main__ import main
        def fake_serve(app, server, **kw):
            print(server.host, server.port, flush=True)
        listener.serve = fake_serve
        sys.exit(main(sys.argv[1:]))
    """)
    cfg = write_config(tmp_path / "c.toml")

    def serve(*args: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", probe, "serve", *args], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, env=child_env())
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert serve("--config", str(cfg)) == ["127.0.0.1", "8080"]
    assert serve("--config", str(cfg), "--host", "::1", "--port", "9123") == ["::1", "9123"]


def test_serve_on_a_taken_port_exits_1_and_says_why(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        out = run_cli("serve", "--host", "127.0.0.1", "--port", str(s.getsockname()[1]),
                      "--state-dir", str(tmp_path / "state"), "--config", str(write_config(tmp_path / "c.toml")),
                      cwd=tmp_path)
    assert out.returncode == 1
    last = out.stderr.splitlines()[-1]
    assert last.startswith("j1mskyd: cannot start: ") and "in use" in last, out.stderr
    # "ready" is said only once the port is bound (issue 18: it was logged, then "address in use").
    assert "j1mskyd ready" not in out.stderr, out.stderr
    # (aiohttp 3.8.4's run_app itself logs the bind error's traceback before returning it;
    # newer aiohttp does not.  The operator's answer is the last line either way.)


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path, make_daemon):
    first = make_daemon(write_config(tmp_path / "c.toml"))
    out = run_cli("serve", "--port", str(free_port()), "--state-dir", str(first.state_dir),
                  "--config", str(tmp_path / "c.toml"), cwd=tmp_path)
    assert out.returncode == 1
    last = out.stderr.splitlines()[-1]
    assert last.startswith("j1mskyd: cannot start: ") and "in use by another j1mskyd" in last, out.stderr
    assert first.get("/api/health")["status"] == "healthy"  # the first one is untouched


# ------------------------------------------------------------------------ serving

def test_serve_on_the_embedded_default_spawns_and_completes(tmp_path, make_daemon):
    d = make_daemon()  # no --config: the embedded default, all models offline
    health = d.get("/api/health")
    log = d.log()
    assert f"j1mskyd ready: listening on http://127.0.0.1:{d.port}" in log, log
    assert log.index("j1mskyd started:") < log.index("j1mskyd ready:"), log
    assert health["status"] == "healthy" and health["version"] == __version__
    agent_id = d.spawn("Write a haiku about SD cards")
    done = d.wait_agent(agent_id)
    assert done["status"] == "completed", done
    assert done["result"].startswith("[offline:k2p5]")
    assert (tmp_path / "state" / "j1msky.db").exists()  # --state-dir honoured ...
    assert not (tmp_path / ".j1msky").exists()          # ... not the ./.j1msky default
    code, took = d.stop()
    assert code == 0 and took < 10
    assert_no_traceback(d)


# ----------------------------------------------------------------- graceful stop

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_stop_persists_in_flight_agents(tmp_path, make_daemon, sig):
    first = make_daemon(slow_config(tmp_path))
    ids = [first.spawn(f"task {i}") for i in range(5)]
    wait_on_disk(first.state_dir, {"running": 2, "queued": 3}, ids)

    code, took = first.stop(sig)
    assert code == 0, first.log()
    assert took < 10
    rows = db_agents(first.state_dir)
    # Running agents went back to the queue, and a graceful stop does not count as a run.
    assert {i: (rows[i]["status"], rows[i]["runs"]) for i in ids} == {i: ("queued", 0) for i in ids}

    second = make_daemon(fast_config(tmp_path))
    for agent_id in ids:
        done = second.wait_agent(agent_id)
        assert done["status"] == "completed", done
        assert done["result"].startswith("[offline:k2p5-up] task ")
    assert second.stop()[0] == 0
    rows = db_agents(second.state_dir)
    assert [rows[i]["runs"] for i in ids] == [1] * 5
    assert_no_traceback(first, second)


# ------------------------------------------------------------------------ crashes

def test_kill_9_loses_no_agent_and_reruns_the_running_ones(tmp_path, make_daemon):
    first = make_daemon(slow_config(tmp_path))
    ids = [first.spawn(f"task {i}") for i in range(5)]
    before = wait_on_disk(first.state_dir, {"running": 2, "queued": 3}, ids)
    running = [i for i in ids if before[i] == "running"]
    queued = [i for i in ids if before[i] == "queued"]

    assert first.kill() == -signal.SIGKILL
    assert statuses(first.state_dir, ids) == before  # a crash: nothing tidied up

    second = make_daemon(fast_config(tmp_path))  # restart_attempts: the default, 2
    for agent_id in ids:
        assert second.wait_agent(agent_id)["status"] == "completed"
    spent = second.get("/api/rate-limits")["budget"]["today_spend"]
    assert second.stop()[0] == 0
    rows = db_agents(second.state_dir)
    assert {i: rows[i]["runs"] for i in running} == {i: 2 for i in running}  # the cut-off run counts
    assert {i: rows[i]["runs"] for i in queued} == {i: 1 for i in queued}
    assert all(rows[i]["completed_at"] is not None and rows[i]["error"] is None for i in ids)
    # The ledger holds every call the upstream got: a running agent's call cut by the kill, at its
    # worst case (the task's bytes and 64 tokens of chat template in, the model's max_tokens out),
    # then its re-run's answer; a queued agent's one answer.
    usage = db_usage(second.state_dir)
    for i in running:
        cut, answer = usage[i]
        assert (cut["input_tokens"], cut["output_tokens"]) == (len(f"task {ids.index(i)}") + 64, 4096)
        assert cut["cost"] == pytest.approx(cut["input_tokens"] * 0.001 / 1000 + 4096 * 0.002 / 1000)
        assert answer["output_tokens"] < 4096
        assert rows[i]["cost"] == pytest.approx(cut["cost"] + answer["cost"])
    assert all(len(usage[i]) == 1 and rows[i]["cost"] == pytest.approx(usage[i][0]["cost"]) for i in queued)
    assert spent == pytest.approx(sum(r["cost"] for i in ids for r in usage[i]), abs=1e-6)
    assert_no_traceback(second)


def test_kill_9_with_restart_attempts_0_fails_running_agents_as_interrupted(tmp_path, make_daemon):
    first = make_daemon(slow_config(tmp_path, restart_attempts=0))
    ids = [first.spawn(f"task {i}") for i in range(4)]
    before = wait_on_disk(first.state_dir, {"running": 2, "queued": 2}, ids)
    assert first.kill() == -signal.SIGKILL

    second = make_daemon(fast_config(tmp_path, restart_attempts=0))
    for agent_id in ids:
        done = second.wait_agent(agent_id)
        if before[agent_id] == "running":
            assert done["status"] == "failed", done
            assert done["error"].startswith("interrupted"), done
            assert done["result"] is None
        else:
            assert done["status"] == "completed", done
    assert second.get("/api/health")["agents"] == {"queued": 0, "running": 0}
    assert second.stop()[0] == 0
    assert_no_traceback(second)


def test_restart_attempts_bounds_reruns_across_repeated_crashes(tmp_path, make_daemon):
    """restart_attempts = 1: a crash re-runs the agent once; a second crash fails it."""
    first = make_daemon(slow_config(tmp_path, restart_attempts=1))
    ids = [first.spawn(f"task {i}") for i in range(3)]
    before = wait_on_disk(first.state_dir, {"running": 2, "queued": 1}, ids)
    running = [i for i in ids if before[i] == "running"]
    assert first.kill() == -signal.SIGKILL

    second = make_daemon(slow_config(tmp_path, restart_attempts=1))  # still slow: they run again
    def rerunning() -> bool:
        rows = db_agents(second.state_dir)
        return all((rows[i]["status"], rows[i]["runs"]) == ("running", 2) for i in running)
    wait_until(rerunning, what="the interrupted agents to run a second time")
    assert second.kill() == -signal.SIGKILL

    third = make_daemon(fast_config(tmp_path, restart_attempts=1))
    for agent_id in ids:
        done = third.wait_agent(agent_id)
        if agent_id in running:
            assert done["status"] == "failed" and "interrupted" in done["error"], done
        else:
            assert done["status"] == "completed", done
    # Each crash cut one call of each running agent, billed once at its worst case (the second
    # start's re-queue and the third's failure each wrote theirs with the bill); the failed
    # agent's cost is what it was billed.
    usage, rows = db_usage(third.state_dir), db_agents(third.state_dir)
    for i in running:
        assert [(u["input_tokens"], u["output_tokens"]) for u in usage[i]] == [(len(f"task {ids.index(i)}") + 64, 4096)] * 2
        assert rows[i]["cost"] == pytest.approx(sum(u["cost"] for u in usage[i]))
    assert [len(usage[i]) for i in ids if i not in running] == [1]
    assert third.stop()[0] == 0
    assert_no_traceback(third)


def test_a_team_survives_kill_9(tmp_path, make_daemon):
    """Members in every state at the crash: done (quick), running and queued (slow)."""
    first = make_daemon(slow_config(tmp_path))
    team = first.post("/api/spawn-team", {"team": "team_mixed", "task": "Plan the release"})
    lead, members = team["agent_id"], team["members"]
    assert len(members) == 4
    before = wait_on_disk(first.state_dir, {"completed": 1, "running": 2, "queued": 1}, members)
    assert statuses(first.state_dir, [lead]) == {lead: "running"}
    assert first.kill() == -signal.SIGKILL

    second = make_daemon(fast_config(tmp_path))
    done = second.wait_agent(lead)
    assert done["status"] == "completed", done
    assert done["error"] is None
    assert [m["status"] for m in done["members"]] == ["completed"] * 4
    sections = done["result"].split("\n\n")
    assert [s.splitlines()[0] for s in sections] == [
        "## quick/quick-up", "## offline/k2p5-up", "## offline/sonnet-up", "## offline/opus-up"]
    assert all("Plan the release" in s for s in sections)
    assert done["cost"] == pytest.approx(sum(m["cost"] for m in done["members"]), abs=1e-6)
    rows = db_agents(second.state_dir)
    assert {m: rows[m]["runs"] for m in members} == {
        m: {"completed": 1, "running": 2, "queued": 1}[before[m]] for m in members}
    assert second.stop()[0] == 0
    assert_no_traceback(second)


def test_a_team_survives_a_graceful_stop(tmp_path, make_daemon):
    first = make_daemon(slow_config(tmp_path))
    team = first.post("/api/spawn-team", {"team": "team_mixed", "task": "Write the changelog"})
    wait_on_disk(first.state_dir, {"completed": 1, "running": 2, "queued": 1}, team["members"])
    assert first.stop(signal.SIGTERM)[0] == 0
    # The lead stays "running" (it does no provider work); its unfinished members are queued.
    assert sorted(statuses(first.state_dir, team["members"]).values()) == ["completed", "queued", "queued", "queued"]

    second = make_daemon(fast_config(tmp_path))
    done = second.wait_agent(team["agent_id"])
    assert done["status"] == "completed" and done["error"] is None, done
    assert done["result"].count("## ") == 4
    assert second.stop()[0] == 0
    assert_no_traceback(first, second)


def test_restart_after_a_model_was_removed_from_the_config(tmp_path, make_daemon):
    """An operator edits the config (drops a model) and restarts after a crash.

    The daemon must still start; the orphaned agent ends ``failed`` with a reason naming
    the model, and every other agent still runs.
    """
    first = make_daemon(slow_config(tmp_path))
    orphan = first.spawn("needs opus", model="opus")
    other = first.spawn("fine on k2p5")
    queued = first.spawn("queued on k2p5")
    wait_on_disk(first.state_dir, {"running": 2, "queued": 1}, [orphan, other, queued])
    assert first.kill() == -signal.SIGKILL

    second = make_daemon(fast_config(tmp_path, drop_models=["opus"]))
    done = second.wait_agent(orphan)
    assert done["status"] == "failed" and "opus" in done["error"], done
    assert second.wait_agent(other)["status"] == "completed"
    assert second.wait_agent(queued)["status"] == "completed"
    assert second.stop()[0] == 0
