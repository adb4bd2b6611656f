"""README.md's first two commands are the project's promise to a fresh machine: CI runs the
second one verbatim (.ci/run), and it must work as root where there is no sudo (issue 18)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The bash blocks before the README's first rule (---): the two copy-paste commands."""
    head = (ROOT / "README.md").read_text(encoding="utf-8").split("\n---\n", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", head, re.S)]


def test_the_readme_starts_with_two_commands_and_ci_runs_the_second_verbatim():
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands), "each is one copy-paste line"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert commands[1] in ci, "the .ci/run line must be the README's second command, verbatim"
    assert commands[1].endswith("&& ./scripts/test")


def test_the_test_command_uses_sudo_only_where_it_exists(tmp_path):
    """No bare `sudo`: as root on a machine without it, `sudo apt-get` was 'command not found'."""
    command = readme_commands()[1]
    assert not re.search(r"(^|[;&|]\s*)sudo\b", command), command
    # The command's own idiom, run by bash with a PATH that has no sudo and with one that has.
    probe = "$(command -v sudo) echo ran"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sudo").write_text('#!/bin/sh\necho via-sudo "$@"\n')
    (fake / "sudo").chmod(0o755)
    bash = shutil.which("bash") or "/bin/bash"
    echo_dir = str(Path(shutil.which("echo") or "/bin/echo").parent)
    without = subprocess.run([bash, "-euo", "pipefail", "-c", probe], env={"PATH": echo_dir},
                             capture_output=True, text=True, check=False)
    assert (without.returncode, without.stdout) == (0, "ran\n"), without
    with_sudo = subprocess.run([bash, "-euo", "pipefail", "-c", probe], env={"PATH": f"{fake}:{echo_dir}"},
                               capture_output=True, text=True, check=False)
    assert with_sudo.stdout == "via-sudo echo ran\n", with_sudo
