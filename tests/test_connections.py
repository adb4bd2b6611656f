"""Slow and unwelcome clients (issue 12, item 5): the listener of ``j1mskyd serve``.

In-process tests start the app with listener.start, the same listener ``serve`` opens, on
a loopback port; the process tests run the real daemon.  Half-open connections are raw
sockets that send part of a request line and headers and then nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import resource
import socket
import time

import aiohttp
import pytest

from j1mskyd import listener
from j1mskyd.app import build_app
from j1mskyd.connguard import Throttle
from tests.conftest import make_config
from tests.daemon import Daemon, wait_until, write_config

HALF = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "  # never finished
MARGIN = 10.0  # generous bound for "closed by the daemon", far above the timeouts used here


@pytest.fixture
async def listen():
    """listen(config) -> listener.Listening; all closed at the end."""
    opened: list[listener.Listening] = []

    async def start(config) -> listener.Listening:
        opened.append(await listener.start(build_app(config), config.server))
        return opened[-1]

    yield start
    for listening in opened:
        await listening.close()


@pytest.fixture
async def sockets():
    """Raw client connections, all closed at the end."""
    writers: list[asyncio.StreamWriter] = []

    async def connect(port: int, host: str = "127.0.0.1", local: str | None = None, first: bytes = HALF):
        reader, writer = await asyncio.open_connection(host, port, local_addr=(local, 0) if local else None)
        writers.append(writer)
        if first:
            writer.write(first)
            await writer.drain()
        return reader, writer

    yield connect
    for writer in writers:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = MARGIN) -> bytes:
    """Everything the server sent until it closed (fails if it is still open after timeout)."""
    return await asyncio.wait_for(reader.read(), timeout)


async def health(port: int) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/api/health",
                               timeout=aiohttp.ClientTimeout(total=MARGIN)) as resp:
            return resp.status


def config(tmp_path, *, security=None, **server):
    cfg = make_config(tmp_path, **server)
    return dataclasses.replace(cfg, security=dataclasses.replace(cfg.security, **(security or {})))


# -- the cap ------------------------------------------------------------------------------
async def test_half_open_connections_beyond_the_cap_cannot_lock_out_a_health_check(
        tmp_path, listen, sockets, caplog):
    # A header timeout far beyond the test: only the cap makes room here.
    served = await listen(config(tmp_path, max_connections=20, header_timeout=600))
    port = served.site.port
    half_open = [await sockets(port) for _ in range(150)]
    assert await health(port) == 200
    stats = served.guard.stats
    assert stats.open <= 20 and stats.evicted >= 130
    assert "connection limit reached (server.max_connections = 20)" in caplog.text
    # The oldest were closed to make room; the newest are still waiting for their headers.
    assert await closed_by_server(half_open[0][0]) == b""
    assert stats.header_timeouts == 0


async def test_at_the_cap_with_every_connection_busy_a_new_one_is_refused(tmp_path, listen, sockets, caplog):
    served = await listen(config(tmp_path, max_connections=2, header_timeout=600))
    port = served.site.port
    streams = []
    for _ in range(2):  # two SSE readers: requests in progress, never evicted
        reader, _ = await sockets(port, first=b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        streams.append(reader)
    reader, _ = await sockets(port, first=b"")
    assert await closed_by_server(reader) == b""
    assert served.guard.stats.refused_full == 1 and served.guard.stats.evicted == 0
    assert "with every connection busy: refused 1 new connection(s)" in caplog.text
    for stream in streams:  # still open and still serving
        assert not stream.at_eof()


# -- the header time limit ----------------------------------------------------------------
async def test_a_request_whose_headers_never_end_is_closed_after_header_timeout(
        tmp_path, listen, sockets, caplog):
    served = await listen(config(tmp_path, max_connections=100, header_timeout=0.5))
    port = served.site.port
    half_open = [await sockets(port) for _ in range(30)]
    silent = [await sockets(port, first=b"") for _ in range(5)]  # connects, never sends a byte
    for reader, _ in half_open + silent:
        assert await closed_by_server(reader) == b""  # nothing answered: just closed
    assert served.guard.stats.header_timeouts == 35 and served.guard.stats.open == 0
    assert "sent no complete request line and headers within 0.5 s (server.header_timeout)" in caplog.text
    assert await health(port) == 200


async def test_the_guards_counters_are_in_prometheus_metrics(tmp_path, listen, sockets):
    served = await listen(config(tmp_path, max_connections=100, header_timeout=0.5))
    port = served.site.port
    for reader, _ in [await sockets(port) for _ in range(3)]:
        assert await closed_by_server(reader) == b""
    async with aiohttp.ClientSession() as session:  # auth is off in make_config
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    assert resp.status == 200
    assert 'j1msky_connections_closed_by_guard_total{reason="header_timeout"} 3' in text
    assert 'j1msky_connections_closed_by_guard_total{reason="body_timeout"} 0' in text
    assert "j1msky_connections_open 1" in text  # this request's own
    assert "j1msky_connections_accepted_total 4" in text


async def test_the_header_timer_stops_when_the_headers_are_complete(tmp_path, listen, sockets):
    """A slow body is not a slow header: the request is answered."""
    served = await listen(config(tmp_path, header_timeout=0.3))
    body = b'{"model": "k2p5"}'
    reader, writer = await sockets(served.site.port, first=(
        b"POST /api/spawn HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body[:5]))
    await asyncio.sleep(1.0)  # more than three header timeouts
    writer.write(body[5:])
    answer = await closed_by_server(reader)
    assert answer.startswith(b"HTTP/1.1 400") and b"VALIDATION_ERROR" in answer  # no task: answered, not cut
    assert served.guard.stats.header_timeouts == 0


async def test_on_a_kept_alive_connection_the_next_request_has_the_same_limit(tmp_path, listen, sockets):
    served = await listen(config(tmp_path, header_timeout=0.5))
    reader, writer = await sockets(served.site.port, first=b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    writer.write(HALF)  # the next request starts, and stalls
    await closed_by_server(reader)
    assert served.guard.stats.header_timeouts == 1



async def test_bodies_that_never_complete_are_closed_after_body_timeout(tmp_path, listen, sockets, caplog):
    """A body dribbled a byte at a time keeps its request in progress, never evicted: without a
    time limit a few such uploads hold every connection (any key that may POST, or anyone
    when authentication is off, as here)."""
    served = await listen(config(tmp_path, max_connections=3, header_timeout=600, body_timeout=0.5))
    port = served.site.port
    slow = [await sockets(port, first=b"POST /api/spawn HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                                     b"\r\nContent-Length: 100000\r\n\r\n{") for _ in range(3)]
    for _ in range(4):  # still sending, slowly, past the limit
        for _, writer in slow:
            with contextlib.suppress(OSError):  # closed by the daemon meanwhile
                writer.write(b" ")
        await asyncio.sleep(0.3)
    assert await health(port) == 200
    for reader, _ in slow:
        try:
            answer = await closed_by_server(reader)
        except ConnectionError:  # closed while this side was still writing
            answer = b""
        assert not answer.startswith(b"HTTP/1.1 2")
    assert served.guard.stats.body_timeouts == 3
    assert "unhandled error" not in caplog.text  # the handlers' lost connections are no errors
    assert "closed 1 connection(s) that sent no complete request body within 0.5 s (server.body_timeout)" \
        in caplog.text

# -- accept-time IP checks ----------------------------------------------------------------
async def test_a_peer_outside_the_allowlist_is_closed_before_it_sends_anything(tmp_path, listen, sockets, caplog):
    caplog.set_level(logging.WARNING)
    served = await listen(config(tmp_path, security={"allowed_ips": ("127.0.0.1/32",)}))
    port = served.site.port
    reader, _ = await sockets(port, local="127.0.0.2", first=b"")
    assert await closed_by_server(reader) == b""  # no request sent, no answer, closed
    assert served.guard.stats.refused_peer == 1 and served.guard.stats.accepted == 0
    assert "refused 1 connection(s) from 127.0.0.2 at accept: ip_not_allowed" in caplog.text
    assert await health(port) == 200  # 127.0.0.1 is let in
    async with aiohttp.ClientSession() as session:
        async def violations() -> list:
            async with session.get(f"http://127.0.0.1:{port}/api/security/audit",
                                   params={"event": "security.violation", "ip_address": "127.0.0.2"}) as resp:
                return (await resp.json())["data"]
        deadline = time.monotonic() + MARGIN
        while not (found := await violations()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the audit entry rides the store's group commit
    assert found and found[0]["details"] == {"kind": "ip_not_allowed", "stage": "connect", "connections": 1}


async def test_a_blocked_peer_is_closed_at_accept_but_a_trusted_proxy_is_let_in(tmp_path, listen, sockets):
    served = await listen(config(tmp_path, security={"allowed_ips": ("10.0.0.0/8",),
                                                     "trusted_proxies": ("127.0.0.1/32",)}))
    port = served.site.port
    # 127.0.0.1 is not in the allowlist, but it is a trusted proxy: its clients are judged per request.
    reader, _ = await sockets(port, first=b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.1.2.3\r\n"
                                          b"Connection: close\r\n\r\n")
    assert (await closed_by_server(reader)).startswith(b"HTTP/1.1 200")
    reader, _ = await sockets(port, local="127.0.0.3", first=b"")
    assert await closed_by_server(reader) == b""
    assert served.guard.stats.refused_peer == 1


# -- pieces -------------------------------------------------------------------------------
def test_throttle_reports_the_first_then_once_per_interval_with_the_count():
    now = [0.0]
    throttle = Throttle(every=60.0, budget=2, clock=lambda: now[0])
    assert throttle.hit("a") == 1
    assert [throttle.hit("a") for _ in range(3)] == [0, 0, 0]
    now[0] = 61.0
    assert throttle.hit("a") == 4  # the three kept quiet, and this one
    assert throttle.hit("b") == 1
    assert throttle.hit("c") == 0  # over the budget of 2 reports per interval: a scan stays quiet
    now[0] = 122.0
    assert throttle.hit("c") == 2


def test_the_cap_is_fitted_to_the_open_files_limit(caplog):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))
        if hard == resource.RLIM_INFINITY or hard >= 1000 + listener.FD_RESERVE:
            # Raised to what the cap needs, no further (a server may still use select()).
            assert listener.fit_descriptors(1000) == 1000
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 1000 + listener.FD_RESERVE
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))
        assert listener.fit_descriptors(10) == 10
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 300  # enough: untouched
        if hard == resource.RLIM_INFINITY or hard >= 900 + 100 + listener.FD_RESERVE:
            # The providers' pool counts too: the limit is raised for its sockets as well.
            resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))
            assert listener.fit_descriptors(900, upstream=100) == 900
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 900 + 100 + listener.FD_RESERVE
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- the real daemon ----------------------------------------------------------------------
@contextlib.contextmanager
def open_files_limit(soft: int):
    """The test process's soft limit, for a child started inside (it inherits it)."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, old[1]), old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def test_the_daemon_keeps_answering_under_more_half_open_requests_than_its_descriptors(tmp_path):
    """The issue's attack, scaled: 1,100 half-sent requests under 1,024 descriptors made
    /api/health fail.  Here 300 under an inherited limit of 256, the defaults otherwise
    (max_connections 512, header_timeout 10 s)."""
    # 256, or a little above what this process has open already (it starts the daemon under it).
    limit = max(256, len(os.listdir("/proc/self/fd")) + 64)
    with open_files_limit(limit):
        daemon = Daemon(tmp_path, tmp_path / "state", write_config(tmp_path / "c.toml")).start()
    conns: list[socket.socket] = []
    try:
        for _ in range(limit + 44):
            s = socket.create_connection(("127.0.0.1", daemon.port), timeout=MARGIN)
            s.sendall(HALF)
            conns.append(s)
        status, body = daemon.request("GET", "/api/health", timeout=MARGIN)
        assert status == 200, body
        # Within the header time limit (10 s) and a margin, the daemon closes every one.
        for s in conns:
            s.settimeout(10.0 + 3 * MARGIN)
            assert s.recv(1) == b""
        wait_until(lambda: "sent no complete request line and headers within 10 s" in daemon.log(), MARGIN,
                   what="the header-timeout warning")
    finally:
        for s in conns:
            s.close()
        daemon.close()


def test_an_oversized_header_is_answered_without_echoing_it(tmp_path):
    """aiohttp answers a header line over 8190 bytes itself, quoting its first 100 bytes
    (here a bearer token) in the response and in an ERROR log line."""
    marker = b"MARKER_TOKEN_5f3a"
    with Daemon(tmp_path, tmp_path / "state", write_config(tmp_path / "c.toml")) as daemon:
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=MARGIN) as s:
            s.sendall(b"GET /api/agents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + marker
                      + b"x" * 16_384 + b"\r\n\r\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        log = daemon.log()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].endswith(b"400 Bad Request"), answer
    assert marker not in answer and marker.decode() not in log
    assert b"application/json" in head and json.loads(body)["error"]["type"] == "BAD_REQUEST"


# -- WebSockets that never authenticate ------------------------------------------------------
async def test_websockets_that_never_authenticate_cannot_lock_out_a_health_check(tmp_path, listen, sockets):
    """A WebSocket may authenticate by a message after the upgrade; until then it is a
    client that has not said who it is, like one still sending its headers: evicted at the
    cap (a stranger's idle sockets would otherwise hold every slot as requests in progress)."""
    served = await listen(config(tmp_path, max_connections=3, header_timeout=600, security={"auth": True}))
    port = served.site.port
    async with aiohttp.ClientSession() as session:
        idle = [await session.ws_connect(f"http://127.0.0.1:{port}/api/ws") for _ in range(3)]
        assert await health(port) == 200
        msg = await asyncio.wait_for(idle[0].receive(), MARGIN)  # the oldest made room
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert served.guard.stats.evicted >= 1 and served.guard.stats.refused_full == 0
        for ws in idle:
            await ws.close()


async def test_a_websocket_must_authenticate_within_header_timeout_and_then_stays(tmp_path, listen):
    cfg = config(tmp_path, header_timeout=0.5, security={"auth": True})
    served = await listen(cfg)
    port = served.site.port
    token = json.loads((tmp_path / "state" / "bootstrap-admin.key").read_text())["token"]
    async with aiohttp.ClientSession() as session:
        silent = await session.ws_connect(f"http://127.0.0.1:{port}/api/ws")
        talker = await session.ws_connect(f"http://127.0.0.1:{port}/api/ws")
        await talker.send_json({"type": "auth", "token": token})
        assert (await talker.receive_json(timeout=MARGIN)) == {"type": "auth", "success": True}
        msg = await asyncio.wait_for(silent.receive(), MARGIN)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        await asyncio.sleep(1.5)  # three header timeouts: an authenticated socket is not cut
        await talker.send_json({"type": "ping"})
        assert (await talker.receive_json(timeout=MARGIN)) == {"type": "pong"}
        assert served.guard.stats.header_timeouts == 1
        await silent.close()
        await talker.close()
