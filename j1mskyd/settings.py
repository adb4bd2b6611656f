"""The ``settings`` table: named values that outlive a restart (audit settings, the IP
allowlist set at runtime, the pricing policy last run with, the data key's check value).  The
one module with SQL on it: the store too writes its key check through :func:`get` and
:func:`put` at open (which is why this module imports the store for type checking only).

Each owner module keeps its own names; values are text (JSON where structured).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the store imports this module
    from .store import Statement

__all__ = ["delete", "get", "put", "with_prefix"]


def get(conn: sqlite3.Connection, name: str) -> str | None:
    """The stored value of ``name``, or None when it was never set."""
    row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
    return row[0] if row is not None else None


def put(name: str, value: str, now: float) -> Statement:
    """The statement that sets ``name`` to ``value`` (inserted or replaced)."""
    return ("INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (name, value, now))


def with_prefix(conn: sqlite3.Connection, prefix: str) -> dict[str, str]:
    """Every stored value whose name starts with ``prefix``, by name."""
    rows = conn.execute("SELECT name, value FROM settings WHERE substr(name, 1, ?) = ?", (len(prefix), prefix))
    return {name: value for name, value in rows}


def delete(name: str) -> Statement:
    """The statement that removes ``name`` (nothing when it is not set)."""
    return ("DELETE FROM settings WHERE name = ?", (name,))
