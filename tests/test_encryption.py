"""Task and result text are encrypted at rest (AES-256-GCM) and still searchable via the API."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from j1mskyd.app import build_app
from j1mskyd.crypto import DataCipher, DecryptError, load_or_create_key
from tests.conftest import make_config, wait_status

SECRET_TASK = "Summarise the merger memo for Project Bluefin-7731"


async def test_database_file_holds_no_plaintext_task_or_result(aiohttp_client, tmp_path):
    cfg = make_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": SECRET_TASK})
    agent_id = (await resp.json())["agent_id"]
    done = await wait_status(client, agent_id)
    assert done["task"] == SECRET_TASK and "Bluefin-7731" in done["result"]
    found = await (await client.get("/api/agents", params={"task_contains": "bluefin"})).json()
    assert [a["agent_id"] for a in found["data"]] == [agent_id]
    await client.close()  # checkpoint: everything is in the main database file

    state = tmp_path / "state"
    for name in os.listdir(state):
        data = (state / name).read_bytes()
        assert b"Bluefin" not in data, name
    key_file = state / "data.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 32
    row = sqlite3.connect(state / "j1msky.db").execute("SELECT task, result FROM agents").fetchone()
    assert row[0].startswith("enc1:") and row[1].startswith("enc1:")


def test_a_sealed_value_only_opens_in_its_own_row_and_with_its_key(tmp_path):
    cipher = DataCipher(load_or_create_key(str(tmp_path)))
    sealed = cipher.encrypt("hello", "agent_a/task")
    assert cipher.decrypt(sealed, "agent_a/task") == "hello"
    assert load_or_create_key(str(tmp_path)) == load_or_create_key(str(tmp_path))  # created once
    with pytest.raises(DecryptError):
        cipher.decrypt(sealed, "agent_b/task")
    with pytest.raises(DecryptError):
        DataCipher(b"\0" * 32).decrypt(sealed, "agent_a/task")
    assert cipher.decrypt("plain old text", "agent_a/task") == "plain old text"
