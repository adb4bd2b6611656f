"""The state directory's own guard: private (0700) before anything is read from it or written to it.

It holds the database, ``data.key`` and the bootstrap admin token.  Each file is 0600, but a
directory that others may enter or list (0755, 0777: made by hand, or by an older package) lets
them see names, time stamps and sizes, and with a group/other-writable one also replace or
remove files.  A new directory is created 0700; an existing loose one is tightened to 0700
(and said so), or the daemon refuses to start when it cannot (not its owner).  Its files that
others may read or write (a 0644 ``data.key`` copied in from a backup, a database restored by
hand) are tightened to 0600 the same way: sqlite gives a new ``-wal`` the database's mode.
"""

from __future__ import annotations

import logging
import os
import stat

log = logging.getLogger(__name__)


class StateDirError(OSError):
    """The state dir is unsafe and cannot be made safe by this process."""


def prepare(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        _tighten_dir(path, st, mode)
    _tighten_files(path)


def _tighten_files(path: str) -> None:
    """Each regular file of the directory itself (not through a link) that others may reach: 0600."""
    with os.scandir(path) as entries:
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            mode = stat.S_IMODE(st.st_mode)
            if not stat.S_ISREG(st.st_mode) or not mode & 0o077:
                continue
            if st.st_uid != os.geteuid() and os.geteuid() != 0:
                log.warning("state file %s has mode %04o (open to other users) and belongs to uid %d: "
                            "run 'chmod 600 %s' as its owner", entry.path, mode, st.st_uid, entry.path)
                continue
            try:
                os.chmod(entry.path, mode & 0o700)  # a regular file; the dir is the owner's alone by now
            except OSError as exc:
                log.warning("state file %s has mode %04o (open to other users) and cannot be tightened: %s",
                            entry.path, mode, exc.strerror)
                continue
            log.warning("state file %s had mode %04o (open to other users); tightened to %04o",
                        entry.path, mode, mode & 0o700)


def _tighten_dir(path: str, st: os.stat_result, mode: int) -> None:
    euid = os.geteuid()
    if st.st_uid != euid and euid != 0:
        raise StateDirError(
            f"{path}: mode {mode:04o} lets other users reach the database and data.key, and the directory "
            f"belongs to uid {st.st_uid}, not to this user (uid {euid}), so it cannot be made private: "
            f"run 'chmod 700 {path}' as its owner, or start j1mskyd as that user")
    try:
        os.chmod(path, 0o700)
    except OSError as exc:
        raise StateDirError(f"{path}: mode {mode:04o} lets other users reach the database and data.key, and "
                            f"it cannot be made private: {exc.strerror}") from None
    log.warning("state dir %s had mode %04o (open to other users); tightened to 0700", path, mode)
