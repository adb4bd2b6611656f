"""The dashboard's views of issue 18, in a real headless Chromium against a real daemon on
loopback (tests/browser.py): the agent detail (output streamed live, error, attempts,
fallbacks, served_by, usage, charges, timeline, webhook deliveries), charged costs in the
table, newest-first ordering within one second, calls used of the limits, provider health at
login, a 360 px wide phone layout, teams, models with prices and performance, keys with their
spend, and the charts the page draws itself (spend per day and model, today's burn-down).

Each test fails on any JavaScript exception, console error or CSP violation, and keeps a
screenshot of each view it covers (``_keep``: named by view, under $J1MSKY_ARTEFACTS/screenshots
when set, else the test's tmp dir; their paths are printed).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.browser import Browser
from tests.daemon import Daemon, wait_until, write_config
from tests.fakeupstream import FakeUpstream
from tests.test_dashboard import (  # noqa: F401  (browser, chromium, *daemon: fixtures)
    _as, _login, _new_key, _row, _visible, browser, chromium, daemon, slow_daemon, tenant_daemon)
from tests.test_webhooks import SECRET, receiver  # noqa: F401  (receiver: a fixture)


def _keep(capsys, path: Path) -> Path:
    """Keep a screenshot as an artefact: $J1MSKY_ARTEFACTS/screenshots/ when set (CI), and say where."""
    artefacts = os.environ.get("J1MSKY_ARTEFACTS") or os.environ.get("J1MSKY_SCREENSHOT_DIR")
    if artefacts:
        target = Path(artefacts) / "screenshots" if os.environ.get("J1MSKY_ARTEFACTS") else Path(artefacts)
        target.mkdir(parents=True, exist_ok=True)
        path = Path(shutil.copy(path, target / path.name))
    with capsys.disabled():
        print(f"\nscreenshot {path.stem}: {path}")
    return path


async def _shot(browser: Browser, tmp_path: Path, capsys, view: str) -> Path:
    return _keep(capsys, await browser.screenshot(tmp_path / f"dashboard-{view}.png"))


def _admin(daemon: Daemon) -> str:
    return json.loads((daemon.state_dir / "bootstrap-admin.key").read_text())["token"]


async def _open(browser: Browser, daemon: Daemon, token: str) -> None:
    await browser.navigate(f"http://127.0.0.1:{daemon.port}/")
    await browser.wait_for(_visible("#login-form"), what="the login form")
    await _login(browser, token)


def _field(name: str) -> str:
    return f"(document.querySelector('#detail-fields dd[data-field=\"{name}\"]') || {{}}).textContent"


def _money(v: float) -> str:  # app.js's money()
    return "$0.00" if v == 0 else f"${v:.2f}" if abs(v) >= 0.01 else f"${v:.6f}"


def _no_problems(browser: Browser) -> None:
    assert browser.problems == [], "\n".join(map(str, browser.problems))


# -- the agent detail ------------------------------------------------------------------------------
async def test_the_agent_detail_shows_what_happened_and_its_webhook_deliveries(browser, tenant_daemon, receiver,
                                                                                tmp_path, capsys):
    daemon = tenant_daemon  # its webhooks may go to loopback
    status, body = daemon.request("POST", "/api/webhooks", {"url": receiver.url, "secret": SECRET,
                                                             "events": ["agent.spawned", "agent.completed"]})
    assert status == 201, body
    await _open(browser, daemon, _admin(daemon))
    await browser.wait_for("document.getElementById('live').dataset.state === 'live'", what="the live stream")
    agent_id = daemon.spawn("Explain the detail view")
    await browser.wait_for(f"{_row(agent_id)} && {_row(agent_id)}.dataset.status === 'completed'", what="completed")
    agent = daemon.get(f"/api/agent/{agent_id}")

    # Keyboard: the id is a button; the detail takes the focus.
    await browser.evaluate(f"{_row(agent_id)}.querySelector('button.link').focus()")
    await browser.click(f"#agents tr[data-agent-id=\"{agent_id}\"] button.link")
    await browser.wait_for(_visible("#detail-card"), what="the detail")
    assert await browser.evaluate("document.activeElement.id") == "detail-title"
    await browser.wait_for(f"{_field('charged')} === {json.dumps(_money(agent['cost']))}", what="the charge")
    assert await browser.evaluate(_field("estimated")) == _money(agent["estimated_cost"])
    assert await browser.evaluate(_field("refunded")) == _money(agent["charges"]["refunded"])
    assert await browser.evaluate(_field("served_by")) == "k2p5 on offline"
    assert await browser.evaluate(_field("fallbacks")) == "none (k2p5 answered)"
    assert await browser.evaluate(_field("attempts")) == "1"
    usage = agent["usage"]
    assert await browser.evaluate(_field("usage")) == f"{usage['input_tokens']} in, {usage['output_tokens']} out"
    assert await browser.evaluate(_field("task")) == "Explain the detail view"
    for step in ("created", "queued", "started", "completed"):
        assert await browser.evaluate(_field(step)) not in ("", "–"), step
    assert await browser.text("#detail-output") == agent["result"]
    # Its deliveries (the detail refreshes with the panels; Refresh forces it).
    await receiver.wait_for(2)
    hook_id = body["data"]["webhook_id"]
    for _ in range(100):  # the daemon marks them delivered once the receiver answered
        rows = daemon.get(f"/api/webhooks/{hook_id}/deliveries")["data"]
        if len(rows) == 2 and all(r["status"] == "delivered" for r in rows):
            break
        await asyncio.sleep(0.1)
    await browser.click("#refresh")
    await browser.wait_for("[...document.querySelectorAll('#detail-deliveries tbody tr')]"
                           ".filter(r => r.dataset.status === 'delivered').length === 2", what="two deliveries")
    events = await browser.evaluate("[...document.querySelectorAll('#detail-deliveries tbody tr')]"
                                    ".map(r => r.children[0].textContent)")
    assert events == ["agent.spawned", "agent.completed"]
    await _shot(browser, tmp_path, capsys, "agent-detail")

    # Escape closes it and gives the focus back to the row's button.
    await browser.evaluate("document.getElementById('detail-card').dispatchEvent("
                           "new KeyboardEvent('keydown', {key: 'Escape', bubbles: true}))")
    assert await browser.evaluate(_visible("#detail-card")) is False
    assert await browser.evaluate("document.activeElement.closest('tr') && "
                                  "document.activeElement.closest('tr').dataset.agentId") == agent_id
    _no_problems(browser)


async def test_cancelled_and_failed_rows_show_what_was_charged_and_the_failure(browser, slow_daemon, tmp_path,
                                                                              capsys):
    """The cost column shows what was charged: $0.00 for an agent cancelled before it ran,
    not its estimate (which it showed, 40-60x a completed agent's cost); an estimate only while
    an agent runs, marked so.  The detail shows the refund, the error, and what is known of
    the tokens."""
    daemon = slow_daemon
    running = [daemon.spawn(f"still running {i}") for i in range(2)]  # the runtime's two slots (60 s a call)
    queued = daemon.spawn("cancelled while queued")
    failed = daemon.spawn("too slow", timeout=1)
    assert daemon.request("DELETE", f"/api/agent/{queued}")[0] == 200
    daemon.wait_agent(failed)
    views = {a: daemon.get(f"/api/agent/{a}") for a in (queued, failed)}
    assert views[queued]["status"] == "cancelled" and views[queued]["charges"]["charged"] == 0
    assert views[queued]["estimated_cost"] > 0
    await _open(browser, daemon, _admin(daemon))
    for agent_id, status in ((queued, "cancelled"), (failed, "failed"), (running[0], "running")):
        await browser.wait_for(f"{_row(agent_id)} && {_row(agent_id)}.dataset.status === '{status}'", what=status)
    cost = "(id) => document.querySelector(`#agents tr[data-agent-id=\"${id}\"] td.cost`).textContent"
    assert await browser.call(cost, queued) == "$0.00"
    assert await browser.call(cost, failed) == _money(views[failed]["charges"]["charged"])
    estimate = daemon.get(f"/api/agent/{running[0]}")["estimated_cost"]
    assert await browser.call(cost, running[0]) == f"est. {_money(estimate)}"

    await browser.click(f"#agents tr[data-agent-id=\"{queued}\"] td.task")  # the row opens it too
    await browser.wait_for(f"{_field('error')} === 'cancelled by request'", what="the cancelled one's detail")
    assert await browser.evaluate(_field("charged")) == "$0.00"
    assert await browser.evaluate(_field("refunded")) == _money(views[queued]["estimated_cost"])
    assert await browser.evaluate(_field("started")) == "–"
    assert await browser.evaluate(_field("usage")) == "not reported (cancelled before the provider reported tokens)"

    await browser.click(f"#agents tr[data-agent-id=\"{failed}\"] td.task")
    await browser.wait_for(f"{_field('error')} && {_field('error')}.startsWith('timeout')", what="the error")
    view = views[failed]
    assert await browser.evaluate(_field("charged")) == _money(view["charges"]["charged"])
    assert await browser.evaluate(_field("refunded")) == _money(view["charges"]["refunded"])
    usage = view["usage"]
    assert await browser.evaluate(_field("usage")) == (
        f"{usage['input_tokens']} in, {usage['output_tokens']} out" if usage
        else "not reported (failed before the provider reported tokens)")
    assert await browser.evaluate(_field("fallbacks")) == "none answered: the error names each model tried"
    assert await browser.text("#detail-output") == "(no output: failed)"
    await _shot(browser, tmp_path, capsys, "agent-detail-failed")
    await browser.click("#detail-close")
    for agent_id in running:
        daemon.request("DELETE", f"/api/agent/{agent_id}")
    _no_problems(browser)


@pytest.fixture
async def streaming(tmp_path):
    """A daemon with a model ``streamy`` on a fake OpenAI-style upstream that streams a word
    every 0.4 s (the daemon streams a call when a live reader wants agent.output)."""
    up = await FakeUpstream().start()
    up.reply_text = " ".join(f"word{i}" for i in range(30))
    up.chunk_delay = 0.4
    config = write_config(tmp_path / "j1msky.toml")
    config.write_text(config.read_text() + (
        f'\n[providers.stream]\nplugin = "openai_compat"\nbase_url = "{up.url}/v1"\n'
        'api_key_env = "STREAM_TEST_KEY"\nmax_concurrency = 2\n\n'
        '[models.streamy]\nprovider = "stream"\nupstream = "streamy-up"\n'
        'input_per_1k = 0.001\noutput_per_1k = 0.002\nblended_per_1k = 0.001\n'))
    try:
        with Daemon(tmp_path, tmp_path / "state", config, env={"STREAM_TEST_KEY": "sk-test"}) as daemon:
            yield daemon, up
    finally:
        await up.close()


async def test_a_running_agents_output_streams_into_its_detail(browser, streaming, tmp_path, capsys):
    daemon, _ = streaming
    await _open(browser, daemon, _admin(daemon))
    await browser.wait_for("document.getElementById('live').dataset.state === 'live'", what="the live stream")
    status, _, body = _as(daemon, _admin(daemon), "POST", "/spawn", {"task": "stream to me", "model": "streamy"})
    assert status == 200, body
    agent_id = body["agent_id"]
    await browser.wait_for(f"!!{_row(agent_id)}", what="the row")
    await browser.click(f"#agents tr[data-agent-id=\"{agent_id}\"] button.link")
    # Part of the text while the agent still runs: it came through agent.output, not the result.
    partial = await browser.wait_for(
        "(() => { const t = document.getElementById('detail-output').textContent;"
        " return t.includes('word1') && !t.includes('word29') && "
        "document.getElementById('detail-live').textContent === '(streaming)' ? t : ''; })()",
        timeout=30, what="part of the output while it runs")
    assert "word0" in partial
    await _shot(browser, tmp_path, capsys, "agent-detail-streaming")
    await browser.wait_for(f"{_row(agent_id)}.dataset.status === 'completed'", timeout=30, what="completed")
    await browser.wait_for("document.getElementById('detail-output').textContent.includes('word29')",
                           what="the whole result")
    # The mark goes when the detail is drawn again from the ended agent (a moment after its text).
    await browser.wait_for("document.getElementById('detail-live').textContent === ''", what="no (streaming) mark")
    _no_problems(browser)


# -- the table: order, costs; the limits and health ---------------------------------------------------
async def test_agents_created_in_one_second_show_newest_first(browser, daemon):
    """A batch shares its creation time: the stream reports them oldest first, and the page
    showed them so; newest first means the last of the batch on top."""
    await _open(browser, daemon, _admin(daemon))
    await browser.wait_for("document.getElementById('live').dataset.state === 'live'", what="the live stream")
    status, body = daemon.request("POST", "/api/spawn-batch",
                                  {"agents": [{"task": f"batch {i}", "model": "k2p5"} for i in range(5)]})
    assert status == 200, body
    ids = [a["agent_id"] for a in body["agents"]]
    await browser.wait_for(f"document.querySelectorAll('#agents tbody tr').length === {len(ids)}", what="the rows")
    shown = await browser.evaluate("[...document.querySelectorAll('#agents tbody tr')].map(r => r.dataset.agentId)")
    assert shown == ids[::-1]
    listed = [a["agent_id"] for a in daemon.get("/api/agents?sort=-created_at")["data"]]
    assert listed == ids[::-1]  # the API's order too
    await browser.reload()  # from the list and the replayed stream: the same order
    await browser.wait_for(f"document.querySelectorAll('#agents tbody tr').length === {len(ids)}", what="the rows")
    assert await browser.evaluate("[...document.querySelectorAll('#agents tbody tr')].map(r => r.dataset.agentId)") \
        == ids[::-1]
    _no_problems(browser)


async def test_used_is_calls_and_provider_health_shows_at_login(browser, daemon, tmp_path, capsys):
    daemon.wait_agent(daemon.spawn("one call"))
    await browser.navigate(f"http://127.0.0.1:{daemon.port}/")
    await browser.wait_for(_visible("#login-form"))
    await _login(browser, _admin(daemon))
    # Health at login, well before the 15 s poll.
    await browser.wait_for("!!document.querySelector('#breakers tr[data-provider=\"offline\"]')", timeout=5,
                           what="the breakers right after login")
    # One call made: 1 of the hourly limit, though its bucket is full again by now.
    await browser.wait_for("!!document.querySelector('#providers tr[data-provider=\"offline\"]')", what="limits")
    used = await browser.text("#providers tr[data-provider=\"offline\"] td.used")
    limit = daemon.get("/api/rate-limits")["limits"]["offline"]["limit"]
    assert used == f"1 / {limit}"

    def refilled() -> dict | None:
        state = daemon.get("/api/rate-limits")["limits"]["offline"]
        return state if state["remaining"] == state["limit"] else None
    # The bucket refills within seconds (10,000 an hour); the calls used stay 1 (on a loaded
    # machine the page can be read before the refill, so wait for it rather than assume it).
    assert wait_until(refilled, 15.0, what="the offline bucket to refill")["used"] == 1
    spawn = await browser.text("#requests tr[data-class=\"spawn\"] td.used")
    assert spawn.startswith("1 / ")
    _no_problems(browser)


# -- teams, models, keys, charts -------------------------------------------------------------------
async def test_models_teams_keys_spend_and_the_charts(browser, daemon, tmp_path, capsys):
    household = _new_key(daemon, "household", ["agents:read", "agents:write", "billing:read"])
    _, _, spawned = _as(daemon, household["token"], "POST", "/spawn", {"task": "spend a little", "model": "k2p5"})
    daemon.wait_agent(spawned["agent_id"])
    daemon.wait_agent(daemon.spawn("the admin spends", model="sonnet"))
    await _open(browser, daemon, _admin(daemon))

    # Models with prices and the last 24 h's performance; teams with their members.
    await browser.wait_for("!!document.querySelector('#models tr[data-model=\"k2p5\"]')", what="the models")
    prices = daemon.get("/api/models/k2p5")["data"]["pricing"]
    row = "#models tr[data-model=\"k2p5\"]"
    cells = await browser.evaluate(f"[...document.querySelector('{row}').children].map(c => c.textContent)")
    assert cells[3] == _money(prices["input_tokens"]) and cells[4] == _money(prices["output_tokens"])
    assert cells[5] == "100.0%" and cells[8] == "1"
    teams = daemon.get("/api/models")["data"]["teams"]
    assert await browser.evaluate("document.querySelectorAll('#teams tbody tr').length") == len(teams) > 0
    first = teams[0]
    assert await browser.text(f"#teams tr[data-team=\"{first['id']}\"] td:nth-child(3)") == ", ".join(first["members"])

    # Spend per day and model: today's bars, one per model; the burn-down with its projection.
    today = daemon.get("/api/billing/usage?group_by=day,model")["rows"]
    await browser.wait_for(f"document.querySelectorAll('#spend-chart rect.series').length === {len(today)}",
                           what="a bar per model and day")
    drawn = await browser.evaluate("[...document.querySelectorAll('#spend-chart rect.series')]"
                                   ".map(r => r.dataset.series).sort()")
    assert drawn == sorted(r["model"] for r in today)
    assert await browser.evaluate("document.querySelectorAll('#spend-chart-legend li').length") == len(today)
    await browser.wait_for("!!document.querySelector('#burn-chart polyline.left')", what="the burn-down")
    assert await browser.evaluate("!!document.querySelector('#burn-chart line.projection')")
    assert float(await browser.evaluate("document.getElementById('burn-card').dataset.projected")) > 0
    assert "by midnight UTC" in await browser.text("#burn-caption")
    # Agents per hour (48 h) by final status, and run time p50/p95 per provider: GET /api/metrics/timeseries.
    ended = daemon.get("/api/metrics/timeseries?metric=agents&period=48h")
    total = sum(sum(x["count"]) for x in ended["series"])
    assert total == 2
    await browser.wait_for(f"document.getElementById('calls-card').dataset.total === '{total}'", what="the calls chart")
    assert await browser.evaluate("document.getElementById('calls-card').dataset.failed") == "0"
    assert await browser.evaluate("document.querySelectorAll('#calls-chart rect.end-completed').length") == 1
    assert await browser.text("#calls-caption") == "2 ended in 48 h, 0 failed (0.0%)."
    latency = daemon.get("/api/metrics/timeseries?metric=latency_seconds&period=48h")
    assert [x["label"] for x in latency["series"]] == ["offline"]
    await browser.wait_for("document.querySelectorAll('#latency-chart [data-provider=\"offline\"]').length === 2",
                           what="p50 and p95 of the offline provider")
    assert (await browser.text("#latency-caption")).startswith("Latest hour with agents: offline p50 ")
    await _shot(browser, tmp_path, capsys, "overview")

    # Keys with their spend this month (the admin sees every key's).
    await browser.click("#tab-settings")
    by_key = {r["key_id"]: r["cost"] for r in daemon.get("/api/billing/usage?group_by=key")["rows"]}
    cell = f"(document.querySelector('#keys tr[data-key-id=\"{household['key_id']}\"] td.month-spend') || {{}})"
    await browser.wait_for(f"{cell}.textContent === {json.dumps(_money(by_key[household['key_id']]))}",
                           what="the household key's spend")
    await _shot(browser, tmp_path, capsys, "settings-keys")
    _no_problems(browser)


async def test_a_key_that_sees_its_own_work_gets_no_daemon_wide_burn_down(browser, daemon):
    own = _new_key(daemon, "own", ["agents:read", "billing:read"])
    await _open(browser, daemon, own["token"])
    await browser.wait_for("document.getElementById('spend-chart-caption').textContent !== ''", what="its chart")
    assert await browser.evaluate(_visible("#burn-card")) is False
    for card in ("#calls-card", "#latency-card"):  # every key's work: admin:read
        assert await browser.evaluate(_visible(card)) is False
    assert "/api/metrics/timeseries" not in await browser.evaluate(
        "performance.getEntriesByType('resource').map(e => new URL(e.name).pathname).join(' ')")
    assert await browser.evaluate(_visible("#spend-chart-card")) is True
    _no_problems(browser)


# -- a phone ---------------------------------------------------------------------------------------
async def test_the_page_fits_a_360_px_phone(browser, daemon, tmp_path, capsys):
    """At 390 px the page was 604 px wide; from 360 px up nothing may be wider than the screen."""
    daemon.wait_agent(daemon.spawn("a task with a rather long description " * 4))
    await browser.send("Emulation.setDeviceMetricsOverride",
                       {"width": 360, "height": 740, "deviceScaleFactor": 1, "mobile": True})
    # Logged in with a key whose name is one long word (it widened the header to 1,408 px).
    status, made = daemon.request("POST", "/api/keys", {"name": "W" * 100, "scopes": ["admin:read", "admin:write",
                                                                                      "agents:read", "agents:write"]})
    assert status == 201, made
    await _open(browser, daemon, made["token"])
    await browser.wait_for("document.querySelectorAll('#agents tbody tr').length === 1", what="the agent")
    await browser.wait_for("!!document.querySelector('#models tbody tr')", what="the models")
    await browser.wait_for("!!document.querySelector('#spend-chart svg')", what="the chart")
    width = "document.documentElement.scrollWidth"
    assert await browser.evaluate("window.innerWidth") == 360
    assert await browser.evaluate(width) <= 360, await browser.evaluate(width)
    await _shot(browser, tmp_path, capsys, "phone-overview")
    await browser.click("#agents tbody tr button.link")
    await browser.wait_for(f"{_field('charged')} && {_field('charged')} !== 'not yet'", what="the detail")
    assert await browser.evaluate(width) <= 360, await browser.evaluate(width)
    await _shot(browser, tmp_path, capsys, "phone-agent-detail")
    await browser.click("#tab-settings")
    await browser.wait_for("!!document.querySelector('#keys tbody tr')", what="the keys")
    assert await browser.evaluate(width) <= 360, await browser.evaluate(width)
    await _shot(browser, tmp_path, capsys, "phone-settings")
    _no_problems(browser)
