"""The reference's ``from j1msky import ...`` examples (SDK Usage, SDK Reference, SDK Best
Practices), each run as printed against a real daemon with only the base URL and key changed.

Two things differ from the shared ``seed_daemon`` and say why:

- The daemon is the embedded default plus ``[webhooks] allowed_networks = ["127.0.0.0/8"]``:
  the examples' ``https://your-app.com/webhook`` becomes a receiver on this machine (tests
  never contact a non-loopback address), and the daemon refuses loopback webhook targets
  unless the operator opens them (docs/configuration.md).
- The Error Handling example's rate-limit branch is run against a small loopback server
  that answers 429 until the SDK's retries run out: the real daemon's limits are far away.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from j1mskyd.config import _EMBEDDED_TOML
from tests.daemon import Daemon, wait_until
from tests.seed_examples.harness import run_python
from tests.seed_examples.conftest import daemon_key, daemon_url

HERE = Path(__file__).resolve().parent / "python_sdk"
PUBLIC_WEBHOOK = "https://your-app.com/webhook"


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: list[dict[str, Any]] = []
        self.script: list[tuple[int, dict[str, str], dict[str, Any]]] = []  # answers before the default 200
        self.answer: dict[str, Any] = {"ok": True}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.posts.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body or b"{}")})
        status, headers, answer = self.server.script.pop(0) if self.server.script else (200, {}, self.server.answer)
        data = json.dumps(answer).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def sdk_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("sdk-examples")
    config = work / "config.toml"
    # The embedded default (it has no [webhooks] table) with loopback receivers allowed: see the module's docstring.
    config.write_text(_EMBEDDED_TOML + '\n[webhooks]\nallowed_networks = ["127.0.0.0/8"]\n', encoding="utf-8")
    with Daemon(work, work / "state", config=config, name="sdk-examples") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def url(sdk_daemon: Daemon) -> str:
    return daemon_url(sdk_daemon)


@pytest.fixture(scope="module")
def key(sdk_daemon: Daemon) -> str:
    return daemon_key(sdk_daemon)


@pytest.fixture(params=["key", "local"])
def caller(request: pytest.FixtureRequest, key: str) -> str | None:
    """The examples whose client reads J1MSKY_KEY run twice: with the key the quick start exports, and
    with none, as the reference's "Optional for local instances" says ([security] local_scopes serves
    a keyless caller on loopback)."""
    return key if request.param == "key" else None


def run(name: str, url: str, key: str | None, **kw: Any) -> tuple[str, str]:
    done = run_python(HERE / name, daemon_url=url, key=key, **kw)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


def agent_of(daemon: Daemon, agent_id: str) -> dict[str, Any]:
    return daemon.wait_agent(agent_id)


# The later blocks use a ``client`` the earlier ones made (SDK Reference line ~2555; Best Practices 3 and 4),
# and Best Practice 1 uses J1MSKYClient without importing it: the test makes both, as the block before did.
CLIENT = ("from j1msky import J1MSKYClient  # the test: made by an earlier block of the reference\n"
          "client = J1MSKYClient()\n")
IMPORT = "from j1msky import J1MSKYClient  # the test: imported by an earlier block of the reference\n"


def test_sdk_usage_agency(sdk_daemon: Daemon, url: str, key: str) -> None:
    out, _ = run("sdk_usage_python.py", url, key)
    assert out.startswith("[offline:") and "Write a blog post about AI" in out


def test_sdk_reference_basic_usage(sdk_daemon: Daemon, url: str, key: str) -> None:
    out, _ = run("sdk_reference_basic_usage.py", url, key,
                 epilogue="print('AGENT', agent.id)  # the test: which agent it was, to check its cost")
    lines = out.splitlines()
    agent = agent_of(sdk_daemon, lines[-1].split()[1])
    assert agent["status"] == "completed" and agent["task"] == "Write a Python function to calculate fibonacci"
    assert lines[0].startswith("[offline:") and f"Cost: ${agent['cost']}" in lines


def test_sdk_reference_advanced_usage(sdk_daemon: Daemon, url: str, caller: str | None, receiver: _Receiver) -> None:
    out, _ = run("sdk_reference_advanced_usage.py", url, caller, replacements={PUBLIC_WEBHOOK: receiver.url + "/hook"},
                 prelude=CLIENT,
                 epilogue=("# the test: both agents end, and which they were\n"
                           "print('AGENT', agent.id, agent.wait_for_completion(timeout=60).status)\n"
                           "print('TEAM', team_result.id, team_result.wait_for_completion(timeout=60).status)\n"))
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith(("AGENT", "TEAM")))
    agent_id, state = lines["AGENT"].split()
    team_id, team_state = lines["TEAM"].split()
    assert state == team_state == "completed"
    spawned = agent_of(sdk_daemon, agent_id)
    assert spawned["model"] == "sonnet" and spawned["priority"] == "high"
    team = agent_of(sdk_daemon, team_id)
    assert team["team"] == "team_creative" and team["priority"] == "high"
    # webhook_url: the spawn's own webhook posted its completion to the (loopback) receiver.
    hook = wait_until(lambda: [p for p in receiver.posts if p["json"].get("data", {}).get("agent_id") == agent_id],
                      what="the spawn's webhook delivery")
    assert hook[0]["path"] == "/hook" and hook[0]["json"]["event"] == "agent.completed"


def test_sdk_reference_error_handling_when_it_goes_well(sdk_daemon: Daemon, url: str, caller: str | None) -> None:
    out, _ = run("sdk_reference_error_handling.py", url, caller,
                 epilogue="print('AGENT', result.id)  # the test: the spawn went through")
    assert out.startswith("AGENT subagent_")


def test_sdk_reference_error_handling_api_error(sdk_daemon: Daemon, url: str) -> None:
    # A key the daemon does not know: J1MSKYError with the envelope's message and request id.
    out, _ = run("sdk_reference_error_handling.py", url, "jsk_not_a_key_this_daemon_made")
    message, request = out.splitlines()
    assert message.startswith("API Error: ") and "key" in message.lower()
    assert request.startswith("Request ID: req_")


def test_sdk_reference_error_handling_rate_limited(receiver: _Receiver) -> None:
    """The RateLimitError branch: four 429s outlast the SDK's three retries; the example waits
    e.retry_after and spawns again.  Its line ``time.sleep(e.retry_after)`` uses ``time``, which the
    block never imports (SDK Reference, Error Handling): the prelude imports it."""
    limited = {"success": False, "error": {"code": 429, "type": "RATE_LIMITED", "message": "Rate limit exceeded",
                                           "request_id": "req_limited", "retry_after": 1}}
    receiver.script = [(429, {"Retry-After": "1"}, limited)] * 4
    receiver.answer = {"success": True, "agent_id": "subagent_1_0001", "status": "spawning"}
    out, _ = run("sdk_reference_error_handling.py", receiver.url, "jsk_test",
                 prelude="import time  # the test: the block calls time.sleep without importing time\n",
                 epilogue="print('AGENT', result.id)  # the test: the second spawn went through")
    assert out.splitlines() == ["Rate limited. Retry after: 1.0s", "AGENT subagent_1_0001"]
    assert len(receiver.posts) == 5 and all(p["path"] == "/api/spawn" for p in receiver.posts)
    keys = [p["headers"]["Idempotency-Key"] for p in receiver.posts]
    assert len(set(keys[:4])) == 1 and keys[4] != keys[0]  # one key over a spawn's retries; a new spawn, a new key


def test_sdk_reference_pricing_integration(sdk_daemon: Daemon, url: str, caller: str | None) -> None:
    out, _ = run("sdk_reference_pricing_integration.py", url, caller,
                 epilogue="print('AGENT', agent.id)  # the test: the guardrail passed, so it spawned")
    expected = sdk_daemon.post("/api/pricing/quote", {"model": "k2p5", "estimated_input": 2000,
                                                      "estimated_output": 800, "complexity": "medium",
                                                      "segment": "mid_market"})
    q = expected["quote"]
    assert expected["guardrail_check"]["is_compliant"] is True
    lines = out.splitlines()
    assert lines[:3] == [f"Internal cost: ${q['internal_cost']}", f"Customer price: ${q['recommended_price']}",
                         f"Margin: {q['gross_margin_pct']}%"]
    assert agent_of(sdk_daemon, lines[3].split()[1])["task"] == "Task description"


def test_sdk_reference_configuration(sdk_daemon: Daemon, url: str, key: str) -> None:
    out, _ = run("sdk_reference_configuration.py", url, key, epilogue=(
        "# the test: the client uses the config, and its quotes are cached for cache_ttl\n"
        "q1 = client.get_quote(model='k2p5', estimated_input_tokens=10, estimated_output_tokens=10,"
        " complexity='low', segment='smb')\n"
        "q2 = client.get_quote(model='k2p5', estimated_input_tokens=10, estimated_output_tokens=10,"
        " complexity='low', segment='smb')\n"
        "print(client.base_url, client.timeout, client.max_retries, client.config.retry_delay,"
        " client.config.cache_ttl, q1.quote_id == q2.quote_id, client.spawn(model='k2p5', task='configured').id)\n"))
    base, timeout, retries, delay, ttl, same, agent_id = out.split()
    assert (base, timeout, retries, delay, ttl, same) == (url + "/api", "30", "3", "1.0", "60", "True")
    assert agent_of(sdk_daemon, agent_id)["task"] == "configured"


def test_best_practice_1_one_client(sdk_daemon: Daemon, url: str, caller: str | None) -> None:
    out, _ = run("best_practices_1_connection_pooling.py", url, caller, prelude=IMPORT,
                 epilogue="print(client.base_url, client.list_agents(limit=1)['pagination']['limit'])  # the test")
    assert out.split() == [url + "/api", "1"]


def test_best_practice_3_webhooks_instead_of_polling(sdk_daemon: Daemon, url: str, caller: str | None,
                                                     receiver: _Receiver) -> None:
    out, _ = run("best_practices_3_webhooks.py", url, caller, prelude=CLIENT,
                 replacements={PUBLIC_WEBHOOK: receiver.url + "/webhook"},
                 epilogue="print('AGENT', agent.id)  # the test: which agent the webhook must announce")
    agent_id = out.split()[1]
    hook = wait_until(lambda: [p for p in receiver.posts if p["json"].get("data", {}).get("agent_id") == agent_id],
                      what="the registered webhook's delivery")
    assert hook[0]["path"] == "/webhook" and hook[0]["json"]["event"] == "agent.completed"
    assert hook[0]["headers"]["X-J1MSKY-Signature"].startswith("sha256=")  # signed with the secret it generated


def test_best_practice_4_batch_quotes(sdk_daemon: Daemon, url: str, caller: str | None) -> None:
    out, _ = run("best_practices_4_batch_quotes.py", url, caller, prelude=CLIENT, epilogue=(
        "for q in quotes:  # the test: what came back\n"
        "    print(q.complexity, q.segment, q.recommended_price, q.guardrail_check.is_compliant)\n"))
    rows = [line.split() for line in out.splitlines()]
    assert [(c, s) for c, s, *_ in rows] == [(c, s) for c in ("low", "medium", "high")
                                             for s in ("smb", "mid_market", "enterprise")]
    for complexity, segment, price, _ in rows:
        expected = sdk_daemon.post("/api/pricing/quote", {"model": "k2p5", "estimated_input": 3000,
                                                          "estimated_output": 1200, "complexity": complexity,
                                                          "segment": segment})
        assert float(price) == expected["quote"]["recommended_price"]
