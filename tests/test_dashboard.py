"""The dashboard at / : its files and headers over plain HTTP, and the page itself in a
real headless Chromium (tests/browser.py) against a real daemon on loopback.

The browser tests skip when no chromium binary is installed, unless
J1MSKY_REQUIRE_BROWSER=1 (CI sets it), which makes a missing browser a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from html.parser import HTMLParser

import pytest

from j1mskyd.api.dashboard import ASSETS
from j1mskyd.app import build_app

from .browser import Browser, find_chromium
from .conftest import auth_config
from .daemon import ROOT, Daemon

STATIC = ROOT / "j1mskyd" / "static"
TOKEN_KEY = "j1msky.apiKey"  # app.js's sessionStorage key


# -- plain HTTP ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path, content_type", [
    ("/", "text/html; charset=utf-8"),
    ("/static/app.js", "text/javascript; charset=utf-8"),
    ("/static/app.css", "text/css; charset=utf-8"),
    ("/static/favicon.svg", "image/svg+xml"),
])
async def test_page_and_files_are_served_with_strict_headers(client, path, content_type):
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == content_type
    name = "index.html" if path == "/" else path.rpartition("/")[2]
    assert await resp.read() == (STATIC / name).read_bytes()
    csp = {d.split()[0]: d.split()[1:] for d in resp.headers["Content-Security-Policy"].split("; ")}
    assert csp["default-src"] == csp["script-src"] == csp["style-src"] == csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == csp["form-action"] == csp["object-src"] == ["'none'"]
    assert "unsafe" not in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["ETag"].startswith('"')


@pytest.mark.parametrize("raw", [
    "/static/nope.js", "/static/app.py", "/static/APP.JS", "/static/..%2Fapi%2Fdashboard.py",
    "/static/%2e%2e%2f%2e%2e%2fpyproject.toml", "/static/..%5c..%5capp.js", "/static/app.js%00",
    "/static/%2Fetc%2Fpasswd", "/static/..", "/static/a/b", "/static/", "/static", "/index.html",
])
async def test_unknown_names_and_traversal_are_404_in_the_error_envelope(client, raw):
    status, headers, body = await _raw_get(client, raw)
    assert status == 404, (raw, body[:200])
    error = json.loads(body)
    assert error["success"] is False
    assert error["error"]["code"] == 404 and error["error"]["type"] == "NOT_FOUND"
    assert error["error"]["request_id"] == headers["x-request-id"]


async def _raw_get(client, raw: str) -> tuple[int, dict[str, str], bytes]:
    """GET with the path exactly as given (an HTTP client would normalise the dot segments)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(f"GET {raw} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
    return int(lines[0].split()[1]), headers, body


async def test_head_and_conditional_get(client):
    get = await client.get("/")
    body = await get.read()
    etag = get.headers["ETag"]
    head = await client.head("/")
    assert head.status == 200 and await head.read() == b""
    assert head.headers["ETag"] == etag and head.headers["Content-Type"] == get.headers["Content-Type"]
    assert int(head.headers["Content-Length"]) == len(body)
    assert "Content-Security-Policy" in head.headers
    for given in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        resp = await client.get("/", headers={"If-None-Match": given})
        assert resp.status == 304, given
        assert await resp.read() == b"" and resp.headers["ETag"] == etag
        assert resp.headers["Cache-Control"] == "no-cache"
    resp = await client.get("/", headers={"If-None-Match": '"stale"'})
    assert resp.status == 200 and await resp.read() == body
    css = await client.get("/static/app.css")
    assert css.headers["ETag"] != etag  # one tag per file


async def test_the_page_is_public_and_its_data_is_not(aiohttp_client, tmp_path):
    config = auth_config(tmp_path)
    client = await aiohttp_client(build_app(config))
    for path in ("/", "/static/app.js"):
        assert (await client.get(path)).status == 200
    resp = await client.get("/api/agents")
    assert resp.status == 401 and (await resp.json())["error"]["type"] == "UNAUTHORIZED"
    resp = await client.post("/", data=b"x")
    assert resp.status == 405 and (await resp.json())["error"]["code"] == 405


class _PageScan(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.refs: list[str] = []
        self.scripts = 0
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in attrs:
            if name.startswith("on") or name == "style":
                self.problems.append(f"<{tag} {name}=...>: inline code or style")
        if tag == "style":
            self.problems.append("<style> element")
        if tag == "script":
            self.scripts += 1
            self._in_script = True
            if not attrs.get("src"):
                self.problems.append("inline <script>")
        for name in ("src", "href", "action"):
            if attrs.get(name):
                self.refs.append(attrs[name])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.problems.append("script body")


def test_the_page_has_no_inline_code_and_loads_only_allow_listed_files():
    scan = _PageScan()
    scan.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    assert scan.problems == []
    assert scan.scripts == 1
    assert sorted(scan.refs) == sorted(f"/static/{n}" for n in ASSETS if n != "index.html")
    assert sorted(p.name for p in STATIC.iterdir()) == sorted(ASSETS)  # nothing shipped that is not served
    js = (STATIC / "app.js").read_text(encoding="utf-8")
    for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                   "localStorage", "document.cookie", "?token=", "&token="):
        assert banned not in js, banned


def test_the_zipapp_carries_the_files_and_pyproject_ships_them(tmp_path):
    """The files are read with importlib.resources: from a zip as well as from a directory."""
    pyz = tmp_path / "j1mskyd.pyz"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build-pyz"), "-o", str(pyz)], check=True,
                   capture_output=True, timeout=60)
    probe = ("import json, sys; from j1mskyd.api import dashboard; "
             "print(dashboard.__file__); print(json.dumps({n: len(a.body) for n, a in dashboard.assets().items()}))")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PYTHONPATH"] = str(pyz)
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    where, sizes = done.stdout.splitlines()
    assert where.startswith(str(pyz))
    assert json.loads(sizes) == {n: (STATIC / n).stat().st_size for n in ASSETS}
    # pip and the .deb (pybuild) install what pyproject.toml lists as package data.
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"static/*"' in pyproject


# -- in a real browser ---------------------------------------------------------------------------
@pytest.fixture
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("J1MSKY_REQUIRE_BROWSER") == "1":
            pytest.fail("J1MSKY_REQUIRE_BROWSER=1 but no chromium binary was found (apt-get install chromium)")
        pytest.skip("no chromium binary (apt-get install chromium); J1MSKY_REQUIRE_BROWSER=1 makes this fail")
    return binary


@pytest.fixture
def daemon(tmp_path):
    with Daemon(tmp_path, tmp_path / "state") as d:  # the embedded default: offline provider, auth on
        yield d


@pytest.fixture
async def browser(tmp_path, chromium):
    async with Browser.launch(tmp_path, chromium) as b:
        yield b


def _visible(selector: str) -> str:
    return f"(() => {{ const n = document.querySelector({json.dumps(selector)}); return !!n && !n.closest('[hidden]'); }})()"


async def _login(browser: Browser, token: str) -> None:
    await browser.fill("#login-key", token)
    await browser.click("#login-submit")
    await browser.wait_for(_visible("#overview-view"), what="the overview after logging in")


def _show(capsys, label: str, path) -> None:
    """Print a screenshot's path; J1MSKY_SCREENSHOT_DIR also keeps a copy (pytest keeps 3 runs' tmp dirs)."""
    keep = os.environ.get("J1MSKY_SCREENSHOT_DIR")
    if keep:
        os.makedirs(keep, exist_ok=True)
        path = shutil.copy(path, keep)
    with capsys.disabled():  # in the test output even when it passes
        print(f"\n{label}: {path}")


async def test_dashboard_login_spawn_live_status_keys_and_logout(browser, daemon, tmp_path, capsys):
    base = f"http://127.0.0.1:{daemon.port}"
    admin = json.loads((daemon.state_dir / "bootstrap-admin.key").read_text())["token"]
    await browser.navigate(base + "/")
    await browser.wait_for(_visible("#login-form"), what="the login form")
    await browser.wait_for("document.getElementById('health').textContent.startsWith('healthy')")

    # A wrong key is refused, and stays out of the session.
    await browser.fill("#login-key", "jsk_not_a_real_key")
    await browser.click("#login-submit")
    await browser.wait_for("document.getElementById('login-error').textContent", what="the login error")
    assert await browser.evaluate("sessionStorage.length") == 0
    refused = browser.take_problems()  # the browser logs the 401 of the probe: that one only
    assert refused and all(p.kind == "network" and "401" in p.text for p in refused), refused

    # The admin key: logged in, the key in sessionStorage only, never in the address.
    await _login(browser, admin)
    assert await browser.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == admin
    assert await browser.evaluate("localStorage.length") == 0
    assert await browser.evaluate("document.cookie") == ""
    assert await browser.evaluate("document.getElementById('login-key').value") == ""
    await browser.wait_for("document.getElementById('live').dataset.state === 'live'", what="the live stream")

    # A reload keeps the session (same tab).
    await browser.reload()
    await browser.wait_for(_visible("#overview-view"), what="the overview after a reload")
    await browser.wait_for("document.getElementById('live').dataset.state === 'live'", what="the stream again")

    # Spawn from the page; the row reaches completed through the event stream.
    await browser.wait_for("document.querySelectorAll('#spawn-model option').length > 0", what="the models")
    await browser.call("(v) => { document.getElementById('spawn-model').value = v; }", "k2p5")
    await browser.fill("#spawn-task", "Write a haiku about a dashboard")
    await browser.click("#spawn-submit")
    agent_id = await browser.wait_for("document.getElementById('spawn-result').dataset.agentId",
                                      what="the spawn's answer")
    row = f"document.querySelector('tr[data-agent-id=\"{agent_id}\"]')"
    await browser.wait_for(f"{row} && {row}.dataset.status === 'completed'", what="the agent completed")
    assert await browser.evaluate(f"{row}.dataset.source") == "stream"
    assert (await browser.evaluate(f"{row}.textContent")).count("Write a haiku about a dashboard") == 1
    agent = daemon.get(f"/api/agent/{agent_id}")
    assert agent["status"] == "completed"
    assert await browser.evaluate(f"{row}.children[4].textContent") == f"${agent['cost']:.6f}"  # actual, not estimate

    # Budget gauge and alert level, provider limits, spend by model (refreshed after the completion).
    await browser.wait_for("document.getElementById('alert-level').dataset.level === 'ok'", what="the alert level")
    assert await browser.text("#budget-limit") == "$50.00"
    assert await browser.evaluate("document.getElementById('budget-meter').value") >= 0
    await browser.wait_for("!!document.querySelector('#providers tr[data-provider=\"offline\"]')",
                           what="the offline provider's limits")
    await browser.wait_for("!!document.querySelector('#spend li[data-model=\"k2p5\"]')", what="k2p5's spend")
    assert (await browser.text("#spend-calls")) == "1"
    await browser.wait_for("!!document.querySelector('#breakers tr[data-provider=\"offline\"]')", what="breakers")
    overview = await browser.screenshot(tmp_path / "dashboard-overview.png")
    _show(capsys, "dashboard screenshot (overview)", overview)

    # Settings -> API -> Generate new key: the token is shown once, and works.
    await browser.click("#tab-settings")
    await browser.wait_for("!!document.querySelector('#keys tr[data-status=\"active\"]')", what="the key list")
    await browser.fill("#key-name", "from-dashboard")
    await browser.click("#key-submit")
    await browser.wait_for(_visible("#new-key"), what="the one-time key display")
    token = await browser.text("#new-key-token")
    assert token.startswith("jsk_") and await browser.text("#new-key-secret")
    assert (await browser.text("#new-key-webhook-secret")).startswith("whsec_")
    await browser.wait_for("[...document.querySelectorAll('#keys td')].some(t => t.textContent === 'from-dashboard')",
                           what="the new key in the list")
    request = urllib.request.Request(f"{base}/api/agents?limit=1", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
    keys = {k["name"]: k for k in daemon.get("/api/keys")["keys"]}
    assert keys["from-dashboard"]["scopes"] == ["agents:read", "agents:write"]
    settings = await browser.screenshot(tmp_path / "dashboard-settings.png")
    _show(capsys, "dashboard screenshot (settings)", settings)
    await browser.click("#new-key-done")
    assert await browser.text("#new-key-token") == "" and await browser.text("#new-key-webhook-secret") == ""
    assert await browser.evaluate(_visible("#new-key")) is False

    # Tokens never travelled in a URL; log out forgets the key.
    urls = await browser.evaluate("[location.href, ...performance.getEntriesByType('resource').map(e => e.name)]")
    assert not [u for u in urls if "jsk_" in u or "token" in u.lower()], urls
    await browser.click("#logout")
    await browser.wait_for(_visible("#login-form"), what="the login form after logging out")
    assert await browser.evaluate("sessionStorage.length") == 0
    assert await browser.evaluate("document.querySelectorAll('#agents tbody tr').length") == 0
    await browser.reload()
    await browser.wait_for(_visible("#login-form"), what="still logged out after a reload")

    assert browser.problems == [], "\n".join(map(str, browser.problems))
    log = daemon.log()
    assert admin not in log and token not in log


async def test_the_browser_enforces_the_pages_csp(browser, daemon):
    """The header really binds: an injected inline script or inline handler does not run, and the
    driver reports it (so the test above would fail on any CSP violation of the page)."""
    await browser.navigate(f"http://127.0.0.1:{daemon.port}/")
    await browser.wait_for(_visible("#login-form"))
    assert browser.problems == []
    await browser.evaluate("(() => { const s = document.createElement('script'); s.textContent = 'window.pwned = 1';"
                           " document.body.append(s); })()")
    await browser.wait_for("true")
    assert await browser.evaluate("typeof window.pwned") == "undefined"
    await browser.evaluate("(() => { const b = document.createElement('button'); b.setAttribute('onclick', 'window.pwned = 2');"
                           " document.body.append(b); b.click(); })()")
    assert await browser.evaluate("typeof window.pwned") == "undefined"
    problems = browser.take_problems()
    assert any("Content Security Policy" in p.text for p in problems), problems
