"""GET /openapi.json: the route, and the table routes.py hands over for it.

The document itself is built by openapi.py, which is imported by the first request for it:
its schemas are ~0.2 MB resident that a daemon nobody asks for its document does not need.
It depends only on the routes and the configuration, fixed while the daemon runs: built on
the first request, then served as it is (the route is public and not counted, so rebuilding
it per request would hand anyone a few ms of the Pi's CPU per call), and built again after a
reload (the models' enums).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .common import app_key, config_of, json_response
from .route_table import PUBLIC

__all__ = ["DOCUMENT", "ROUTE_TABLE", "describe", "openapi_json"]

DOCUMENT = app_key("j1msky.openapi_document")
ROUTE_TABLE = app_key("j1msky.openapi_routes")  # what describe() was given


def describe(app: web.Application, routes: Any, prefixes: tuple[str, ...], front_door: Any = (),
             root: Any = (), mounted: Any = ()) -> None:
    """GET /openapi.json on ``app`` documents these routes (the table of routes.py), the
    front door's, ``root``'s ((method, path, handler, scope, content type): GET /metrics) and
    each mounted dialect's ((prefix, routes, a function giving their paths)).  Handed over
    at set-up rather than imported, so neither this module nor openapi.py imports routes.py."""
    app[ROUTE_TABLE] = (routes, prefixes, front_door, root, mounted)
    app[DOCUMENT] = {}  # filled by the first GET /openapi.json


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of every route."""
    cached = request.app[DOCUMENT]
    config = config_of(request)
    if cached.get("config") is not config:
        from . import openapi  # the first request for the document loads its builder
        routes, prefixes, front_door, root, mounted = request.app[ROUTE_TABLE]
        document = openapi.build(routes, prefixes, PUBLIC, config, front_door, root, mounted)
        cached["response"] = json_response(document).body
        cached["config"] = config
    return web.Response(body=cached["response"], content_type="application/json", charset="utf-8")
