"""Text that reads as what it is wherever it is printed.

Two kinds of characters make printed text lie: control characters (C0, DEL, C1) and the line
and paragraph separators, which break or forge lines and, in a terminal, run escape
sequences (colours, the window title, OSC 52 writing the clipboard); and the invisible format
characters (Unicode category Cf: bidi overrides such as U+202E, zero-width spaces and joiners,
U+FEFF), which make ``admin\\u202egnp.exe`` read as "adminexe.png" and ``admin\\u200b`` as
"admin".  A name that people pick a key or a project by holds neither (:func:`name_problem`);
text from the API that the CLI prints has them escaped (:func:`shown`).
"""

from __future__ import annotations

import unicodedata

__all__ = ["name_problem", "shown"]

_LYING = frozenset(("Cc", "Cf", "Zl", "Zp"))


def _lies(c: str) -> bool:
    return unicodedata.category(c) in _LYING


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a key or a project (None: it can)."""
    if any(_lies(c) for c in name):
        return "name must not contain control characters, line breaks or invisible format characters " \
               "(bidi overrides, zero-width spaces)"
    return None


def shown(text: object, *, lines: bool = False) -> str:
    """``text`` for a terminal: each lying character as its escape (``\\x1b``, ``\\u202e``);
    ``lines``: keep line breaks and tabs (an agent's multi-line answer)."""
    text = str(text)
    if not any(_lies(c) for c in text):
        return text
    kept = "\n\t" if lines else ""
    return "".join(c if c in kept or not _lies(c) else c.encode("unicode_escape").decode("ascii") for c in text)
