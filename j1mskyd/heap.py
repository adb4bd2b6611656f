"""Giving the C heap's free pages back to the kernel once start-up is over.

Start-up allocates and frees a lot that the daemon never needs again: the migrations, the
plugins' source checked with ``ast`` and compiled, and, where no bytecode cache can be
written (a read-only checkout, ``PYTHONDONTWRITEBYTECODE``), the compilation of every module.
glibc keeps the freed memory in its heap, where it counts as the process's resident memory
until something reuses it: ~2 MB after a start that compiled the daemon's source, ~0.35 MB
after one that read the cached bytecode (measured in docs/performance.md, "Eighth pass").
``malloc_trim(0)`` hands those pages back.  It exists only in glibc: elsewhere (musl, macOS)
nothing is done.  It frees nothing Python still uses (its own arenas are mapped apart).
"""

from __future__ import annotations

__all__ = ["release_free_memory"]


def release_free_memory() -> bool:
    """Trim the C heap (glibc); True if it was done."""
    try:
        import ctypes
        trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):  # no ctypes, or a C library without it
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
