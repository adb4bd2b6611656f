"""The JavaScript/TypeScript SDK (sdk/js, package ``j1msky``) tested with Node's own runner
against a real daemon.

One real ``j1mskyd serve`` (tests/daemon.py) on the offline provider runs for the module; each
``sdk/js/test/*.test.mjs`` / ``*.test.cjs`` file is one ``node --test`` run with ``J1MSKY_API``
(…/api) and ``J1MSKY_KEY`` (the bootstrap admin token) set, and its output is shown when it fails.
Node is Debian's ``nodejs`` (18 on bookworm, installed by .ci/run); without it these tests skip,
unless ``J1MSKY_REQUIRE_NODE=1`` makes that an error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.daemon import ROOT, Daemon, child_env, write_config

SDK = ROOT / "sdk" / "js"
NODE_TESTS = sorted(p.name for p in (SDK / "test").glob("*.test.*js"))
MIN_NODE = 18


def node_binary() -> str:
    """The ``node`` to run (18 or newer); skips (or fails, with J1MSKY_REQUIRE_NODE=1) without one."""
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node is not installed (apt-get install nodejs)"
    else:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout
        found = re.match(r"v(\d+)\.", version)
        if not found or int(found.group(1)) < MIN_NODE:
            problem = f"node {version.strip() or '?'} is older than {MIN_NODE}"
    if problem is not None:
        if os.environ.get("J1MSKY_REQUIRE_NODE") == "1":
            pytest.fail(f"J1MSKY_REQUIRE_NODE=1 but {problem}")
        pytest.skip(problem)
    assert node is not None
    return node


def node_env(api: str, key: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test environment minus J1MSKY_* (tests/daemon.child_env), plus the daemon's URL and key."""
    env = child_env({"J1MSKY_API": api})
    if key is not None:
        env["J1MSKY_KEY"] = key
    env.pop("NODE_OPTIONS", None)  # nothing from the caller's shell changes how node runs the tests
    env.update(extra or {})
    return env


def run_node_tests(node: str, files: list[Path], env: Mapping[str, str], cwd: Path,
                   timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``node --test FILES`` (files named one by one: Node 18 and 22 read a directory argument
    differently); asserts exit 0 and that tests ran and none failed, with node's output on failure."""
    # TAP explicitly: newer Nodes default to another reporter, and the counts below are TAP's.
    proc = subprocess.run([node, "--test", "--test-reporter=tap", *map(str, files)], cwd=cwd, env=dict(env),
                          capture_output=True, text=True, timeout=timeout, check=False)
    output = f"--- node stdout ---\n{proc.stdout}\n--- node stderr ---\n{proc.stderr}"
    passed = re.search(r"^# pass (\d+)$", proc.stdout, re.M)
    failed = re.search(r"^# fail (\d+)$", proc.stdout, re.M)
    assert proc.returncode == 0, output
    assert passed and int(passed.group(1)) > 0, f"no test ran\n{output}"
    assert failed and int(failed.group(1)) == 0, output
    return proc


# A model that takes 30 s (waitForCompletion's timeout path); webhooks to loopback allowed so the
# node tests' own receiver (127.0.0.1, another port than the daemon's) gets real deliveries; and the
# embedded default's local_scopes, so that a client without a key works from loopback.
EXTRA_CONFIG = """
[security]
local_scopes = ["agents:read", "agents:write", "billing:read"]

[providers.slow]
plugin = "offline"
max_concurrency = 4
[providers.slow.options]
delay = 30.0

[models.slow]
provider = "slow"
upstream = "slow-up"
input_per_1k = 0.001
output_per_1k = 0.002
blended_per_1k = 0.001

[webhooks]
allowed_networks = ["127.0.0.0/8"]
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("sdk-js")
    config = write_config(work / "config.toml")
    config.write_text(config.read_text(encoding="utf-8") + EXTRA_CONFIG, encoding="utf-8")
    with Daemon(work, work / "state", config, name="sdk-js-daemon") as d:
        yield d


def bootstrap_token(daemon: Daemon) -> str:
    return str(json.loads((daemon.state_dir / "bootstrap-admin.key").read_text())["token"])


@pytest.mark.parametrize("name", NODE_TESTS)
def test_node_suite(daemon: Daemon, name: str) -> None:
    """Each file of sdk/js/test against the real daemon (see that file for what it proves)."""
    node = node_binary()
    env = node_env(f"http://127.0.0.1:{daemon.port}/api", bootstrap_token(daemon))
    try:
        run_node_tests(node, [SDK / "test" / name], env, SDK)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- daemon log (tail) ---\n{daemon.log()[-4000:]}") from None


def test_every_node_test_file_is_run() -> None:
    """The parametrisation found the SDK's tests (a renamed folder must not make this module pass empty)."""
    assert {"daemon.test.mjs", "retry.test.mjs", "commonjs.test.cjs", "browser.test.mjs"} <= set(NODE_TESTS)


def tool(name: str) -> str | None:
    """``name`` on PATH, else from scripts/test's test-only npm cache (.cache/seed-node)."""
    local = ROOT / ".cache" / "seed-node" / "node_modules" / ".bin" / name
    return shutil.which(name) or (str(local) if local.exists() else None)


def test_typescript_declarations() -> None:
    """index.d.ts type-checks the reference's usage (and refuses two misuses) under ``tsc --strict``."""
    node_binary()
    tsc = tool("tsc")
    if tsc is None:
        pytest.skip("TypeScript's tsc is not installed (scripts/test installs it with npm when npm exists)")
    proc = subprocess.run([tsc, "-p", str(SDK / "test" / "types")], capture_output=True, text=True, timeout=300,
                          check=False, env=node_env("http://127.0.0.1:9/api", None))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_npm_pack_and_install(daemon: Daemon, tmp_path: Path) -> None:
    """What a user installs: ``npm pack`` of j1msky and of the alias j1msky-sdk, installed offline
    into a fresh project; require('j1msky-sdk') and import 'j1msky' give the same client, which works."""
    node = node_binary()
    npm = tool("npm")
    if npm is None:
        pytest.skip("npm is not installed (Debian: apt-get install npm)")
    packs = tmp_path / "packs"
    packs.mkdir()
    for package in (SDK, SDK / "alias"):
        subprocess.run([npm, "pack", str(package), "--pack-destination", str(packs)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, check=True)
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "user-app", "version": "1.0.0", "private": true}\n')
    # --offline: both packages come from the tarballs (the alias's "j1msky" dependency included).
    done = subprocess.run([npm, "install", "--offline", "--no-audit", "--no-fund", *map(str, sorted(packs.iterdir()))],
                          cwd=project, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    installed = sorted(p.relative_to(project / "node_modules" / "j1msky").as_posix()
                       for p in (project / "node_modules" / "j1msky").rglob("*") if p.is_file())
    assert installed == ["README.md", "index.d.ts", "index.mjs", "package.json", "src/j1msky.js"]
    (project / "app.mjs").write_text(
        "import { createRequire } from 'node:module';\n"
        "import { J1MSKYClient } from 'j1msky';\n"
        "const { Agency } = createRequire(import.meta.url)('j1msky-sdk');\n"
        "if (Agency !== J1MSKYClient) throw new Error('two copies of the client');\n"
        "const agent = await new Agency().spawn({ model: 'k2p5', task: 'installed with npm' });\n"
        "console.log((await agent.waitForCompletion({ timeout: 60000 })).output);\n")
    run = subprocess.run([node, "app.mjs"], cwd=project, capture_output=True, text=True, timeout=120, check=False,
                         env=node_env(f"http://127.0.0.1:{daemon.port}/api", bootstrap_token(daemon)))
    assert run.returncode == 0 and re.fullmatch(r"\[offline:k2p5-up\] installed with npm \(id \w+\)\n", run.stdout), \
        run.stdout + run.stderr
