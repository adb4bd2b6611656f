"""plain_text: which names print as what they are, and how the CLI escapes API text."""

from __future__ import annotations

import pytest

from j1mskyd.plain_text import name_problem, shown


@pytest.mark.parametrize("name", ["a\nb", "esc\x1b[31m", "nul\x00", "del\x7f", "nel\x85", "ls\u2028",
                                  "admin\u202egnp.exe", "bootstrap-admin\u200b", "\ufeffx", "x\u2066y", "a\u200fb"])
def test_lying_names_are_refused(name):
    assert name_problem(name) is not None


@pytest.mark.parametrize("name", ["Zoë's 台所 tablet 🍳", "מטבח", "كمبيوتر", "ops-1 (kitchen)", "Ωmega"])
def test_printable_names_of_any_script_pass(name):
    assert name_problem(name) is None


def test_shown_escapes_what_would_run_or_hide_in_a_terminal():
    assert shown("plain text") == "plain text"
    assert shown("\x1b]52;c;ZXZpbA==\x07 red\x1b[31m") == "\\x1b]52;c;ZXZpbA==\\x07 red\\x1b[31m"
    assert shown("a\u202eb\u200bc") == "a\\u202eb\\u200bc"
    assert shown("line 1\nline 2\ttab") == "line 1\\nline 2\\ttab"
    assert shown("line 1\nline 2\ttab\x1b", lines=True) == "line 1\nline 2\ttab\\x1b"
    assert shown(3.5) == "3.5"
