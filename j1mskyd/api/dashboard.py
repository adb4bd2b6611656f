"""The dashboard: GET / and GET /static/{name}, static files shipped in the package.

The page is public; everything it shows comes from /api with the key the operator
types in (kept in the tab's sessionStorage, sent as a bearer header; docs/dashboard.md).
The files are a fixed allow-list, checked at the app's build and read once, at the first
request for one, from the package's directory (a wheel, the .deb) or with
importlib.resources (the zipapp); a name is looked up in that dict and nothing else, so no
path ever reaches the filesystem.
Every answer carries a strict Content-Security-Policy: the page runs only its own
script, with no inline code, and talks only to its own origin.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ..errors import NotFound

__all__ = ["ASSETS", "CSP", "SECURITY_HEADERS", "Asset", "assets", "check_assets", "index", "static"]

# name -> content type; the only files ever served.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "tasks.js": "text/javascript; charset=utf-8",  # the Tasks view, loaded before app.js
    "favicon.svg": "image/svg+xml",
}

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # Revalidate every time (a 304 is cheap): an upgraded daemon's page is never mixed with old files.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _folder() -> Any:
    """Where the files are: the package's directory, or a zipapp's members."""
    folder: Any = Path(__file__).parent.parent / "static"  # as app.BUILTIN_PLUGINS finds its directory
    if not folder.is_dir():  # a zipapp's members: importlib.resources (~0.1 MB resident) reads those
        from importlib import resources
        folder = resources.files(__package__.rpartition(".")[0]).joinpath("static")
    return folder


def check_assets() -> None:
    """At start: every allow-listed file is there, so that a missing one fails the start, not a
    visitor.  Their bytes (~0.1 MB) are read at the first request for one (:func:`assets`): a
    daemon nobody opens the dashboard of does without them."""
    folder = _folder()
    missing = [name for name in ASSETS if not folder.joinpath(name).is_file()]
    if missing:
        raise FileNotFoundError(f"the dashboard's files are missing from {folder}: {', '.join(missing)}")


@functools.cache
def assets() -> dict[str, Asset]:
    """The allow-listed files, read once per process."""
    folder = _folder()
    found = {}
    for name, content_type in ASSETS.items():
        body = folder.joinpath(name).read_bytes()
        found[name] = Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return found


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 13.1.2: weak comparison, a list of tags, or *."""
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or etag in (t[2:] if t.startswith("W/") else t for t in tags)


def _serve(request: web.Request, asset: Asset) -> web.Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if _matches(request.headers.get("If-None-Match", ""), asset.etag):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = asset.content_type
    return web.Response(body=asset.body, headers=headers)


async def index(request: web.Request) -> web.Response:
    """The dashboard page."""
    return _serve(request, assets()["index.html"])


async def static(request: web.Request) -> web.Response:
    """One of the page's files, by its name in the allow-list."""
    asset = assets().get(request.match_info["name"])
    if asset is None:
        raise NotFound("No such file")
    return _serve(request, asset)
