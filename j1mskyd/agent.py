"""The agent record: its fields, its row in sqlite, and its public JSON views.

One class holds an agent in memory while it is live; finished agents live only in
the database and are read back through :func:`from_row`.  The views keep the seed's
field names exactly (``created``/``started``/``completed``/``cost`` on the status
object, ``created_at``/``actual_cost`` in listings).
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timezone
from typing import Any

from .crypto import DataCipher

SPAWNING, QUEUED, RUNNING = "spawning", "queued", "running"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
STATUSES = (SPAWNING, QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED)
LIVE = frozenset({SPAWNING, QUEUED, RUNNING})
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})

PRIORITIES = {"high": 0, "normal": 1, "low": 2}  # lower runs first

KIND_AGENT, KIND_TEAM, KIND_MEMBER = "agent", "team", "member"
ANONYMOUS = "anonymous"  # the key id of requests made while authentication is not configured

COLUMNS = (
    "agent_id", "kind", "parent_id", "team", "model", "served_model", "provider", "task",
    "priority", "timeout", "status", "error", "result", "estimated_cost", "cost",
    "input_tokens", "output_tokens", "runs", "attempts", "created_at", "started_at",
    "completed_at", "api_key", "retention_days", "purged_at",
)
SEALED = ("task", "result")  # columns encrypted at rest
_INSERT_SQL = f"INSERT INTO agents ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def money(x: float | None) -> float | None:
    return None if x is None else round(x, 8)  # a millionth of a cent: tiny local-model costs stay visible


class Agent:
    # ``reserved``: the budget held for this agent while it is live (its worst case; see
    # worstcase.py).  Not stored: it is worked out again from the config at start.
    # ``billed``: the cost of calls the upstream billed although they failed (already in the ledger).
    __slots__ = COLUMNS + ("members", "reserved", "billed")

    def __init__(self, **fields: Any) -> None:
        for name in COLUMNS:
            setattr(self, name, fields.get(name))
        self.api_key = self.api_key or ANONYMOUS
        self.runs = self.runs or 0
        self.attempts = self.attempts or 0
        if self.created_at is None:
            self.created_at = time.time()
        self.members: list[str] = list(fields.get("members") or ())
        self.reserved: float | None = fields.get("reserved")  # None: no budget, no cap on calls
        self.billed = 0.0

    # -- persistence -----------------------------------------------------------
    # Task and result are the user's data: they reach the database only through
    # ``cipher`` (the store's DataCipher, or None when encryption is off).
    def _column(self, name: str, cipher: DataCipher | None) -> Any:
        value = getattr(self, name)
        if cipher is not None and name in SEALED:
            return cipher.encrypt(value, f"{self.agent_id}/{name}")
        return value

    def insert_statement(self, cipher: DataCipher | None = None) -> tuple[str, tuple[Any, ...]]:
        return _INSERT_SQL, tuple(self._column(c, cipher) for c in COLUMNS)

    def update_statement(self, *fields: str, cipher: DataCipher | None = None) -> tuple[str, tuple[Any, ...]]:
        sets = ", ".join(f"{f} = ?" for f in fields)
        return (f"UPDATE agents SET {sets} WHERE agent_id = ?",
                (*(self._column(f, cipher) for f in fields), self.agent_id))

    @property
    def deadline(self) -> float:
        """The agent's timeout runs from its creation: queue time counts."""
        return self.created_at + self.timeout

    # -- views -------------------------------------------------------------------
    def spawn_view(self) -> dict[str, Any]:
        """The answer to a spawn: "spawning" is the seed's word for accepted (it is queued by now)."""
        return {
            "success": True,
            "agent_id": self.agent_id,
            "model": self.model,
            "status": SPAWNING,
            "estimated_cost": money(self.estimated_cost),
        }

    def status_view(self) -> dict[str, Any]:
        view = {
            "agent_id": self.agent_id,
            "model": self.model,
            "status": self.status,
            "task": self.task,
            "created": iso(self.created_at),
            "started": iso(self.started_at),
            "completed": iso(self.completed_at),
            "result": self.result,
            "cost": money(self.cost),
            "estimated_cost": money(self.estimated_cost),
            "priority": self.priority,
            "timeout": self.timeout,
            "team": self.team,
            "error": self.error,
            "served_by": {"model": self.served_model, "provider": self.provider} if self.served_model else None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
            if self.input_tokens is not None else None,
            "attempts": self.attempts,
        }
        if self.purged_at is not None:
            view["data_deleted_at"] = iso(self.purged_at)
        if self.parent_id:
            view["parent_id"] = self.parent_id
        return view

    def list_view(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "model": self.model,
            "status": self.status,
            "task": self.task,
            "team": self.team,
            "priority": self.priority,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
            "estimated_cost": money(self.estimated_cost),
            "actual_cost": money(self.cost),
            "error": self.error,
        }

    def active_view(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "model": self.model, "status": self.status, "task": self.task,
                "priority": self.priority, "team": self.team, "created_at": iso(self.created_at),
                "started_at": iso(self.started_at)}


def from_row(row: sqlite3.Row, cipher: DataCipher | None = None) -> Agent:
    fields = {k: row[k] for k in COLUMNS}
    if cipher is not None:
        for name in SEALED:
            fields[name] = cipher.decrypt(fields[name], f"{fields['agent_id']}/{name}")
    return Agent(**fields)
