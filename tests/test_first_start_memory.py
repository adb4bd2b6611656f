"""A first start does not load `cryptography` (~7 MB resident, issue 13 "idle RSS at first
start") nor what only some requests need (the OpenAPI document's builder, the SDK's clients,
config hints), it gives the C heap's free pages back, and what replaced AES there keeps its
guarantees: the data key's check value is an HMAC (an older daemon's sealed one is still
accepted, and replaced), and a new API key's secrets are derived from the data key, opened
only with that key and for their own row."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from j1mskyd.crypto import DERIVED, KEY_FILE, DataCipher, DecryptError
from j1mskyd.keys import KeyService
from j1mskyd.store import KEY_CHECK, Store, StoreError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIRST_START = """
import asyncio, sys, tempfile
from j1mskyd.keys import KeyService
from j1mskyd.store import Store

async def main():
    state = tempfile.mkdtemp()
    store = Store(state + "/j1msky.db")
    store.open()
    keys = KeyService(store)
    await keys.reload()
    new = await keys.bootstrap(state)
    assert new is not None and new.key.secret and new.key.webhook_secret
    await keys.reload()  # read back from the database, opened again
    assert keys.get(new.key.key_id).secret == new.secret
    await store.close()
    Store(state + "/j1msky.db").open()  # a later start checks the data key too
    print("cryptography" in sys.modules)

asyncio.run(main())
"""


def test_a_first_and_a_later_start_with_the_bootstrap_key_leave_cryptography_unloaded():
    done = subprocess.run([sys.executable, "-c", FIRST_START], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# The daemon's own start (``j1mskyd serve``, embedded default, a fresh state dir): which modules
# are loaded once it listens, and after its first GET /api/openapi.json.
SERVE = """
import asyncio, sys
import aiohttp
import j1mskyd.listener as listener
import j1mskyd.heap as heap

LAZY = ("cryptography", "j1mskyd.api.openapi", "j1mskyd.api.kyros.openapi", "j1msky.client", "j1msky.aio",
        "difflib", "importlib.resources")
trimmed = []
release = heap.release_free_memory
listener.release_free_memory = lambda: trimmed.append(release()) or trimmed[-1]

async def probe(app):
    print(sorted(m for m in LAZY if m in sys.modules))
    async with aiohttp.ClientSession() as s:
        async with s.get("http://127.0.0.1:%s/api/openapi.json" % sys.argv[-1]) as r:
            assert r.status == 200 and "/kyros/v1/tasks" in (await r.json())["paths"]
    print(sorted(m for m in LAZY if m in sys.modules))
    print(trimmed)

listener._until_stopped = probe
sys.argv = ["j1mskyd", "serve", "--host", "127.0.0.1", "--state-dir", sys.argv[1], "--port", sys.argv[2]]
import j1mskyd.__main__ as main
main.main()
"""


def test_an_idle_daemon_leaves_what_only_some_requests_need_unloaded(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-c", SERVE, str(tmp_path / "state"), str(port)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert done.returncode == 0, done.stderr
    idle, after, trimmed = done.stdout.strip().splitlines()[-3:]
    assert idle == "[]"
    assert after == "['j1mskyd.api.kyros.openapi', 'j1mskyd.api.openapi']"  # the document's builder, on demand
    assert trimmed == ("[True]" if sys.platform == "linux" else "[False]")  # glibc here


def test_trimming_the_heap_is_skipped_where_the_c_library_has_no_malloc_trim(monkeypatch):
    import ctypes

    from j1mskyd import heap
    assert heap.release_free_memory() is (sys.platform == "linux")

    class NoTrim:
        def __init__(self, name):
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoTrim)  # musl, macOS: no such symbol
    assert heap.release_free_memory() is False


def test_the_sdk_s_names_load_on_first_use():
    code = ("import sys, j1msky; from j1msky.backoff import backoff_delay; print('j1msky.client' in sys.modules); "
            "from j1msky import J1MSKYClient, AsyncJ1MSKYClient, WaitTimeout; import j1msky as m; "
            "print(J1MSKYClient.__module__, AsyncJ1MSKYClient.__module__, WaitTimeout is m.WaitTimeout, "
            "set(m.__all__) <= set(dir(m)), m.errors.J1MSKYError is m.J1MSKYError, m.sse.__name__, "
            "'importlib' in dir(m))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "sdk", "python")}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "j1msky.client", "j1msky.aio", "True", "True", "True", "j1msky.sse",
                                   "False"]  # a submodule is an attribute, as when __init__ imported them all
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        import j1msky
        j1msky.Nope  # noqa: B018


def test_a_derived_secret_opens_only_with_its_data_key_and_for_its_own_row_and_column():
    cipher = DataCipher(os.urandom(32))
    stored, secret = cipher.new_secret("key_a/webhook_secret", "whsec_")
    assert stored.startswith(DERIVED) and secret not in stored
    assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 43
    assert cipher.decrypt(stored, "key_a/webhook_secret") == secret
    assert DataCipher(os.urandom(32)).decrypt(stored, "key_a/webhook_secret") != secret  # another data key
    assert cipher.decrypt(stored, "key_b/webhook_secret") != secret  # copied into another row
    assert cipher.decrypt(stored, "key_a/secret") != secret  # or another column
    again, other = cipher.new_secret("key_a/webhook_secret", "whsec_")
    assert again != stored and other != secret  # a rotation draws a new one
    with pytest.raises(DecryptError):
        cipher.decrypt(DERIVED + "whsec_", "key_a/webhook_secret")  # no nonce: damaged
    with pytest.raises(ValueError):
        cipher.new_secret("key_a/secret", "a:b")


async def test_a_check_value_sealed_by_an_older_daemon_is_accepted_and_replaced(tmp_path):
    path = str(tmp_path / "j1msky.db")
    store = Store(path)
    store.open()
    legacy = store.cipher.encrypt("j1msky data key check v1", KEY_CHECK)  # how daemons before this sealed it
    await store.write(("UPDATE settings SET value = ? WHERE name = ?", (legacy, KEY_CHECK)))
    await store.close()
    original = (tmp_path / KEY_FILE).read_bytes()
    (tmp_path / KEY_FILE).write_bytes(os.urandom(32))
    with pytest.raises(StoreError, match="not the data key"):  # the old form still tells a wrong key
        Store(path).open()
    (tmp_path / KEY_FILE).write_bytes(original)
    again = Store(path)
    again.open()
    value = again.read_sync(lambda c: c.execute("SELECT value FROM settings WHERE name = ?",
                                                (KEY_CHECK,)).fetchone()[0])
    await again.close()
    assert value.startswith("hmac1:")
    (tmp_path / KEY_FILE).write_bytes(os.urandom(32))
    with pytest.raises(StoreError, match="not the data key"):  # and so does the new one
        Store(path).open()


async def test_keys_sealed_by_an_older_daemon_still_open(tmp_path):
    store = Store(str(tmp_path / "j1msky.db"))
    store.open()
    await store.write(("INSERT INTO api_keys (key_id, name, token_hash, secret, scopes, created_at, webhook_secret) "
                       "VALUES ('key_a', 'a', 'h', ?, 'admin:write', 0, ?)",
                       (store.cipher.encrypt("s3cret", "key_a/secret"),
                        store.cipher.encrypt("whsec_old", "key_a/webhook_secret"))))
    keys = KeyService(store)
    await keys.reload()
    key = keys.get("key_a")
    assert (key.secret, key.webhook_secret) == ("s3cret", "whsec_old")
    await store.close()


def test_the_command_lines_parser_is_not_kept_while_its_command_runs(monkeypatch):
    """``serve`` runs for the daemon's whole life: the parser of every command (~0.12 MB) must not."""
    import gc
    import weakref

    from j1mskyd import __main__ as cli
    parsers: list[weakref.ref] = []
    build = cli.build_parser

    def tracked():
        parser = build()
        parsers.append(weakref.ref(parser))
        return parser

    def command(args) -> bool:  # set as `version`'s function when its parser is built
        gc.collect()
        return parsers[0]() is None

    monkeypatch.setattr(cli, "build_parser", tracked)
    monkeypatch.setattr(cli, "cmd_version", command)
    assert cli.main(["version"]) is True
