"""Where a sink may write local files: only in the directories ``[webhooks] file_sink_dirs``
lists, never in the daemon's state directory, and only into a regular file of one link.

An admin key is not a shell on the box: a ``file://`` webhook must not append to the daemon's
database or data key, a plugin directory, ``~/.ssh/authorized_keys`` or a device.  So the
list is an allow-list (empty: the file sink is off), checked twice: by name when a webhook is
made or changed (a clear 400), and again when each delivery opens its file, race-free: the
directory is opened first and judged by where that open landed (``/proc/self/fd``, so a
directory swapped for a symlink meanwhile is seen), the file is opened in it without following
a symlink (``O_NOFOLLOW``), and a hard link (more than one name: it may be the state dir's file
under another name) or anything but a regular file (a FIFO, a device) is refused.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable

__all__ = ["FileConfinement"]

_APPEND = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY
           | os.O_NONBLOCK)  # NONBLOCK: a FIFO with no reader fails at once instead of hanging the open


_STATE_DIR = "the file sink may not write into the daemon's state directory"


def _refused(reason: str) -> PermissionError:
    return PermissionError(errno.EACCES, reason)  # strerror: the reason, as the sink reports it


def _within(path: str, root: str) -> bool:
    return os.path.commonpath((path, root)) == root


class FileConfinement:
    """``dirs``: where files may be written (resolved once, at start); ``forbidden``: never
    there, even inside one of ``dirs`` (the state directory)."""

    def __init__(self, dirs: Iterable[str], forbidden: Iterable[str] = ()) -> None:
        self.dirs = tuple(os.path.realpath(d) for d in dirs)
        self.forbidden = tuple(os.path.realpath(d) for d in forbidden)

    def refusal(self, path: str) -> str | None:
        """Why ``path`` (absolute, as a ``file://`` URL names it) may not be written; None: it may,
        as far as its name tells (:meth:`open_append` judges the file itself)."""
        if "\0" in path:
            return "the file sink needs a path without NUL characters"
        if not self.dirs:
            return "no directory is open to the file sink (the daemon's [webhooks] file_sink_dirs is empty)"
        name = os.path.basename(path)
        if name in ("", ".", ".."):
            return "the file sink needs a file name at the end of the path"
        if self._forbidden(os.path.realpath(path)):  # the state dir itself, or a link into it
            return _STATE_DIR
        return self._place_refusal(os.path.realpath(os.path.dirname(path)))

    def _forbidden(self, real: str) -> bool:
        return any(_within(real, f) for f in self.forbidden)

    def _place_refusal(self, directory: str) -> str | None:
        if self._forbidden(directory):
            return _STATE_DIR
        if not any(_within(directory, d) for d in self.dirs):
            return f"the file sink writes only in [webhooks] file_sink_dirs ({', '.join(self.dirs)})"
        return None

    def open_append(self, path: str) -> int:
        """A descriptor of ``path`` open to append (made ``0600`` if new); PermissionError with
        the reason where it may not be written, OSError where it cannot."""
        refused = self.refusal(path)
        if refused is not None:
            raise _refused(refused)
        folder = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:  # where the open landed, whatever links led there (Linux; else the name resolved now)
                landed = os.readlink(f"/proc/self/fd/{folder}")
            except OSError:
                landed = os.path.realpath(os.path.dirname(path))
            refused = self._place_refusal(landed)
            if refused is not None:
                raise _refused(refused)
            try:
                fd = os.open(os.path.basename(path), _APPEND, 0o600, dir_fd=folder)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _refused("the file sink does not follow a symbolic link at the end of the path") from None
                raise
        finally:
            os.close(folder)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise _refused("the file sink writes only to a regular file with no other name (no hard link)")
        return fd
