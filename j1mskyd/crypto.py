"""Encryption at rest of agent task and result text: AES-256-GCM with the data key.

The data key is 32 random bytes in ``<state dir>/data.key`` (mode 0600), created at
first start.  A stored value is ``enc1:`` + base64(nonce || ciphertext+tag); the
associated data binds it to its row and column (``agent_id/field``), so a value
copied into another row does not decrypt.  ``cryptography`` is imported on first use:
an idle daemon does not pay for it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
from typing import Any, overload

from .durable import fsync_dir

__all__ = ["CHECK_CONTEXT", "DataCipher", "DecryptError", "KEY_FILE", "PREFIX", "load_or_create_key"]

PREFIX = "enc1:"
KEY_FILE = "data.key"
# A check value of the data key, stored beside the data (the store keeps it in ``settings``): it
# tells at start whether data.key is the key that data was sealed with.  Today's form is
# ``hmac1:`` + HMAC-SHA256(data key, _CHECK_TEXT) in hex: a keyed hash of a known constant, which
# says nothing about the key (HMAC is a pseudo-random function) and is checked with the standard
# library, so a start does not load `cryptography` (~7 MB resident) only to verify the key.
# Daemons before it sealed _CHECK_TEXT with AES-GCM (``enc1:``); such a value is still accepted
# and replaced at the next start.
CHECK_CONTEXT = "data_key_check"
_CHECK_TEXT = "j1msky data key check v1"
_CHECK_PREFIX = "hmac1:"
# A new API key's secrets are derived rather than sealed (DataCipher.new_secret): stored as
# ``kdf1:<prefix>:<nonce>`` (16 random bytes, base64url), the secret is <prefix> + base64url of
# HMAC-SHA256(subkey, label | context | nonce), the subkey HMAC-SHA256(data key, _DERIVE_LABEL).
# Like a sealed value it is opened only with data.key and only for its own row and column;
# unlike one it needs no AES, so a first start (the bootstrap key) does not load `cryptography`.
DERIVED = "kdf1:"
_DERIVE_LABEL = b"j1msky secret derivation key v1"
_SECRET_LABEL = b"j1msky secret v1"


class DecryptError(Exception):
    pass


class _Nonces:
    """AES-GCM nonces: 12 random bytes each from the OS's CSPRNG, as ``secrets.token_bytes(12)``
    gives, but read 256 at a time.  One ``getrandom`` per nonce was six system calls per agent,
    each giving up the GIL (measured: ~13 % of the spawn path's main-thread time).  A nonce is
    public (it is stored beside its ciphertext) and used once: holding the next few in memory
    reveals nothing.  A forked child drops what its parent drew, so the two never use the same.
    The block is cut into nonces when it is read, so that taking one is a ``list.pop``
    (DataCipher.encrypt does that inline: a method call per seal was ~1,000 instructions)."""

    SIZE = 12
    BLOCK = 256

    def __init__(self) -> None:
        self.pool: list[bytes] = []

    def refill(self) -> bytes:
        """Read a new block: one nonce of it now, the rest into the pool."""
        size = self.SIZE
        block = os.urandom(size * self.BLOCK)
        self.pool = [block[at:at + size] for at in range(size, len(block), size)]
        return block[:size]

    def take(self) -> bytes:
        pool = self.pool
        return pool.pop() if pool else self.refill()

    def drop(self) -> None:
        self.pool = []


_NONCES = _Nonces()
os.register_at_fork(after_in_child=_NONCES.drop)


def load_or_create_key(state_dir: str) -> bytes:
    """Read the data key, or create it, durably, before anything is sealed with it.

    A new key is written to a temp file, fsynced, linked to ``data.key`` (never replacing
    one: two starts racing keep the first) and its directory fsynced: after a power cut
    there is either no key (nothing was sealed with it yet) or the whole key, never an
    empty or short file that would keep the daemon from starting.
    """
    path = os.path.join(state_dir, KEY_FILE)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    tmp = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):  # left by a power cut mid-creation (a pid repeats in a container)
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    except FileExistsError:  # another start made it first: use that one
        return _read_key(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(state_dir)
    return key


def _read_key(path: str) -> bytes:
    with open(path, "rb") as fh:
        key = fh.read()
    if len(key) != 32:
        raise DecryptError(f"{path} is damaged: expected 32 bytes, found {len(key)}")
    return key


class DataCipher:
    def __init__(self, key: bytes) -> None:
        self._key = key
        self._aead: Any = None
        self._seal: Any = None  # the AESGCM object's bound encrypt, once loaded (six seals an agent)
        self._derive_key = hmac.new(key, _DERIVE_LABEL, hashlib.sha256).digest()

    def _impl(self) -> Any:
        if self._aead is None:
            # AESGCM itself, or on a cryptography whose AESGCM is Python over cffi (bookworm's 38)
            # the same cipher on a reused OpenSSL context, ~3x faster (aesgcm_openssl).  Lazy, see module doc.
            from .aesgcm_openssl import aead_for
            self._aead = aead_for(self._key)
            self._seal = self._aead.encrypt
        return self._aead

    @overload
    def encrypt(self, text: str, context: str) -> str: ...
    @overload
    def encrypt(self, text: str | None, context: str) -> str | None: ...
    def encrypt(self, text: str | None, context: str) -> str | None:
        if text is None:
            return None
        seal = self._seal
        if seal is None:
            self._impl()
            seal = self._seal
        pool = _NONCES.pool
        nonce = pool.pop() if pool else _NONCES.refill()  # _NONCES.take(), inline
        # binascii directly: base64.b64encode is a Python wrapper around the same call.  The
        # output is the same: standard alphabet, padded, no newline.
        return PREFIX + binascii.b2a_base64(nonce + seal(nonce, text.encode(), context.encode()),
                                            newline=False).decode("ascii")

    def new_secret(self, context: str, prefix: str = "") -> tuple[str, str]:
        """A new random secret for ``context`` (``<id>/<column>``) and the value that stores it:
        ``(stored, secret)``, where ``decrypt(stored, context) == secret``.  The secret is
        ``prefix`` + 43 base64url characters (256 bits), the shape of ``secrets.token_urlsafe(32)``."""
        if ":" in prefix:
            raise ValueError("a secret's prefix cannot hold ':'")
        nonce = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii").rstrip("=")
        stored = f"{DERIVED}{prefix}:{nonce}"
        return stored, self._derived(stored, context)

    def _derived(self, stored: str, context: str) -> str:
        prefix, _, nonce = stored[len(DERIVED):].partition(":")
        if not nonce:
            raise DecryptError(f"cannot open {context}: a damaged derived value")
        mac = hmac.new(self._derive_key, b"\0".join((_SECRET_LABEL, context.encode(), nonce.encode())),
                       hashlib.sha256).digest()
        return prefix + base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")

    def decrypt(self, value: str | None, context: str) -> str | None:
        if value is not None and value.startswith(DERIVED):
            return self._derived(value, context)
        if value is None or not value.startswith(PREFIX):
            return value  # plaintext written before encryption existed
        from cryptography.exceptions import InvalidTag
        raw = base64.b64decode(value[len(PREFIX):])
        try:
            return self._impl().decrypt(raw[:12], raw[12:], context.encode()).decode("utf-8")
        except InvalidTag:
            raise DecryptError(f"cannot decrypt {context}: wrong data key or tampered value") from None

    def seal_check(self) -> str:
        """The check value of this key (see CHECK_CONTEXT)."""
        return _CHECK_PREFIX + hmac.new(self._key, _CHECK_TEXT.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def is_current_check(value: str) -> bool:
        """Is ``value`` a check value of today's form (else an older daemon sealed it)?"""
        return value.startswith(_CHECK_PREFIX)

    def opens(self, value: str, context: str, expected: str | None = None) -> bool:
        """Does this key open ``value`` sealed for ``context`` (to ``expected``, when given)?"""
        try:
            text = self.decrypt(value, context)
        except (DecryptError, ValueError):  # another key, or a mangled value
            return False
        return expected is None or text == expected

    def opens_check(self, value: str) -> bool:
        """Is ``value`` the check value of this key (either form)?"""
        if self.is_current_check(value):
            return hmac.compare_digest(value, self.seal_check())
        return self.opens(value, CHECK_CONTEXT, _CHECK_TEXT)
