"""What the daemon checks before it serves, with real processes and real files: a damaged
database and a wrong data.key stop it with one line and exit code 1; a loose state dir is made
private (or refused); temp files of interrupted rate-limit saves are removed."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from j1mskyd.app import build_app
from j1mskyd.crypto import KEY_FILE
from j1mskyd.store import KEY_CHECK, Store, StoreError
from tests.conftest import make_config
from tests.daemon import Daemon, child_env, free_port, run_cli

NOBODY = 65534


def serve(state: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("serve", "--host", "127.0.0.1", "--port", str(free_port()), "--state-dir", str(state),
                   cwd=state.parent)


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start prints (and nothing else on stderr)."""
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("j1mskyd: cannot start: "), lines
    return lines[0]


@pytest.fixture
def used_state(tmp_path) -> Path:
    """A state dir after one real start and stop: a database holding only the bootstrap key."""
    state = tmp_path / "state"
    with Daemon(tmp_path, state) as daemon:
        daemon.stop()
    return state


def test_a_damaged_database_is_one_line_with_a_hint(used_state):
    db = used_state / "j1msky.db"
    db.write_bytes(os.urandom(40_000))
    line = refusal(serve(used_state))
    assert line.startswith(f"j1mskyd: cannot start: {db}: file is not a database; restore it")
    assert "move j1msky.db and its -wal/-shm files aside" in line


def test_a_database_damaged_past_its_header_is_one_line(used_state):
    db = used_state / "j1msky.db"
    raw = db.read_bytes()
    db.write_bytes(raw[:100] + os.urandom(len(raw) - 100))  # a valid header; the pages behind it garbage
    line = refusal(serve(used_state))
    assert line.startswith(f"j1mskyd: cannot start: {db}: ") and "from your backup" in line


def test_a_wrong_data_key_is_refused_when_the_database_holds_only_keys(used_state):
    with sqlite3.connect(used_state / "j1msky.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM agents").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0] == 1
    key = used_state / KEY_FILE
    original = key.read_bytes()
    key.write_bytes(os.urandom(32))
    line = refusal(serve(used_state))
    assert line.startswith(f"j1mskyd: cannot start: {key}: not the data key {used_state / 'j1msky.db'}")
    assert "put back the data.key backed up with this database" in line
    key.write_bytes(original)  # the right key: it starts again
    with Daemon(used_state.parent, used_state, name="again"):
        pass


async def test_a_database_from_before_the_check_value_is_checked_on_its_keys(tmp_path):
    path = str(tmp_path / "j1msky.db")
    store = Store(path)
    store.open()
    await store.write(("INSERT INTO api_keys (key_id, name, token_hash, secret, scopes, created_at) "
                       "VALUES ('key_a', 'a', 'h', ?, 'admin:write', 0)",
                       (store.cipher.encrypt("s3cret", "key_a/secret"),)),
                      ("DELETE FROM settings WHERE name = ?", (KEY_CHECK,)))  # as an older daemon left it
    await store.close()
    original = (tmp_path / KEY_FILE).read_bytes()
    (tmp_path / KEY_FILE).write_bytes(os.urandom(32))
    with pytest.raises(StoreError, match="not the data key"):
        Store(path).open()
    (tmp_path / KEY_FILE).write_bytes(original)
    again = Store(path)
    again.open()  # the right key opens it, and writes the check value from now on
    assert again.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM settings WHERE name = ?",
                                               (KEY_CHECK,)).fetchone()[0]) == 1
    await again.close()


@pytest.mark.parametrize("mode", [0o755, 0o777, 0o750, 0o701], ids=lambda m: f"{m:04o}")
async def test_a_loose_state_dir_is_made_private(aiohttp_client, tmp_path, caplog, mode):
    cfg = make_config(tmp_path)
    state = Path(cfg.server.state_dir)
    state.mkdir()
    state.chmod(mode)
    client = await aiohttp_client(build_app(cfg))
    assert (await client.get("/api/health")).status == 200
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert f"state dir {state} had mode {mode:04o}" in caplog.text


async def test_loose_state_files_are_made_private_at_start(aiohttp_client, tmp_path, caplog):
    # chmod 644 on data.key, the database and the bootstrap token (a restore by hand) stayed
    # 0644, and sqlite gave the new -wal and -shm files the database's mode.
    cfg = make_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    await client.close()
    state = Path(cfg.server.state_dir)
    names = [p.name for p in state.iterdir() if p.is_file()]
    assert {"data.key", "j1msky.db"} <= set(names)
    for name in names:
        (state / name).chmod(0o644)
    (tmp_path / "elsewhere").write_text("x")
    (tmp_path / "elsewhere").chmod(0o644)
    (state / "link").symlink_to(tmp_path / "elsewhere")  # not followed
    client = await aiohttp_client(build_app(cfg))
    assert (await client.get("/api/health")).status == 200
    for path in state.iterdir():
        if path.is_file() and not path.is_symlink():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert stat.S_IMODE((tmp_path / "elsewhere").stat().st_mode) == 0o644
    assert f"state file {state / 'data.key'} had mode 0644" in caplog.text


async def test_a_new_state_dir_is_private_without_a_warning(aiohttp_client, tmp_path, caplog):
    cfg = make_config(tmp_path)
    await aiohttp_client(build_app(cfg))
    assert stat.S_IMODE(Path(cfg.server.state_dir).stat().st_mode) == 0o700
    assert "had mode" not in caplog.text


@pytest.fixture
def foreign_loose_dir():
    """A 0777 directory owned by root, seen by the user ``nobody`` (only root can set that up)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    parent = tempfile.mkdtemp(prefix="j1msky-foreign-")  # under /tmp: reachable by nobody
    os.chmod(parent, 0o755)
    state = Path(parent) / "state"
    state.mkdir()
    state.chmod(0o777)
    try:
        yield state
    finally:
        shutil.rmtree(parent)


def test_a_loose_state_dir_of_another_user_is_refused(foreign_loose_dir):
    try:
        subprocess.run([sys.executable, "-c", "pass"], user=NOBODY, capture_output=True, cwd="/", check=True)
    except (OSError, subprocess.CalledProcessError) as exc:  # e.g. a venv under /root
        pytest.skip(f"{sys.executable} cannot be run by uid {NOBODY} here: {exc}")
    done = subprocess.run([sys.executable, "-m", "j1mskyd", "serve", "--host", "127.0.0.1", "--port",
                           str(free_port()), "--state-dir", str(foreign_loose_dir)], cwd=foreign_loose_dir.parent,
                          env=child_env(), user=NOBODY, capture_output=True, text=True, timeout=60, check=False)
    line = refusal(done)
    assert line.startswith(f"j1mskyd: cannot start: {foreign_loose_dir}: mode 0777 lets other users reach")
    assert f"belongs to uid 0, not to this user (uid {NOBODY})" in line
    assert stat.S_IMODE(foreign_loose_dir.stat().st_mode) == 0o777
    assert not (foreign_loose_dir / "j1msky.db").exists()  # refused before anything was written


async def test_orphan_rate_limit_temp_files_are_removed_at_start(aiohttp_client, tmp_path):
    cfg = make_config(tmp_path)
    state = Path(cfg.server.state_dir)
    state.mkdir(mode=0o700)
    orphans = [state / f".ratelimits.{name}" for name in ("k2x9_a1", "q0zz81mm", "abc")]
    for orphan in orphans:
        orphan.write_bytes(b'{"version": 1, "buck')  # cut short by a kill -9 mid-save
    (state / "ratelimits.json").write_text(json.dumps({"version": 1, "saved_at": 0,
                                                       "buckets": {"provider:offline": [3, 0]}}))
    (state / ".ratelimits.d").mkdir()  # not a temp file of ours: kept
    (state / "notes.ratelimits.txt").write_text("kept")
    await aiohttp_client(build_app(cfg))
    assert not any(o.exists() for o in orphans)
    assert (state / "ratelimits.json").exists() and (state / ".ratelimits.d").is_dir()
    assert (state / "notes.ratelimits.txt").read_text() == "kept"


@pytest.mark.parametrize("damage", ["garbage", "wrong_key"])
def test_the_keys_command_refuses_a_damaged_state_in_one_line(used_state, damage):
    """`j1mskyd keys` reads the same database: the same refusals, no traceback."""
    if damage == "garbage":
        (used_state / "j1msky.db").write_bytes(os.urandom(40_000))
    else:
        (used_state / KEY_FILE).write_bytes(os.urandom(32))
    done = run_cli("keys", "list", "--state-dir", str(used_state), cwd=used_state.parent)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    # The state dir it used (named first since issue 18), then the refusal in one line.
    assert len(lines) == 2 and lines[0] == f"j1mskyd: state dir {used_state}", lines
    assert lines[1].startswith("j1mskyd: cannot open the state: "), lines
    assert ("from your backup" if damage == "garbage" else "not the data key") in lines[1]
