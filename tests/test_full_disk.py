"""A full disk loses nothing: the state dir on a real 2 MB tmpfs, filled up while agents are in
flight against a fake upstream, then given its space back.  (The store boundary alone, with
sqlite's error injected, is tests/test_store_full.py.)"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import subprocess
from pathlib import Path

import pytest

from j1mskyd.app import build_app
from j1mskyd.config import Config
from j1mskyd.providers import ProviderSettings
from tests.conftest import make_config, route_models
from tests.test_webhooks import eventually


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MB tmpfs, mounted for this test only (needs root or CAP_SYS_ADMIN)."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def fill(directory: Path) -> Path:
    """A filler file taking every free byte (down to the last block)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * size)
    return filler


def k2p5_on(base: Config, upstream) -> Config:
    """``base`` with k2p5 served by ``upstream`` (a fake OpenAI-style server) through openai_compat."""
    providers = dict(base.providers) | {"fake": ProviderSettings(
        name="fake", plugin="openai_compat", base_url=upstream.url + "/v1", api_key="sk-x", timeout=30,
        max_concurrency=4)}
    return dataclasses.replace(base, providers=providers, models=route_models(base, {"k2p5": "fake"}))


def on_disk(state: Path) -> tuple[dict[str, str], int]:
    """(agent_id -> status, ledger rows) as the database holds them."""
    with contextlib.closing(sqlite3.connect(f"file:{state / 'j1msky.db'}?mode=ro", uri=True, timeout=5)) as conn:
        statuses = dict(conn.execute("SELECT agent_id, status FROM agents"))
        (ledger,) = conn.execute("SELECT COUNT(*) FROM usage").fetchone()
    return statuses, ledger


async def on_disk_completed(state: Path, *ids: str) -> bool:
    saved, _ = on_disk(state)
    return all(saved.get(i) == "completed" for i in ids)


async def test_full_disk_keeps_results_and_ledger(aiohttp_client, tmp_path, small_fs, fake_upstream):
    fake_upstream.delay = 1.0  # agents are in flight while the disk fills
    base = make_config(tmp_path, runtime={"max_concurrency": 2})
    base = dataclasses.replace(base, server=dataclasses.replace(base.server, state_dir=str(small_fs / "state")))
    cfg = k2p5_on(base, fake_upstream)
    state = Path(cfg.server.state_dir)
    client = await aiohttp_client(build_app(cfg))

    async def get(path: str) -> tuple[int, dict]:
        resp = await client.get(path)
        return resp.status, await resp.json()

    ids = []
    for i in range(6):
        resp = await client.post("/api/spawn", json={"model": "k2p5", "task": f"task {i}"})
        assert resp.status == 200, await resp.text()
        ids.append((await resp.json())["agent_id"])

    status, health = await get("/api/health")  # now cached for up to a second: the change must show at once
    assert health["status"] == "healthy" and health["reasons"] == []
    filler = fill(small_fs)
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "one too many"})
    body = await resp.json()
    assert resp.status == 507, body
    assert body["error"]["type"] == "INSUFFICIENT_STORAGE" and "disk space" in body["error"]["message"]
    status, health = await get("/api/health")
    assert status == 200 and health["status"] == "degraded"
    assert any(r.startswith("storage: database or disk is full") for r in health["reasons"]), health

    # Upstream calls finish meanwhile: their results wait in memory, not on disk.
    async def answered_but_unsaved():
        finished = [i for i in ids if (await get(f"/api/agent/{i}"))[1]["status"] == "completed"]
        saved, ledger = on_disk(state)
        return finished and all(saved[i] != "completed" for i in finished) and ledger == 0
    await eventually(answered_but_unsaved, 60, "an answered agent whose result is not on disk yet")
    assert (await client.get("/api/agents")).status == 200  # reads keep working
    assert (await get(f"/api/agent/{ids[0]}"))[1]["result"] == "fake reply"

    filler.unlink()
    await eventually(lambda: on_disk_completed(state, *ids), 60, "every agent saved as completed")
    for agent_id in ids:
        status, agent = await get(f"/api/agent/{agent_id}")
        assert agent["status"] == "completed" and agent["result"] == "fake reply"
    saved, ledger = on_disk(state)
    assert ledger == len(fake_upstream.calls) == len(ids)  # every paid call is on the ledger, once
    assert set(saved) == set(ids)  # the refused spawn left nothing behind
    status, health = await get("/api/health")
    assert health["status"] == "healthy" and health["reasons"] == []
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "space is back"})
    assert resp.status == 200
    last = (await resp.json())["agent_id"]
    await eventually(lambda: on_disk_completed(state, last), 60, "the new agent saved")
