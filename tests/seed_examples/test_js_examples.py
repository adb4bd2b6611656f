"""The reference's JavaScript examples (tests/seed_examples/js/, each a byte-for-byte copy of one
fenced block, checked by the harness) run with node against a real daemon.

:func:`run_node` localises a copy (the harness's :func:`localise`: base URL and key placeholders,
plus replacements each test names with its reason) and runs it in a temp dir whose node_modules
hold the SDK as a user would have it installed: ``j1msky`` (a link to sdk/js, as
``npm install ./sdk/js`` makes), ``j1msky-sdk`` (the alias package's files, unpacked there as npm
would) and, for Quick Start Example 6, ``axios`` from scripts/test's ``.cache/seed-node``.  ESM
blocks (``import``, top-level ``await``) run as ``.mjs``, ``require`` blocks as ``.cjs``.  Where a
block cannot run as printed, the test names the line and why, and adds a prelude; it never edits the copy.

The daemon: the embedded default config (the models and teams the reference names) plus
``[webhooks] allowed_networks = ["127.0.0.0/8"]``, so that the Webhooks example's URL can be the
test's own loopback receiver (tests never contact a non-loopback address).  Every example here
sends a key (a placeholder or ``J1MSKY_KEY``): none relies on ``[security] local_scopes``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from j1mskyd.config import _EMBEDDED_TOML
from tests.daemon import ROOT, Daemon, wait_until
from tests.seed_examples.harness import check_verbatim, example_env, localise
from tests.test_sdk_js import node_binary

HERE = Path(__file__).resolve().parent / "js"
SDK = ROOT / "sdk" / "js"
# scripts/test installs axios here (npm install --prefix .cache/seed-node axios@1) when npm exists.
AXIOS = ROOT / ".cache" / "seed-node" / "node_modules" / "axios"

# The Error Handling block's line 10 calls sleep(), which the reference never defines (a
# ReferenceError as printed).  The test defines it, capped at 50 ms like the Python harness's
# time.sleep cap: it only shortens the wait (Retry-After is an hour here).
SLEEP_PRELUDE = ("// test prelude: line 10 `await sleep(...)` calls a sleep the reference never defines\n"
                 "const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.min(ms, 50)));\n")


@contextlib.contextmanager
def node_program(name: str | Path, *, daemon_url: str, key: str | None, esm: bool,
                 replacements: Mapping[str, str] | None = None, prelude: str = "", epilogue: str = "",
                 env: Mapping[str, str] | None = None,
                 node_args: Sequence[str] = ()) -> Iterator[tuple[list[str], Path, dict[str, str]]]:
    """The command line, working directory and environment that run tests/seed_examples/js/NAME
    (or the copy at the path NAME, e.g. a Kyros example), checked verbatim first and localised,
    with node (``node_args`` before the script), for as long as the context lasts.

    ``prelude`` and ``epilogue`` are code the TEST adds around the block, each with a comment
    saying why.  ``env`` adds to the harness's (J1MSKY_API, J1MSKY_KEY).
    """
    node = node_binary()
    path = HERE / name
    check_verbatim(path)
    source = localise(path.read_text(encoding="utf-8"), base_url=daemon_url, key=key, replacements=replacements)
    program = "".join(p if p.endswith("\n") or not p else p + "\n" for p in (prelude, source, epilogue))
    with tempfile.TemporaryDirectory(prefix="seed-js-") as tmp:
        work = Path(tmp)
        modules = work / "node_modules"
        modules.mkdir()
        (modules / "j1msky").symlink_to(SDK, target_is_directory=True)
        shutil.copytree(SDK / "alias", modules / "j1msky-sdk")
        if AXIOS.is_dir():
            (modules / "axios").symlink_to(AXIOS, target_is_directory=True)
        script = work / (path.stem + (".mjs" if esm else ".cjs"))
        script.write_text(program, encoding="utf-8")
        run_env = example_env(daemon_url, key, env)
        run_env.pop("NODE_OPTIONS", None)
        yield [node, *node_args, str(script)], work, run_env


def run_node(name: str | Path, *, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run an example with node to its end (:func:`node_program`'s arguments); returns the
    completed process: the test checks its exit code and output."""
    with node_program(name, **kwargs) as (command, work, run_env):
        return subprocess.run(command, cwd=work, env=run_env, capture_output=True, text=True,
                              timeout=timeout, check=False)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0 and not proc.stderr, \
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc.stdout


# -- the daemon and what the tests read from it -----------------------------------------------------
@pytest.fixture(scope="module")
def js_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("seed-js")
    config = work / "config.toml"
    config.write_text(_EMBEDDED_TOML + '\n[webhooks]\nallowed_networks = ["127.0.0.0/8"]\n', encoding="utf-8")
    with Daemon(work, work / "state", config, name="seed-js-daemon") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def url(js_daemon: Daemon) -> str:
    return f"http://127.0.0.1:{js_daemon.port}"


def bootstrap(daemon: Daemon) -> dict[str, Any]:
    return dict(json.loads((daemon.state_dir / "bootstrap-admin.key").read_text()))


@pytest.fixture(scope="module")
def key(js_daemon: Daemon) -> str:
    return str(bootstrap(js_daemon)["token"])


def call(url: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    req = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")


def agents_with_task(daemon: Daemon, pattern: str) -> list[dict[str, Any]]:
    rows = daemon.get("/api/agents?limit=100")["data"]
    return [a for a in rows if re.search(pattern, a["task"])]


def new_key(url: str, admin: str, **fields: Any) -> str:
    status, made = call(url, admin, "POST", "/api/keys", {"name": "seed-js-example", **fields})
    assert status == 201, made
    return str(made["token"])


def spent_key(url: str, admin: str) -> str:
    """A key whose spawn limit (1 an hour) is spent: its next spawn is a real 429 with Retry-After."""
    limited = new_key(url, admin, scopes=["agents:read", "agents:write"], limits={"spawn": 1})
    assert call(url, limited, "POST", "/api/spawn", {"model": "k2p5", "task": "spends the limit"})[0] == 200
    return limited


# -- the examples ---------------------------------------------------------------------------------------
def test_quick_start_6_axios(url: str, key: str) -> None:
    """Example 6 (axios, its own polling): spawns, waits, prints the result and the cost."""
    if not AXIOS.is_dir():
        pytest.skip(f"axios is not installed in {AXIOS.parent} (scripts/test installs it with npm when npm exists)")
    out = ok(run_node("quick_start_6.js", daemon_url=url, key=key, esm=False))
    assert re.search(r"^Spawned agent: subagent_\d+_\d+$", out, re.M), out
    assert re.search(r"Task completed in \d+(\.\d+)?s$", out, re.M), out
    assert re.search(r"^Result: \[offline:[^\]]+\] Generate a SQL query to find duplicate emails", out, re.M), out
    assert re.search(r"^Cost: \$ \d", out, re.M), out


def test_sdk_usage_agency(url: str, key: str) -> None:
    """The "SDK Usage" JavaScript block: require('j1msky-sdk') (the alias), Agency, spawn, wait, output.

    It mixes require() (CommonJS) with top-level await (ES modules only): as printed it runs as
    neither (a .cjs file is a SyntaxError at line 9's await; an .mjs file has no require).  It runs
    as a module with the prelude below giving it a require.
    """
    prelude = ("// test prelude: the block uses require() (line 1) and top-level await (line 9); only an ES module\n"
               "// has top-level await, and an ES module has no require: createRequire gives it one.\n"
               "import { createRequire } from 'node:module';\n"
               "const require = createRequire(import.meta.url);\n")
    out = ok(run_node("sdk_usage.js", daemon_url=url, key=key, esm=True, prelude=prelude))
    assert re.fullmatch(r"\[offline:[^\]]+\] Write a blog post about AI \(id [0-9a-f]+\)\n", out), out


def test_sdk_reference_basic_usage(url: str, key: str) -> None:
    """JavaScript/TypeScript SDK, Basic Usage: import { J1MSKYClient } from 'j1msky' (ESM, top-level await)."""
    out = ok(run_node("sdk_reference_basic_usage.js", daemon_url=url, key=key, esm=True))
    lines = out.splitlines()
    assert re.fullmatch(r"\[offline:[^\]]+\] Write a JavaScript function to reverse a string \(id [0-9a-f]+\)",
                        lines[0]), out
    assert re.fullmatch(r"Cost: \$\d+(\.\d+)?(e-\d+)?", lines[1]) and float(lines[1][7:]) > 0, out


def test_sdk_reference_async_await(js_daemon: Daemon, url: str, key: str) -> None:
    """With Async/Await: new J1MSKYClient() from J1MSKY_API/J1MSKY_KEY; the writer's task carries the
    research agent's output (the block prints nothing: the daemon's agents show what it did)."""
    ok(run_node("sdk_reference_async_await.js", daemon_url=url, key=key, esm=True))
    research = agents_with_task(js_daemon, r"^Research: Latest trends in AI automation$")
    writers = agents_with_task(js_daemon, r"^Write blog post based on: ")
    assert [a["model"] for a in research] == ["sonnet"], research
    assert [a["model"] for a in writers] == ["k2p5"], writers
    first = js_daemon.get(f"/api/agent/{research[0]['agent_id']}")
    assert writers[0]["task"] == f"Write blog post based on: {first['result']}"
    assert js_daemon.get(f"/api/agent/{writers[0]['agent_id']}")["status"] == "completed"


def test_sdk_reference_error_handling_no_error(url: str, key: str) -> None:
    """Error Handling, when the spawn succeeds: nothing printed."""
    assert ok(run_node("sdk_reference_error_handling.js", daemon_url=url, key=key, esm=True,
                       prelude=SLEEP_PRELUDE)) == ""


def test_sdk_reference_error_handling_rate_limited(url: str, key: str) -> None:
    """Error Handling's RateLimitError branch, on a real 429: a key whose spawn limit (1 an hour)
    is spent; retryAfter is the daemon's Retry-After (seconds)."""
    limited = spent_key(url, key)
    out = ok(run_node("sdk_reference_error_handling.js", daemon_url=url, key=limited, esm=True,
                      prelude=SLEEP_PRELUDE))
    found = re.fullmatch(r"Rate limited\. Retry after: (\d+)s\n", out)
    assert found and 0 < int(found.group(1)) <= 3600, out


def test_sdk_reference_error_handling_api_error(url: str, key: str) -> None:
    """Error Handling's J1MSKYError branch, on a real 403: a read-only key may not spawn."""
    reader = new_key(url, key, scopes=["agents:read"])
    proc = run_node("sdk_reference_error_handling.js", daemon_url=url, key=reader, esm=True, prelude=SLEEP_PRELUDE)
    assert proc.returncode == 0 and proc.stdout == "", proc
    assert re.fullmatch(r"API Error: .*agents:write.*\nRequest ID: req_[0-9a-f]+\n", proc.stderr), proc.stderr


class _Hooks(BaseHTTPRequestHandler):
    """A loopback webhook receiver: records (path, headers, raw body) of every POST."""

    received: list[tuple[str, dict[str, str], bytes]]
    changed: threading.Condition

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.changed:
            self.received.append((self.path, dict(self.headers), raw))
            self.changed.notify_all()
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_sdk_reference_webhooks(js_daemon: Daemon, url: str, key: str) -> None:
    """Webhooks: registerWebhook({url, events, secret}) and spawn({webhookUrl}) both deliver the
    agent's end to the URL: once signed with the registered secret, once with the key's webhook secret."""
    handler = type("Hooks", (_Hooks,), {"received": [], "changed": threading.Condition()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver = f"http://127.0.0.1:{server.server_address[1]}/webhooks/j1msky"
    try:
        # The reference's public URL becomes this test's loopback receiver: tests never contact a
        # non-loopback address (the daemon allows 127.0.0.0/8 webhooks for this module only).
        ok(run_node("sdk_reference_webhooks.js", daemon_url=url, key=key, esm=True,
                    replacements={"https://your-app.com/webhooks/j1msky": receiver}))
        agent_id = agents_with_task(js_daemon, r"^Analyze data$")[0]["agent_id"]

        def both() -> list[tuple[str, dict[str, str], bytes]] | None:
            with handler.changed:
                got = [r for r in handler.received if json.loads(r[2])["data"].get("agent_id") == agent_id]
            return got if len(got) >= 2 else None

        got = wait_until(both, timeout=30, what="two deliveries of the agent's end")
    finally:
        server.shutdown()
        server.server_close()
    signatures = {r[1]["X-J1MSKY-Signature"] for r in got}
    assert {json.loads(r[2])["event"] for r in got} == {"agent.completed"}
    for which, secret in (("the registered", "your_webhook_secret"),
                          ("the key's", bootstrap(js_daemon)["webhook_secret"])):
        expected = {"sha256=" + hmac.new(secret.encode(), r[2], hashlib.sha256).hexdigest() for r in got}
        assert expected & signatures, f"no delivery signed with {which} webhook secret"


def test_sdk_best_practices_rate_limits(url: str, key: str) -> None:
    """SDK Best Practices 2: new J1MSKYClient({maxRetries: 5, retryDelay: 1000}) (a fragment)."""
    prelude = ("// test prelude: the fragment uses J1MSKYClient without importing it\n"
               "const { J1MSKYClient } = require('j1msky');\n")
    epilogue = ("// test epilogue: show the options took, and that the client works\n"
                "console.log(client.maxRetries, client.retryDelay);\n"
                "client.health().then((h) => console.log(h.status));\n")
    out = ok(run_node("sdk_best_practices_2_rate_limits.js", daemon_url=url, key=key, esm=False,
                      prelude=prelude, epilogue=epilogue))
    assert out == "5 1000\nhealthy\n", out


def test_the_preludes_are_needed(url: str, key: str) -> None:
    """The two blocks above that need a prelude really fail as printed, for the reason their tests name
    (if the reference is corrected, this fails and the prelude goes)."""
    as_cjs = run_node("sdk_usage.js", daemon_url=url, key=key, esm=False)
    assert as_cjs.returncode != 0 and "SyntaxError" in as_cjs.stderr and "await" in as_cjs.stderr, as_cjs
    as_mjs = run_node("sdk_usage.js", daemon_url=url, key=key, esm=True)
    assert as_mjs.returncode != 0 and "ReferenceError: require is not defined" in as_mjs.stderr, as_mjs
    limited = spent_key(url, key)
    no_sleep = run_node("sdk_reference_error_handling.js", daemon_url=url, key=limited, esm=True)
    assert no_sleep.returncode != 0 and "ReferenceError: sleep is not defined" in no_sleep.stderr, no_sleep
