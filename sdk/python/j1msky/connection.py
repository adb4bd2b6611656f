"""The blocking client's connections, kept alive (the reference's Best Practice 1: a client
reuses its connection from request to request), on the standard library's http.client.

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
    """The kept-alive connections of one client: a request takes an idle one (or opens one) and
    gives it back when its answer is read, so a client used by one thread at a time keeps one
    connection, and threads sharing a client never share a connection at the same time.
    ``close()`` (or the client's collection) closes them all."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._open: set[http.client.HTTPConnection] = set()

    def _take(self, url: str) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was used before."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
            conn = connect(url, self.timeout)
            self._open.add(conn)
            return conn, False

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        with self._lock:
            self._open.discard(conn)

    def send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, Any, bytes]:
        """(status, headers, body) of one exchange; raises OSError / http.client.HTTPException."""
        conn, reused = self._take(url)
        while True:
            try:
                conn.request(method, target(url), body=body, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except _STALE:
                self._drop(conn)
                if reused:  # the server closed it while it was idle: once more, on a new one
                    conn, reused = self._take(url)
                    continue
                raise
            except BaseException:
                self._drop(conn)
                raise
            if resp.will_close:
                self._drop(conn)
            else:
                with self._lock:
                    if conn in self._open:  # not closed meanwhile by close()
                        self._idle.append(conn)
            return resp.status, resp.headers, raw

    def close(self) -> None:
        """Close every connection; a later request opens a new one."""
        with self._lock:
            conns, self._open, self._idle = self._open, set(), []
        for conn in conns:
            conn.close()

    def __del__(self) -> None:  # a client nobody closed: its sockets go with it, not left to the collector
        self.close()
