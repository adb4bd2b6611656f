"""api/route_index: on aiohttp 3.8 (bookworm's) a request for a plain path asks only the resources
that could match it, and resolves to exactly what the router's own scan of every resource gives;
on aiohttp 3.9 and later the router is left as it is."""

from __future__ import annotations

import itertools

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import UrlDispatcher

from j1mskyd.api.route_index import candidates_by_path, index_plain_paths
from j1mskyd.app import build_app
from j1mskyd.config import embedded_default

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def _outcome(match) -> tuple:
    """What a resolution decides: the handler (or the HTTP error, with the allowed methods)."""
    http_exception = getattr(match, "http_exception", None)
    if http_exception is not None:
        return type(http_exception).__name__, sorted(getattr(http_exception, "allowed_methods", ()) or ())
    return match.handler, dict(match)


def _paths(app: web.Application) -> list[str]:
    paths = set()
    for resource in app.router.resources():
        canonical = resource.canonical
        paths.add(canonical)
        paths.add(canonical.replace("{", "x").replace("}", "x"))  # a dynamic path filled in
    return sorted(paths | {"/", "/nowhere", "/api", "/api/", "/v1", "/v1/models/", "/api/spawn/", "/API/SPAWN"})


@pytest.mark.skipif(hasattr(UrlDispatcher(), "_resource_index"),
                    reason="aiohttp 3.9+ indexes its routes itself: index_plain_paths leaves the router alone")
async def test_every_path_and_method_resolves_as_the_scan_of_every_resource_does():
    app = build_app(embedded_default())
    router = app.router
    fast = router.resolve
    linear = UrlDispatcher.resolve.__get__(router)  # the class's own: a scan of every resource
    assert fast != linear
    checked = 0
    for path, method in itertools.product(_paths(app), METHODS):
        request = make_mocked_request(method, path, app=app)
        assert _outcome(await fast(request)) == _outcome(await linear(request)), (method, path)
        checked += 1
    assert checked > 1000


@pytest.mark.skipif(hasattr(UrlDispatcher(), "_resource_index"), reason="aiohttp 3.9+: nothing is indexed")
async def test_an_earlier_dynamic_route_still_wins_over_a_later_plain_one_and_a_405_lists_every_method():
    async def dynamic(request):
        return web.Response(text="dynamic")

    async def plain(request):
        return web.Response(text="plain")

    app = web.Application()
    app.router.add_get("/items/{name}", dynamic)
    app.router.add_get("/items/me", plain)  # after the dynamic one: never reached, as aiohttp decides
    app.router.add_post("/items/me", plain)
    index_plain_paths(app.router)
    assert [r.canonical for r in candidates_by_path(list(app.router.resources()))["/items/me"]] == \
        ["/items/{name}", "/items/me"]
    get = await app.router.resolve(make_mocked_request("GET", "/items/me", app=app))
    assert get.handler is dynamic and dict(get) == {"name": "me"}
    assert (await app.router.resolve(make_mocked_request("POST", "/items/me", app=app))).handler is plain
    put = await app.router.resolve(make_mocked_request("PUT", "/items/me", app=app))
    assert isinstance(put.http_exception, web.HTTPMethodNotAllowed)
    assert sorted(put.http_exception.allowed_methods) == ["GET", "HEAD", "POST"]  # add_get adds HEAD


@pytest.mark.skipif(not hasattr(UrlDispatcher(), "_resource_index"), reason="aiohttp 3.8: the index is used")
def test_a_router_with_its_own_index_is_left_alone():
    router = UrlDispatcher()
    before = router.resolve
    index_plain_paths(router)
    assert router.resolve == before and "resolve" not in vars(router)
