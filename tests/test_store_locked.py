"""Another process holding the database's write lock past the busy timeout (a `sqlite3` shell's
BEGIN IMMEDIATE, a backup tool) is waited out like a full disk: what the daemon has done waits
in memory and is saved when the lock goes; a client's write gets 503 with Retry-After meanwhile.
It was failed: finished agents' results and costs were dropped (on disk they stayed `running`,
ran again at the next start and were paid twice), and spawns were 500s."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from tests.conftest import make_config
from tests.test_full_disk import k2p5_on, on_disk, on_disk_completed
from tests.test_webhooks import eventually


@pytest.mark.parametrize("synchronous", ["full", "normal"])  # normal: small commits on the loop (not retries)
async def test_a_write_lock_held_elsewhere_loses_no_result_and_refuses_spawns_with_503(
        aiohttp_client, tmp_path, fake_upstream, synchronous):
    fake_upstream.delay = 0.5  # agents are in flight when the lock is taken
    base = make_config(tmp_path)
    base = dataclasses.replace(base, store=dataclasses.replace(base.store, synchronous=synchronous))
    cfg = k2p5_on(base, fake_upstream)
    state = Path(cfg.server.state_dir)
    client = await aiohttp_client(build_app(cfg))
    store = client.app[SERVICES].store
    await store._writer.run(lambda: store._wconn.execute("PRAGMA busy_timeout = 100"))  # not 5 s a try
    ids = []
    for i in range(3):
        resp = await client.post("/api/spawn", json={"model": "k2p5", "task": f"task {i}"})
        assert resp.status == 200, await resp.text()
        ids.append((await resp.json())["agent_id"])
    await eventually(lambda: _running_on_disk(state, ids), 10, "the agents running, on disk")
    other = sqlite3.connect(state / "j1msky.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        await eventually(lambda: _true(store.full is not None), 30, "the finish writes waiting for the lock")
        assert "locked" in store.full
        resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "during the lock"})
        body = await resp.json()
        assert resp.status == 503 and body["error"]["type"] == "SERVICE_UNAVAILABLE", body
        assert resp.headers["Retry-After"] == "5" and "locked" in body["error"]["message"]
        health = await (await client.get("/api/health")).json()
        assert health["status"] == "degraded" and any("locked" in r for r in health["reasons"]), health
        saved, ledger = on_disk(state)
        assert ledger == 0 and all(saved[i] == "running" for i in ids)
    finally:
        other.execute("ROLLBACK")
        other.close()
    await eventually(lambda: on_disk_completed(state, *ids), 60, "every agent saved as completed")
    saved, ledger = on_disk(state)
    assert ledger == len(fake_upstream.calls) == len(ids)  # each paid call on the ledger, once
    assert set(saved) == set(ids)  # the refused spawn left nothing
    await eventually(lambda: _true(store.full is None), 10, "the store told the lock is gone")
    assert (await client.post("/api/spawn", json={"model": "k2p5", "task": "after"})).status == 200


async def _true(value: bool) -> bool:
    return value


async def _running_on_disk(state: Path, ids: list[str]) -> bool:
    with contextlib.suppress(sqlite3.Error):
        saved, _ = on_disk(state)
        return all(saved.get(i) == "running" for i in ids)
    return False
