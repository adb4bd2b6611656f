"""The J1MSKY reference's Go example (SDK Reference, Go SDK, Basic Usage) run as printed.

The copy in go/ is byte for byte the reference's block (test_verbatim checks it); localise()
changes only its base URL and its "api_key" placeholder.  It is built as the reference's
reader would build it after ``go get github.com/j1msky/sdk-go``: a module that requires
the SDK, here with a ``replace`` directive pointing at this checkout's sdk/go (the module is
not published, and the build runs offline).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from tests.daemon import Daemon
from tests.golang import MODULE, SDK_DIR, output, run_go
from tests.seed_examples.harness import check_verbatim, localise

HERE = Path(__file__).resolve().parent
BASIC_USAGE = HERE / "go" / "sdk_reference_basic_usage.go"


def go_mod(sdk_dir: Path) -> str:
    """The example program's go.mod: the SDK required, and replaced by the checkout's copy."""
    return (f"module seedexample\n\ngo 1.19\n\nrequire {MODULE} v0.0.0\n\n"
            f"replace {MODULE} => {sdk_dir}\n")


def run_go_example(path: Path, *, daemon_url: str, key: str | None,
                   timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``go run .`` of the example at ``path`` (checked verbatim first), localised, in a temp module."""
    check_verbatim(path)
    source = localise(path.read_text(encoding="utf-8"), base_url=daemon_url, key=key)
    with tempfile.TemporaryDirectory(prefix="seed-example-go-") as tmp:
        module = Path(tmp)
        (module / "go.mod").write_text(go_mod(SDK_DIR), encoding="utf-8")
        (module / "main.go").write_text(source, encoding="utf-8")
        return run_go(["run", "."], cwd=module, timeout=timeout)


def test_sdk_reference_go_basic_usage(seed_daemon: Daemon, seed_url: str, seed_key: str) -> None:
    proc = run_go_example(BASIC_USAGE, daemon_url=seed_url, key=seed_key)
    assert proc.returncode == 0, output(proc) + "\n--- daemon log\n" + seed_daemon.log()[-4000:]
    # fmt.Println(result.Output), then fmt.Printf("Cost: $%.2f\n", result.Cost).
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, output(proc)
    assert lines[0].startswith("[offline:k2p5] Write a Go function"), output(proc)
    assert re.fullmatch(r"Cost: \$[0-9]+\.[0-9]{2}", lines[1]), output(proc)
    # The agent it printed is the daemon's, completed, and its cost is the one printed.
    agents = seed_daemon.get("/api/agents?limit=100")["data"]
    mine = [a for a in agents if a["task"] == "Write a Go function"]
    assert len(mine) == 1 and mine[0]["status"] == "completed", agents
    assert lines[1] == f"Cost: ${mine[0]['actual_cost']:.2f}"


def test_localise_touches_only_the_url_and_the_key() -> None:
    original = BASIC_USAGE.read_text(encoding="utf-8")
    changed = localise(original, base_url="http://127.0.0.1:1234", key="jsk_k")
    diff = [(a, b) for a, b in zip(original.splitlines(), changed.splitlines()) if a != b]
    assert diff == [('    client := j1msky.NewClient("http://localhost:8080", "api_key")',
                     '    client := j1msky.NewClient("http://127.0.0.1:1234", "jsk_k")')]
