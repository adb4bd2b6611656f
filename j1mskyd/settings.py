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

__all__ = ["get", "put"]


def get(conn: sqlite3.Connection, name: str) -> str | None:
    """The stored value of ``name``, or None when it was never set."""
    row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
    return row[0] if row is not None else None


def put(name: str, value: str, now: float) -> Statement:
    """The statement that sets ``name`` to ``value`` (inserted or replaced)."""
    return ("INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (name, value, now))
