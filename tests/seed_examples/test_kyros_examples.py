"""The Kyros document's integration examples (``shared/seeds/003_*.txt``, issue 17) run as printed
against a real daemon: the Python ``KyrosClient``, the JavaScript ``KyrosAPI`` and the
``KyrosWebSocket`` client.  Each copy under tests/seed_examples/kyros/ is one fenced block of
that document byte for byte (the harness checks it before every run: :func:`harness.seed_of`
picks the document by the copy's directory).

Only the base URL and the key change (:data:`KYROS_BASE`, :func:`kyros_replacements`): the
document's ``https://api.kyros.com`` is the daemon's ``/kyros`` (the examples add ``/v1``), its
``ws://localhost:8000/ws`` the daemon's ``/kyros/v1/ws``, and ``your-api-key`` /
``your-jwt-token`` a key of the daemon's.  Where a block cannot run as printed the test names the
line and why, and adds a prelude or an epilogue; it never edits the copy.

The daemon runs the embedded default config: its steps run on the built-in offline provider,
which answers a critic's verdict request with ``VERDICT: APPROVE``, so a task completes.  The
examples use a key with ``agents:read`` and ``agents:write`` (a Kyros developer's); the
escalations they request are approved by another, admin, key through
``POST /kyros/v1/escalation/{id}/approve``, and the WebSocket example (the developer's key)
sees ``escalation_status``.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.browser import Browser, find_chromium
from tests.daemon import Daemon
from tests.seed_examples.harness import HERE, check_verbatim, localise, run_python
from tests.seed_examples.test_js_examples import call, new_key, node_program, run_node
from tests.test_sdk_js import node_binary

pytest.importorskip("requests", reason="the Kyros Python example imports requests (python3-requests on Debian)")

KYROS = HERE / "kyros"
KYROS_BASE = "https://api.kyros.com"  # the examples' base URL (the Python and JavaScript ones)
KYROS_WS = "ws://localhost:8000/ws"   # the WebSocket example's URL
WAIT = 60.0  # seconds: the bound of every wait here (generous: nothing is timed)
TASK_ID = re.compile(r"task_[0-9a-f]+")


def kyros_replacements(url: str, key: str) -> dict[str, str]:
    """The only edits: the document's base URLs become the daemon's Kyros dialect, its key
    placeholders a key of the daemon's."""
    ws = url.replace("http://", "ws://", 1)
    return {KYROS_BASE: url + "/kyros", "your-api-key": key, KYROS_WS: ws + "/kyros/v1/ws",
            "your-jwt-token": key}


def replacements_for(path: Path, url: str, key: str) -> dict[str, str]:
    """The replacements of :func:`kyros_replacements` that occur in the example at ``path`` (each
    one given must occur: the harness refuses a stale one)."""
    text = path.read_text(encoding="utf-8")
    return {old: new for old, new in kyros_replacements(url, key).items() if old in text}


# -- the daemon and its keys --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def developer(seed_daemon: Daemon, seed_url: str, seed_key: str) -> str:
    """A Kyros developer's key: reads and writes tasks, may not approve escalations."""
    return new_key(seed_url, seed_key, scopes=["agents:read", "agents:write"])


def kyros(url: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return call(url, token, method, "/kyros/v1" + path, body)


def task_of(url: str, token: str, task_id: str) -> dict[str, Any]:
    status, body = kyros(url, token, "GET", f"/tasks/{task_id}")
    assert status == 200 and body["success"] is True, (status, body)
    return dict(body["data"])


# -- Python: KyrosClient --------------------------------------------------------------------------------
# The usage's last line `time.sleep(30)` (line 79) uses `time`, which the block never imports (a
# NameError at the first poll of a task not yet finished).  The harness's sitecustomize caps
# time.sleep at 0.05 s (harness.SLEEP_CAP_S): the same poll, only shorter.
PY_PRELUDE = "# test prelude: line 79 `time.sleep(30)` uses time, which the block never imports\nimport time\n"
# The usage never calls request_escalation: the epilogue calls it on a second task, created and not
# submitted (pending; the first one has completed, and a finished task cannot be escalated: 409),
# and prints what the calls answered for the test to check.
PY_EPILOGUE = """\
# test epilogue: print what the usage's calls answered; then call request_escalation, which the
# usage never calls, on a second task (pending: the first one has completed)
import json
print('TASK ' + json.dumps(task))
print('SUBMISSION ' + json.dumps(submission))
print('STATUS ' + json.dumps(status))
second = client.create_task({'title': 'Harden the login', 'description': 'Rate-limit password attempts',
                             'type': 'implementation', 'priority': 'high', 'assignee_role': 'implementer'})
print('ESCALATION ' + json.dumps(client.request_escalation(second['data']['id'], 'Security-critical change')))
"""


def _marked(out: str, marker: str) -> Any:
    line = next((line for line in out.splitlines() if line.startswith(marker + " ")), None)
    assert line is not None, f"no {marker} line in the output:\n{out}"
    return json.loads(line[len(marker) + 1:])


@pytest.fixture  # each test its own run: the WebSocket test approves the escalation it requested
def python_run(seed_url: str, developer: str) -> dict[str, Any]:
    path = KYROS / "python_integration.py"
    done = run_python(path, daemon_url=seed_url, key=None, replacements=replacements_for(path, seed_url, developer),
                      prelude=PY_PRELUDE, epilogue=PY_EPILOGUE, timeout=WAIT * 3)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return {"out": done.stdout, "task": _marked(done.stdout, "TASK"), "submission": _marked(done.stdout, "SUBMISSION"),
            "status": _marked(done.stdout, "STATUS"), "escalation": _marked(done.stdout, "ESCALATION")}


def test_python_kyros_client_creates_submits_and_follows_a_task_to_completed(python_run, seed_url, developer):
    task, submission = python_run["task"], python_run["submission"]
    assert task["success"] is True and TASK_ID.fullmatch(task["data"]["id"]), task
    assert task["data"]["status"] == "pending"  # Kyros's create: the task waits for its submission
    task_id = task["data"]["id"]
    assert submission["success"] is True and submission["data"]["task_id"] == task_id
    assert submission["data"]["role"] == "implementer" and submission["data"]["status"] == "accepted"
    # The usage's loop printed each status it saw and stopped at the first terminal one: completed.
    seen = re.findall(r"^Task status: (\w+)$", python_run["out"], re.M)
    assert seen and seen[-1] == "completed" and set(seen) <= {"pending", "in_progress", "completed"}, seen
    assert python_run["status"]["data"]["status"] == "completed"
    # The daemon agrees: submitted at the implementer, the implementation workflow ran from there.
    done = task_of(seed_url, developer, task_id)
    assert done["status"] == "completed" and done["progress"]["percentage"] == 100
    assert [s["role"] for s in done["steps"]] == ["implementer", "critic", "integrator"], done["steps"]
    assert all(s["status"] == "completed" for s in done["steps"])
    assert done["steps"][1]["verdict"] == "approve"
    assert done["assignee_role"] == "implementer" and done["created_by"]


def test_python_request_escalation_opens_one_waiting_for_approval(python_run, seed_url, developer):
    escalation = python_run["escalation"]
    assert escalation["success"] is True, escalation
    data = escalation["data"]
    assert re.fullmatch(r"esc_[0-9a-f]+", data["escalation_id"]) and data["status"] == "pending_approval"
    assert data["approval_required"] is True
    status, body = kyros(seed_url, developer, "GET", f"/escalation/{data['escalation_id']}/status")
    assert status == 200 and body["data"]["status"] == "pending_approval", body
    assert body["data"]["reason"] == "Security-critical change"


# -- JavaScript: KyrosAPI -------------------------------------------------------------------------------
# The usage polls every 30 s (line 103 `setTimeout(monitorProgress, 30000)`): the prelude caps
# setTimeout at 50 ms, as the Python harness caps time.sleep: the same poll, only shorter.
JS_PRELUDE = """\
// test prelude: line 103 polls every 30 s (setTimeout(monitorProgress, 30000)): capped at 50 ms
const realSetTimeout = setTimeout;
globalThis.setTimeout = (fn, ms, ...args) => realSetTimeout(fn, Math.min(ms, 50), ...args);
"""
# The usage never calls requestEscalation: the epilogue calls it on a second task, created and not
# submitted (pending), and prints its answer (the usage's own task is followed by its own code).
JS_EPILOGUE = """\
// test epilogue: requestEscalation, which the usage never calls, on a second (pending) task
kyros.createTask({title: 'Harden the login', description: 'Rate-limit password attempts',
                  type: 'implementation', priority: 'high', assignee_role: 'implementer'})
    .then((second) => kyros.requestEscalation(second.data.id, 'Security-critical change'))
    .then((escalation) => console.log('ESCALATION ' + JSON.stringify(escalation)));
"""


@pytest.fixture
def js_run(seed_url: str, developer: str) -> dict[str, Any]:
    path = KYROS / "javascript_integration.js"
    done = run_node(path, daemon_url=seed_url, key=None, esm=False, timeout=WAIT * 3,
                    replacements=replacements_for(path, seed_url, developer), prelude=JS_PRELUDE, epilogue=JS_EPILOGUE)
    assert done.returncode == 0 and not done.stderr, \
        f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return {"out": done.stdout, "escalation": _marked(done.stdout, "ESCALATION")}


def test_javascript_kyros_api_creates_submits_and_follows_a_task_to_completed(js_run, seed_url, developer):
    out = js_run["out"]
    created = re.search(r"^Task created: (task_[0-9a-f]+)$", out, re.M)
    assert created, out
    assert "\nTask submitted to agent\n" in out
    seen = re.findall(r"^Task status: (\w+)$", out, re.M)
    assert seen and seen[-1] == "completed" and set(seen) <= {"pending", "in_progress", "completed"}, seen
    assert re.search(r"^Task status: completed\nTask completed successfully!$", out, re.M), out
    done = task_of(seed_url, developer, created.group(1))
    assert done["status"] == "completed"
    assert [s["role"] for s in done["steps"]] == ["implementer", "critic", "integrator"]


def test_javascript_request_escalation_opens_one_waiting_for_approval(js_run):
    escalation = js_run["escalation"]
    assert escalation["success"] is True and escalation["data"]["status"] == "pending_approval", escalation


def test_the_preludes_are_needed(seed_url, developer):
    """As printed, the Python block dies at its first poll of an unfinished task (NameError: time):
    if the document is corrected, this fails and the prelude goes.  (The JavaScript prelude only
    shortens a wait.)"""
    path = KYROS / "python_integration.py"
    # Its first poll comes right after the submission: the task has three steps to run then.
    done = run_python(path, daemon_url=seed_url, key=None, replacements=replacements_for(path, seed_url, developer),
                      timeout=WAIT * 3)
    if done.returncode == 0:
        pytest.skip("the task completed before the example's first poll (nothing reached line 79)")
    assert "NameError: name 'time' is not defined" in done.stderr, done.stderr


# -- WebSocket: KyrosWebSocket ---------------------------------------------------------------------------
def _node_websocket_args() -> list[str] | None:
    """The node arguments that give the example a global WebSocket (node 22 has one; 20.10+ and
    21 behind --experimental-websocket), or None: node 18 has none."""
    node = node_binary()
    for args in ([], ["--experimental-websocket", "--disable-warning=ExperimentalWarning"]):
        probe = subprocess.run([node, *args, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 3)"],
                               capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode == 0 and not probe.stderr:
            return args
    return None


# The usage's `ws.on('open', ...)` (line 98) waits for a message of type "open", which never comes:
# handleMessage dispatches the daemon's messages by their type, and the socket's own open event is
# handled inside connect(), which emits nothing.  So as printed the usage never subscribes, and a
# daemon pushes nothing to a socket that has not subscribed.  The epilogue subscribes as the usage
# meant to, when the daemon confirms the auth (its {"type": "auth"} message), and prints the
# messages the test reads: the daemon's "subscribed" and each escalation_status's data as JSON.
WS_EPILOGUE = """\
// test epilogue: line 98 waits for an 'open' message no server sends (connect() handles the socket's
// open itself): subscribe when the daemon confirms the auth instead, and print what the test reads
ws.on('auth', () => ws.subscribe(['task_progress', 'escalation_status']));
ws.on('subscribed', () => console.log('SUBSCRIBED'));
ws.on('escalation_status', (data) => console.log('ESCALATION_STATUS ' + JSON.stringify(data)));
"""
# In Chromium the page's console is the output: the prelude keeps each console.log line for the test.
BROWSER_PRELUDE = """\
// test prelude (browser only): keep what the example prints, for the test to read
window.printed = [];
console.log = (...args) => window.printed.push(args.map((a) => typeof a === 'string' ? a : JSON.stringify(a)).join(' '));
"""


class NodeWebSocketExample:
    """The WebSocket example running in node (with a global WebSocket): its printed lines as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.printed: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.printed.put(line.rstrip("\n"))

    async def lines(self) -> list[str]:
        while True:
            try:
                self.seen.append(self.printed.get_nowait())
            except queue.Empty:
                return self.seen


class BrowserWebSocketExample:
    """The WebSocket example running in headless Chromium (node 18 has no WebSocket)."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser

    async def lines(self) -> list[str]:
        return list(await self.browser.evaluate("window.printed || []"))


async def wait_printed(example: Any, predicate: Any, what: str) -> list[str]:
    """Wait (bounded) until the example has printed lines satisfying ``predicate``."""
    end = time.monotonic() + WAIT
    while True:
        lines = await example.lines()
        if predicate(lines):
            return lines
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {WAIT:g} s waiting for {what}; printed:\n" + "\n".join(lines))
        await asyncio.sleep(0.1)


@pytest.fixture(params=["node", "chromium"])
async def ws_example(request: pytest.FixtureRequest, seed_url: str, developer: str, tmp_path: Path) -> Any:
    """The WebSocket example, localised, with the epilogue, running in node (when node has a
    WebSocket: node 18, Debian bookworm's, has none) and in headless Chromium (tests/browser.py)
    on a page of the daemon's origin, a browser being where the document's client runs."""
    path = KYROS / "websocket_integration.js"
    replacements = replacements_for(path, seed_url, developer)
    if request.param == "node":
        node_args = _node_websocket_args()
        if node_args is None:
            pytest.skip(f"node {node_binary()} has no WebSocket (node 22 has one, 20.10+ behind a flag): "
                        "the Chromium run covers the example")
        with node_program(path, daemon_url=seed_url, key=None, esm=False, replacements=replacements,
                          epilogue=WS_EPILOGUE, node_args=node_args) as (command, work, env):
            proc = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
            try:
                yield NodeWebSocketExample(proc)
            finally:
                proc.kill()
                _, err = proc.communicate(timeout=10)
                assert "Error" not in err, err  # no uncaught exception, no WebSocket error
        return
    binary = find_chromium()
    if binary is None:
        if os.environ.get("J1MSKY_REQUIRE_BROWSER") == "1":
            pytest.fail("J1MSKY_REQUIRE_BROWSER=1 but no chromium binary was found (apt-get install chromium)")
        pytest.skip("no chromium binary (apt-get install chromium); J1MSKY_REQUIRE_BROWSER=1 makes this fail")
    check_verbatim(path)
    program = BROWSER_PRELUDE + localise(path.read_text(encoding="utf-8"), base_url=seed_url, key=None,
                                         replacements=replacements) + WS_EPILOGUE
    async with Browser.launch(tmp_path, binary) as browser:
        # A page of the daemon's own origin (its health document: no script of its own), as the
        # document's client would be served; a blank page's origin is "null", a cross-site one.
        await browser.navigate(seed_url + "/api/health")
        await browser.evaluate(program + "\nundefined;")
        yield BrowserWebSocketExample(browser)
        # The browser asks for /favicon.ico for a page without an icon link (the daemon has none: 404).
        problems = [p for p in browser.problems if not p.url.endswith("/favicon.ico")]
        assert problems == [], "\n".join(map(str, problems))


def approve(url: str, admin: str, escalation_id: str, decision: str = "approved") -> dict[str, Any]:
    status, body = kyros(url, admin, "POST", f"/escalation/{escalation_id}/approve",
                         {"decision": decision, "reason": "Security-critical task with high business impact",
                          "approver_comments": "Approved due to security complexity"})
    assert status == 200 and body["success"] is True, (status, body)
    return dict(body["data"])


async def test_websocket_client_sees_the_escalation_status_of_the_approved_escalations(
        ws_example, python_run, js_run, seed_url, seed_key, developer):
    """Both examples' escalations, approved by the admin key through /kyros/v1/escalation/{id}/approve,
    reach the WebSocket example as escalation_status messages naming the approver."""
    await wait_printed(ws_example, lambda lines: "SUBSCRIBED" in lines, "the subscription")
    admin_id = call(seed_url, seed_key, "GET", "/api/keys/me")[1]["key_id"]
    wanted = {python_run["escalation"]["data"]["escalation_id"], js_run["escalation"]["data"]["escalation_id"]}
    for escalation_id in sorted(wanted):
        decided = await asyncio.to_thread(approve, seed_url, seed_key, escalation_id)
        assert decided["status"] == "approved" and decided["approved_by"] == admin_id, decided

    def both(lines: list[str]) -> bool:  # an escalation_status saying "approved" for each
        return wanted <= {data.get("escalation_id") for data in (json.loads(line.split(" ", 1)[1]) for line in lines
                                                                 if line.startswith("ESCALATION_STATUS "))
                          if data.get("status") == "approved"}

    lines = await wait_printed(ws_example, both, "escalation_status of both escalations")
    statuses = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("ESCALATION_STATUS ")]
    for escalation_id in wanted:
        mine = [s for s in statuses if s["escalation_id"] == escalation_id]
        # (its submission too, when the example requested it after the socket had subscribed)
        assert [m["status"] for m in mine] in (["approved"], ["pending_approval", "approved"]), mine
        assert mine[-1]["approved_by"] == admin_id, mine
        assert TASK_ID.fullmatch(mine[-1]["task_id"]) and mine[-1]["approved_at"], mine
    # The example's own handler printed them too (its console.log of the data).
    assert any(line.startswith("Escalation status update:") for line in lines), lines
    # The developer's key may not approve (admin:write): FORBIDDEN in the Kyros envelope.
    status, body = kyros(seed_url, developer, "POST", f"/escalation/{sorted(wanted)[0]}/approve",
                         {"decision": "approved"})
    assert status == 403 and body["success"] is False and body["error"]["code"] == "FORBIDDEN", body
