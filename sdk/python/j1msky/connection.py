"""The blocking client's connections: one kept-alive HTTP(S) connection per thread and
origin, so a client reuses its connection from request to request (the reference's Best
Practice 1), on the standard library's http.client.

A kept-alive connection the server has closed meanwhile (its idle timeout) fails at the
next request before any answer: that request is sent once more on a new connection.  It
is safe to: nothing was answered, and every write carries its Idempotency-Key.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from typing import Any

__all__ = ["Connections", "connect"]

_STALE = (http.client.RemoteDisconnected, http.client.CannotSendRequest, BrokenPipeError, ConnectionResetError,
          ConnectionAbortedError)


def connect(url: str, timeout: float) -> http.client.HTTPConnection:
    """A new (not yet opened) connection to ``url``'s origin."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.hostname or "localhost", parts.port, timeout=timeout)
    if parts.scheme != "http":
        raise ValueError(f"base URL must be http:// or https://, not {url!r}")
    return http.client.HTTPConnection(parts.hostname or "localhost", parts.port, timeout=timeout)


def target(url: str) -> str:
    """The request target (path and query) of ``url``."""
    parts = urllib.parse.urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class Connections:
    """The kept-alive connections of one client, one per thread that used it; ``close()`` (or
    the client's collection) closes them all."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()

    def _keep(self, conn: http.client.HTTPConnection | None) -> None:
        old = getattr(self._local, "conn", None)
        with self._lock:
            if old is not None and old is not conn:
                self._open.discard(old)
            if conn is not None:
                self._open.add(conn)
        self._local.conn = conn

    def send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, Any, bytes]:
        """(status, headers, body) of one exchange; raises OSError / http.client.HTTPException."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        reused = conn is not None
        while True:
            if conn is None:
                conn = connect(url, self.timeout)
            try:
                conn.request(method, target(url), body=body, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except _STALE:
                conn.close()
                self._keep(None)
                conn = None
                if reused:  # the server closed it while it was idle: once more, fresh
                    reused = False
                    continue
                raise
            except BaseException:
                conn.close()
                self._keep(None)
                raise
            if resp.will_close:
                conn.close()
                conn = None
            self._keep(conn)
            return resp.status, resp.headers, raw

    def close(self) -> None:
        """Close every thread's connection; a later request opens a new one."""
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()

    def __del__(self) -> None:  # a client nobody closed: its sockets go with it, not left to the collector
        self.close()
