"""Resolving a request to its route without asking every resource, on aiohttp before 3.9
(Debian bookworm's 3.8.4, the Pi's).

aiohttp 3.8's ``UrlDispatcher.resolve`` awaits each resource's ``resolve`` in the order they were
added until one matches: the daemon has ~190 resources (/api, its /api/v1 alias, the dashboard,
the front door, Kyros), ~0.6 us each here, so a call to ``POST /v1/chat/completions`` (added
late) spent 122 us finding its handler, and ``POST /v1/messages`` 144 us; ``/api/spawn``, added
first, 1.2 us.  aiohttp 3.9 and later keep an index of their own (``_resource_index``) and
resolve any of them in ~2-3 us: there nothing is changed.

:func:`index_plain_paths` gives the router's ``resolve`` a table, built when it is installed
(the end of ``setup_routes``, every route added): for each path that a plain resource (no
``{variable}``) serves, the resources that could match that path, in the order they were added (the plain ones with
that path, the dynamic ones whose pattern matches it, any other kind of resource whatever its
path).  A request for such a path asks those alone, in the same order, so the same route wins as
with the whole list.  When none of them matches (a 405, or a method no route has), or the path
is not a plain one (``/api/agent/{agent_id}``), the router's own ``resolve`` answers, exactly as
before; so does it for a route added after the table (it comes after every candidate anyway).
The table's size is the number of plain paths; it does not grow with requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import DynamicResource, PlainResource

__all__ = ["candidates_by_path", "index_plain_paths"]


def candidates_by_path(resources: list[Any]) -> dict[str, list[Any]]:
    """Each plain path -> the resources that could match it, in order."""
    plain_paths = {r.canonical for r in resources if isinstance(r, PlainResource)}
    table: dict[str, list[Any]] = {}
    for path in plain_paths:
        table[path] = [r for r in resources
                       if (r.canonical == path if isinstance(r, PlainResource)
                           else r._match(path) is not None if isinstance(r, DynamicResource)
                           else True)]  # another kind (a prefix, a sub-app): asked as the router would
    return table


def index_plain_paths(router: web.UrlDispatcher) -> None:
    """Give ``router`` the table (see the module doc); nothing on aiohttp 3.9 and later."""
    if hasattr(router, "_resource_index"):
        return
    linear: Callable[[web.Request], Awaitable[Any]] = router.resolve
    # Built now, at start-up (~4 ms here), not in the first request's time.
    table = candidates_by_path(list(router.resources()))

    async def resolve(request: web.Request) -> Any:
        candidates = table.get(request.rel_url.raw_path)
        if candidates is not None:
            for resource in candidates:
                match, _ = await resource.resolve(request)
                if match is not None:
                    return match
        return await linear(request)

    # An attribute of this router alone: Application._handle calls self._router.resolve(request).
    setattr(router, "resolve", resolve)  # noqa: B010 (a method of this instance, not of the class)
