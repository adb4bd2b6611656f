"""A spawn's 200 leaves only after the commit that holds it has been synced (issue 19).

A real daemon subprocess runs with bench/fsyncshim.c preloaded: every fsync/fdatasync it
makes is logged with its start and end on CLOCK_MONOTONIC (the clock time.monotonic()
reads, system-wide).  Agents are spawned over HTTP from several threads at once (group
commit puts several in one transaction).  With ``synchronous = "full"`` each 200 must have
been received after an fsync of the database's WAL that began after its request was sent
and ended before the response arrived: the row it acknowledges was on the disk.  With
``"normal"`` that does not hold (the WAL is synced only at checkpoints): the same check
fails there, which is what shows it can fail.  Cancels (of running and queued agents) and
key changes are checked the same way.

The shim is compiled here with gcc (the README's apt-get line installs ``gcc libc6-dev``);
without gcc the test skips, unless J1MSKY_REQUIRE_COMPILER=1 (CI) makes that a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
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


Timed = tuple[str, float, float]  # (what, monotonic time before sending, monotonic time the 2xx was read)


def timed(daemon: Daemon, method: str, path: str, body: object = None) -> tuple[object, float, float]:
    """One request; (answer, sent, received), asserting a 2xx."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{daemon.port}{path}", data=data, method=method,
                                 headers=daemon.auth_headers() | {"Content-Type": "application/json"})
    sent = time.monotonic()
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
        received = time.monotonic()
        assert 200 <= resp.status < 300, answer
    return answer, sent, received


def spawn(daemon: Daemon, i: int, model: str = "quick") -> Timed:
    answer, sent, received = timed(daemon, "POST", "/api/spawn", {"task": f"durable {i}", "model": model})
    return answer["agent_id"], sent, received


def in_parallel(fn, items) -> list[Timed]:
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(fn, items))


def shimmed_daemon(tmp_path: Path, shim: str, synchronous: str | None, delay: float = 0.0) -> Daemon:
    """A daemon logging its syncs to tmp_path/fsync.log; ``synchronous`` None: the default."""
    config = write_config(tmp_path / "config.toml", delay=delay)
    if synchronous is not None:
        with config.open("a", encoding="utf-8") as fh:
            fh.write(f'\n[store]\nsynchronous = "{synchronous}"\n')
    return Daemon(tmp_path, tmp_path / "state", config, env=fsyncshim.env(shim, str(tmp_path / "fsync.log"),
                                                                         DELAY_MS))


def wal_syncs(tmp_path: Path) -> list[fsyncshim.Sync]:
    wal = str((tmp_path / "state" / "j1msky.db-wal").resolve())
    return [s for s in fsyncshim.read_log(str(tmp_path / "fsync.log")) if s.path == wal and s.rc == 0]


def unsynced(answers: list[Timed], syncs: list[fsyncshim.Sync]) -> list[Timed]:
    """The answers that arrived with no WAL sync inside [request sent, 2xx received]."""
    return [(what, sent, received) for what, sent, received in answers
            if not any(sent < s.start and s.end < received for s in syncs)]


def statuses_of(tmp_path: Path, ids: list[str]) -> dict[str, str]:
    rows = db_agents(tmp_path / "state")
    return {i: rows[i]["status"] for i in ids}


@pytest.mark.parametrize("synchronous", [None, "full"], ids=["default", "full"])
def test_full_mode_answers_a_spawn_only_after_its_commit_is_synced(tmp_path, shim, synchronous):
    with shimmed_daemon(tmp_path, shim, synchronous) as daemon:
        spawns = in_parallel(lambda i: spawn(daemon, i), range(SPAWNS))
        daemon.stop()
    syncs = wal_syncs(tmp_path)
    assert syncs, "the shim saw no WAL sync"
    assert unsynced(spawns, syncs) == []
    assert {agent_id for agent_id, _, _ in spawns} <= set(db_agents(tmp_path / "state"))  # the rows are there


def test_full_mode_answers_cancels_and_key_changes_after_their_commit_is_synced(tmp_path, shim):
    """A cancel's 200 (of a running and of a queued agent) and a key's creation, rotation and
    revocation each follow a WAL sync that began after their request."""
    with shimmed_daemon(tmp_path, shim, None, delay=60.0) as daemon:  # k2p5 agents stay live
        spawns = in_parallel(lambda i: spawn(daemon, i, "k2p5"), range(8))
        live = {daemon.get(f"/api/agent/{a}")["status"] for a, _, _ in spawns}
        assert {"running", "queued"} <= live  # max_concurrency = 2: both kinds are cancelled
        cancels = in_parallel(lambda s: (s[0], *timed(daemon, "DELETE", f"/api/agent/{s[0]}")[1:]), spawns)
        created, sent, received = timed(daemon, "POST", "/api/keys", {"name": "durable", "scopes": ["agents:read"]})
        keys = [("create", sent, received)]
        rotated, sent, received = timed(daemon, "POST", f"/api/keys/{created['key_id']}/rotate")
        keys.append(("rotate", sent, received))
        keys.append(("revoke", *timed(daemon, "DELETE", f"/api/keys/{rotated['key_id']}", {"reason": "test"})[1:]))
        daemon.stop()
    syncs = wal_syncs(tmp_path)
    assert unsynced(cancels, syncs) == []
    assert unsynced(keys, syncs) == []
    assert set(statuses_of(tmp_path, [a for a, _, _ in spawns]).values()) == {"cancelled"}


def test_normal_mode_answers_before_any_sync(tmp_path, shim):
    """The check above, where it must fail: "normal" commits the WAL without syncing it."""
    with shimmed_daemon(tmp_path, shim, "normal") as daemon:
        spawns = in_parallel(lambda i: spawn(daemon, i), range(SPAWNS))
        daemon.stop()
    assert fsyncshim.read_log(str(tmp_path / "fsync.log")), "the shim logged nothing: is it loaded?"
    missing = unsynced(spawns, wal_syncs(tmp_path))
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


# -- flush under a steady stream of writes ---------------------------------------------------
# Readers (the event replay, the audit and delivery lists) flush before they read.  With an
# fsync per group, "wait until the writer is idle" could last as long as writes keep coming:
# a live reader connecting under load would see nothing for that long.

async def test_flush_waits_for_the_units_queued_before_it_not_for_later_ones(tmp_path):
    from j1mskyd.store import Store
    store = Store(str(tmp_path / "j1msky.db"))  # the default: synchronous = "full"
    store.open()
    limit = 2000
    written: list[int] = []

    async def steady_writer() -> None:  # one write after another, bounded
        for i in range(limit):
            await store.write(("INSERT INTO settings (name, value, updated_at) VALUES (?, '', 0)", (f"s{i}",)))
            written.append(i)

    try:
        first = store.submit([("INSERT INTO settings (name, value, updated_at) VALUES ('first', '', 0)", ())])
        writer = asyncio.ensure_future(steady_writer())
        await store.flush()
        assert first.done() and first.exception() is None  # what was queued before it is committed
        assert len(written) < limit  # and the writer, still going, did not hold it
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    finally:
        await store.close()
