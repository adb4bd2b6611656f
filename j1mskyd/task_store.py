"""The tables of tasks: ``tasks``, ``task_steps`` and ``escalations`` (migration 10).

The one module with their SQL (tests/test_table_owners.py).  Writes are statements for the
caller's unit (the engine commits a step's end with the next step's agent, its events and the
task's new state); reads are functions of a connection, for ``store.read``.  The user's text
(title, description, metadata, context, results, feedback, a step's output and the critic's
reasons, an escalation's reason, context and comments) reaches the database only through
``cipher`` (the store's DataCipher, or None when encryption is off), as an agent's task does.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from . import jsonx
from .crypto import DataCipher
from .store import Statement
from .task_record import ESC_PENDING, Escalation, Step, TERMINAL, Task

__all__ = ["ESCALATIONS", "STEPS", "TASKS", "cost_rows", "escalation_page", "live_tasks", "load_escalation",
           "load_task", "role_steps", "task_page"]

R = TypeVar("R")


@dataclass(frozen=True)
class _Codec(Generic[R]):
    """A record class <-> one table's rows: which columns are JSON, which are sealed."""

    table: str
    key: str
    cls: Callable[..., R]
    columns: tuple[str, ...]
    json: frozenset[str]
    sealed: frozenset[str]
    flags: frozenset[str] = frozenset()  # stored as 0/1

    def _out(self, record: Any, name: str, cipher: DataCipher | None) -> Any:
        value = getattr(record, name)
        if name in self.json:
            value = None if value is None else jsonx.compact(list(value) if isinstance(value, tuple) else value)
        elif name in self.flags:
            value = int(bool(value))
        if name in self.sealed and cipher is not None and value is not None:
            value = cipher.encrypt(value, f"{getattr(record, self.key)}/{name}")
        return value

    def insert(self, record: Any, cipher: DataCipher | None) -> Statement:
        cols = self.columns
        return (f"INSERT INTO {self.table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                tuple(self._out(record, c, cipher) for c in cols))

    def update(self, record: Any, fields: Sequence[str], cipher: DataCipher | None) -> Statement:
        assert fields and all(f in self.columns and f != self.key for f in fields), fields
        return (f"UPDATE {self.table} SET {', '.join(f + ' = ?' for f in fields)} WHERE {self.key} = ?",
                (*(self._out(record, f, cipher) for f in fields), getattr(record, self.key)))

    def load(self, row: sqlite3.Row, cipher: DataCipher | None) -> R:
        values = {}
        for name in self.columns:
            value = row[name]
            if name in self.sealed and cipher is not None and value is not None:
                value = cipher.decrypt(value, f"{row[self.key]}/{name}")
            if name in self.json and value is not None:
                value = jsonx.loads(value)
            elif name in self.flags:
                value = bool(value)
            values[name] = value
        return self.cls(**values)


def _task(**values: Any) -> Task:
    values["workflow"] = tuple(values["workflow"])
    return Task(**values)


def _fields(cls: type, skip: Iterable[str] = ()) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in set(skip))


TASKS: _Codec[Task] = _Codec(
    "tasks", "task_id", _task, _fields(Task, ("steps", "escalations")),
    json=frozenset({"workflow", "files_to_modify", "acceptance_criteria", "dependencies", "tags", "metadata",
                    "context", "preferences", "results"}),
    sealed=frozenset({"title", "description", "metadata", "context", "results", "feedback"}))
STEPS: _Codec[Step] = _Codec(
    "task_steps", "step_id", Step, _fields(Step), json=frozenset({"selection"}),
    sealed=frozenset({"output", "reasons"}))
ESCALATIONS: _Codec[Escalation] = _Codec(
    "escalations", "esc_id", Escalation, _fields(Escalation), json=frozenset({"context"}),
    sealed=frozenset({"reason", "context", "comments", "decision_reason"}), flags=frozenset({"auto", "manual"}))


# -- reads ------------------------------------------------------------------------------------
def _complete(conn: sqlite3.Connection, tasks: list[Task], cipher: DataCipher | None) -> list[Task]:
    """Each task with its steps (in order) and escalations (oldest first)."""
    if not tasks:
        return tasks
    by_id = {t.task_id: t for t in tasks}
    marks = ", ".join("?" * len(by_id))
    for row in conn.execute(f"SELECT * FROM task_steps WHERE task_id IN ({marks}) ORDER BY seq", tuple(by_id)):
        by_id[row["task_id"]].steps.append(STEPS.load(row, cipher))
    for row in conn.execute(f"SELECT * FROM escalations WHERE task_id IN ({marks}) ORDER BY submitted_at, rowid",
                            tuple(by_id)):
        by_id[row["task_id"]].escalations.append(ESCALATIONS.load(row, cipher))
    return tasks


def load_task(conn: sqlite3.Connection, task_id: str, cipher: DataCipher | None) -> Task | None:
    row = conn.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    return _complete(conn, [TASKS.load(row, cipher)], cipher)[0] if row is not None else None


def live_tasks(conn: sqlite3.Connection, cipher: DataCipher | None) -> list[Task]:
    """Every task not yet ended (recovery at start)."""
    marks = ", ".join("?" * len(TERMINAL))
    rows = conn.execute(f"SELECT * FROM tasks WHERE status NOT IN ({marks}) ORDER BY created_at", tuple(TERMINAL))
    return _complete(conn, [TASKS.load(r, cipher) for r in rows], cipher)


def _owned(where: list[str], args: list[Any], owners: Sequence[str] | None, column: str = "api_key") -> None:
    if owners is not None:
        where.append(f"{column} IN ({', '.join('?' * len(owners))})")
        args.extend(owners)


_SORTS = {"created_at": "created_at", "updated_at": "updated_at", "deadline": "deadline",
          # critical first when descending, as a person reads "by priority"
          "priority": "CASE priority WHEN 'low' THEN 0 WHEN 'medium' THEN 1 WHEN 'high' THEN 2 ELSE 3 END"}


def task_page(conn: sqlite3.Connection, filters: dict[str, Any], tags: Sequence[str], sort_by: str, descending: bool,
              limit: int, offset: int, owners: Sequence[str] | None,
              cipher: DataCipher | None) -> tuple[list[Task], int]:
    """A page of tasks matching ``filters`` (column -> value) and holding every one of ``tags``,
    and how many match; ``owners``: the keys whose tasks may be listed (None: everyone's)."""
    where, args = ["1"], list[Any]()
    for column, value in filters.items():
        where.append(f"{column} = ?")
        args.append(value)
    for tag in tags:  # tags is a compact JSON list: an element is its JSON string, quotes included
        where.append("instr(tags, ?) > 0")
        args.append(jsonx.compact(tag))
    _owned(where, args, owners)
    clause = " AND ".join(where)
    total = conn.execute(f"SELECT COUNT(*) FROM tasks WHERE {clause}", args).fetchone()[0]
    order = f"{_SORTS[sort_by]} {'DESC' if descending else 'ASC'}, task_id {'DESC' if descending else 'ASC'}"
    rows = conn.execute(f"SELECT * FROM tasks WHERE {clause} ORDER BY {order} LIMIT ? OFFSET ?",
                        (*args, limit, offset)).fetchall()
    return [TASKS.load(r, cipher) for r in rows], total


def load_escalation(conn: sqlite3.Connection, esc_id: str, cipher: DataCipher | None) -> Escalation | None:
    row = conn.execute("SELECT * FROM escalations WHERE esc_id = ?", (esc_id,)).fetchone()
    return ESCALATIONS.load(row, cipher) if row is not None else None


def escalation_page(conn: sqlite3.Connection, status: str | None, task_id: str | None, since: float | None,
                    until: float | None, limit: int, offset: int, owners: Sequence[str] | None,
                    cipher: DataCipher | None) -> tuple[list[Escalation], int]:
    """Escalations, newest first, and how many match."""
    where, args = ["1"], list[Any]()
    for clause, value in (("status = ?", status), ("task_id = ?", task_id), ("submitted_at >= ?", since),
                          ("submitted_at <= ?", until)):
        if value is not None:
            where.append(clause)
            args.append(value)
    _owned(where, args, owners)
    cond = " AND ".join(where)
    total = conn.execute(f"SELECT COUNT(*) FROM escalations WHERE {cond}", args).fetchone()[0]
    rows = conn.execute(f"SELECT * FROM escalations WHERE {cond} ORDER BY submitted_at DESC, rowid DESC "
                        "LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
    return [ESCALATIONS.load(r, cipher) for r in rows], total


def pending_escalations(conn: sqlite3.Connection, task_id: str, cipher: DataCipher | None) -> list[Escalation]:
    rows = conn.execute("SELECT * FROM escalations WHERE task_id = ? AND status = ?", (task_id, ESC_PENDING))
    return [ESCALATIONS.load(r, cipher) for r in rows]


_GROUPS = {"model": "COALESCE(s.served_model, s.model)", "role": "s.role", "task_type": "t.type",
           "user": "t.api_key"}


def cost_rows(conn: sqlite3.Connection, group_by: str, since: float,
              owners: Sequence[str] | None) -> list[tuple[str, float, int]]:
    """(group, cost, tasks) of the steps that ended since ``since``, by ``group_by`` (model,
    role, task_type or user); ``owners``: whose tasks count (None: everyone's)."""
    where, args = ["s.ended_at >= ?", "s.cost IS NOT NULL"], list[Any]([since])
    _owned(where, args, owners, "t.api_key")
    rows = conn.execute(f"SELECT {_GROUPS[group_by]} AS g, SUM(s.cost), COUNT(DISTINCT s.task_id) "
                        f"FROM task_steps s JOIN tasks t ON t.task_id = s.task_id WHERE {' AND '.join(where)} "
                        "GROUP BY g ORDER BY SUM(s.cost) DESC", args).fetchall()
    return [(r[0], r[1] or 0.0, r[2]) for r in rows]


def role_steps(conn: sqlite3.Connection, role: str, since: float, owners: Sequence[str] | None,
               cipher: DataCipher | None) -> list[Step]:
    """The steps of ``role`` created since ``since`` (its status figures)."""
    where, args = ["s.role = ?", "s.created_at >= ?"], list[Any]([role, since])
    _owned(where, args, owners, "t.api_key")
    rows = conn.execute(f"SELECT s.* FROM task_steps s JOIN tasks t ON t.task_id = s.task_id "
                        f"WHERE {' AND '.join(where)} ORDER BY s.created_at", args).fetchall()
    return [STEPS.load(r, cipher) for r in rows]
