"""The README's "Five minutes" curl block, run as printed against a real daemon on the
embedded default, from the directory the first command ran in (issue 18: tried as a new user
would, the status curl used the sample id and got 404, and the filter matched nothing).

Only the port changes (the test's daemon is not on 8080).  ``curl`` is wrapped to fail on an
HTTP error (``--fail-with-body``) and end each answer with a newline, so each answer is one
JSON document per line; the block runs under ``set -euo pipefail``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.daemon import Daemon, child_env

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")),
                                reason="the README's block uses curl and jq (apt-get install curl jq)")


def curl_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    step = text.split("3. **Spawn from curl:**", 1)[1]
    return re.search(r"```bash\n(.*?)```", step, re.S).group(1)


def test_the_five_minute_curl_block_runs_as_printed(tmp_path):
    block = curl_block()
    with Daemon(tmp_path, tmp_path / ".j1msky") as daemon:  # ./.j1msky: where the README's key file is
        script = ('set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; echo; }\n'
                  + block.replace("http://localhost:8080", f"http://127.0.0.1:{daemon.port}"))
        env = {k: v for k, v in child_env().items() if k not in ("J1MSKY_API", "J1MSKY_KEY")}
        out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60, check=False)
        assert out.returncode == 0, (out.stdout, out.stderr)
        answers = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        status, spawn_team, completed, filtered = answers
        assert status["agent_id"].startswith("subagent_") and status["model"] == "k2p5"  # not a 404
        assert spawn_team["success"] is True
        assert completed["data"] and all(a["status"] == "completed" for a in completed["data"]), completed
        # The filter example matches what the offline default produces (it matched nothing).
        assert filtered["data"], filtered
        assert {a["model"] for a in filtered["data"]} <= {"k2p5", "sonnet"}
    assert os.path.exists(tmp_path / ".j1msky" / "bootstrap-admin.key")
