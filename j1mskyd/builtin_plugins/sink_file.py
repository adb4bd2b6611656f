"""Built-in sink ``file``: one JSON line per delivery, appended to a local file.

For offline setups: the URL is ``file:///var/log/j1msky/events.jsonl`` (the packaged unit's
LogsDirectory, which its config lists in ``[webhooks] file_sink_dirs``).  The file is opened
through the daemon's ``open_file`` (sink_files.py: only in those directories, never the state
dir, no symlink at the end, no hard link, a regular file).  Each line
holds the delivery id, the event and the payload; the write is flushed and fsynced
before the delivery counts as done (off the event loop).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import unquote, urlsplit

from j1mskyd.plugin_api import Registrar, SinkError, SinkSettings

J1MSKY_PLUGIN_API = 1


class FileSink:
    def __init__(self, settings: SinkSettings, session: Any = None) -> None:
        parts = urlsplit(settings["url"])
        if parts.scheme != "file" or not parts.path:
            raise ValueError("the file sink needs a file:///absolute/path URL")
        self._path = unquote(parts.path)
        opener = settings.get("open_file")
        if opener is None:  # a daemon that does not confine local files: write none
            raise ValueError("this daemon gives the file sink no open_file")
        self._open = opener

    def _append(self, line: bytes) -> None:
        fd = self._open(self._path)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def deliver(self, payload: dict[str, Any], *, delivery_id: str, event: str) -> None:
        line = json.dumps({"delivery_id": delivery_id, "event": event, "payload": payload},
                          separators=(",", ":")).encode() + b"\n"
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._append, line)
        except OSError as exc:
            raise SinkError(f"cannot write {self._path}: {exc.strerror}") from None


def register(registry: Registrar) -> None:
    registry.add_sink("file", FileSink)
