"""The API reference's Python examples that use ``requests`` (Quick Start Examples 5 and 10,
Cookbook Recipes 1-7), copied byte for byte into tests/seed_examples/requests/ and run
against a real daemon on the embedded default config.

The recipes send no key: they run because ``[security] local_scopes`` lets a caller on
loopback spawn and read without one (the embedded default).  Recipes 2-7 are fragments
that use ``requests``, ``BASE_URL`` and ``poll_for_completion`` from Recipe 1: their
prelude is Recipe 1's own text up to its "# Usage" (the reference's order), localised
like the example.  Each other prelude or epilogue says why it is there; no line of a
copy is edited (test_verbatim.py proves it).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from tests.daemon import db_agents
from tests.seed_examples.harness import HERE, localise, run_python

EXAMPLES = HERE / "requests"
pytest.importorskip("requests", reason="the reference's examples import requests (python3-requests on Debian)")


def _run(path: Path, url: str, key: str | None, **kwargs) -> subprocess.CompletedProcess[str]:
    done = run_python(path, daemon_url=url, key=key, **kwargs)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def _recipe_1_definitions(url: str) -> str:
    """Recipe 1 up to its "# Usage": the imports, BASE_URL and poll_for_completion that the
    later recipes use without defining (they are fragments of one cookbook)."""
    text = (EXAMPLES / "recipe_1_content_pipeline.py").read_text(encoding="utf-8")
    return ("# Test prelude: Recipe 1's definitions (Recipes 2-7 use requests, BASE_URL and\n"
            "# poll_for_completion from it without defining them).\n"
            + localise(text.split("\n# Usage\n")[0], base_url=url, key=None) + "\n")


def _fragment(name: str, url: str, call: str, **kwargs) -> dict:
    """Run a recipe that is a fragment (Recipes 2-7): Recipe 1's definitions before it, and
    after it an epilogue that makes ``call`` (the recipe defines a function and never calls
    it) and prints what it returns; returns that."""
    epilogue = ("# Test epilogue: the recipe defines a function it never calls: call it, print what it returns.\n"
                f"import json\nprint('RESULT ' + json.dumps({call}))\n")
    prelude = _recipe_1_definitions(url) + kwargs.pop("prelude", "")
    return _json_out(_run(EXAMPLES / name, url, None, prelude=prelude, epilogue=epilogue, **kwargs))


def _json_out(done: subprocess.CompletedProcess[str], marker: str = "RESULT ") -> dict:
    """The JSON an epilogue printed after ``marker``."""
    line = next(line for line in done.stdout.splitlines() if line.startswith(marker))
    return json.loads(line[len(marker):])


_AGENT_ID = re.compile(r"subagent_[0-9]+_[0-9a-f]+")


# -- Quick Start -----------------------------------------------------------------------------------
def test_quick_start_5_spawns_waits_and_prints_the_result_and_cost(seed_daemon, seed_url, seed_key):
    done = _run(EXAMPLES / "quick_start_5.py", seed_url, seed_key)
    lines = done.stdout.splitlines()
    agent_id = _AGENT_ID.search(lines[0]).group(0)
    assert lines[0] == f"Spawned agent: {agent_id}"
    # The reference prints its check mark as "‚úÖ" (UTF-8 read as Mac Roman): copied as printed.
    assert re.fullmatch(r"‚úÖ Task completed in [0-9.]+s", lines[1]), lines
    assert lines[2].startswith("Result: [offline:") and "Write a fibonacci function in Python" in lines[2]
    cost = float(lines[3].removeprefix("Cost: $"))
    agent = seed_daemon.get(f"/api/agent/{agent_id}")
    assert agent["status"] == "completed" and cost == agent["cost"] > 0


def test_quick_start_10_retries_and_reports(seed_daemon, seed_url, seed_key):
    # Example 10 is a fragment: it uses BASE_URL, HEADERS and time from Example 5's
    # configuration block (the reference's previous example), given here as its prelude.
    example_5 = (EXAMPLES / "quick_start_5.py").read_text(encoding="utf-8")
    prelude = ("# Test prelude: Example 5's imports and configuration, which Example 10 uses.\n"
               + localise(example_5.split("\ndef spawn_and_wait")[0], base_url=seed_url, key=seed_key) + "\n")
    # The failure path of the pattern too: a 404 is retried max_retries times, then raised.
    epilogue = ("# Test epilogue: the pattern's failure path (an unknown agent: HTTP 404).\n"
                "try:\n    robust_api_call('GET', '/agent/subagent_1_0000')\n"
                "except Exception as e:\n    print(f'Raised: {type(e).__name__}')\n")
    done = _run(EXAMPLES / "quick_start_10_error_handling.py", seed_url, seed_key, prelude=prelude,
                epilogue=epilogue)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Success: {") and "'success': True" in lines[0] and _AGENT_ID.search(lines[0])
    retried = [line for line in lines if line.startswith("Request failed: 404 Client Error")]
    assert len(retried) == 2 and lines[-1] == "Raised: HTTPError", lines


# -- Cookbook --------------------------------------------------------------------------------------
def test_recipe_1_content_pipeline_runs_keyless_as_the_local_caller(seed_daemon, seed_url):
    done = _run(EXAMPLES / "recipe_1_content_pipeline.py", seed_url, None)
    out = done.stdout
    assert out.startswith("Article:\n[offline:claude-opus") and "Edit this blog post" in out
    assert "\nSocial posts:\n[offline:" in out and "Create 3 tweet-length snippets" in out
    total = float(re.search(r"\nTotal cost: \$([0-9.]+)\n", out).group(1))
    assert total > 0


def test_recipe_2_code_review(seed_daemon, seed_url):
    result = _fragment("recipe_2_code_review.py", seed_url, "automated_code_review('def add(a, b): return a - b')")
    assert set(result) == {"original", "review", "fixed_code", "security_audit", "total_cost"}
    assert result["review"].startswith("[offline:") and "Review this python code" in result["review"]
    assert "Fix the issues" in result["fixed_code"] and "Security audit" in result["security_audit"]
    assert result["total_cost"] > 0


def test_recipe_3_competitive_intelligence_and_its_singular_event_webhook(seed_daemon, seed_url, seed_key):
    # The recipe's alert webhook goes to a Slack URL on the Internet: tests never contact a
    # non-loopback address, so it names a loopback port instead (nothing listens: the daemon
    # refuses the registration before any delivery anyway, see below).
    slack = {"https://your-slack-webhook.com": "http://127.0.0.1:9/slack"}
    prelude = (_recipe_1_definitions(seed_url)
               + "# Test prelude: print the status and error of each POST the recipe makes (it ignores\n"
                 "# the answers), so that the test can check what the daemon said.\n"
                 "_post = requests.post\n"
                 "def _recorded_post(url, *args, **kwargs):\n"
                 "    resp = _post(url, *args, **kwargs)\n"
                 "    print('POST', url.rsplit('/api', 1)[1], resp.status_code, json.dumps(resp.json().get('error')))\n"
                 "    return resp\n"
                 "import json\n"
                 "requests.post = _recorded_post\n")
    # The recipe writes competitors/<name>_latest.json and never makes that directory (the
    # reference assumes it exists); twice, so that the second run has a snapshot to compare.
    epilogue = ("# Test epilogue: the recipe assumes a competitors/ directory; run it twice (the\n"
                "# second run compares with the first run's snapshot and sends the alert).\n"
                "import os\nos.makedirs('competitors', exist_ok=True)\n"
                "for _ in range(2):\n"
                "    r = monitor_competitor('https://competitor.example/pricing', 'acme')\n"
                "print('RESULT ' + json.dumps(r))\n"
                "print('SNAPSHOT ' + open('competitors/acme_latest.json').read())\n")
    before = seed_daemon.get("/api/webhooks")["count"]
    done = _run(EXAMPLES / "recipe_3_competitive_intelligence.py", seed_url, None, prelude=prelude,
                epilogue=epilogue, replacements=slack)
    result = _json_out(done)
    assert result["competitor"] == "acme" and "Analyze https://competitor.example/pricing" in result["analysis"]
    assert "Compare this competitor analysis to J1MSKY" in result["positioning"]
    assert json.loads(done.stdout.split("SNAPSHOT ", 1)[1])["data"] == result["analysis"]
    posts = [line for line in done.stdout.splitlines() if line.startswith("POST ")]
    # 2 x (research, comparison) + the diff of the second run, all made; then the alert webhook.
    assert [p.split()[1:3] for p in posts] == [["/spawn", "200"]] * 5 + [["/webhooks", "400"]]
    # {"url", "event"} means events [event]: the recipe's "event" is a message, not an event
    # name, so the registration is refused with the unknown-event 400, and nothing is registered.
    error = json.loads(posts[-1].split(" ", 3)[3])
    assert error["type"] == "VALIDATION_ERROR" and "Unknown event(s): Competitor acme has changes" in error["message"]
    assert seed_daemon.get("/api/webhooks")["count"] == before


def test_recipe_4_support_triage(seed_daemon, seed_url):
    result = _fragment("recipe_4_support_triage.py", seed_url,
                       "triage_support_ticket('I was charged twice for my plan', 'cust_42')")
    assert re.fullmatch(r"TICKET_cust_42_[0-9]+", result["ticket_id"]) and result["auto_reply_sent"] is True
    # The offline model echoes the task, which names every category: the first one it lists wins.
    assert result["assigned_team"] == "engineering@company.com"
    assert "Classify this support ticket" in result["classification"]
    assert "Draft a helpful response" in result["suggested_response"]


def test_recipe_5_ab_test_analysis_reads_the_experiment_results(seed_daemon, seed_url):
    # The experiment's decisions, as a pricing desk records them (POST /pricing/decision with
    # an experiment label and a variant): what /orchestrator/experiment/results summarises.
    quote = {"model": "k2p5", "estimated_input": 2000, "estimated_output": 800, "complexity": "medium",
             "segment": "mid_market"}
    for variant in ("control", "control", "test"):
        seed_daemon.post("/api/pricing/decision", {**quote, "variant": variant, "experiment": "checkout-copy"})
    # Recipe 5 calls json.dumps but never imports json (nor does Recipe 1): the reference's
    # line "Results:\n{json.dumps(results, indent=2)}" needs it, so the prelude imports it.
    prelude = _recipe_1_definitions(seed_url) + "# Test prelude: Recipe 5 uses json without importing it.\nimport json\n"
    epilogue = ("# Test epilogue: run the recipe for the recorded experiment and for an unknown one.\n"
                "print('RESULT ' + json.dumps(analyze_ab_test('checkout-copy')))\n"
                "print('UNKNOWN ' + json.dumps(analyze_ab_test('no-such-experiment')))\n")
    done = _run(EXAMPLES / "recipe_5_ab_test_analysis.py", seed_url, None, prelude=prelude, epilogue=epilogue)
    result = _json_out(done)
    raw = result["raw_results"]
    assert raw["success"] is True and raw["experiment_id"] == "checkout-copy" and raw["status"] == "complete"
    assert raw["control"]["count"] == 2 and raw["test"]["count"] == 1
    assert raw["recommendation"] in ("roll_out", "discard", "inconclusive")
    assert "Analyze these A/B test results" in result["analysis"]
    # The results went into the analysis agent's task (the offline answer shows its first words only).
    query = json.dumps({"task": {"contains": '"experiment_id": "checkout-copy"'}})
    assert seed_daemon.get(f"/api/agents?filter={quote_plus(query)}")["pagination"]["total"] == 1
    assert "Create a 3-slide presentation" in result["presentation"]
    unknown = _json_out(done, "UNKNOWN ")
    assert unknown["error"]["code"] == 404 and "no-such-experiment" in unknown["error"]["message"]


def test_recipe_6_data_processing_runs_its_own_usage_lines(seed_daemon, seed_url):
    # The recipe's "# Usage" runs as printed: its list holds three items and a literal
    # Ellipsis ("...  # 100 items"), which task_template.format() renders as "Ellipsis".
    epilogue = ("# Test epilogue: print what the recipe's own usage line returned.\n"
                "import json\n"
                "print('RESULT ' + json.dumps({'n': len(results['individual_results']), "
                "'summary': results['summary'], 'total_cost': results['total_cost'], "
                "'tasks': [r['task'] for r in results['individual_results']]}))\n")
    done = _run(EXAMPLES / "recipe_6_data_processing.py", seed_url, None, prelude=_recipe_1_definitions(seed_url),
                epilogue=epilogue)
    assert "Processing batch 1/1..." in done.stdout
    result = _json_out(done)
    assert result["n"] == 4 and result["total_cost"] > 0
    assert [t.rsplit(": ", 1)[1] for t in result["tasks"]] == ["item1", "item2", "item3", "Ellipsis"]
    assert "Aggregate and summarize these 4 results" in result["summary"]


def test_recipe_7_translation_with_review(seed_daemon, seed_url):
    result = _fragment("recipe_7_translation.py", seed_url, "translate_with_review('Hello, world', ['spanish', 'french'])")
    assert set(result) == {"spanish", "french"}
    for lang, entry in result.items():
        assert entry["translation"].startswith("[offline:") and lang in entry["translation"]
        assert f"Review this {lang} translation" in entry["quality_score"] and entry["cost"] > 0


def test_the_recipes_work_is_ownerless_and_hidden_from_a_key(seed_daemon, seed_key):
    """What the keyless recipes made belongs to no key: the local caller's (anonymous).  A key
    that sees only its own work does not list it (the bootstrap key sees all: it is an admin)."""
    rows = db_agents(seed_daemon.state_dir)
    keyless = [r for r in rows.values() if r["api_key"] == "anonymous"]
    assert keyless, "the recipes ran without a key: their agents are the local caller's"
    status, made = seed_daemon.request("POST", "/api/keys", {"name": "reader", "scopes": ["agents:read"]})
    assert status == 201
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{seed_daemon.port}/api/agents?limit=100",
                                 headers={"Authorization": f"Bearer {made['token']}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["data"] == []
