"""aesgcm_openssl: the reused-context AES-GCM gives AESGCM's own bytes and errors (on the
``cryptography`` releases whose AESGCM is the Python one over cffi, Debian bookworm's; later
releases keep the Rust AESGCM and their cffi binding lacks the EVP calls, so these tests skip)."""

from __future__ import annotations

import os
import random
import threading

import pytest

from j1mskyd import aesgcm_openssl
from j1mskyd.crypto import DataCipher

pytestmark = pytest.mark.skipif(not aesgcm_openssl.python_aesgcm(),
                                reason="this cryptography's AESGCM is the Rust one: nothing to replace")

AESGCM = pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead").AESGCM
InvalidTag = pytest.importorskip("cryptography.exceptions").InvalidTag


def _cases(n: int, seed: int) -> list[tuple[bytes, bytes, bytes]]:
    rnd = random.Random(seed)
    sizes = [0, 1, 15, 16, 17, 255, 256, 257, 1000, 70_000]
    out = []
    for i in range(n):
        size = sizes[i % len(sizes)] if i < len(sizes) else rnd.randrange(0, 3000)
        aad = bytes(rnd.getrandbits(8) for _ in range(rnd.choice([0, 1, 12, 40])))
        out.append((os.urandom(12), os.urandom(size), aad))
    return out


@pytest.mark.parametrize("bits", [128, 256])
def test_the_same_bytes_as_aesgcm_and_each_opens_the_others(bits):
    key = AESGCM.generate_key(bits)
    ours, theirs = aesgcm_openssl.ReusedContextGCM(key), AESGCM(key)
    for nonce, data, aad in _cases(200, bits):
        sealed = ours.encrypt(nonce, data, aad)
        assert sealed == theirs.encrypt(nonce, data, aad)
        assert ours.decrypt(nonce, sealed, aad) == data
        assert theirs.decrypt(nonce, sealed, aad) == data
    assert ours.encrypt(b"n" * 12, b"text", None) == theirs.encrypt(b"n" * 12, b"text", None)


def test_a_tampered_value_another_context_or_key_is_invalid_tag_and_the_next_call_still_works():
    key = AESGCM.generate_key(256)
    ours = aesgcm_openssl.ReusedContextGCM(key)
    nonce = os.urandom(12)
    sealed = ours.encrypt(nonce, b"the task", b"agent_1/task")
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    for bad_nonce, value, aad in ((nonce, flipped, b"agent_1/task"), (nonce, sealed, b"agent_2/task"),
                                  (os.urandom(12), sealed, b"agent_1/task"), (nonce, sealed[:10], b"agent_1/task"),
                                  (nonce, sealed[:-1], b"agent_1/task")):
        with pytest.raises(InvalidTag):
            ours.decrypt(bad_nonce, value, aad)
    with pytest.raises(InvalidTag):
        aesgcm_openssl.ReusedContextGCM(AESGCM.generate_key(256)).decrypt(nonce, sealed, b"agent_1/task")
    assert ours.decrypt(nonce, sealed, b"agent_1/task") == b"the task"  # a failure leaves no state behind
    assert AESGCM(key).encrypt(nonce, b"x", b"") == ours.encrypt(nonce, b"x", b"")


def test_odd_nonces_and_keys_get_aesgcm_s_own_answers():
    with pytest.raises(ValueError):
        aesgcm_openssl.ReusedContextGCM(b"short key")
    key = AESGCM.generate_key(256)
    ours = aesgcm_openssl.ReusedContextGCM(key)
    assert ours.encrypt(b"n" * 16, b"data", b"ad") == AESGCM(key).encrypt(b"n" * 16, b"data", b"ad")
    with pytest.raises(ValueError):
        ours.decrypt(b"short", b"x" * 20, b"")


def test_threads_each_use_their_own_context():
    key = AESGCM.generate_key(256)
    ours, theirs = aesgcm_openssl.ReusedContextGCM(key), AESGCM(key)
    failures: list[str] = []

    def work(seed: int) -> None:
        for nonce, data, aad in _cases(300, seed):
            if ours.encrypt(nonce, data, aad) != theirs.encrypt(nonce, data, aad):
                failures.append(f"thread {seed}")
                return

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_the_data_cipher_uses_it_and_opens_what_the_old_one_sealed(tmp_path):
    key = AESGCM.generate_key(256)
    cipher = DataCipher(key)
    sealed = cipher.encrypt("a task", "agent_1/task")
    assert isinstance(cipher._impl(), aesgcm_openssl.ReusedContextGCM)
    assert cipher.decrypt(sealed, "agent_1/task") == "a task"
    # A value sealed by AESGCM itself (what a daemon before this change wrote) opens too.
    import base64
    nonce = os.urandom(12)
    old = "enc1:" + base64.b64encode(nonce + AESGCM(key).encrypt(nonce, b"old text", b"agent_9/result")).decode()
    assert cipher.decrypt(old, "agent_9/result") == "old text"


def test_openssl_is_called_keeping_the_gil():
    """cffi lets the GIL go around each call (five a message): under load each was a chance for
    the store's writer thread to take it and the loop's thread to wait for it back, ~7 % of an
    agent's CPU on this stack.  ctypes.PyDLL keeps it for the call."""
    import ctypes
    lib, ctrl = aesgcm_openssl.libcrypto()
    assert isinstance(lib, ctypes.PyDLL) and set(ctrl) == {"set_ivlen", "get_tag", "set_tag"}


def test_without_openssl_s_functions_the_data_cipher_takes_aesgcm(monkeypatch):
    """A binding that links OpenSSL statically may not export its functions: AESGCM, slower and the same."""
    monkeypatch.setattr(aesgcm_openssl, "libcrypto", lambda: None)
    key = AESGCM.generate_key(256)
    assert type(aesgcm_openssl.aead_for(key)) is AESGCM
    with pytest.raises(RuntimeError, match="cannot be found"):
        aesgcm_openssl.ReusedContextGCM(key)


def test_a_thread_s_context_goes_with_the_thread():
    import gc
    import weakref
    ours = aesgcm_openssl.ReusedContextGCM(AESGCM.generate_key(256))
    seen: list[weakref.ref] = []

    def work() -> None:
        ours.encrypt(os.urandom(12), b"data", b"ad")
        seen.append(weakref.ref(ours._local.context))

    for _ in range(3):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    gc.collect()
    assert len(seen) == 3 and all(ref() is None for ref in seen)  # freed (EVP_CIPHER_CTX_free, its finaliser)


def _outcome(call, *args):
    try:
        return "ok", call(*args)
    except Exception as exc:  # noqa: BLE001 - what is compared is which error
        return "error", type(exc)


def test_arguments_other_than_bytes_get_aesgcm_s_own_answers_and_errors():
    """ctypes with no argument types would pass a str's characters as they are: anything but
    bytes (and a 12-byte nonce) goes to AESGCM, for its answer or its error."""
    key = AESGCM.generate_key(256)
    ours, theirs = aesgcm_openssl.ReusedContextGCM(key), AESGCM(key)
    nonce = os.urandom(12)
    sealed = theirs.encrypt(nonce, b"data", b"ad")
    odd = (bytearray(nonce), memoryview(nonce), "n" * 12, None)
    for args in [(n, b"data", b"ad") for n in odd] + [
            (nonce, "data", b"ad"), (nonce, bytearray(b"data"), b"ad"), (nonce, b"data", "ad"),
            (nonce, b"data", bytearray(b"ad")), (nonce, b"data", memoryview(b"ad"))]:
        assert _outcome(ours.encrypt, *args) == _outcome(theirs.encrypt, *args), args
    for args in ((nonce, sealed, "ad"), (bytearray(nonce), sealed, b"ad"), (nonce, bytearray(sealed), b"ad")):
        assert _outcome(ours.decrypt, *args) == _outcome(theirs.decrypt, *args), args
    assert _outcome(ours.encrypt, nonce, "data", b"ad")[0] == "error"  # never a str's characters sealed


EXIT_HOOK = """
import atexit, os, threading
from j1mskyd.crypto import DataCipher
cipher = None
atexit.register(lambda: print(cipher.encrypt("last words", "agent_1/result")[:5]))  # runs after finalize's hook
cipher = DataCipher(os.urandom(32))
cipher.encrypt("hello", "agent_1/task")
def seal():
    while True:
        cipher.encrypt("x" * 500, "agent_2/task")
threading.Thread(target=seal, daemon=True).start()  # still sealing while the process ends
"""


def test_a_context_is_not_freed_at_exit_while_it_can_still_be_used():
    """weakref.finalize frees at exit by default: an exit hook or a daemon thread sealing then
    used a freed OpenSSL context (a crash).  The process's end frees it instead."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _ in range(5):
        done = subprocess.run([sys.executable, "-c", EXIT_HOOK], capture_output=True, text=True, cwd=root,
                              env={**os.environ, "PYTHONPATH": root}, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "enc1:"
