"""Who may hold a connection, and for how long.

aiohttp's server protocol (web_protocol.RequestHandler) accepts every connection the
kernel hands over and waits for a request's headers as long as a client cares to dribble
them, and the IP allowlist runs in the request pipeline, after the headers.  A few hundred
half-sent requests (slowloris) then hold every file descriptor and the daemon stops
answering, /api/health included, with nothing in the log.

ConnectionGuard is the protocol factory of the listening socket (listener.GuardedSite).
Each connection gets a thin _Connection in front of the RequestHandler aiohttp would have
used, and the guard

- closes a connection from a refused peer (IP block, allowlist) before reading a byte:
  the peer address is known at accept time.  A trusted proxy is always let in; the client
  behind it is judged per request, from X-Forwarded-For;
- keeps at most ``max_connections`` open.  At the cap, the connection that has waited
  longest without a request in progress (idle keep-alive, or still sending its headers)
  is closed to make room, as nginx reclaims idle keep-alive connections, so a flood of
  half-open connections cannot lock out a health check.  When every connection is busy
  with a request, the new one is closed instead;
- closes a connection whose request line and headers are not complete ``header_timeout``
  seconds after it opened (on a keep-alive connection: after the next request's first
  bytes), like nginx's client_header_timeout.  The timer stops when the headers are
  complete, so an SSE stream or a WebSocket is never cut by it;
- closes a connection whose request body has not all arrived ``body_timeout`` seconds after
  its headers (a body dribbled a byte at a time would otherwise keep its request in
  progress, never evicted, for ever);
- treats a request that waits for its client's credentials inside the connection (a
  WebSocket before its auth message: :meth:`ConnectionGuard.awaiting_credentials`, handed
  to the handler in the request under ``credentials_key``) like one still sending its
  headers: evicted first at the cap and closed after ``header_timeout``.  Otherwise
  sockets that never say who they are would be requests in progress, never evicted, and
  a stranger's few hundred of them would lock everyone out.

"Headers complete" and "request done" come from the two hooks aiohttp's web.Server
offers, its ``request_factory`` (called once a request's headers are parsed) and its
``request_handler``, both read by each RequestHandler when it is made.  Every refusal
is counted (``stats``) and reported in rate-limited log lines (Throttle).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

__all__ = ["ConnectionGuard", "ConnectionStats", "Refusal", "Throttle"]

log = logging.getLogger(__name__)

Refusal = tuple[str, str | None]  # (kind, detail), as IpControl.peer_refusal gives it
PeerCheck = Callable[[str | None], tuple[str | None, Refusal] | None]
RefusalReport = Callable[[str | None, Refusal, int], None]  # (address, refusal, connections covered)


class Throttle:
    """Which events are worth a report: the first of each key, then at most one per key
    every ``every`` seconds, and at most ``budget`` reports per ``every`` seconds in all (a
    scan from many addresses must not turn into a flood of log lines and audit rows).  A
    report covers every event of its key since the previous report."""

    def __init__(self, every: float = 60.0, budget: int = 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.budget = budget
        self.clock = clock
        self._counts: dict[Any, int] = {}
        self._last: dict[Any, float] = {}
        self._window = -math.inf
        self._spent = 0

    def hit(self, key: Any) -> int:
        """Count one event of ``key``: how many events to report now, or 0 to stay quiet."""
        now = self.clock()
        count = self._counts[key] = self._counts.get(key, 0) + 1
        if now - self._last.get(key, -math.inf) < self.every:
            return 0
        if now - self._window >= self.every:
            self._window, self._spent = now, 0
        if self._spent >= self.budget:
            return 0
        self._spent += 1
        del self._counts[key]
        if len(self._last) >= 10_000:  # bounded under a scan: forget keys not reported lately
            self._last = {k: t for k, t in self._last.items() if now - t < self.every}
        if len(self._counts) >= 10_000:
            self._counts.clear()
        self._last[key] = now
        return count


@dataclass
class ConnectionStats:
    """Counters since start (the open count is live)."""

    accepted: int = 0
    open: int = 0
    refused_peer: int = 0        # IP block or allowlist, at accept
    refused_full: int = 0        # at the cap with every connection busy
    evicted: int = 0             # closed at the cap to make room
    header_timeouts: int = 0
    body_timeouts: int = 0


class _Connection(asyncio.Protocol):
    """One accepted connection: the guard's state, then aiohttp's protocol (``handler``),
    to which every protocol call is passed on."""

    __slots__ = ("guard", "handler", "ip", "timer", "busy", "awaiting")

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.handler: Any = None  # aiohttp's RequestHandler, once admitted
        self.ip: str | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.busy = False  # a request's headers are complete and its handler has not returned
        # guard.awaiting_credentials of this connection, made once per connection (not a closure per request)
        self.awaiting: Callable[[], Callable[[], None]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.guard.admit(self, transport)

    def data_received(self, data: bytes) -> None:
        if self.handler is None:
            return
        if not self.busy and self.timer is None:
            self.guard.arm(self)  # the first bytes of the next request on a kept-alive connection
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.handler is None else self.handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()


class ConnectionGuard:
    """The protocol factory: ``loop.create_server(guard, ...)``.  See the module's doc."""

    def __init__(self, server: Any, make_handler: Callable[[], asyncio.Protocol], *, header_timeout: float,
                 max_connections: int, body_timeout: float = 60.0, peer_refusal: PeerCheck, report_refusal: RefusalReport,
                 stats: ConnectionStats | None = None, credentials_key: Any = None) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.stats = ConnectionStats() if stats is None else stats
        self._make_handler = make_handler
        self._peer_refusal = peer_refusal
        self._report_refusal = report_refusal
        self._loop = asyncio.get_running_loop()
        self._throttle = Throttle()
        self._open: set[_Connection] = set()
        self._waiting: dict[_Connection, None] = {}  # without a request in progress, longest first
        self._by_handler: dict[Any, _Connection] = {}
        self._credentials_key = credentials_key
        self._hook(server)

    def _hook(self, server: Any) -> None:
        """Learn when a request's headers are complete and when its handler is done."""
        make_request, handle = server.request_factory, server.request_handler
        by_handler = self._by_handler

        def request_factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> Any:
            conn = by_handler.get(protocol)
            if conn is not None:
                self._started(conn)
                if not payload.is_eof():  # a body is on its way (a GET, SSE, WebSocket: none)
                    conn.timer = self._loop.call_later(self.body_timeout, self._body_expired, conn, payload)
            request = make_request(message, payload, protocol, writer, task)
            # Only a request that asks to upgrade the connection (a WebSocket's handshake has
            # to: Connection: Upgrade and Upgrade: websocket, which the parser reports as
            # message.upgrade on every aiohttp) can go on to wait for credentials inside it.
            # Every other request is spared the request.__setitem__ (a Python call of aiohttp's).
            if conn is not None and conn.awaiting is not None and message.upgrade:
                request[self._credentials_key] = conn.awaiting
            return request

        async def request_handler(request: Any) -> Any:
            try:
                return await handle(request)
            finally:
                conn = by_handler.get(request.protocol)
                if conn is not None:
                    self._done(conn)

        server.request_factory = request_factory
        server.request_handler = request_handler

    def __call__(self) -> asyncio.Protocol:
        return _Connection(self)

    # -- a connection's life -----------------------------------------------------------
    def admit(self, conn: _Connection, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        conn.ip = peer[0] if isinstance(peer, tuple) and peer else None
        refused = self._peer_refusal(conn.ip)
        if refused is not None:
            self.stats.refused_peer += 1
            transport.close()  # nothing read, nothing answered
            ip, refusal = refused
            count = self._throttle.hit(("peer", refusal[0], ip))
            if count:
                self._report_refusal(ip, refusal, count)
            return
        if len(self._open) >= self.max_connections and not self._make_room():
            self.stats.refused_full += 1
            transport.close()
            count = self._throttle.hit("full")
            if count:
                log.warning("connection limit reached (server.max_connections = %d) with every connection "
                            "busy: refused %d new connection(s)", self.max_connections, count)
            return
        self.stats.accepted += 1
        conn.handler = handler = self._make_handler()
        self._open.add(conn)
        self.stats.open = len(self._open)
        self._by_handler[handler] = conn
        self._waiting[conn] = None
        if self._credentials_key is not None:
            conn.awaiting = partial(self.awaiting_credentials, conn)
        self.arm(conn)
        handler.connection_made(transport)

    def _make_room(self) -> bool:
        """Close the connection that has waited longest without a request; False if none."""
        if not self._waiting:
            return False
        victim = next(iter(self._waiting))
        self._drop(victim)
        self.stats.evicted += 1
        count = self._throttle.hit("evicted")
        if count:
            log.warning("connection limit reached (server.max_connections = %d): closed %d connection(s) "
                        "without a request in progress to make room (the last from %s)",
                        self.max_connections, count, victim.ip)
        return True

    def arm(self, conn: _Connection) -> None:
        conn.timer = self._loop.call_later(self.header_timeout, self._expired, conn)

    def _disarm(self, conn: _Connection) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def _expired(self, conn: _Connection) -> None:
        conn.timer = None
        if not conn.busy and conn in self._open:
            self.stats.header_timeouts += 1
            self._time_out(conn, "header_timeout", "sent no complete request line and headers", self.header_timeout)

    def _body_expired(self, conn: _Connection, payload: Any) -> None:
        conn.timer = None
        if conn.busy and conn in self._open and not payload.is_eof():
            self.stats.body_timeouts += 1
            self._time_out(conn, "body_timeout", "sent no complete request body", self.body_timeout)

    def _time_out(self, conn: _Connection, setting: str, what: str, seconds: float) -> None:
        self._drop(conn)
        count = self._throttle.hit(setting)
        if count:
            log.warning("closed %d connection(s) that %s within %g s (server.%s); the last from %s",
                        count, what, seconds, setting, conn.ip)

    def _drop(self, conn: _Connection) -> None:
        """Close now; the count drops at once (connection_lost follows within a loop turn)."""
        self._disarm(conn)
        self._waiting.pop(conn, None)
        self._open.discard(conn)
        self.stats.open = len(self._open)
        conn.handler.force_close()

    def _started(self, conn: _Connection) -> None:
        conn.busy = True
        self._disarm(conn)
        self._waiting.pop(conn, None)

    def awaiting_credentials(self, conn: _Connection) -> Callable[[], None]:
        """``conn``'s request waits for credentials sent inside the connection: until the
        returned function is called (they came), it waits like a request whose headers are
        not complete (evicted first at the cap, closed after ``header_timeout``)."""
        if conn in self._open and conn.busy:
            conn.busy = False
            self._waiting[conn] = None
            self._disarm(conn)
            self.arm(conn)

        def authenticated() -> None:
            if conn in self._open and not conn.busy:
                self._started(conn)
        return authenticated

    def _done(self, conn: _Connection) -> None:
        conn.busy = False
        self._disarm(conn)  # a body timer: the next request's first bytes arm the header one
        if conn in self._open:
            self._waiting[conn] = None  # the newest waiter: evicted last

    def forget(self, conn: _Connection) -> None:
        self._disarm(conn)
        self._waiting.pop(conn, None)
        self._open.discard(conn)
        self.stats.open = len(self._open)
        if conn.handler is not None:
            self._by_handler.pop(conn.handler, None)
