"""The listening socket and the serve loop, in place of aiohttp's web.run_app.

run_app opens its own TCPSite with the runner's web.Server as the protocol factory, and
offers no way to put anything in front of it.  Here the runner is the same (AppRunner,
with run_app's defaults), the site is GuardedSite, whose protocol factory is
connguard.ConnectionGuard (accept-time IP checks, the connection cap, the header time
limit), and aiohttp's protocol is JsonErrorHandler, which answers the requests it cannot
parse without echoing them.

``serve`` is what ``j1mskyd serve`` runs; ``start`` gives tests the same listener on a
loopback port.  (aiohttp's test server, used by most tests, has neither.)
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from .api.common import AWAITING_CREDENTIALS, CONFIG, SERVICES, app_key, error_response
from .audit import Actor
from .config import ServerConfig
from .reload import ConfigInvalid
from .connguard import ConnectionGuard, ConnectionStats, Refusal
from .heap import release_free_memory
from .violations import record_violation

__all__ = ["CONNECTION_STATS", "FD_RESERVE", "GuardedSite", "HANDLER_ARGS", "JsonErrorHandler", "Listening",
           "SHUTDOWN_TIMEOUT", "fit_descriptors", "serve", "start"]

log = logging.getLogger(__name__)

# What run_app gives every connection (aiohttp >= 3.9's RequestHandler alone would keep an
# idle keep-alive connection for 3630 s).  Passed to the runner and to JsonErrorHandler.
HANDLER_ARGS: dict[str, Any] = {"access_log": None, "keepalive_timeout": 75.0}
SHUTDOWN_TIMEOUT = 5.0  # seconds open requests get at a stop before they are cancelled
# Descriptors for everything but client connections: the HTTP client's pool (100), the
# database and its WAL, logs, plugins.  The connection cap must leave them free, or a full
# house of clients makes the daemon's own work fail with EMFILE.
FD_RESERVE = 256
_GC_YOUNG = 7000  # allocations between young collections while serving (see serve)
_MALFORMED = "Bad request: the request line or a header is malformed or too large"
# The listener's counters (connguard.ConnectionStats), for whoever reports on the app.
CONNECTION_STATS = app_key("j1msky.connection_stats")


class JsonErrorHandler(web.RequestHandler):
    """aiohttp's protocol, answering what it refuses itself (a request line or header it
    cannot parse, or one longer than 8190 bytes: LineTooLong, BadHttpMessage) with the one
    JSON error envelope and a fixed message.  aiohttp's own answer, and its ERROR log line
    with a traceback, quote up to 100 bytes of the offending line: often a bearer token."""

    __slots__ = ()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("error handling a request from %s", request.remote, exc_info=exc)
            text = "Internal server error"
        else:  # the client's fault, and any client can cause it: no traceback, no quote
            log.debug("refused a malformed request from %s (%s)", request.remote,
                      type(exc).__name__ if exc is not None else status)
            text = _MALFORMED
        if request.writer.output_size > 0:  # as aiohttp: a response has begun, none can follow
            raise ConnectionError("response already started; cannot send an error response")
        response = error_response(request, status, text)
        response.force_close()
        return response


class GuardedSite(web.BaseSite):
    """web.TCPSite with a ConnectionGuard as the protocol factory."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 **kwargs: Any) -> None:
        super().__init__(runner, **kwargs)
        self._host = host
        self._port = port
        self.guard = guard

    @property
    def port(self) -> int:
        """The bound port (the one asked for until started: 0 means any free port)."""
        # aiohttp types _server as AbstractServer; ours comes from create_server (asyncio's or uvloop's Server).
        listening = cast("asyncio.Server | None", self._server)
        sockets = listening.sockets if listening is not None else None
        return sockets[0].getsockname()[1] if sockets else self._port

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self.guard, self._host, self._port, backlog=self._backlog)


def fit_descriptors(max_connections: int, upstream: int = 0) -> int:
    """The connection cap the open-files limit allows.

    The soft limit is raised (up to the hard one) when the cap needs more; under the
    systemd unit both are LimitNOFILE= already, and its syscall filter forbids raising
    them.  Still short: the cap is lowered to fit, with a warning, so that a full house
    never takes the descriptors the daemon itself needs.  ``upstream``: the sockets the
    providers' pool may hold at once (runtime.max_concurrency), which count too.
    """
    try:
        import resource
    except ImportError:  # not Unix: nothing to ask
        return max_connections
    reserve = FD_RESERVE + upstream
    need = max_connections + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections
    target = need if hard == resource.RLIM_INFINITY else min(hard, need)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("raised the open-files limit from %d to %d for server.max_connections = %d",
                     soft, target, max_connections)
            soft = target
        except (OSError, ValueError) as exc:
            log.debug("cannot raise the open-files limit: %s", exc)
    if soft >= need:
        return max_connections
    fitted = min(max_connections, max(1, soft - reserve, soft // 4))
    log.warning("server.max_connections = %d needs about %d open files, but the limit is %d: serving at most %d "
                "connections (raise LimitNOFILE= in the systemd unit, or ulimit -n)",
                max_connections, need, soft, fitted)
    return fitted


def _refusal_reporter(services: Any) -> Callable[[str | None, Refusal, int], None]:
    """A connection refused at accept: a log line (when the allowlist logs violations) and
    ``security.violation``, as the request pipeline does for a refused request."""
    def report(ip: str | None, refusal: Refusal, connections: int) -> None:
        kind, detail = refusal
        if services.ip_control.log_violations:
            log.warning("refused %d connection(s) from %s at accept: %s%s", connections, ip, kind,
                        f" ({detail})" if detail else "")
        details = {"kind": kind, "stage": "connect", "connections": connections,
                   **({"detail": detail} if detail else {})}
        record_violation(services.audit, services.events, Actor(ip_address=ip), ip, details)
    return report


def _shutdown_args(where: type) -> dict[str, Any]:
    """aiohttp 3.8 takes shutdown_timeout on the site, later ones on the runner (and warn
    when a site gets it); the other place would pass it on to each connection's protocol."""
    on_runner = "shutdown_timeout" in inspect.signature(web.BaseRunner.__init__).parameters
    return {"shutdown_timeout": SHUTDOWN_TIMEOUT} if on_runner == (where is web.BaseRunner) else {}


@dataclass
class Listening:
    runner: web.AppRunner
    site: GuardedSite

    @property
    def guard(self) -> ConnectionGuard:
        return self.site.guard

    async def close(self) -> None:
        """Stop accepting, let open requests finish (SHUTDOWN_TIMEOUT), run the app's cleanup."""
        await self.runner.cleanup()


async def start(app: web.Application, server: ServerConfig, max_connections: int | None = None) -> Listening:
    """Start the app (its cleanup context: database, services) and listen on server.host:port."""
    stats = app[CONNECTION_STATS] = ConnectionStats()  # before setup: a started app is frozen
    runner = web.AppRunner(app, **HANDLER_ARGS, **_shutdown_args(web.BaseRunner))
    await runner.setup()
    try:
        loop = asyncio.get_running_loop()
        services = app[SERVICES]
        web_server = cast(web.Server, runner.server)  # not None: setup() made it
        guard = ConnectionGuard(
            web_server, lambda: JsonErrorHandler(web_server, loop=loop, **HANDLER_ARGS),
            header_timeout=server.header_timeout, body_timeout=server.body_timeout,
            max_connections=server.max_connections if max_connections is None else max_connections,
            peer_refusal=services.ip_control.peer_refusal, report_refusal=_refusal_reporter(services), stats=stats,
            credentials_key=AWAITING_CREDENTIALS)
        site = GuardedSite(runner, server.host, server.port, guard, **_shutdown_args(web.BaseSite))
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return Listening(runner, site)


async def _until_stopped(app: web.Application) -> None:
    """Until SIGTERM or SIGINT.  The handlers go at the first one: a second signal during
    the graceful stop ends the process at once.  SIGHUP (``systemctl reload``) reloads the
    config file (reload.py); during the stop it is ignored, not fatal."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Future[None]] = set()

    def hangup() -> None:
        task = asyncio.ensure_future(_reload(app))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    try:
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        loop.add_signal_handler(signal.SIGHUP, log.info, "stopping: SIGHUP ignored (no reload during a stop)")


async def _reload(app: web.Application) -> None:
    """A reload asked for by SIGHUP: its outcome, refusal included, is in the log (reload.py)."""
    try:
        await app[SERVICES].reloader.reload()
    except ConfigInvalid:
        pass  # every problem is logged; the running configuration stays
    except Exception:  # noqa: BLE001 - a bug in a reload must not take the daemon down
        log.exception("config reload failed")


def serve(app: web.Application, server: ServerConfig, *, print: Callable[[str], None] = print) -> None:  # noqa: A002
    """Serve until SIGTERM/SIGINT, then stop gracefully: the site stops accepting, open
    requests get SHUTDOWN_TIMEOUT seconds, the cleanup context persists in-flight agents
    and closes the database.  Start-up errors (port taken, state dir unusable) propagate."""
    cap = fit_descriptors(server.max_connections, app[CONFIG].current.runtime.max_concurrency)

    async def main() -> None:
        listening = await start(app, server, cap)
        # What start-up made (modules, config, services) lives as long as the daemon: out of the
        # collector's sight, a full collection no longer walks it (was ~4 % of the CPU per agent).
        gc.collect()
        gc.freeze()
        # A young collection every 7,000 container allocations, not 700: an agent makes a few
        # hundred short-lived ones (futures, dicts, tuples) that mostly die before the next one,
        # so fewer collections walk fewer live ones (-1.6 % of the instructions per agent).
        gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])
        release_free_memory()  # what start-up freed leaves the resident set (heap.py)
        try:
            log.info("j1mskyd ready: listening on %s", listening.site.name)
            print(f"listening on {listening.site.name}")
            await _until_stopped(app)
        finally:
            await listening.close()

    asyncio.run(main())
