"""The agent record: its fields, its row in sqlite, and its public JSON views.

One class holds an agent in memory while it is live; finished agents live only in
the database and are read back through :func:`from_row`.  The views keep, exactly, the
field names that existing clients of the API were written against
(``created``/``started``/``completed``/``cost`` on the status object,
``created_at``/``actual_cost`` in listings).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import sqlite3
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Final, Literal, get_args, overload

from . import jsonx
from .crypto import DataCipher

if TYPE_CHECKING:
    from .chat_request import ChatRequest
    from .plugin_api import CompletionResult

__all__ = [
    "Agent", "from_row", "iso", "money", "COLUMNS", "SEALED",
    "Status", "STATUSES", "LIVE", "TERMINAL", "SPAWNING", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED",
    "Kind", "KIND_AGENT", "KIND_TEAM", "KIND_MEMBER", "KIND_CHAT", "Priority", "PRIORITIES", "ANONYMOUS",
]

Status = Literal["spawning", "queued", "running", "completed", "failed", "cancelled"]
Kind = Literal["agent", "team", "member", "chat"]
Priority = Literal["high", "normal", "low"]

SPAWNING: Final = "spawning"
QUEUED: Final = "queued"
RUNNING: Final = "running"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
STATUSES: tuple[Status, ...] = get_args(Status)
LIVE: frozenset[Status] = frozenset({SPAWNING, QUEUED, RUNNING})
TERMINAL: frozenset[Status] = frozenset({COMPLETED, FAILED, CANCELLED})

PRIORITIES: dict[str, int] = {"high": 0, "normal": 1, "low": 2}  # lower runs first

KIND_AGENT: Final = "agent"
KIND_TEAM: Final = "team"
KIND_MEMBER: Final = "member"
KIND_CHAT: Final = "chat"  # a call through the OpenAI/Anthropic front door (chat_service.py)
ANONYMOUS = "anonymous"  # the key id of requests made while authentication is not configured
SEALED = ("task", "result", "tool_calls")  # columns encrypted at rest


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@overload
def money(x: float) -> float: ...
@overload
def money(x: float | None) -> float | None: ...
def money(x: float | None) -> float | None:
    return None if x is None else round(x, 8)  # a millionth of a cent: tiny local-model costs stay visible


_MEMORY_ONLY = {"memory_only": True}  # field metadata: not a column of the agents table


# eq=False: an agent is one live thing, compared (and hashed) by identity as before, not by its
# fields.  slots=True: no per-instance __dict__ (10,000 live agents on a Pi).
@dataclass(slots=True, kw_only=True, eq=False)
class Agent:
    """One agent: the fields are the ``agents`` table's columns, in its order, then three in memory only."""

    agent_id: str
    kind: Kind
    parent_id: str | None = None  # a member's team agent
    team: str | None = None
    model: str  # the requested alias (the team id for a team agent)
    served_model: str | None = None  # the alias that answered, after any fallback
    provider: str | None = None
    task: str = field(repr=False)  # the user's data: kept out of reprs (and so out of logs)
    priority: Priority
    timeout: float
    status: Status = SPAWNING
    error: str | None = None
    result: str | None = field(default=None, repr=False)
    estimated_cost: float
    cost: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    runs: int = 0  # times started: bounds re-runs after a crash
    attempts: int = 0  # provider calls made
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    api_key: str = ANONYMOUS  # the key id that spawned it
    retention_days: float | None = None
    purged_at: float | None = None
    # A chat agent's: when the first text reached its caller (the whole answer's arrival when
    # it was not streamed), and the tool calls of its answer as a JSON list (sealed, like result).
    first_token_at: float | None = None
    tool_calls: str | None = field(default=None, repr=False)
    # A team agent's member ids.
    members: list[str] = field(default_factory=list, metadata=_MEMORY_ONLY)
    # The budget held for this agent while it is live (its worst case; see worstcase.py); None: no
    # budget, no cap on calls.  Not stored: it is worked out again from the config at start.
    reserved: float | None = field(default=None, metadata=_MEMORY_ONLY)
    # The cost of calls the upstream billed although they failed (already in the ledger).
    billed: float = field(default=0.0, metadata=_MEMORY_ONLY)
    # A chat agent's request as its caller sent it (``task`` is its canonical JSON); None after
    # a restart, when a chat agent is only failed (nobody waits for it any more).
    chat: ChatRequest | None = field(default=None, repr=False, metadata=_MEMORY_ONLY)
    # Where a streamed chat call's text deltas go as they arrive (the ChatCall's queue).  Set:
    # the runtime streams from a plugin that can, and never retries nor falls back once a
    # delta went out.
    sink: Callable[[str], None] | None = field(default=None, repr=False, metadata=_MEMORY_ONLY)
    # The completed call's answer (finish reason, upstream model, tool calls), for the ChatCall.
    answer: CompletionResult | None = field(default=None, repr=False, metadata=_MEMORY_ONLY)
    # Why a chat agent failed, in ChatFailed's words (bad_request, upstream, timeout, interrupted).
    failure: str | None = field(default=None, metadata=_MEMORY_ONLY)

    # -- persistence -----------------------------------------------------------
    # Task and result are the user's data: they reach the database only through
    # ``cipher`` (the store's DataCipher, or None when encryption is off).
    def _column(self, name: str, cipher: DataCipher | None) -> Any:
        value = getattr(self, name)
        if cipher is not None and name in SEALED:
            return cipher.encrypt(value, f"{self.agent_id}/{name}")
        return value

    def insert_statement(self, cipher: DataCipher | None = None) -> tuple[str, tuple[Any, ...]]:
        values = _ROW(self)  # every column in one call: this runs once per spawn
        if cipher is None:
            return _INSERT_SQL, values
        row = list(values)
        for i, name in _SEALED_AT:
            row[i] = cipher.encrypt(row[i], f"{self.agent_id}/{name}")
        return _INSERT_SQL, tuple(row)

    def update_statement(self, *fields: str, cipher: DataCipher | None = None) -> tuple[str, tuple[Any, ...]]:
        return _update_sql(fields), (*(self._column(f, cipher) for f in fields), self.agent_id)

    @property
    def deadline(self) -> float:
        """The agent's timeout runs from its creation: queue time counts."""
        return self.created_at + self.timeout

    # -- views -------------------------------------------------------------------
    def spawn_view(self) -> dict[str, Any]:
        """The answer to a spawn: "spawning" is the API's word for accepted (it is queued by now)."""
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
        if self.kind == KIND_CHAT:
            view |= self._chat_view()
        return view

    def _chat_view(self) -> dict[str, Any]:
        """What a chat agent adds to its views: its kind, how long its caller waited for the
        first text, and the tool calls its answer asked for."""
        return {"kind": KIND_CHAT,
                "time_to_first_token": None if self.first_token_at is None
                else round(max(self.first_token_at - self.created_at, 0.0), 3),
                "tool_calls": jsonx.loads(self.tool_calls) if self.tool_calls else []}

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
        } | ({"kind": KIND_CHAT} if self.kind == KIND_CHAT else {})

    def active_view(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "model": self.model, "status": self.status, "task": self.task,
                "priority": self.priority, "team": self.team, "created_at": iso(self.created_at),
                "started_at": iso(self.started_at)}


COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Agent) if not f.metadata.get("memory_only"))
_INSERT_SQL = f"INSERT INTO agents ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_ROW = operator.attrgetter(*COLUMNS)
_SEALED_AT = tuple((COLUMNS.index(name), name) for name in SEALED)


@functools.lru_cache(maxsize=64)  # a handful of field sets: the runtime's transitions
def _update_sql(fields: tuple[str, ...]) -> str:
    return f"UPDATE agents SET {', '.join(f'{f} = ?' for f in fields)} WHERE agent_id = ?"


def from_row(row: sqlite3.Row, cipher: DataCipher | None = None) -> Agent:
    values = {k: row[k] for k in COLUMNS}
    if cipher is not None:
        for name in SEALED:
            values[name] = cipher.decrypt(values[name], f"{values['agent_id']}/{name}")
    return Agent(**values)
