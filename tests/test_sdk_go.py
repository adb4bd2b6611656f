"""The Go SDK (sdk/go, module github.com/j1msky/sdk-go): ``go test ./...`` against a real daemon.

The Go tests hold the proofs (sdk/go/client_test.go: retries, Retry-After, typed errors, broken
answers, cancellation and signing against httptest servers on loopback;
sdk/go/integration_test.go: every call against the daemon J1MSKY_API/J1MSKY_KEY name).  This
module starts that daemon (tests/daemon.py, offline provider with a delay so an agent can be
cancelled while it runs, webhooks to loopback allowed for the delivery test), runs them, and
checks that the integration tests ran rather than skipped and that the daemon recorded their work.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, write_config
from tests.golang import SDK_DIR, gofmt_binary, output, run_go


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("sdk-go")
    # Each call to the offline provider takes 3 s: TestLiveCancel cancels an agent before it
    # can finish, even on a busy machine.
    config = write_config(work / "config.toml", delay=3.0, max_concurrency=8)
    with config.open("a", encoding="utf-8") as f:
        # The delivery test's receiver is an httptest server on 127.0.0.1.
        f.write('\n[webhooks]\nallowed_networks = ["127.0.0.0/8"]\n')
    with Daemon(work, work / "state", config) as d:
        yield d


def _token(daemon: Daemon) -> str:
    return daemon.auth_headers()["Authorization"].removeprefix("Bearer ")


def test_the_go_sdk_is_gofmt_clean_and_vet_clean() -> None:
    fmt = run_go(["vet", "./..."], cwd=SDK_DIR)
    assert fmt.returncode == 0, output(fmt)
    listed = subprocess.run([gofmt_binary(), "-l", "."], cwd=SDK_DIR, capture_output=True, text=True,
                            timeout=60, check=False)
    assert listed.returncode == 0 and listed.stdout == "", f"not gofmt'ed:\n{listed.stdout}{listed.stderr}"


def test_go_test_against_a_real_daemon(daemon: Daemon) -> None:
    proc = run_go(["test", "-count=1", "-v", "./..."], cwd=SDK_DIR,
                  env={"J1MSKY_API": f"http://127.0.0.1:{daemon.port}/api", "J1MSKY_KEY": _token(daemon),
                       "J1MSKY_TEST_WEBHOOKS": "1"})
    assert proc.returncode == 0, output(proc) + "\n--- daemon log\n" + daemon.log()[-4000:]
    passed = set(re.findall(r"^--- PASS: (\w+)", proc.stdout, re.M))
    live = {name for name in re.findall(r"^func (TestLive\w+)\(", (SDK_DIR / "integration_test.go").read_text(), re.M)}
    assert len(live) >= 8 and live <= passed, f"integration tests not passed: {sorted(live - passed)}\n{output(proc)}"
    assert "--- SKIP" not in proc.stdout, output(proc)
    # The daemon did the work: the Go client's agents are in its records, finished.
    agents = daemon.get("/api/agents?limit=100")["data"]
    status = {a["task"]: a["status"] for a in agents}
    assert status["Write a Go function"] == "completed" and status["to be cancelled"] == "cancelled", agents
    assert sum(a["task"] == "once" for a in agents) == 2, agents  # the same Idempotency-Key twice: one agent

def test_integration_tests_skip_with_the_reason_without_a_daemon(tmp_path: Path) -> None:
    proc = run_go(["test", "-count=1", "-v", "-run", "TestLive", "./..."], cwd=SDK_DIR)
    assert proc.returncode == 0, output(proc)
    assert "--- PASS" not in proc.stdout and "--- SKIP: TestLiveSpawnAndWait" in proc.stdout, output(proc)
    assert "set J1MSKY_API" in proc.stdout, output(proc)
