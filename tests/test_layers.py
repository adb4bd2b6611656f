"""Handlers in j1mskyd/api/ parse, call a service and serialise: none of them touches the
database.  A module there that reads or writes through the store, runs a statement, imports
sqlite3 or the store, or holds SQL text fails this test (the SQL belongs to the domain module
that owns the table; see tests/test_table_owners.py)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import typing
from pathlib import Path

import j1mskyd

API = Path(j1mskyd.__file__).parent / "api"
# Uppercase, as every statement in the project is written; prose ("select a model from") is not SQL.
SQL = re.compile(r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+(?:OR\s+[A-Z]+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b"
                 r"|\bDELETE\s+FROM\b|\bPRAGMA\b|\bCREATE\s+(?:TABLE|INDEX)\b")
STORE_IO = {"read", "write", "submit", "flush"}         # the store's database operations
CURSOR = {"execute", "executemany", "executescript"}    # a statement run on a connection
FORBIDDEN_IMPORTS = {"sqlite3", "j1mskyd.store", "store", "j1mskyd.ledger", "ledger", "j1mskyd.settings", "settings"}


def _receiver(node: ast.expr) -> str | None:
    """The last name of what a method is called on: ``services.store.read`` -> "store"."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def violations(source: str, name: str) -> list[str]:
    """Every place in one module's source where it touches the database."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, receiver = node.func.attr, _receiver(node.func.value)
            if method in CURSOR:
                found.append(f"{where}: .{method}() runs a statement")
            elif method in STORE_IO and receiver == "store":
                found.append(f"{where}: store.{method}() reaches the database")
        elif isinstance(node, ast.Import):
            found += [f"{where}: imports {a.name}" for a in node.names if a.name in FORBIDDEN_IMPORTS]
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").lstrip(".")
            if module in FORBIDDEN_IMPORTS or module.rsplit(".", 1)[-1] in FORBIDDEN_IMPORTS:
                found.append(f"{where}: imports from {node.module}")
            found += [f"{where}: imports {a.name}" for a in node.names if a.name in FORBIDDEN_IMPORTS]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
            found.append(f"{where}: SQL text {node.value[:60]!r}")
    return found


def scan(directory: Path) -> list[str]:
    return [v for path in sorted(directory.glob("*.py")) for v in violations(path.read_text(), path.name)]


def test_no_handler_module_touches_the_store_or_sql():
    modules = sorted(API.glob("*.py"))
    assert len(modules) > 10  # the scan reads the real package
    assert scan(API) == []


def test_the_scan_finds_each_way_of_touching_the_database(tmp_path):
    """The check above can fail: a handler package with each forbidden form planted in it."""
    planted = {
        "reads.py": "async def h(request):\n    return await request.app['s'].store.read(lambda c: c)\n",
        "writes.py": "async def h(services):\n    await services.store.write(('x', ()))\n",
        "submits.py": "def h(store):\n    store.submit([])\n",
        "runs.py": "def h(conn):\n    return conn.execute('?')\n",
        "imports.py": "import sqlite3\n",
        "imports_store.py": "from ..store import Store\n",
        "imports_ledger.py": "from .. import ledger\n",
        "selects.py": "Q = ('SELECT model, COUNT(*) '\n     'FROM usage WHERE ts >= ?')\n",
        "inserts.py": "Q = f\"INSERT INTO usage (ts) VALUES ({1})\"\n",
        "updates.py": "Q = 'UPDATE agents SET status = ?'\n",
        "deletes.py": "Q = 'DELETE FROM webhooks WHERE webhook_id = ?'\n",
    }
    for name, text in planted.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "clean.py").write_text(
        "ROUTES = [('DELETE', '/agent/{id}'), ('POST', '/models/select')]\n"
        "DOC = 'select a model from the catalogue; update the list'\n"
        "async def h(request):\n    return request.app['s'].agents.read_only\n")
    found = scan(tmp_path)
    flagged = {v.split(":", 1)[0] for v in found}
    assert flagged == set(planted), found


REQUEST_NAMES = {"body", "req", "request", "reqs", "change", "payload"}


def raw_bodies(classes: list[type]) -> list[str]:
    """Methods of these classes that take a raw request: a parameter named ``body``, or a
    request-like one (``req``, ``change``...) typed ``Any`` or not typed at all."""
    import inspect

    found = []
    for cls in classes:
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            for param in inspect.signature(fn).parameters.values():
                untyped = param.annotation in ("Any", "typing.Any", typing.Any, inspect.Parameter.empty)
                if param.name == "body" or (param.name in REQUEST_NAMES and untyped):
                    found.append(f"{cls.__name__}.{name}({param.name})")
    return found


def test_no_service_takes_a_raw_body():
    """Bodies are parsed at the edge (spawn_request.py, webhook_request.py, security_request.py):
    no service a handler reaches (a field of app.Services) takes a ``body`` of any JSON."""
    from j1mskyd.app import Services

    hints = typing.get_type_hints(Services)
    classes = [hints[f.name] for f in dataclasses.fields(Services) if inspect.isclass(hints[f.name])
               and hints[f.name].__module__.startswith("j1mskyd.")]
    assert {c.__name__ for c in classes} >= {"AgentService", "WebhookService", "AuditLog", "IpControl",
                                              "PricingService", "Orchestrator", "KeyService"}
    assert raw_bodies(classes) == []


def test_the_raw_body_check_can_fail():
    class Planted:
        async def create(self, body: dict) -> None: ...

        def update(self, webhook_id: str, change) -> None: ...

        def configure(self, req: typing.Any) -> None: ...

        def fine(self, req: "NewWebhook", data: dict) -> None: ...

    assert raw_bodies([Planted]) == ["Planted.configure(req)", "Planted.create(body)", "Planted.update(change)"]
