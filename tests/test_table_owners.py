"""Each table has one owner: the SQL naming a table (``FROM t``, ``INTO t``, ``UPDATE t``,
``JOIN t``) appears only in the module that owns it; everyone else calls that module's named
operations.  The owner map is this test's data (and docs/architecture.md's table of owners).

store.py is left out: it holds the schema and the migrations, which touch every table (its
data-key check in ``settings`` goes through settings.py like everyone's).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import j1mskyd

PACKAGE = Path(j1mskyd.__file__).parent

OWNERS = {
    "agents": "agent_record.py",       # the agent record: insert, update, load, listing page, retention
    "usage": "ledger.py",              # the usage ledger: record, spend, totals
    "api_keys": "keys.py",
    "settings": "settings.py",         # named values: get / put
    "ip_blocks": "ipcontrol.py",
    "audit_log": "audit.py",
    "idempotency": "idempotency.py",
    "events": "events.py",             # the event log
    "webhooks": "webhooks.py",
    "deliveries": "webhooks.py",       # the outbox's delivery rows and their worker
    "pricing_quotes": "pricing_history.py",
    "pricing_exceptions": "pricing_history.py",
    "projects": "projects.py",         # projects: budget scopes above keys
    "metric_points": "timeseries.py",  # the dashboard's rolled-up series
    "tasks": "task_store.py",          # tasks, their steps and escalations (tasks.py's engine)
    "task_steps": "task_store.py",
    "escalations": "task_store.py",
}
# Where a second module still names a table, and why.  Each entry must still be needed (a stale
# one fails), so the list only shrinks; it is empty now, and a new entry needs a reason.
SHARED: dict[tuple[str, str], str] = {}
REFERENCE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+([a-z_]+)\b")


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant (adjacent literals arrive joined; an f-string's text parts too)."""
    return [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def references(package: Path) -> dict[tuple[str, str], list[int]]:
    """(table, module path under the package) -> lines whose SQL names that table."""
    found: dict[tuple[str, str], list[int]] = {}
    for path in sorted(package.rglob("*.py")):
        module = path.relative_to(package).as_posix()
        if module == "store.py":
            continue
        for line, text in _strings(ast.parse(path.read_text(), module)):
            for table in REFERENCE.findall(text):
                found.setdefault((table, module), []).append(line)
    return found


def misplaced(package: Path) -> list[str]:
    problems = []
    for (table, module), lines in sorted(references(package).items()):
        owner = OWNERS.get(table)
        if owner is None:
            problems.append(f"{module}:{lines[0]}: table {table!r} has no owner in OWNERS")
        elif module != owner and (table, module) not in SHARED:
            problems.append(f"{module}:{lines}: SQL on {table!r}, which {owner} owns")
    return problems


def test_each_tables_sql_is_only_in_its_owner():
    assert misplaced(PACKAGE) == []


def test_every_table_of_the_schema_has_an_owner_that_uses_it():
    schema = set(re.findall(r"CREATE TABLE (\w+)", (PACKAGE / "store.py").read_text()))
    assert schema == set(OWNERS)
    seen = references(PACKAGE)
    assert {t for t, m in seen if OWNERS.get(t) == m} == set(OWNERS)


def test_each_shared_entry_is_still_needed():
    seen = references(PACKAGE)
    assert [entry for entry in SHARED if entry not in seen] == []


def test_the_scan_finds_a_table_used_outside_its_owner(tmp_path):
    """The check can fail: a ledger read planted in another module, and a table nobody owns."""
    (tmp_path / "ledger.py").write_text("Q = 'SELECT SUM(cost) FROM usage'\n")
    (tmp_path / "billing.py").write_text("def f(conn, w):\n    return conn.execute(f'SELECT SUM(cost) '\n"
                                         "                        f'FROM usage WHERE {w}')\n")
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "ops.py").write_text("Q = 'INSERT INTO usage (ts) VALUES (?)'\n")
    (tmp_path / "newthing.py").write_text("Q = 'UPDATE gadgets SET x = 1'\n")
    (tmp_path / "prose.py").write_text('"""Reads from usage figures; select from the list."""\n')
    problems = misplaced(tmp_path)
    assert sorted(p.split(":", 1)[0] for p in problems) == ["api/ops.py", "billing.py", "newthing.py"], problems
    assert [p for p in problems if "no owner" in p] == ["newthing.py:1: table 'gadgets' has no owner in OWNERS"]
