"""``j1mskyd keys ...`` on the state dir of a running ``j1mskyd serve`` (real processes).

The daemon notices the CLI's writes through sqlite's PRAGMA data_version, checked every
keys.REFRESH_SECONDS: a key made from the command line works, and a revoked one stops
working, within that time plus a margin.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from j1mskyd.keys import REFRESH_SECONDS, hash_token
from tests.daemon import Daemon, run_cli, wait_until

MARGIN = 10.0  # seconds beyond REFRESH_SECONDS for the refresh to land (generous: a loaded CI machine)


def http(daemon: Daemon, method: str, path: str, token: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict]:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{daemon.port}{path}", method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")


def keys_cli(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    out = run_cli("keys", *args, "--state-dir", str(tmp_path / "state"), cwd=tmp_path)
    return out.returncode, out.stdout, out.stderr


def keys_json(tmp_path: Path, *args: str) -> dict:
    code, out, err = keys_cli(tmp_path, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def status_with(daemon: Daemon, token: str, path: str = "/api/agents") -> int:
    return http(daemon, "GET", path, token)[0]


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path, tmp_path / "state").start()  # embedded config: auth on
    yield d
    d.close()


def test_cli_create_list_rotate_revoke_against_a_running_daemon(tmp_path, daemon):
    admin = json.loads((tmp_path / "state" / "bootstrap-admin.key").read_text())

    made = keys_json(tmp_path, "create", "--name", "ci runner", "--scopes", "agents:read, billing:read")
    strict = keys_json(tmp_path, "create", "--name", "strict", "--scopes", "agents:read", "--require-signature")
    assert strict["require_signature"] is True
    assert set(made) >= {"key_id", "token", "secret", "scopes"}
    assert made["key_id"].startswith("key_") and made["token"].startswith("jsk_") and made["secret"]
    assert made["scopes"] == ["agents:read", "billing:read"]
    assert made["require_signature"] is False
    wait_until(lambda: status_with(daemon, made["token"]) == 200, timeout=REFRESH_SECONDS + MARGIN,
               what="the daemon to accept the CLI's new key")
    assert status_with(daemon, made["token"], "/api/billing/usage") == 200
    status, body = http(daemon, "GET", "/api/keys", made["token"])
    assert status == 403 and body["error"]["required_scope"] == "admin:read", body

    # --require-signature: unsigned refused, signed accepted.  The daemon may have reloaded the
    # keys between the two creations (it then knew `made` before `strict`): wait for it too.
    def strict_known() -> tuple[int, dict] | None:
        answer = http(daemon, "GET", "/api/agents", strict["token"])
        return answer if answer[1]["error"]["type"] != "INVALID_API_KEY" else None
    status, body = wait_until(strict_known, timeout=REFRESH_SECONDS + MARGIN, what="the daemon to know 'strict'")
    assert status == 401 and body["error"]["type"] == "SIGNATURE_REQUIRED", body
    ts = str(int(time.time()))
    sig = hmac.new(strict["secret"].encode(), f"{ts}\nGET\n/api/agents\n".encode(), hashlib.sha256).hexdigest()
    status, body = http(daemon, "GET", "/api/agents", strict["token"], {"X-Timestamp": ts, "X-Signature": sig})
    assert status == 200, body

    # list: ids, never tokens, secrets or hashes
    code, text, err = keys_cli(tmp_path, "list")
    assert code == 0, err
    listed = keys_json(tmp_path, "list")
    assert {k["key_id"] for k in listed} == {admin["key_id"], made["key_id"], strict["key_id"]}
    for out in (text, json.dumps(listed)):
        assert made["key_id"] in out and admin["key_id"] in out
        for secret in (made["token"], made["secret"], hash_token(made["token"]), admin["token"], admin["secret"],
                       strict["token"], strict["secret"]):
            assert secret not in out

    # rotate: the successor works, the old key too (24 h grace by default) and names it
    new = keys_json(tmp_path, "rotate", made["key_id"])
    assert new["key_id"] != made["key_id"] and new["token"] != made["token"]
    assert new["scopes"] == made["scopes"]
    wait_until(lambda: status_with(daemon, new["token"]) == 200, timeout=REFRESH_SECONDS + MARGIN,
               what="the daemon to accept the rotated key")
    assert status_with(daemon, made["token"]) == 200
    old = {k["key_id"]: k for k in keys_json(tmp_path, "list")}[made["key_id"]]
    assert old["rotated_to"] == new["key_id"] and old["expires_at"] and old["status"] == "active"

    # revoke: 401 within the refresh time
    code, out, err = keys_cli(tmp_path, "revoke", made["key_id"], "--reason", "left the team")
    assert code == 0, err
    assert made["key_id"] in out
    wait_until(lambda: status_with(daemon, made["token"]) == 401, timeout=REFRESH_SECONDS + MARGIN,
               what="the daemon to refuse the revoked key")
    status, body = http(daemon, "GET", "/api/agents", made["token"])
    assert status == 401 and body["error"]["type"] == "INVALID_API_KEY", body
    assert status_with(daemon, new["token"]) == 200  # the successor is untouched
    status, body = http(daemon, "GET", "/api/keys", admin["token"])
    assert status == 200, body
    shown = {k["key_id"]: k for k in body["keys"]}[made["key_id"]]
    assert shown["status"] == "revoked" and shown["revoke_reason"] == "left the team"

    code, _, err = keys_cli(tmp_path, "revoke", made["key_id"])
    assert code != 0 and "already revoked" in err
    code, _, err = keys_cli(tmp_path, "rotate", made["key_id"])
    assert code != 0 and "revoked" in err
    assert "Traceback" not in daemon.log()
    assert admin["token"] not in daemon.log() and made["token"] not in daemon.log()


def test_cli_text_output_and_errors(tmp_path):
    code, out, err = keys_cli(tmp_path, "create", "--name", "n", "--scopes", "agents:read,root")
    assert code != 0
    assert "unknown scope" in err and "root" in err, err
    assert out == "" and "Traceback" not in err

    code, out, err = keys_cli(tmp_path, "create", "--name", "n", "--scopes", ",")
    assert code != 0 and "scope" in err and "Traceback" not in err
    code, out, err = keys_cli(tmp_path, "create", "--name", "  ", "--scopes", "agents:read")
    assert code != 0 and "name" in err and "Traceback" not in err
    code, out, err = keys_cli(tmp_path, "create", "--name", "n")  # argparse: --scopes is required
    assert code != 0 and "--scopes" in err
    code, out, err = keys_cli(tmp_path, "revoke", "key_0000000000000000")
    assert code != 0 and "no such key" in err and "Traceback" not in err
    code, out, err = keys_cli(tmp_path, "rotate", "key_0000000000000000")
    assert code != 0 and "no such key" in err and "Traceback" not in err
    assert keys_json(tmp_path, "list") == []  # nothing was made by any of those

    code, out, err = keys_cli(tmp_path, "create", "--name", "human", "--scopes", "agents:write")
    assert code == 0, err
    fields = dict(line.split(":", 1) for line in out.splitlines() if line.startswith(("key id:", "token:")))
    assert fields["token"].strip().startswith("jsk_")
    code, listing, err = keys_cli(tmp_path, "list")
    assert code == 0, err
    assert fields["key id"].strip() in listing and fields["token"].strip() not in listing


def test_cli_key_made_before_the_first_start_means_no_bootstrap_key(tmp_path):
    made = keys_json(tmp_path, "create", "--name", "ops", "--scopes", "admin:write")
    with Daemon(tmp_path, tmp_path / "state") as d:
        assert not (tmp_path / "state" / "bootstrap-admin.key").exists()
        status, body = http(d, "GET", "/api/keys", made["token"])
        assert status == 200, body
        assert [k["key_id"] for k in body["keys"]] == [made["key_id"]]
        # Auth is on: without a key only [security] local_scopes' routes answer (loopback), never /keys.
        assert http(d, "GET", "/api/keys")[0] == 401


async def test_refresh_sees_a_revocation_committed_while_the_keys_were_being_read(tmp_path, monkeypatch):
    """The CLI may commit between the daemon's SELECT of the keys and its PRAGMA data_version;
    the next refresh must still notice that change."""
    import sqlite3

    from j1mskyd import keys as keys_mod
    from j1mskyd.store import Store

    store = Store(str(tmp_path / "state" / "j1msky.db"))
    store.open()
    try:
        service = keys_mod.KeyService(store)
        await service.reload()
        made = await service.create("victim", ["agents:read"])
        assert service.authenticate(made.token) is not None

        real_read_keys = keys_mod.read_keys
        cli = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)

        def read_keys_then_cli_commits(conn, cipher):
            found = real_read_keys(conn, cipher)
            if not cli_done:
                sql, params = keys_mod.revoke_statement(made.key.key_id, "cli", time.time())
                cli.execute(sql, params)  # autocommit: another connection's commit
                cli_done.append(True)
            return found

        cli_done: list[bool] = []
        monkeypatch.setattr(keys_mod, "read_keys", read_keys_then_cli_commits)
        try:
            await service.reload()  # sees the key still active, the revocation lands just after
        finally:
            monkeypatch.setattr(keys_mod, "read_keys", real_read_keys)
            cli.close()
        assert cli_done
        await service.refresh()
        assert service.authenticate(made.token) is None
        assert service.get(made.key.key_id).revoke_reason == "cli"
    finally:
        await store.close()


def test_cli_refuses_the_last_admin_key_without_force(tmp_path):
    admin = keys_json(tmp_path, "create", "--name", "owner", "--scopes", "admin:write")
    code, _, err = keys_cli(tmp_path, "revoke", admin["key_id"])
    assert code == 2 and "last active admin key" in err and "--force" in err and "Traceback" not in err
    assert [k["status"] for k in keys_json(tmp_path, "list")] == ["active"]
    code, out, err = keys_cli(tmp_path, "revoke", admin["key_id"], "--force")
    assert code == 0, err
    assert [k["status"] for k in keys_json(tmp_path, "list")] == ["revoked"]


async def test_the_daemons_own_writes_do_not_reload_the_keys(tmp_path, monkeypatch):
    """data_version moves with every commit of the writer connection; only a change to the
    keys themselves (as the CLI makes) reloads them."""
    import sqlite3

    from j1mskyd import keys as keys_mod
    from j1mskyd.store import Store

    store = Store(str(tmp_path / "state" / "j1msky.db"))
    store.open()
    try:
        service = keys_mod.KeyService(store)
        made = await service.create("worker", ["agents:read"])
        reloads = []
        real_reload = service.reload
        monkeypatch.setattr(service, "reload", lambda: reloads.append(1) or real_reload())
        for i in range(3):  # traffic: the key used, other tables written
            assert service.authenticate(made.token) is not None
            await store.write(("INSERT INTO settings (name, value, updated_at) VALUES (?, '1', 0) "
                               "ON CONFLICT(name) DO NOTHING", (f"x{i}",)))
            await service.refresh()
        assert reloads == []
        cli = sqlite3.connect(store.path, isolation_level=None)
        sql, params = keys_mod.revoke_statement(made.key.key_id, "cli", time.time())
        cli.execute(sql, params)
        cli.close()
        await service.refresh()
        assert reloads == [1] and service.authenticate(made.token) is None
    finally:
        await store.close()


# ------------------------------------------------------------ the state dir it works on

def test_a_list_where_there_is_no_state_says_so_and_creates_nothing(tmp_path):
    """Issue 18: ``keys list`` (and ``projects list``) run from another directory made a new,
    empty state dir there and printed nothing.  A read names the dir and creates none."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in (("keys", "list"), ("projects", "list")):
        out = run_cli(*command, cwd=elsewhere)  # the default: ./.j1msky of that directory
        assert out.returncode == 1, out
        assert out.stdout == ""
        assert f"state dir {elsewhere / '.j1msky'}" in out.stderr
        assert "no daemon state in" in out.stderr and "--state-dir" in out.stderr
        assert list(elsewhere.iterdir()) == []  # nothing created
    missing = tmp_path / "nowhere"
    out = run_cli("keys", "list", "--state-dir", str(missing), cwd=tmp_path)
    assert out.returncode == 1 and not missing.exists()


def test_the_cli_names_its_state_dir_and_when_the_daemon_applies_a_change(tmp_path, daemon):
    code, out, err = keys_cli(tmp_path, "create", "--name", "late", "--scopes", "agents:read")
    assert code == 0, err
    assert f"state dir {tmp_path / 'state'}" in err
    assert f"applies this within {REFRESH_SECONDS:g} s" in err
    token = next(line.split()[-1] for line in out.splitlines() if line.startswith("token:"))
    # What the CLI said holds: the running daemon accepts the key within that time (plus a margin).
    wait_until(lambda: status_with(daemon, token) == 200, REFRESH_SECONDS + MARGIN, what="the new key to work")
    code, out, err = keys_cli(tmp_path, "list")
    assert code == 0 and "late" in out and f"state dir {tmp_path / 'state'}" in err
