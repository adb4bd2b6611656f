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

It calls that OpenSSL (the one ``cryptography``'s own binding is linked with, found through the
binding's shared object) with ``ctypes.PyDLL``, which keeps the GIL during each call.  cffi lets
the GIL go around every call: five a message, thirty an agent, and each was a chance for the
store's writer thread to take the GIL and the event loop's thread to wait for it back (two
context switches).  Under load that hand-over cost the Debian stack ~7 % of its CPU per agent
(docs/performance.md, "Eighth pass"); the calls themselves take well under a microsecond, so
nobody waits long for the GIL they keep.

:func:`aead_for` picks it only where ``AESGCM`` is the Python one and its OpenSSL's functions
can be found (a binding that links OpenSSL statically may hide them: ``AESGCM`` then, slower
and the same).  Only the two methods the data cipher uses are offered (``encrypt``,
``decrypt``), with ``AESGCM``'s arguments, results and errors (``InvalidTag`` for a value that
does not open).
"""

from __future__ import annotations

import ctypes
import functools
import threading
import weakref
from typing import Any

__all__ = ["ReusedContextGCM", "aead_for", "libcrypto", "python_aesgcm"]

_NONCE = 12  # bytes: the data cipher's nonces (crypto.py); any other length goes to AESGCM
_TAG = 16
# What each function returns, where it is not an int.  No argument types are declared: ctypes
# then converts nothing per call, and each argument is passed in its C type already (a
# c_void_p for a pointer, bytes, a ctypes buffer or byref, a small int).  Declared, they
# doubled a message's instructions (~42,000 against ~23,000 through cffi; ~28,000 without).
_RESULTS: dict[str, Any] = {
    "EVP_CIPHER_CTX_new": ctypes.c_void_p, "EVP_CIPHER_CTX_free": None, "EVP_get_cipherbyname": ctypes.c_void_p,
    "EVP_CipherInit_ex": ctypes.c_int, "EVP_CIPHER_CTX_ctrl": ctypes.c_int, "EVP_CipherUpdate": ctypes.c_int,
    "EVP_CipherFinal_ex": ctypes.c_int, "ERR_clear_error": None,
}


def python_aesgcm() -> bool:
    """Is this ``cryptography``'s AESGCM the Python one over cffi (releases before the Rust one)?"""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    return getattr(AESGCM.encrypt, "__module__", "") == "cryptography.hazmat.primitives.ciphers.aead"


@functools.cache
def libcrypto() -> tuple[Any, dict[str, int]] | None:
    """The OpenSSL of ``cryptography``'s binding, its functions declared for ctypes (GIL kept),
    and the AEAD control codes; None when its functions cannot be found."""
    try:
        from cryptography.hazmat.bindings import _openssl
        from cryptography.hazmat.bindings.openssl.binding import Binding
        lib = ctypes.PyDLL(_openssl.__file__)  # a symbol is looked up in the binding and what it links
        for name, result in _RESULTS.items():
            getattr(lib, name).restype = result
        codes: Any = Binding().lib  # the constants, from the binding's own headers (typed Optional)
        ctrl = {"set_ivlen": codes.EVP_CTRL_AEAD_SET_IVLEN, "get_tag": codes.EVP_CTRL_AEAD_GET_TAG,
                "set_tag": codes.EVP_CTRL_AEAD_SET_TAG}
    except (ImportError, OSError, AttributeError):
        return None
    return lib, ctrl


def aead_for(key: bytes) -> Any:
    """The AES-256-GCM object the data cipher uses: :class:`ReusedContextGCM` over the Python
    AESGCM's own OpenSSL, else ``AESGCM`` itself."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    if python_aesgcm() and libcrypto() is not None:
        return ReusedContextGCM(key)
    return AESGCM(key)


class _Context:
    """One thread's cipher context (the key set) and its scratch buffers, freed with it."""

    __slots__ = ("ctx", "outlen", "outlen_ref", "tag", "final", "out", "out_at", "__weakref__")

    def __init__(self, lib: Any, ctrl: dict[str, int], key: bytes) -> None:
        address = lib.EVP_CIPHER_CTX_new()
        _check(lib, address)
        ctx = ctypes.c_void_p(address)
        # Freed with this object, never at exit: a thread still sealing then (a daemon thread, an exit
        # hook) would use a freed context; the process's end frees it anyway.
        weakref.finalize(self, lib.EVP_CIPHER_CTX_free, ctx).atexit = False
        cipher = lib.EVP_get_cipherbyname(b"aes-%d-gcm" % (len(key) * 8))
        _check(lib, cipher)
        _check(lib, lib.EVP_CipherInit_ex(ctx, ctypes.c_void_p(cipher), None, None, None, 1))
        _check(lib, lib.EVP_CIPHER_CTX_ctrl(ctx, ctrl["set_ivlen"], _NONCE, None))
        _check(lib, lib.EVP_CipherInit_ex(ctx, None, None, key, None, 1))
        self.ctx = ctx
        self.outlen = ctypes.c_int()
        self.outlen_ref = ctypes.byref(self.outlen)
        self.tag = ctypes.create_string_buffer(_TAG)  # exactly the tag: .raw is it
        self.final = ctypes.create_string_buffer(16)  # what Final writes (nothing, for GCM)
        self.grow(256)

    def grow(self, size: int) -> None:
        """The output buffer, at least ``size`` bytes (GCM's output is as long as its input)."""
        self.out = ctypes.create_string_buffer(size)
        self.out_at = ctypes.addressof(self.out)


def _plain(nonce: Any, data: Any, associated_data: Any) -> bool:
    """The arguments the data cipher passes (``bytes``, a 12-byte nonce): the fast path's.  Any
    other (a bytearray, a str, another nonce length) goes to ``AESGCM``, for its answer or its
    error: ctypes, with no argument types declared, would pass a str's characters as they are."""
    return (type(nonce) is bytes and len(nonce) == _NONCE and type(data) is bytes and len(data) <= 2**31 - 1
            and (associated_data is None or type(associated_data) is bytes))


def _check(lib: Any, ok: Any) -> None:
    if not ok:
        _fail(lib)


def _fail(lib: Any) -> None:
    lib.ERR_clear_error()  # leave OpenSSL's error queue as cryptography expects it: empty
    raise RuntimeError("OpenSSL AES-GCM call failed")


class ReusedContextGCM:
    """``AESGCM``'s ``encrypt``/``decrypt`` for one key, on a reused context per thread."""

    def __init__(self, key: bytes) -> None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        found = libcrypto()
        if found is None:
            raise RuntimeError("OpenSSL's AES-GCM functions cannot be found (aead_for gives AESGCM then)")
        self._invalid = InvalidTag
        self._fallback = AESGCM(key)  # checks the key as AESGCM does; odd nonces go to it
        self._lib, ctrl = found
        self._get_tag, self._set_tag = ctrl["get_tag"], ctrl["set_tag"]
        self._ctrl = ctrl
        self._key = bytes(key)
        self._local = threading.local()

    def _start(self, nonce: bytes, data: bytes, associated_data: bytes, encrypt: int) -> tuple[_Context, bytes]:
        """This thread's context with a message started under ``nonce`` and the associated
        data and ``data`` put through; what came out.  (The checks are inline, not a call each:
        a Python call is ~1,000 instructions, about what an OpenSSL call here costs.)"""
        context: _Context | None = getattr(self._local, "context", None)
        if context is None:
            context = self._local.context = _Context(self._lib, self._ctrl, self._key)
        if len(data) > len(context.out):
            context.grow(max(len(data), len(context.out) * 2))
        lib, ctx, outlen = self._lib, context.ctx, context.outlen_ref
        if not (lib.EVP_CipherInit_ex(ctx, None, None, None, nonce, encrypt)
                and (not associated_data
                     or lib.EVP_CipherUpdate(ctx, None, outlen, associated_data, len(associated_data)))
                and (not data or lib.EVP_CipherUpdate(ctx, context.out, outlen, data, len(data)))):
            _fail(lib)
        return context, ctypes.string_at(context.out_at, context.outlen.value) if data else b""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        if not _plain(nonce, data, associated_data):
            return self._fallback.encrypt(nonce, data, associated_data)
        context, out = self._start(nonce, data, associated_data or b"", 1)
        lib = self._lib
        if not (lib.EVP_CipherFinal_ex(context.ctx, context.final, context.outlen_ref)
                and lib.EVP_CIPHER_CTX_ctrl(context.ctx, self._get_tag, _TAG, context.tag)):
            _fail(lib)
        return out + context.tag.raw

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        if not _plain(nonce, data, associated_data):
            return self._fallback.decrypt(nonce, data, associated_data)
        if len(data) < _TAG:
            raise self._invalid
        context, out = self._start(nonce, data[:-_TAG], associated_data or b"", 0)
        lib = self._lib
        _check(lib, lib.EVP_CIPHER_CTX_ctrl(context.ctx, self._set_tag, _TAG, data[-_TAG:]))
        if lib.EVP_CipherFinal_ex(context.ctx, context.final, context.outlen_ref) != 1:
            lib.ERR_clear_error()
            raise self._invalid
        return out
