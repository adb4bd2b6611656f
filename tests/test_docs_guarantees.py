"""docs/security.md's "What is guaranteed" names a test for every promise: each one named
must exist, so that renaming or deleting a test cannot leave a promise without its proof."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _guarantee_section() -> str:
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    start = text.index("## What is guaranteed")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def named_tests() -> list[tuple[str, str]]:
    """(file, test) of every `file.py::test` cell; a `::test` cell repeats the last file."""
    found, current = [], None
    for cell in re.findall(r"`([^`\s]*::[^`\s]+)`", _guarantee_section()):
        file, test = cell.split("::")
        current = file or current
        found.append((current, test))
    return found


def test_every_guarantee_names_tests_that_exist():
    named = named_tests()
    assert len(named) >= 60  # the section was not emptied or its format changed unnoticed
    missing = [f"{file}::{test}" for file, test in named
               if not re.search(rf"^(async )?def {test}\(", (ROOT / "tests" / file).read_text(encoding="utf-8"),
                                re.MULTILINE)]
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"
