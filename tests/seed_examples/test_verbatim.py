"""The harness's own tests: every example copy is verbatim, and localise() edits only what it may."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.seed_examples import harness
from tests.seed_examples.harness import check_verbatim, example_files, localise, seed_blocks


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(harness.HERE)) for p in paths]


@pytest.mark.parametrize("path", example_files(), ids=_ids(example_files()))
def test_every_example_is_one_block_of_the_reference_byte_for_byte(path: Path) -> None:
    check_verbatim(path)


def test_the_reference_is_found_and_split_into_its_fenced_blocks() -> None:
    if harness.SEED is None:
        pytest.skip("the reference (shared/seeds/000_*.txt) is not beside this checkout")
    blocks = seed_blocks()
    assert len(blocks) > 100  # the reference has 112 fenced blocks
    # Quick Start Example 5 is one of them, from its first line to its last, and no fence line is.
    example_5 = next(b for b in blocks if 'print(f"Cost: ${result.get(\'cost\', 0)}")' in b)
    assert example_5.startswith("import requests\nimport time\n")
    # Only the release-notes template (a markdown block) holds fence lines: its ```python
    # example nests: the template (the reference's last block) runs to its own closing fence.
    with_fences = [b for b in blocks if any(line.startswith("```") for line in b.splitlines())]
    assert len(with_fences) == 1 and with_fences[0].startswith("# J1MSKY v[X.Y.Z] - Release Notes\n")
    assert "```python\n# Code example\n```\n" in with_fences[0]
    assert blocks[-1] is with_fences[0] and blocks[-1].endswith("**Full Changelog:** [GitHub compare link]\n")
    # A ``` inside an f-string (Recipe 2) does not end its block.
    assert any("```{language}\\n{code}\\n```" in b and "def automated_code_review" in b for b in blocks)


def test_check_verbatim_refuses_an_edited_copy(tmp_path: Path) -> None:
    if harness.SEED is None:
        pytest.skip("the reference (shared/seeds/000_*.txt) is not beside this checkout")
    block = next(b for b in seed_blocks() if "import requests" in b)
    exact = tmp_path / "exact.py"
    exact.write_text(block, encoding="utf-8")
    check_verbatim(exact)  # passes
    for edited in (block.replace("requests", "request", 1),  # one character
                   block.rstrip("\n"),                        # no final newline
                   block + "\n",                              # one line more
                   block.replace("\n", "\r\n")):              # other line ends
        bad = tmp_path / "bad.py"
        bad.write_bytes(edited.encode("utf-8"))
        with pytest.raises(AssertionError, match="not a byte-for-byte copy"):
            check_verbatim(bad)


def test_localise_replaces_the_reference_urls_and_key_placeholders() -> None:
    text = ('BASE_URL = "http://localhost:8080/api"\nroot = "http://localhost:8080"\n'
            'API_KEY = "your_api_key_here"\nk2 = "your_api_key"\nk3 = "YOUR_KEY"\nk4 = "your_key"\n'
            'client := j1msky.NewClient("http://localhost:8080", "api_key")\n')
    out = localise(text, base_url="http://127.0.0.1:4242/", key="tok_123")
    assert out == ('BASE_URL = "http://127.0.0.1:4242/api"\nroot = "http://127.0.0.1:4242"\n'
                   'API_KEY = "tok_123"\nk2 = "tok_123"\nk3 = "tok_123"\nk4 = "tok_123"\n'
                   'client := j1msky.NewClient("http://127.0.0.1:4242", "tok_123")\n')
    # No key: the placeholders stay as printed (a keyless request relies on local_scopes).
    assert "your_api_key_here" in localise(text, base_url="http://127.0.0.1:1", key=None)


def test_localise_applies_explicit_replacements_and_refuses_one_that_does_not_occur() -> None:
    text = 'requests.post(url, json={"url": "https://your-app.com/webhook"})\n'
    out = localise(text, base_url="http://127.0.0.1:1", key=None,
                   replacements={"https://your-app.com/webhook": "http://127.0.0.1:9/hook"})
    assert out == 'requests.post(url, json={"url": "http://127.0.0.1:9/hook"})\n'
    with pytest.raises(AssertionError, match="does not occur"):
        localise(text, base_url="http://127.0.0.1:1", key=None,
                 replacements={"https://elsewhere.example/hook": "http://127.0.0.1:9/hook"})
    with pytest.raises(AssertionError, match="non-empty"):
        localise(text, base_url="http://127.0.0.1:1", key=None, replacements={"": "x"})


def test_run_python_caps_sleep_sets_the_environment_and_refuses_a_non_verbatim_file(tmp_path: Path) -> None:
    if harness.SEED is None:
        pytest.skip("the reference (shared/seeds/000_*.txt) is not beside this checkout")
    # The reference's prerequisites block is shell, but any verbatim block will do as the file:
    # the prelude exits before it runs, so this proves the harness around it.
    block = next(b for b in seed_blocks() if b.startswith("import requests\nimport time\n"))
    copy = tmp_path / "example.py"
    copy.write_text(block, encoding="utf-8")
    prelude = ("import os, sys, time\n"
               "t0 = time.monotonic(); time.sleep(30); slept = time.monotonic() - t0\n"
               "print(os.environ['J1MSKY_API'], os.environ.get('J1MSKY_KEY'), slept < 5)\n"
               "sys.exit(0)\n")
    done = harness.run_python(copy, daemon_url="http://127.0.0.1:4242", key="tok_9", prelude=prelude)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["http://127.0.0.1:4242/api", "tok_9", "True"]
    copy.write_text(block.replace("time.sleep(2)", "time.sleep(0)"), encoding="utf-8")
    with pytest.raises(AssertionError, match="not a byte-for-byte copy"):
        harness.run_python(copy, daemon_url="http://127.0.0.1:4242", key="tok_9")


def test_seed_daemon_runs_the_embedded_default_and_seed_key_is_its_bootstrap_admin_key(seed_daemon, seed_key,
                                                                                     seed_url) -> None:
    assert seed_daemon.config is None  # no --config: the embedded default
    assert seed_daemon.auth_headers() == {"Authorization": f"Bearer {seed_key}"}
    assert seed_url == f"http://127.0.0.1:{seed_daemon.port}"
    # The reference's team (Recipe 1, SDK examples) exists in the embedded default.
    team = seed_daemon.post("/api/spawn-team", {"team": "team_creative", "task": "a haiku"})
    assert team["success"] is True
    done = seed_daemon.wait_agent(seed_daemon.spawn("say hello", model="k2p5"))
    assert done["status"] == "completed"


def test_kyros_copies_are_checked_against_the_kyros_document_and_only_it(tmp_path: Path) -> None:
    """A copy under kyros/ is a block of shared/seeds/003_*.txt (the Kyros API document); the
    same text elsewhere is checked against the J1MSKY reference, which does not hold it."""
    kyros_seed = harness._find_seed("003")
    if kyros_seed is None or harness.SEED is None:
        pytest.skip("the seeds (shared/seeds/000_*.txt, 003_*.txt) are not beside this checkout")
    copy = harness.HERE / "kyros" / "python_integration.py"
    assert harness.seed_of(copy) == kyros_seed and harness.seed_of(harness.HERE / "js" / "sdk_usage.js") == harness.SEED
    assert harness.seed_of(tmp_path / "x.py") == harness.SEED
    check_verbatim(copy)
    assert copy.read_text(encoding="utf-8") in seed_blocks(kyros_seed)
    elsewhere = tmp_path / "python_integration.py"
    elsewhere.write_bytes(copy.read_bytes())
    with pytest.raises(AssertionError, match=f"not a byte-for-byte copy of one fenced block of {harness.SEED.name}"):
        check_verbatim(elsewhere)
    # All three Kyros integration examples are there, each the whole block.
    names = sorted(p.name for p in example_files() if p.parent.name == "kyros")
    assert names == ["javascript_integration.js", "python_integration.py", "websocket_integration.js"]
