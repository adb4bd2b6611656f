"""The dashboard at / : its files and headers over plain HTTP, and the page itself in a
real headless Chromium (tests/browser.py) against a real daemon on loopback.

The browser tests skip when no chromium binary is installed, unless
J1MSKY_REQUIRE_BROWSER=1 (CI sets it), which makes a missing browser a failure.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from html.parser import HTMLParser

import pytest

from j1mskyd.api.dashboard import ASSETS
from j1mskyd.app import build_app

from .browser import Browser, find_chromium
from .conftest import auth_config
from .daemon import ROOT, Daemon, write_config

STATIC = ROOT / "j1mskyd" / "static"
TOKEN_KEY = "j1msky.apiKey"  # app.js's sessionStorage key


# -- plain HTTP ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path, content_type", [
    ("/", "text/html; charset=utf-8"),
    ("/static/app.js", "text/javascript; charset=utf-8"),
    ("/static/tasks.js", "text/javascript; charset=utf-8"),
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
    if raw.startswith("/static/"):  # the dashboard's paths: its headers on every answer, refusals too
        assert headers["content-security-policy"].startswith("default-src 'self'"), headers
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


async def test_a_refusal_of_the_page_itself_carries_the_dashboard_headers(client):
    resp = await client.request("OPTIONS", "/")
    assert resp.status == 405
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert resp.headers["X-Frame-Options"] == "DENY"
    api = await client.get("/api/nope")  # the API's refusals are JSON for programs: not these
    assert api.status == 404 and "Content-Security-Policy" not in api.headers


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
    scripts = [n for n in ASSETS if n.endswith(".js")]
    assert scan.scripts == len(scripts) == 2  # app.js and the Tasks view's tasks.js
    assert sorted(scan.refs) == sorted(f"/static/{n}" for n in ASSETS if n != "index.html")
    assert sorted(p.name for p in STATIC.iterdir()) == sorted(ASSETS)  # nothing shipped that is not served
    for name in scripts:
        js = (STATIC / name).read_text(encoding="utf-8")
        for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                       "localStorage", "document.cookie", "?token=", "&token="):
            assert banned not in js, (name, banned)


def test_the_zipapp_carries_the_files_and_pyproject_ships_them(tmp_path):
    """The files are read with importlib.resources: from a zip as well as from a directory."""
    pyz = tmp_path / "j1mskyd.pyz"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build-pyz"), "-o", str(pyz)], check=True,
                   capture_output=True, timeout=60)
    probe = ("import json, sys; from j1mskyd.api import dashboard; dashboard.check_assets(); "
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


def test_a_missing_file_fails_the_build_and_the_files_are_read_at_the_first_request(tmp_path, monkeypatch):
    """The start checks that every allow-listed file is there (a visitor never meets a missing one)
    without keeping their bytes: they are read when the page is first asked for."""
    from j1mskyd.api import dashboard
    monkeypatch.setattr(dashboard, "assets", functools.cache(dashboard.assets.__wrapped__))
    folder = tmp_path / "static"
    shutil.copytree(STATIC, folder)
    (folder / "tasks.js").unlink()
    monkeypatch.setattr(dashboard, "_folder", lambda: folder)
    with pytest.raises(FileNotFoundError, match=r"dashboard's files are missing from .*: tasks\.js$"):
        build_app(auth_config(tmp_path / "a"))
    shutil.copy(STATIC / "tasks.js", folder / "tasks.js")
    build_app(auth_config(tmp_path / "b"))
    assert dashboard.assets.cache_info().currsize == 0  # checked, not read
    assert dashboard.assets()["tasks.js"].body == (STATIC / "tasks.js").read_bytes()


async def test_a_file_gone_after_the_start_is_a_500_until_it_is_back(aiohttp_client, tmp_path, monkeypatch):
    """The bytes are read at the first request: a file removed in between (by hand; an upgrade
    replaces files, it does not remove them) is an internal error in the usual envelope, and
    nothing is kept of the failed read: once the file is back the page is served."""
    from j1mskyd.api import dashboard
    monkeypatch.setattr(dashboard, "assets", functools.cache(dashboard.assets.__wrapped__))
    folder = tmp_path / "static"
    shutil.copytree(STATIC, folder)
    monkeypatch.setattr(dashboard, "_folder", lambda: folder)
    client = await aiohttp_client(build_app(auth_config(tmp_path / "state")))
    (folder / "app.css").unlink()
    resp = await client.get("/")
    body = await resp.json()
    assert resp.status == 500 and body["error"]["type"] == "INTERNAL_ERROR" and "app.css" not in json.dumps(body)
    shutil.copy(STATIC / "app.css", folder / "app.css")
    resp = await client.get("/static/app.css")
    assert resp.status == 200 and await resp.read() == (STATIC / "app.css").read_bytes()


def test_a_daemon_missing_a_dashboard_file_says_so_in_one_line(tmp_path):
    code = ("import sys; from pathlib import Path; from j1mskyd.api import dashboard; "
            "dashboard._folder = lambda: Path(sys.argv[1]); import j1mskyd.__main__ as m; "
            "sys.exit(m.main(['serve', '--host', '127.0.0.1', '--port', '0', '--state-dir', sys.argv[2]]))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nothing"), str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"j1mskyd: cannot start: the dashboard's files are missing from {tmp_path / 'nothing'}: "
        + ", ".join(ASSETS))
    assert "Traceback" not in done.stderr

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


# -- keys as tenants (issue 15): what each key's page shows, and the key settings ----------------
def _as(daemon: Daemon, token: str, method: str, path: str, body=None) -> tuple[int, dict[str, str], object]:
    """One API call with ``token`` (Daemon.request always uses the bootstrap admin key)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}"} | ({"Content-Type": "application/json"} if data else {})
    req = urllib.request.Request(f"http://127.0.0.1:{daemon.port}/api{path}", data=data, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def _new_key(daemon: Daemon, name: str, scopes: list[str], **limits) -> dict:
    status, body = daemon.request("POST", "/api/keys", {"name": name, "scopes": scopes, **limits})
    assert status == 201, body
    return body


def _spawn_as(daemon: Daemon, token: str, task: str) -> str:
    status, _, body = _as(daemon, token, "POST", "/spawn", {"task": task, "model": "k2p5"})
    assert status == 200, body
    return body["agent_id"]


def _row(agent_id: str) -> str:
    return f"document.querySelector('#agents tr[data-agent-id=\"{agent_id}\"]')"


def _key_row(key_id: str, cell: str) -> str:
    return f"(document.querySelector('#keys tr[data-key-id=\"{key_id}\"] td.{cell}') || {{}}).textContent"


def _api_calls() -> str:
    """The /api paths the page fetched so far (the Resource Timing entries)."""
    return "performance.getEntriesByType('resource').map(e => new URL(e.name).pathname).filter(p => p.startsWith('/api/'))"


def test_the_generate_form_offers_every_scope():
    """The scope checkboxes of Settings -> API are the daemon's scopes (admin:read came with issue 15)."""
    from j1mskyd.keys import SCOPES

    page = (STATIC / "index.html").read_text(encoding="utf-8")
    offered = [part.split('"', 1)[0] for part in page.split('class="key-scope" value="')[1:]]
    assert offered == list(SCOPES)


@pytest.fixture
def tenant_daemon(tmp_path):
    """A daemon whose webhooks may go to loopback (tests/test_webhooks.py does the same)."""
    config = write_config(tmp_path / "j1msky.toml")
    config.write_text(config.read_text() + '\n[webhooks]\nallowed_networks = ["127.0.0.0/8"]\n')
    with Daemon(tmp_path, tmp_path / "state", config) as d:
        yield d


async def test_a_non_admin_keys_page_shows_only_its_own_agents_and_no_keys_panel(browser, tenant_daemon, tmp_path,
                                                                                capsys):
    """Key A's page: A's agents (listed and live) and webhooks, never B's nor the admin's; no Settings,
    no call to /api/keys; the panels that are daemon-wide say so; the header shows A and what it may
    still spend."""
    daemon = tenant_daemon
    a = _new_key(daemon, "household-a", ["agents:read", "agents:write"])
    b = _new_key(daemon, "household-b", ["agents:read", "agents:write"])
    mine = _spawn_as(daemon, a["token"], "A's first task")
    theirs = _spawn_as(daemon, b["token"], "B's first task")
    admins = daemon.spawn("the admin's task")
    for agent_id in (mine, theirs, admins):
        daemon.wait_agent(agent_id)
    hooks = {}
    for who, token in (("a", a["token"]), ("b", b["token"])):  # nothing listens on port 9: never delivered
        status, _, body = _as(daemon, token, "POST", "/webhooks", {"url": f"http://127.0.0.1:9/{who}",
                                                                   "events": ["agent.failed"]})
        assert status == 201, body
        hooks[who] = body["webhook_id"]

    await browser.navigate(f"http://127.0.0.1:{daemon.port}/")
    await browser.wait_for(_visible("#login-form"))
    await _login(browser, a["token"])
    await browser.wait_for("document.getElementById('live').dataset.state === 'live'", what="the live stream")
    await browser.wait_for(f"{_row(mine)} && {_row(mine)}.dataset.status === 'completed'", what="A's agent")

    # Live: B spawns, then A; once A's new agent is on the page, B's (an earlier event) would be too.
    theirs_live = _spawn_as(daemon, b["token"], "B's second task")
    daemon.wait_agent(theirs_live)
    mine_live = _spawn_as(daemon, a["token"], "A's second task")
    await browser.wait_for(f"{_row(mine_live)} && {_row(mine_live)}.dataset.status === 'completed'",
                           what="A's live agent")
    shown = await browser.evaluate("[...document.querySelectorAll('#agents tbody tr')].map(r => r.dataset.agentId)")
    assert sorted(shown) == sorted([mine, mine_live]), shown
    text = await browser.evaluate("document.body.textContent")
    assert "B's" not in text and "the admin's task" not in text
    await browser.wait_for(f"!!document.querySelector('#webhooks tr[data-webhook-id=\"{hooks['a']}\"]')",
                           what="A's webhook")
    assert await browser.evaluate("document.querySelectorAll('#webhooks tbody tr').length") == 1
    assert "127.0.0.1:9/b" not in await browser.evaluate("document.body.textContent")

    # No keys panel: the tab is hidden, and the page never asked for the key list.
    assert await browser.evaluate(_visible("#tab-settings")) is False
    assert await browser.evaluate(_visible("#api-settings")) is False
    assert "/api/keys" not in await browser.evaluate(_api_calls())
    assert await browser.evaluate(_visible("#spawn-card")) is True  # A may spawn

    # What is daemon-wide is labelled so; A's own list is labelled as A's.
    assert "this key's" in await browser.text("#agents-card h2")
    assert "all keys" in await browser.text("#budget-card")
    assert "daemon-wide" in await browser.text("#limits-card h2")

    # The header: A's name and what it may still spend (X-Budget-Remaining of the page's answers).
    await browser.wait_for(_visible("#me"), what="the key in the header")
    assert await browser.text("#me-name") == "household-a"
    _, headers, _ = _as(daemon, a["token"], "GET", "/keys/me")
    remaining = float(headers["X-Budget-Remaining"])  # every agent is done: it stays so
    await browser.click("#refresh")  # answers from after the last spend
    await browser.wait_for(f"Math.abs(Number(document.getElementById('me').dataset.remaining) - {remaining}) < 1e-4",
                           what=f"X-Budget-Remaining {remaining} in the header")
    assert (await browser.text("#me-remaining")).endswith(" left")
    _show(capsys, "dashboard screenshot (a key that sees its own work)",
          await browser.screenshot(tmp_path / "dashboard-own-work.png"))
    assert browser.problems == [], "\n".join(map(str, browser.problems))


async def test_an_admin_sets_and_edits_a_keys_limits_on_the_page(browser, daemon, tmp_path, capsys):
    """Settings -> API: a key made with a budget and limits, then its budget changed, a field cleared,
    a bad value refused in plain words; GET /api/keys/{id} shows each step.  The key's own page then
    shows its budget in the header and the budget card."""
    admin = json.loads((daemon.state_dir / "bootstrap-admin.key").read_text())["token"]
    await browser.navigate(f"http://127.0.0.1:{daemon.port}/")
    await browser.wait_for(_visible("#login-form"))
    await _login(browser, admin)
    await browser.click("#tab-settings")
    await browser.wait_for("!!document.querySelector('#keys tr[data-status=\"active\"]')", what="the key list")
    assert await browser.evaluate(_visible("#key-create")) is True

    await browser.fill("#key-name", "garden")
    await browser.fill("#key-max-budget", "5")
    await browser.call("(v) => { document.getElementById('key-budget-duration').value = v; }", "30d")
    await browser.fill("#key-models", "k2p5, sonnet")
    await browser.fill("#key-max-concurrency", "2")
    await browser.fill("#key-expires-at", "2099-01-02T03:04")
    await browser.fill("#key-metadata", "owner=ana, project=garden")
    await browser.click("#key-submit")
    await browser.wait_for(_visible("#new-key"), what="the one-time key display")
    key_id = await browser.text("#new-key-id")
    token = await browser.text("#new-key-token")
    key = daemon.get(f"/api/keys/{key_id}")
    assert key["max_budget"] == 5 and key["budget_duration"] == "30d"
    assert key["models"] == ["k2p5", "sonnet"] and key["max_concurrency"] == 2
    assert key["metadata"] == {"owner": "ana", "project": "garden"}
    assert key["expires_at"].startswith("2099-01-0")  # the browser's local time, sent as UTC
    assert key["budget"]["max_budget"] == 5 and key["budget"]["budget_remaining"] == 5
    assert key["budget"]["resets_at"] is not None
    await browser.wait_for(f"{_key_row(key_id, 'remaining')} === '$5.00'", what="the new key's remaining budget")
    assert await browser.evaluate(_key_row(key_id, "spent")) == "$0.00"
    assert "per 30 days" in await browser.evaluate(_key_row(key_id, "budget"))
    assert await browser.evaluate(_key_row(key_id, "resets")) not in ("", "–", "never")
    assert "owner=ana" in await browser.evaluate(_key_row(key_id, "limits"))
    await browser.click("#new-key-done")

    # Edit: the form holds the key's limits; a new budget and a cleared concurrency are saved.
    await browser.click(f"#keys tr[data-key-id=\"{key_id}\"] button.link")
    await browser.wait_for(_visible("#key-edit"), what="the edit form")
    assert await browser.evaluate("document.getElementById('edit-max-budget').value") == "5"
    assert await browser.evaluate("document.getElementById('edit-budget-duration').value") == "30d"
    assert await browser.evaluate("document.getElementById('edit-max-concurrency').value") == "2"
    await browser.fill("#edit-max-budget", "7.5")
    await browser.fill("#edit-max-concurrency", "")
    await browser.click("#key-edit-submit")
    await browser.wait_for("document.getElementById('key-edit-result').textContent === 'Saved.'", what="saved")
    key = daemon.get(f"/api/keys/{key_id}")
    assert key["max_budget"] == 7.5 and key["budget_duration"] == "30d"
    assert key["max_concurrency"] is None
    assert key["models"] == ["k2p5", "sonnet"] and key["metadata"] == {"owner": "ana", "project": "garden"}
    assert key["budget"]["max_budget"] == 7.5 and key["budget"]["budget_remaining"] == 7.5
    await browser.wait_for(f"{_key_row(key_id, 'remaining')} === '$7.50'", what="the edited budget in the list")

    # A bad value: the API's refusal in plain words, nothing changed.
    await browser.fill("#edit-max-budget", "2000000")  # over the daemon's bound (the form checks only >= 0)
    await browser.click("#key-edit-submit")
    error = await browser.wait_for("document.getElementById('key-edit-error').textContent", what="the refusal")
    assert "max_budget must be a number of USD from 0 to 1000000" in error, error
    refused = browser.take_problems()  # the browser logs the 400 of the PATCH: that one only
    assert refused and all(p.kind == "network" and "400" in p.text for p in refused), refused
    assert daemon.get(f"/api/keys/{key_id}")["max_budget"] == 7.5
    _show(capsys, "dashboard screenshot (key limits)", await browser.screenshot(tmp_path / "dashboard-key-limits.png"))

    # The key's own page: its budget in the header and in the budget card, after it spent some.
    daemon.wait_agent(_spawn_as(daemon, token, "a garden task"))
    spent = daemon.get(f"/api/keys/{key_id}")["budget"]
    assert spent["spend"] > 0
    await browser.click("#logout")
    await browser.wait_for(_visible("#login-form"))
    await _login(browser, token)
    await browser.wait_for(_visible("#key-budget"), what="the key's budget line")
    assert await browser.text("#key-budget-limit") == "$7.50"
    assert await browser.text("#key-budget-period") == "per 30 days"
    assert await browser.text("#me-name") == "garden"
    assert (await browser.text("#me-resets")).startswith("resets ")
    remaining = 7.5 - spent["spend"]  # the key's level is the smallest here (the daemon's: $50 a day)
    await browser.wait_for(f"Math.abs(Number(document.getElementById('me').dataset.remaining) - {remaining}) < 1e-3",
                           what=f"the key's remaining {remaining} in the header")
    assert await browser.evaluate(_visible("#tab-settings")) is False
    # The spawn form offers only the key's models.
    await browser.wait_for("document.querySelectorAll('#spawn-model option').length > 0", what="the models")
    assert sorted(await browser.evaluate("[...document.querySelectorAll('#spawn-model option')].map(o => o.value)")) \
        == ["k2p5", "sonnet"]
    assert browser.problems == [], "\n".join(map(str, browser.problems))


async def test_a_billing_only_key_sees_no_spawn_form_and_an_admin_read_key_changes_nothing(browser, daemon):
    """billing:read alone: the budget and the spend, no spawn form, no agents, no stream, and not one
    refused request (a 403 would be a console problem).  admin:read: every key's agents and the key
    list, but no way to make, edit or revoke a key, nor to spawn."""
    billing = _new_key(daemon, "accountant", ["billing:read"])
    reader = _new_key(daemon, "auditor", ["admin:read"])
    daemon.wait_agent(daemon.spawn("the admin's task"))
    await browser.navigate(f"http://127.0.0.1:{daemon.port}/")
    await browser.wait_for(_visible("#login-form"))

    await _login(browser, billing["token"])
    await browser.wait_for("document.getElementById('budget-limit').textContent === '$50.00'",
                           what="the daily budget from the orchestrator status")
    await browser.wait_for("document.getElementById('spend-total').textContent !== '–'", what="the spend")
    for hidden in ("#spawn-card", "#agents-card", "#limits-card", "#requests-card", "#tab-settings", "#live"):
        assert await browser.evaluate(_visible(hidden)) is False, hidden
    assert await browser.evaluate(_visible("#spend-card")) is True
    assert await browser.evaluate(_visible("#budget-card")) is True
    calls = await browser.evaluate(_api_calls())
    assert not [c for c in calls if c.startswith(("/api/agents", "/api/events", "/api/spawn", "/api/models"))], calls
    assert browser.problems == [], "\n".join(map(str, browser.problems))

    await browser.click("#logout")
    await browser.wait_for(_visible("#login-form"))
    await _login(browser, reader["token"])
    await browser.wait_for("document.querySelectorAll('#agents tbody tr').length === 1", what="the admin's agent")
    assert "all keys" in await browser.text("#agents-card h2")
    assert await browser.evaluate(_visible("#spawn-card")) is False
    await browser.click("#tab-settings")
    await browser.wait_for("!!document.querySelector('#keys tr[data-status=\"active\"]')", what="the key list")
    assert await browser.evaluate(_visible("#key-create")) is False
    assert await browser.evaluate("document.querySelectorAll('#keys button').length") == 0
    assert browser.problems == [], "\n".join(map(str, browser.problems))


@pytest.fixture
def slow_daemon(tmp_path):
    """Agents that stay running for a while (60 s per offline call), so that Cancel is offered."""
    with Daemon(tmp_path, tmp_path / "state", write_config(tmp_path / "j1msky.toml", delay=60.0)) as d:
        yield d


async def test_an_admin_read_key_is_offered_cancel_only_on_its_own_agents(browser, slow_daemon):
    """admin:read with agents:write sees every key's agents, but cancelling another key's needs
    admin:write: each row names its key, and only the key's own running agents get a Cancel button
    (no button that could only end in a 403)."""
    daemon = slow_daemon
    other = _new_key(daemon, "other", ["agents:read", "agents:write"])
    viewer = _new_key(daemon, "viewer", ["admin:read", "agents:write"])
    foreign = _spawn_as(daemon, other["token"], "the other key's task")
    own = _spawn_as(daemon, viewer["token"], "the viewer's own task")
    await browser.navigate(f"http://127.0.0.1:{daemon.port}/")
    await browser.wait_for(_visible("#login-form"))
    await _login(browser, viewer["token"])
    for agent_id in (foreign, own):
        await browser.wait_for(f"!!{_row(agent_id)}", what=f"the row of {agent_id}")
    buttons = ("(id) => document.querySelector(`#agents tr[data-agent-id=\"${id}\"]`)"
               ".querySelectorAll('button.danger').length")
    # Rows first come from the live stream (no owner named: the button stays), then from the list.
    await browser.wait_for(f"({buttons})({json.dumps(foreign)}) === 0", what="no Cancel on the other key's agent")
    assert await browser.evaluate(f"({buttons})({json.dumps(own)})") == 1
    assert browser.problems == [], "\n".join(map(str, browser.problems))
