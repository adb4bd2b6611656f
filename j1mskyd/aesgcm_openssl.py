"""AES-GCM through one reused OpenSSL cipher context, for the ``cryptography`` releases whose
``AESGCM`` is written in Python over cffi (Debian bookworm's 38.0.4, the Pi's).

There, each ``AESGCM.encrypt`` looks the cipher up by name, makes a new ``EVP_CIPHER_CTX``
(with a cffi finaliser), runs the AES key schedule, and allocates half a dozen cffi buffers:
~10 us a call on this machine, where the Rust ``AESGCM`` of later releases takes ~1.3 us.  An
agent is sealed six times (its task, its result, two events' data, two audit entries' details),
so on bookworm that was ~60 us of an agent's CPU, the largest single item in its profile.

:class:`ReusedContextGCM` keeps, per thread, one context with the key already set (the key
schedule runs once), and for each message gives it a new nonce (``EVP_CipherInit_ex`` with the
IV alone, which starts a new GCM message under the same key), the associated data, the text,
and reads the tag: the same calls ``cryptography`` makes, in the same order, and byte for byte
the same output (tests/test_aesgcm_openssl.py checks it against ``AESGCM`` itself).

:func:`aead_for` picks it only where ``AESGCM`` is the Python one; elsewhere it returns
``AESGCM``.  Only the two methods the data cipher uses are offered (``encrypt``, ``decrypt``),
with ``AESGCM``'s arguments, results and errors (``InvalidTag`` for a value that does not open).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["ReusedContextGCM", "aead_for", "python_aesgcm"]

_NONCE = 12  # bytes: the data cipher's nonces (crypto.py); any other length goes to AESGCM
_TAG = 16


def python_aesgcm() -> bool:
    """Is this ``cryptography``'s AESGCM the Python one over cffi (releases before the Rust one)?"""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    return getattr(AESGCM.encrypt, "__module__", "") == "cryptography.hazmat.primitives.ciphers.aead"


def aead_for(key: bytes) -> Any:
    """The AES-256-GCM object the data cipher uses: :class:`ReusedContextGCM` over the Python
    AESGCM's own OpenSSL, else ``AESGCM`` itself."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    if python_aesgcm():
        return ReusedContextGCM(key)
    return AESGCM(key)


class _Context:
    """One thread's cipher context (the key set) and its scratch buffers."""

    __slots__ = ("ctx", "outlen", "tag", "final", "buf", "size")

    def __init__(self, lib: Any, ffi: Any, key: bytes) -> None:
        ctx = ffi.gc(lib.EVP_CIPHER_CTX_new(), lib.EVP_CIPHER_CTX_free)
        _check(lib, ctx != ffi.NULL)
        cipher = lib.EVP_get_cipherbyname(b"aes-%d-gcm" % (len(key) * 8))
        _check(lib, cipher != ffi.NULL)
        _check(lib, lib.EVP_CipherInit_ex(ctx, cipher, ffi.NULL, ffi.NULL, ffi.NULL, 1))
        _check(lib, lib.EVP_CIPHER_CTX_ctrl(ctx, lib.EVP_CTRL_AEAD_SET_IVLEN, _NONCE, ffi.NULL))
        _check(lib, lib.EVP_CipherInit_ex(ctx, ffi.NULL, ffi.NULL, ffi.from_buffer(key), ffi.NULL, 1))
        self.ctx = ctx
        self.outlen = ffi.new("int *")
        self.tag = ffi.new("unsigned char[]", _TAG)
        self.final = ffi.new("unsigned char[]", 16)
        self.size = 256
        self.buf = ffi.new("unsigned char[]", self.size)


def _check(lib: Any, ok: Any) -> None:
    if not ok:
        lib.ERR_clear_error()  # leave OpenSSL's error queue as cryptography expects it: empty
        raise RuntimeError("OpenSSL AES-GCM call failed")


class ReusedContextGCM:
    """``AESGCM``'s ``encrypt``/``decrypt`` for one key, on a reused context per thread."""

    def __init__(self, key: bytes) -> None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.bindings.openssl.binding import Binding
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        self._invalid = InvalidTag
        self._fallback = AESGCM(key)  # checks the key as AESGCM does; odd nonces go to it
        binding = Binding()
        self._lib: Any = binding.lib  # typed Optional by the binding's stubs; loaded by Binding()
        self._ffi: Any = binding.ffi
        self._key = bytes(key)
        self._local = threading.local()

    def _context(self) -> _Context:
        context: _Context | None = getattr(self._local, "context", None)
        if context is None:
            context = self._local.context = _Context(self._lib, self._ffi, self._key)
        return context

    def _run(self, context: _Context, nonce: bytes, data: bytes, associated_data: bytes, encrypt: int) -> bytes:
        """Start a message with ``nonce`` and put the associated data and ``data`` through."""
        lib, ffi, ctx, outlen = self._lib, self._ffi, context.ctx, context.outlen
        _check(lib, lib.EVP_CipherInit_ex(ctx, ffi.NULL, ffi.NULL, ffi.NULL, ffi.from_buffer(nonce), encrypt))
        if associated_data:
            _check(lib, lib.EVP_CipherUpdate(ctx, ffi.NULL, outlen, associated_data, len(associated_data)))
        if not data:
            return b""
        if len(data) > context.size:
            context.size = max(len(data), context.size * 2)
            context.buf = ffi.new("unsigned char[]", context.size)
        _check(lib, lib.EVP_CipherUpdate(ctx, context.buf, outlen, data, len(data)))
        return ffi.buffer(context.buf, outlen[0])[:]

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        if len(nonce) != _NONCE or len(data) > 2**31 - 1:
            return self._fallback.encrypt(nonce, data, associated_data)
        lib, ffi = self._lib, self._ffi
        context = self._context()
        out = self._run(context, nonce, data, associated_data or b"", 1)
        _check(lib, lib.EVP_CipherFinal_ex(context.ctx, context.final, context.outlen))
        _check(lib, lib.EVP_CIPHER_CTX_ctrl(context.ctx, lib.EVP_CTRL_AEAD_GET_TAG, _TAG, context.tag))
        return out + ffi.buffer(context.tag, _TAG)[:]

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        if len(nonce) != _NONCE or len(data) > 2**31 - 1:
            return self._fallback.decrypt(nonce, data, associated_data)
        if len(data) < _TAG:
            raise self._invalid
        lib = self._lib
        context = self._context()
        out = self._run(context, nonce, data[:-_TAG], associated_data or b"", 0)
        _check(lib, lib.EVP_CIPHER_CTX_ctrl(context.ctx, lib.EVP_CTRL_AEAD_SET_TAG, _TAG, data[-_TAG:]))
        if lib.EVP_CipherFinal_ex(context.ctx, context.final, context.outlen) != 1:
            lib.ERR_clear_error()
            raise self._invalid
        return out
