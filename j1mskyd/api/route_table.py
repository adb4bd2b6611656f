"""The app's route table: each route added with the scope a key needs (or PUBLIC) and its
rate-limit class, and what the pipeline works out of a route at its first request.

Deny by default: a route reaches the router only through RouteTable.add, which refuses a
route without a known scope; check_complete() refuses an app whose router holds a route
added around the table; and a route that still has no scope at a request (added after
the check) is refused to every key (ApiKey.allows(None) is False).

A route of the OpenAI/Anthropic front door is added with its ``dialect``
(j1mskyd/dialects): the pipeline renders every refusal on it in that dialect's error shape
instead of the native envelope, and so it does for an unknown path or method under the
front door's first path segment (``/v1``), in the dialect added first there.

A dialect of a whole API under its own prefix (Kyros at ``/kyros``, j1mskyd/api/kyros) adds an
:class:`Envelope` for the prefix (RouteTable.envelope): every refusal of a path under it, an
unknown path or method included, is rendered by that envelope, and its routes are counted by the
rate limiter like the native API's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, cast

from aiohttp import web

from ..dialects import Dialect
from ..errors import ApiError
from ..keys import ANY_KEY, SCOPES
from ..metrics import RouteStats
from ..reload import ConfigRef
from .common import CONFIG, METRICS, SERVICES, app_key
from .rate_headers import RATE_HEADERS, RateHeaders

__all__ = ["PUBLIC", "ROUTE_TABLE", "Envelope", "Route", "RouteTable", "route_of"]

PUBLIC = "public"  # the scope of routes open without a key
ROUTE_TABLE = app_key("j1msky.route_table")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CACHE_MAX = 4096  # route objects of one app: far more than it has; a bound all the same


class Envelope(Protocol):
    """The error shape of an API served under its own prefix (RouteTable.envelope)."""

    def error(self, error: ApiError, request_id: str | None) -> tuple[int, dict[str, Any]]:
        """The status and body ``error`` is answered with."""
        ...


class Route:
    """What the pipeline needs to know of one route, worked out at its first request
    instead of looking up the route tables (and formatting its metrics name) every time."""

    __slots__ = ("name", "scope", "limit_class", "is_api", "public", "authenticated", "in_band", "stats",
                 "rate_headers", "dialect", "envelope", "config", "services")

    def __init__(self, table: RouteTable, method: str, pattern: str | None, path: str) -> None:
        # HEAD is GET without the body (aiohttp adds it to every GET route): it needs what
        # GET needs, so the table is asked about GET.
        key = ("GET" if method == "HEAD" else method, pattern or "")
        self.name = f"{method} {pattern}" if pattern is not None else f"{method} (unmatched)"  # never the raw path
        self.scope: str | None = table.scopes.get(key)  # None: declared nowhere, so no key is enough
        self.limit_class = table.classes.get(key, "other")
        self.in_band = key in table.in_band
        # The front door's refusals speak its dialect, an unknown path under it included.
        # A method the path does not take (405) speaks the dialect of the path's routes.
        self.dialect: Dialect | None = table.dialects.get(key) or table.dialect_at(pattern or path)
        # A prefixed dialect's envelope (Kyros): its refusals, unknown paths under it included.
        self.envelope: Envelope | None = table.envelope_at(pattern or path)
        # Counted by the rate limiter: the API, the root /ws, the front door (/v1), prefixed dialects.
        self.is_api = ((pattern or path).startswith(("/api/", "/v1/")) or self.in_band
                       or self.envelope is not None)
        self.public = self.scope == PUBLIC
        # Unknown paths (404/405) answer without asking for a key: they reveal nothing.
        # Every route that is not public asks for one, whatever its path.
        self.authenticated = pattern is not None and not self.public
        self.stats: RouteStats | None = None  # at the first answer: /metrics lists answered routes only
        # The app's objects the pipeline uses, held here to spare it an app lookup each (~500
        # instructions apiece, eight a request).  The app is frozen once it serves: they stay.
        # The header formatter's limiter is the app's request limiter.
        self.rate_headers: RateHeaders = table.app[RATE_HEADERS]
        self.config: ConfigRef = cast(ConfigRef, table.app.get(CONFIG))  # .current: the config in force
        self.services: Any = table.app.get(SERVICES)

    def record(self, app: web.Application, status: int, seconds: float) -> None:
        if self.stats is None:
            self.stats = app[METRICS].stats_for(self.name)
        self.stats.record(status, seconds)


class RouteTable:
    """Scopes, rate-limit classes and in-band-auth routes of one app, and its Route cache.

    One per app (app[ROUTE_TABLE]): two apps in one process share nothing here.
    """

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.scopes: dict[tuple[str, str], str] = {}
        self.classes: dict[tuple[str, str], str] = {}
        # (method, path) of routes whose key may come inside the connection (the WebSocket:
        # a browser cannot set its headers) instead of with the request that opens it.
        self.in_band: set[tuple[str, str]] = set()
        self.dialects: dict[tuple[str, str], Dialect] = {}
        self._dialect_prefixes: dict[str, Dialect] = {}  # "/v1/" -> the first dialect added under it
        self._dialect_paths: dict[str, Dialect] = {}  # a front-door route's path up to its first {param}
        self._routes: dict[Any, Route] = {}  # aiohttp route object -> Route
        self._envelopes: dict[str, Envelope] = {}  # "/kyros" -> its envelope

    def add(self, method: str, path: str, handler: Handler, scope: str, limit_class: str = "other", *,
            in_band: bool = False, dialect: Dialect | None = None) -> None:
        """A route with the scope a key needs (or PUBLIC).  A GET route answers HEAD too
        (RFC 9110 9.3.2, as aiohttp's add_get does), with GET's scope and class.
        ``dialect``: the route's refusals are rendered by it (a front-door route)."""
        if scope != PUBLIC and scope != ANY_KEY and scope not in SCOPES:
            raise ValueError(f"route {method} {path}: scope {scope!r} is neither a key scope "
                             f"({', '.join(SCOPES)}, or {ANY_KEY!r}: any key) nor {PUBLIC!r}")
        if method == "GET":
            self.app.router.add_get(path, handler)
        else:
            self.app.router.add_route(method, path, handler)
        self.scopes[(method, path)] = scope
        self.classes[(method, path)] = limit_class
        if in_band:
            self.in_band.add((method, path))
        if dialect is not None:
            self.dialects[(method, path)] = dialect
            self._dialect_prefixes.setdefault(_first_segment(path), dialect)
            self._dialect_paths.setdefault(path.split("{", 1)[0].rstrip("/"), dialect)

    def envelope(self, prefix: str, envelope: Envelope) -> None:
        """Every refusal of a path under ``prefix`` (``/kyros``) is rendered by ``envelope``."""
        self._envelopes[prefix.rstrip("/")] = envelope

    def envelope_at(self, path: str) -> Envelope | None:
        for prefix, envelope in self._envelopes.items():
            if path == prefix or path.startswith(prefix + "/"):
                return envelope
        return None

    def dialect_at(self, path: str) -> Dialect | None:
        """The dialect of a path no route of this method matches: that of the front-door route
        whose path is the longest prefix of it (``/v1/messages/batches`` is Anthropic's), else
        the one of the front door it is under, if any."""
        if not self._dialect_prefixes:
            return None
        best, length = None, -1
        for prefix, dialect in self._dialect_paths.items():
            if len(prefix) > length and (path == prefix or path.startswith(prefix + "/")):
                best, length = dialect, len(prefix)
        return best or self._dialect_prefixes.get(_first_segment(path))

    def undeclared(self) -> list[str]:
        """Routes of the app's router that have no scope here (added around the table)."""
        return [f"{method} {pattern}" for method, pattern in _router_routes(self.app.router.routes())
                if ("GET" if method == "HEAD" else method, pattern) not in self.scopes]

    def check_complete(self) -> None:
        """Refuse to build an app with a route that declares no scope."""
        missing = self.undeclared()
        if missing:
            raise RuntimeError(f"routes without a scope (add them with RouteTable.add): {', '.join(missing)}")

    def route_of(self, request: web.Request) -> Route:
        matched = request.match_info.route
        route = self._routes.get(matched)
        if route is None:
            resource = matched.resource
            route = Route(self, request.method, resource.canonical if resource is not None else None, request.path)
            # 404/405 come with a new SystemRoute each time: only real routes are worth keeping.
            if resource is not None and matched.method == request.method:
                if len(self._routes) >= _CACHE_MAX:
                    self._routes.clear()
                self._routes[matched] = route
        return route


def _first_segment(path: str) -> str:
    return "/" + path.lstrip("/").split("/", 1)[0] + "/"


def _router_routes(routes: Iterable[Any]) -> list[tuple[str, str]]:
    return [(r.method, r.resource.canonical) for r in routes if r.resource is not None]


def route_of(request: web.Request) -> Route:
    """The Route of a request, from its app's table."""
    return request.app[ROUTE_TABLE].route_of(request)
