"""The harness every seed-example test uses (issue 16; contract in DESIGN-16.md).

Each file under ``tests/seed_examples/<kind>/`` is ONE fenced code block of the J1MSKY
reference (``shared/seeds/000_*.txt``) copied byte for byte: the lines between the fences,
with a final newline.  :func:`check_verbatim` proves it.  The copies under ``kyros/`` are
blocks of the Kyros API document (``shared/seeds/003_*.txt``, issue 17) instead: the seed a
copy comes from is chosen by its directory (:data:`SEED_PREFIX_OF_KIND`).  The only edits a test may make are
the ones :func:`localise` makes: the reference's base URLs and key placeholders become the
test daemon's, plus explicit replacements the test names with their reason (e.g. a public
webhook URL becomes a loopback receiver: tests never contact a non-loopback address).

Standard library and pytest only: the SDK helpers import it from their own test modules.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import pytest

from tests.daemon import ROOT, child_env

HERE = Path(__file__).resolve().parent


def _find_seed(prefix: str = "000") -> Path | None:
    """A seed document: ``shared/seeds/<prefix>_*.txt`` beside the checkout (``ROOT.parent``),
    or beside one of its ancestors (a worktree such as /work/wt/NAME finds /work/shared)."""
    for base in ROOT.parents:
        found = sorted((base / "shared" / "seeds").glob(f"{prefix}_*.txt"))
        if found:
            return found[0]
    return None


SEED: Path | None = _find_seed()  # the J1MSKY reference (000): every kind of copy but those below
# Copies whose examples come from another seed document, by their directory under HERE.
SEED_PREFIX_OF_KIND = {"kyros": "003"}  # the Kyros Hybrid Model System's API document (issue 17)


def seed_of(path: Path) -> Path | None:
    """The seed document a copy at ``path`` must be a block of: by its kind (the directory
    under tests/seed_examples/), the J1MSKY reference for anything else (a temp file too)."""
    try:
        kind = Path(path).resolve().relative_to(HERE).parts[0]
    except (ValueError, IndexError):
        return SEED
    prefix = SEED_PREFIX_OF_KIND.get(kind)
    return SEED if prefix is None else _find_seed(prefix)

# A fence opens at the start of a line with ``` and an optional info string (```python) and
# closes at a line that is only ```.  Fences inside code (an f-string's ```{language}) are
# never at the start of a line in the reference, so they do not count; a fence with an info
# string inside a block nests (the reference's markdown template shows a code block).
_OPEN = re.compile(r"^```[\w+-]*\s*$")
_CLOSE = re.compile(r"^```\s*$")

# Base URLs and key placeholders as the reference prints them, longest first so that
# ``http://localhost:8080/api`` is replaced before its prefix ``http://localhost:8080``.
REFERENCE_BASE_URLS = ("http://localhost:8080/api", "http://localhost:8080")
REFERENCE_KEYS = ("your_api_key_here", "your_api_key", "YOUR_KEY", "your_key")
GO_KEY_LITERAL = '"api_key"'  # NewClient("http://localhost:8080", "api_key") in the Go SDK section


@lru_cache(maxsize=4)
def _blocks_of(seed: Path) -> tuple[str, ...]:
    blocks: list[str] = []
    current: list[str] | None = None
    nested = 0  # fences inside a block: the release-notes template (```markdown) holds a ```python one
    for line in seed.read_text(encoding="utf-8").splitlines():
        if current is None:
            if _OPEN.match(line):
                current, nested = [], 0
            continue
        if _CLOSE.match(line) and not nested:
            blocks.append("".join(f"{kept}\n" for kept in current))
            current = None
            continue
        if _CLOSE.match(line):
            nested -= 1
        elif _OPEN.match(line):
            nested += 1
        current.append(line)
    return tuple(blocks)


def seed_blocks(seed: Path | None = None) -> list[str]:
    """Every fenced block of ``seed`` (default: the reference), as its lines between the
    fences each ending in a newline (what a copy on disk holds); [] when it is absent."""
    seed = SEED if seed is None else seed
    return list(_blocks_of(seed)) if seed is not None else []


def check_verbatim(path: Path) -> None:
    """Assert ``path`` holds exactly one fenced block of its seed (:func:`seed_of`), byte for byte.

    Skips (with the reason) when that seed is not beside the checkout; CI always has it.
    """
    seed = seed_of(path)
    if seed is None:
        pytest.skip(f"the seed of {Path(path).name} (shared/seeds/) is not beside this checkout")
    text = Path(path).read_bytes().decode("utf-8")
    assert text in _blocks_of(seed), (
        f"{path} is not a byte-for-byte copy of one fenced block of {seed.name}: "
        "copy the block's lines between the fences exactly, with a final newline; "
        "put any change the test needs in localise(replacements=...) or a prelude, with its reason")


def localise(text: str, *, base_url: str, key: str | None,
             replacements: Mapping[str, str] | None = None) -> str:
    """The reference's example made to talk to the test daemon, and nothing else.

    ``base_url`` is the daemon's root (``http://127.0.0.1:PORT``, no ``/api``).  The
    reference's base URLs become it, its key placeholders become ``key`` (``None`` leaves
    them as printed).  ``replacements`` maps further exact strings to their stand-ins; each
    must occur in the text (an explicit replacement that matches nothing fails the test,
    so a stale one cannot hide).
    """
    for old, new in (replacements or {}).items():
        assert old, "an explicit replacement needs a non-empty string to replace"
        assert old in text, f"explicit replacement {old!r} does not occur in the example"
        text = text.replace(old, new)
    root = base_url.rstrip("/")
    for url in REFERENCE_BASE_URLS:
        text = text.replace(url, root + url[len("http://localhost:8080"):])
    if key is not None:
        text = text.replace(GO_KEY_LITERAL, f'"{key}"')
        for placeholder in REFERENCE_KEYS:
            text = text.replace(placeholder, key)
    return text


# Caps time.sleep so that the examples' polling (every 2 s, back-offs of 60 s after a 429)
# does not make the suite slow: it only shortens waits, it edits no line of the example.
SLEEP_CAP_S = 0.05
SITECUSTOMIZE = f'''\
"""Test harness (tests/seed_examples/harness.py): caps time.sleep at {SLEEP_CAP_S} s."""
import time as _time

_real_sleep = _time.sleep


def _capped_sleep(seconds):
    _real_sleep(min(float(seconds), {SLEEP_CAP_S}))


_time.sleep = _capped_sleep
'''


def example_env(daemon_url: str, key: str | None, extra: Mapping[str, str] | None = None,
                path_first: Path | None = None) -> dict[str, str]:
    """The environment an example runs in: the reference's quick-start variables
    (``J1MSKY_API`` with ``/api``, ``J1MSKY_KEY`` when there is a key), this tree and the
    Python SDK's source on PYTHONPATH (``path_first`` before them)."""
    env = child_env({"J1MSKY_API": daemon_url.rstrip("/") + "/api", "PYTHONIOENCODING": "utf-8"})
    if key is not None:
        env["J1MSKY_KEY"] = key
    sdk = ROOT / "sdk" / "python"
    parts = [str(p) for p in (path_first, ROOT, sdk if sdk.is_dir() else None) if p is not None]
    parts += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env.update(extra or {})
    return env


def run_python(path: Path, *, daemon_url: str, key: str | None,
               replacements: Mapping[str, str] | None = None, prelude: str = "", epilogue: str = "",
               env: Mapping[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the example at ``path`` (checked verbatim first), localised, with ``sys.executable``.

    ``prelude`` and ``epilogue`` are code the TEST adds around a fragment (each with a
    comment saying why); the program is written to a temp dir (its working directory) with
    the sleep-capping ``sitecustomize.py``.  Returns the completed process (output captured
    as UTF-8 text: the examples print emoji); the test checks its exit code and output.
    """
    check_verbatim(path)
    source = localise(Path(path).read_text(encoding="utf-8"), base_url=daemon_url, key=key,
                      replacements=replacements)
    program = "".join(part if part.endswith("\n") or not part else part + "\n"
                      for part in (prelude, source, epilogue))
    with tempfile.TemporaryDirectory(prefix="seed-example-") as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
        script = tmpdir / Path(path).name
        script.write_text(program, encoding="utf-8")
        return subprocess.run([sys.executable, str(script)], cwd=tmpdir,
                              env=example_env(daemon_url, key, env, path_first=tmpdir),
                              capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout, check=False)


def example_files() -> list[Path]:
    """Every example copy under tests/seed_examples/<kind>/ (caches and dotfiles aside)."""
    return sorted(p for p in HERE.glob("*/**/*") if p.is_file()
                  and "__pycache__" not in p.parts and not any(part.startswith(".") for part in
                                                               p.relative_to(HERE).parts))
