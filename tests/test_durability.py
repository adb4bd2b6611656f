"""A spawn's 200 leaves only after the commit that holds it has been synced (issue 19).

A real daemon subprocess runs with bench/fsyncshim.c preloaded: every fsync/fdatasync it
makes is logged with its start and end on CLOCK_MONOTONIC (the clock time.monotonic()
reads, system-wide).  Agents are spawned over HTTP from several threads at once (group
commit puts several in one transaction).  With ``synchronous = "full"`` each 200 must have
been received after an fsync of the database's WAL that began after its request was sent
and ended before the response arrived: the row it acknowledges was on the disk.  With
``"normal"`` that does not hold (the WAL is synced only at checkpoints): the same check
fails there, which is what shows it can fail.

The shim is compiled here with gcc (the README's apt-get line installs ``gcc libc6-dev``);
without gcc the test skips, unless J1MSKY_REQUIRE_COMPILER=1 (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench import fsyncshim
from tests.daemon import Daemon, db_agents, write_config

SPAWNS = 24
THREADS = 6
DELAY_MS = 5  # each fsync takes at least this long: it must fit inside the request's window


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> str:
    if fsyncshim.compiler() is None:
        if os.environ.get("J1MSKY_REQUIRE_COMPILER") == "1":
            pytest.fail("J1MSKY_REQUIRE_COMPILER=1 but gcc was not found (apt-get install gcc libc6-dev)")
        pytest.skip("no C compiler to build the fsync shim (apt-get install gcc libc6-dev); "
                    "J1MSKY_REQUIRE_COMPILER=1 makes this fail")
    return fsyncshim.build(str(tmp_path_factory.mktemp("shim")))


def spawn_timed(daemon: Daemon, i: int) -> tuple[str, float, float]:
    """One spawn; (agent_id, monotonic time before sending, monotonic time the whole 200 was read)."""
    body = json.dumps({"task": f"durable {i}", "model": "quick"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{daemon.port}/api/spawn", data=body, method="POST",
                                 headers=daemon.auth_headers() | {"Content-Type": "application/json"})
    sent = time.monotonic()
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
        received = time.monotonic()
        assert resp.status == 200, answer
    return answer["agent_id"], sent, received


def run_spawns(tmp_path: Path, shim: str, synchronous: str | None) -> tuple[list[tuple[str, float, float]],
                                                                            list[fsyncshim.Sync], Path]:
    """``synchronous`` None: no [store] section, the default."""
    config = write_config(tmp_path / "config.toml")
    if synchronous is not None:
        with config.open("a", encoding="utf-8") as fh:
            fh.write(f'\n[store]\nsynchronous = "{synchronous}"\n')
    log = tmp_path / "fsync.log"
    state = tmp_path / "state"
    with Daemon(tmp_path, state, config, env=fsyncshim.env(shim, str(log), DELAY_MS)) as daemon:
        with ThreadPoolExecutor(THREADS) as pool:
            spawns = list(pool.map(lambda i: spawn_timed(daemon, i), range(SPAWNS)))
        daemon.stop()
    return spawns, fsyncshim.read_log(str(log)), state


def uncovered(spawns: list[tuple[str, float, float]], syncs: list[fsyncshim.Sync],
              wal: str) -> list[tuple[str, float, float]]:
    """The spawns whose 200 arrived with no successful WAL sync inside [request sent, 200 received]."""
    wal_syncs = [s for s in syncs if s.path == wal and s.rc == 0]
    return [(agent_id, sent, received) for agent_id, sent, received in spawns
            if not any(sent < s.start and s.end < received for s in wal_syncs)]


@pytest.mark.parametrize("synchronous", [None, "full"], ids=["default", "full"])
def test_full_mode_answers_a_spawn_only_after_its_commit_is_synced(tmp_path, shim, synchronous):
    spawns, syncs, state = run_spawns(tmp_path, shim, synchronous)
    wal = str((state / "j1msky.db-wal").resolve())
    assert any(s.path == wal for s in syncs), f"the shim saw no WAL sync: {syncs[:5]}"
    assert uncovered(spawns, syncs, wal) == []
    assert {agent_id for agent_id, _, _ in spawns} <= set(db_agents(state))  # and the rows are those agents


def test_normal_mode_answers_before_any_sync(tmp_path, shim):
    """The check above, where it must fail: "normal" commits the WAL without syncing it."""
    spawns, syncs, state = run_spawns(tmp_path, shim, "normal")
    wal = str((state / "j1msky.db-wal").resolve())
    assert syncs, "the shim logged nothing: is it loaded?"  # the data key and the bootstrap file are synced
    missing = uncovered(spawns, syncs, wal)
    assert missing, "every 200 in normal mode followed a WAL sync: the check could not tell the modes apart"
    assert len(missing) == SPAWNS  # no checkpoint ran in so few commits: not one spawn was synced


def test_state_files_are_durable_before_the_database_uses_them(tmp_path, shim):
    """data.key (the file, then its directory entry) is synced before the database's first
    commit is, so no row sealed with it can outlive it; the bootstrap token's rename is
    synced (its directory) before the daemon answers."""
    log = tmp_path / "fsync.log"
    state = tmp_path / "state"
    with Daemon(tmp_path, state, write_config(tmp_path / "config.toml"), env=fsyncshim.env(shim, str(log))):
        syncs = [s for s in fsyncshim.read_log(str(log)) if s.rc == 0]  # up to the first answer
    state_dir = str(state.resolve())

    def first(what: str, after: float = 0.0) -> fsyncshim.Sync:
        found = [s for s in syncs if s.start > after and (s.path == state_dir if what == "dir"
                                                          else os.path.basename(s.path).startswith(what))]
        assert found, f"no sync of {what} after {after}: {syncs}"
        return found[0]

    key = first("data.key")
    key_dir = first("dir", after=key.end)
    wal = first("j1msky.db-wal")
    assert key_dir.end < wal.start, "data.key's directory entry was not synced before the first commit"
    first("dir", after=first("bootstrap-admin.key").end)
