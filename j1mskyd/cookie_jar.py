"""The upstream sessions' cookie jar: aiohttp's own, answering at once while it is empty.

An aiohttp client session looks in its jar before every request.  On aiohttp 3.8 (Debian
bookworm's), ``CookieJar.filter_cookies`` expires old cookies, builds the URL's origin and
encodes its host even when the jar is empty: ~4 % of the daemon's CPU for a front-door call on
the Debian stack (py-spy), for upstreams that authenticate each call with a key and mostly set
no cookie.  aiohttp 3.9 and later return at once for an empty jar; :class:`UpstreamCookieJar`
does the same on 3.8 and is otherwise ``aiohttp.CookieJar`` unchanged: a cookie an upstream
sets is kept and sent back as before.  Likewise after every answer: 3.8 hands the jar the
answer's cookies even when there are none, and the jar parses the answer's host (an IP
address check) and runs its expiry before finding nothing to store.
"""

from __future__ import annotations

from http.cookies import BaseCookie, SimpleCookie
from typing import Any

import aiohttp
from yarl import URL

__all__ = ["UpstreamCookieJar"]


class UpstreamCookieJar(aiohttp.CookieJar):
    """``aiohttp.CookieJar`` with newer aiohttp's early return when it holds no cookie."""

    def filter_cookies(self, request_url: URL = URL()) -> BaseCookie[str]:
        if not self._cookies:  # the jar's own store, by domain (what aiohttp 3.9+ checks here)
            return SimpleCookie()  # what an empty jar gives on 3.8 (quote_cookie on, the default)
        return super().filter_cookies(request_url)

    def update_cookies(self, cookies: Any, response_url: URL = URL()) -> None:
        if not cookies:  # an answer without Set-Cookie (newer aiohttp checks before it calls)
            return
        super().update_cookies(cookies, response_url)
