"""cookie_jar.UpstreamCookieJar: aiohttp's CookieJar, answering at once while it is empty, and
keeping and sending back a cookie an upstream sets exactly as aiohttp's own jar does."""

from __future__ import annotations

from http.cookies import SimpleCookie

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from j1mskyd.cookie_jar import UpstreamCookieJar


async def test_an_empty_jar_answers_without_its_expiry_walk(monkeypatch):
    jar = UpstreamCookieJar()

    def walked(*args, **kwargs):
        raise AssertionError("an empty jar must not walk its cookies")

    monkeypatch.setattr(jar, "_do_expiration", walked)
    cookies = jar.filter_cookies(URL("http://localhost:1/v1/chat/completions"))
    assert not cookies and isinstance(cookies, type(aiohttp.CookieJar().filter_cookies(URL("http://localhost:1/"))))


async def test_an_answer_without_cookies_is_not_looked_at(monkeypatch):
    """aiohttp 3.8 hands the jar every answer's cookies, none or not: with none, no host parse
    and no expiry walk (a cookie that is there still goes through: the test below)."""
    jar = UpstreamCookieJar()

    def looked(*args, **kwargs):
        raise AssertionError("an answer without cookies must not be looked at")

    monkeypatch.setattr(jar, "_do_expiration", looked)
    for none in (SimpleCookie(), {}, []):
        jar.update_cookies(none, URL("http://localhost:1/v1/chat/completions"))
    jar.update_cookies(SimpleCookie())
    with pytest.raises(AssertionError):  # one that is there is stored, and the jar expires old ones
        jar.update_cookies(SimpleCookie("a=1"), URL("http://localhost:1/"))


@pytest.mark.parametrize("jar_class", [aiohttp.CookieJar, UpstreamCookieJar])
async def test_a_cookie_an_upstream_sets_is_sent_back_as_aiohttp_s_own_jar_does(jar_class):
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({"ok": True})
        if len(seen) == 1:
            response.set_cookie("__cf_bm", "abc123", path="/")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host="127.0.0.1", port=0).start()
    host, port = runner.addresses[0][:2]
    try:
        # unsafe: aiohttp keeps no cookie from a bare IP otherwise (a local model server is one)
        async with aiohttp.ClientSession(cookie_jar=jar_class(unsafe=True)) as session:
            for _ in range(3):
                async with session.post(f"http://{host}:{port}/v1/chat/completions", json={}) as resp:
                    assert resp.status == 200
    finally:
        await runner.cleanup()
    assert seen == [None, "__cf_bm=abc123", "__cf_bm=abc123"]
