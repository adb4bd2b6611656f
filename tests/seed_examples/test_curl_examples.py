"""The API reference's curl quick starts (Examples 1-4 and 7-9), copied byte for byte into
tests/seed_examples/curl/ and run by bash against a real daemon on the embedded default.

Each runs after the reference's own Prerequisites block (its first one: it exports
``J1MSKY_API`` and ``J1MSKY_KEY``), both localised by the harness (base URL and key only).
The examples that send no key (3, 7, 8, 9) run as the keyless local caller
(``[security] local_scopes``); Example 9 needs a key all the same (see its test).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.seed_examples.harness import HERE, check_verbatim, example_env, localise

EXAMPLES = HERE / "curl"
pytestmark = pytest.mark.skipif(shutil.which("curl") is None or shutil.which("jq") is None,
                                reason="the reference's quick starts need curl and jq (Debian: curl, jq)")


def run_bash(name: str, url: str, key: str, replacements: dict[str, str] | None = None) -> list[Any]:
    """Prerequisites + the example, localised, through bash; the JSON documents jq printed."""
    for path in (EXAMPLES / "prerequisites.sh", EXAMPLES / name):
        check_verbatim(path)
    script = "".join(localise((EXAMPLES / n).read_text(encoding="utf-8"), base_url=url, key=key,
                              replacements=r) for n, r in (("prerequisites.sh", None), (name, replacements)))
    with tempfile.TemporaryDirectory(prefix="seed-curl-") as tmp:
        path = Path(tmp) / name
        path.write_text(script, encoding="utf-8")
        env = example_env(url, None, {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
        done = subprocess.run(["bash", str(path)], cwd=tmp, env=env, capture_output=True, text=True,
                              encoding="utf-8", timeout=60, check=False)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    docs, text, decoder = [], done.stdout.strip(), json.JSONDecoder()
    while text:
        doc, end = decoder.raw_decode(text)
        docs.append(doc)
        text = text[end:].strip()
    return docs


def test_example_1_spawns_with_the_key(seed_daemon, seed_url, seed_key):
    [spawned] = run_bash("quick_start_1_spawn.sh", seed_url, seed_key)
    assert spawned["success"] is True and spawned["model"] == "k2p5" and spawned["status"] == "spawning"
    assert seed_daemon.wait_agent(spawned["agent_id"])["status"] == "completed"


def test_example_2_reads_an_agent(seed_daemon, seed_url, seed_key):
    agent_id = seed_daemon.spawn("for example 2")
    seed_daemon.wait_agent(agent_id)
    # The reference's placeholder id is "your agent_id from spawn response": here, one just spawned.
    [agent] = run_bash("quick_start_2_status.sh", seed_url, seed_key,
                       replacements={"subagent_1234567890_1234": agent_id})
    assert agent["agent_id"] == agent_id and agent["status"] == "completed" and agent["result"].startswith("[offline:")


def test_example_3_quotes_without_a_key(seed_url, seed_key):
    [answer] = run_bash("quick_start_3_quote.sh", seed_url, seed_key)
    # "Expected response shows internal cost, recommended price, and margin": under "quote".
    assert answer["success"] is True and answer["guardrail_check"]["is_compliant"] in (True, False)
    quote = answer["quote"]
    assert quote["internal_cost"] > 0 and quote["recommended_price"] > 0 and "gross_margin_pct" in quote


def test_example_4_deploys_a_team_with_the_key(seed_daemon, seed_url, seed_key):
    [team] = run_bash("quick_start_4_team.sh", seed_url, seed_key)
    assert team["success"] is True and team["team"] == "team_coding" and team["members"]
    assert seed_daemon.wait_agent(team["agent_id"])["status"] == "completed"


def test_example_7_health_and_orchestrator_status_without_a_key(seed_url, seed_key):
    health, status = run_bash("quick_start_7_health.sh", seed_url, seed_key)
    assert health["status"] == "healthy"
    assert set(status) == {"timestamp", "budget_used", "budget_remaining", "alert_level", "models_active"}
    assert status["timestamp"] and status["budget_remaining"] > 0 and status["alert_level"] is not None


def test_example_8_batch_quotes_without_a_key(seed_url, seed_key):
    [by_segment] = run_bash("quick_start_8_batch_quotes.sh", seed_url, seed_key)
    assert {"enterprise", "mid_market", "smb", "startup"} <= set(by_segment)


def test_example_9_pricing_webhooks_need_a_key_even_on_loopback(seed_daemon, seed_url, seed_key):
    """The reference registers a pricing webhook without a key; pricing webhooks are admin:write
    routes, and local_scopes never grants an admin scope (docs/security.md): both commands get
    the 401 of a missing key, and nothing is registered.  The receiver URL on the Internet is
    replaced by a loopback one (tests never contact a non-loopback address; the request is
    refused before any delivery anyway)."""
    registered, listed = run_bash("quick_start_9_webhook.sh", seed_url, seed_key,
                                  replacements={"https://your-app.com/webhooks/j1msky": "http://127.0.0.1:9/hook"})
    for answer in (registered, listed):
        assert answer["success"] is False and answer["error"]["code"] == 401
        assert "API key required" in answer["error"]["message"]
    assert seed_daemon.get("/api/pricing/webhooks").get("count", 0) == 0
