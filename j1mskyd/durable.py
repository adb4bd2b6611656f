"""Making a file's *name* survive a power cut, not only its bytes.

``fsync`` on a new file makes its data durable, but the directory entry that names it
(its creation, or a rename into place) lives in the directory: without an fsync of the
directory, a power cut right after can leave no file, or the old one.  The state files
beside the database (``data.key``, the bootstrap token, the rate-limit counters) each
call :func:`fsync_dir` after creating or renaming into place.
"""

from __future__ import annotations

import os

__all__ = ["fsync_dir"]


def fsync_dir(directory: str) -> None:
    """fsync ``directory`` so that the entries created or renamed in it so far are durable."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the files themselves are synced
    finally:
        os.close(fd)
