"""The agent record: its fields, its public JSON views, and the ``agents`` table it is stored in.

One class holds an agent in memory while it is live; finished agents live only in
the database and are read back through :func:`from_row`.  The views keep, exactly, the
field names that existing clients of the API were written against
(``created``/``started``/``completed``/``cost`` on the status object,
``created_at``/``actual_cost`` in listings).

This module owns the ``agents`` table: no other module holds its SQL
(tests/test_table_owners.py).  Writes are statements for the caller's unit (the runtime commits
an agent's state with its events and its usage row); reads are functions of a connection, for
``store.read``.  Task, result and tool calls are the user's data: they reach the database only
through ``cipher`` (the store's DataCipher, or None when encryption is off).
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
from .store import Statement

if TYPE_CHECKING:
    from .agent_query import AgentQuery
    from .chat_request import ChatRequest
    from .plugin_api import CompletionResult

__all__ = [
    "Agent", "from_row", "iso", "money", "COLUMNS", "SEALED",
    "Status", "STATUSES", "LIVE", "TERMINAL", "SPAWNING", "QUEUED", "RUNNING", "COMPLETED", "FAILED", "CANCELLED",
    "Kind", "KIND_AGENT", "KIND_TEAM", "KIND_MEMBER", "KIND_CHAT", "Priority", "PRIORITIES", "ANONYMOUS",
    # the agents table's operations
    "insert", "as_started", "update", "erase_data", "purge_expired",
    "load", "members", "live", "greatest_id", "team_on_disk", "run_times", "Page", "page",
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
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # past year 9999 (stored by an older daemon): shown as its end
        return "9999-12-31T23:59:59Z" if ts > 0 else "0001-01-01T00:00:00Z"


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
    # The project its key was in at spawn (its spend stays there if the key moves later).
    project_id: str | None = None
    # What its calls may write and their sampling temperature, when the spawner asked (a task's
    # step: its role's preferences); None: the model's cap and the provider's default.  A chat
    # agent's own are in its ChatRequest (``chat``).
    max_tokens: int | None = None
    temperature: float | None = None
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

    @property
    def asked_max_tokens(self) -> int | None:
        """The output cap its spawner asked for (a chat call's ``max_tokens`` or the agent's own),
        which its reservation and every call honour below the model's own cap."""
        return self.chat.max_tokens if self.chat is not None else self.max_tokens

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
            "charges": self.charges(),
            "timeline": self.timeline(),
            # Whose work it is: a key sees only its own agents, so this names the owner to
            # admins (key ids are safe to show; never a token).
            "api_key": self.api_key,
            "project_id": self.project_id,
        }
        if self.purged_at is not None:
            view["data_deleted_at"] = iso(self.purged_at)
        if self.parent_id:
            view["parent_id"] = self.parent_id
        if self.kind == KIND_CHAT:
            view |= self._chat_view()
        return view

    def charged(self) -> float | None:
        """What the agent was charged: its cost once it ended (nothing billed: 0); None while
        live (only an estimate exists then)."""
        if self.status not in TERMINAL:
            return None
        return money(self.cost or 0.0)

    def charges(self) -> dict[str, float | None]:
        """Estimated at spawn, charged, and refunded: the unspent part of the estimate, which
        the budget got back when the agent ended (as DELETE /agent/{id} answers ``refund``);
        None while the agent is live."""
        charged = self.charged()
        return {"estimated": money(self.estimated_cost), "charged": charged,
                "refunded": None if charged is None else money(max(self.estimated_cost - charged, 0.0))}

    def timeline(self) -> dict[str, str | None]:
        """When it was created, queued (admitted at spawn, in the same write: the same
        moment), started (its first run) and completed (any end)."""
        created = iso(self.created_at)
        return {"created": created, "queued": created, "started": iso(self.started_at),
                "completed": iso(self.completed_at)}

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
            "charged_cost": self.charged(),
            "error": self.error,
            "api_key": self.api_key,
            "project_id": self.project_id,
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
def _update_plan(fields: tuple[str, ...]) -> tuple[str, Callable[[Agent], tuple[Any, ...]], tuple[int, ...]]:
    """An update's SQL, what reads its values (the fields, then agent_id) in one call, and the
    positions of the sealed ones."""
    return (f"UPDATE agents SET {', '.join(f'{f} = ?' for f in fields)} WHERE agent_id = ?",
            operator.attrgetter(*fields, "agent_id"),
            tuple(i for i, f in enumerate(fields) if f in SEALED))


def from_row(row: sqlite3.Row, cipher: DataCipher | None = None) -> Agent:
    values = {k: row[k] for k in COLUMNS}
    if cipher is not None:
        for name in SEALED:
            values[name] = cipher.decrypt(values[name], f"{values['agent_id']}/{name}")
    return Agent(**values)


# -- writes: statements for the caller's unit -------------------------------------------------
def insert(agent: Agent, cipher: DataCipher | None = None) -> Statement:
    """The statement that stores a new agent (every column)."""
    values = _ROW(agent)  # every column in one call: this runs once per spawn
    if cipher is None:
        return _INSERT_SQL, values
    row = list(values)
    for i, name in _SEALED_AT:
        if row[i] is not None:  # a new agent has no result yet: nothing to seal
            row[i] = cipher.encrypt(row[i], f"{agent.agent_id}/{name}")
    return _INSERT_SQL, tuple(row)


_START_AT = tuple((COLUMNS.index(name), operator.attrgetter(name)) for name in ("status", "started_at", "runs"))


def as_started(statement: Statement, agent: Agent) -> Statement:
    """``agent``'s insert (:func:`insert`, made while it was queued) storing it as started: its
    status, ``started_at`` and ``runs`` as they are in memory now.  One statement for an agent
    that started before its insert went to the store, where an update after it would be two."""
    sql, values = statement
    if sql is not _INSERT_SQL:
        raise ValueError("not an agent's insert")
    row = list(values)
    for i, value in _START_AT:
        row[i] = value(agent)
    return sql, tuple(row)


def update(agent: Agent, *fields: str, cipher: DataCipher | None = None) -> Statement:
    """The statement that saves ``fields`` of a stored agent as they are in memory."""
    sql, values, sealed = _update_plan(fields)  # the runtime's few field sets, worked out once each
    row = values(agent)
    if cipher is None or not sealed:
        return sql, row
    out = list(row)
    for i in sealed:
        if out[i] is not None:
            out[i] = cipher.encrypt(out[i], f"{agent.agent_id}/{fields[i]}")
    return sql, tuple(out)


_ERASED = "task = '', result = NULL, tool_calls = NULL, purged_at = ?"  # the user's data gone, the cost kept


def erase_data(agent_id: str, now: float) -> Statement:
    """The statement that erases an agent's data (and its members', for a team) now."""
    return f"UPDATE agents SET {_ERASED} WHERE agent_id = ? OR parent_id = ?", (now, agent_id, agent_id)


def purge_expired(now: float, retention_days: float) -> Statement:
    """The statement that erases the data of agents ended longer ago than their retention
    (``retention_days``: the default for those spawned without one)."""
    return (f"UPDATE agents SET {_ERASED} WHERE purged_at IS NULL "
            "AND status IN ('completed', 'failed', 'cancelled') "
            "AND completed_at < ? - COALESCE(retention_days, ?) * 86400",
            (now, now, retention_days))


# -- reads: functions of a connection, for store.read ---------------------------------------
def load(conn: sqlite3.Connection, agent_id: str, cipher: DataCipher | None) -> Agent | None:
    row = conn.execute("SELECT * FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    return from_row(row, cipher) if row else None


def members(conn: sqlite3.Connection, team_id: str) -> list[sqlite3.Row]:
    """A team's members as stored (``agent_id``, ``model``, ``status``, ``cost``), in spawn order."""
    return conn.execute("SELECT agent_id, model, status, cost FROM agents WHERE parent_id = ? "
                        "ORDER BY rowid", (team_id,)).fetchall()


def live(conn: sqlite3.Connection, cipher: DataCipher | None) -> list[Agent]:
    """The agents stored as live (spawning, queued, running), in spawn order: what a start recovers."""
    return [from_row(r, cipher) for r in conn.execute(
        "SELECT * FROM agents WHERE status IN ('spawning', 'queued', 'running') ORDER BY rowid")]


def greatest_id(conn: sqlite3.Connection) -> str | None:
    """The greatest agent id of the counter's shape stored (``subagent_<second>_<4 digits>``;
    seconds have 10 digits from 2001 to 2286, so the greatest id carries the latest second):
    where a start draws new ids from (AgentService.continue_ids).  A walk down the primary key."""
    row = conn.execute("SELECT agent_id FROM agents WHERE agent_id >= 'subagent_0' AND agent_id < 'subagent_:'"
                       " ORDER BY agent_id DESC LIMIT 1").fetchone()
    return None if row is None else row[0]


def team_on_disk(conn: sqlite3.Connection, team_id: str, cipher: DataCipher | None) -> tuple[list[str], list[Agent]]:
    """A team's member ids in spawn order, and the members that already ended, read back."""
    ids, ended = [], []
    for r in conn.execute("SELECT * FROM agents WHERE parent_id = ? ORDER BY rowid", (team_id,)):
        ids.append(r["agent_id"])
        if r["status"] in TERMINAL:
            ended.append(from_row(r, cipher))
    return ids, ended


def run_times(conn: sqlite3.Connection, alias: str, since: float) -> list[tuple[str, float | None]]:
    """(status, run time in s) of each agent (not a team) that ``alias`` served and that
    completed or failed since ``since``: run start (else creation) to finish."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT status, completed_at - COALESCE(started_at, created_at) FROM agents "
        "WHERE kind != 'team' AND status IN ('completed', 'failed') AND completed_at >= ? "
        "AND COALESCE(served_model, model) = ?", (since, alias)).fetchall()]


@dataclass(frozen=True)
class Page:
    """One page of a listing, and what the whole match counts."""

    total: int
    total_cost: float
    by_model: dict[str, int]
    agents: list[Agent]
    offset: int = 0                        # where the page starts in the whole match (a cursor's too)
    last: tuple[Any, int] | None = None    # the last agent's (sort key, rowid): the next page's cursor


def page(conn: sqlite3.Connection, q: AgentQuery, cipher: DataCipher | None) -> Page:
    """The agents ``q`` (agent_query.py: the listing's WHERE, order and page) selects."""
    return _page_sealed(conn, q, cipher) if q.post else _page_sql(conn, q, cipher)


def _page_sql(conn: sqlite3.Connection, q: AgentQuery, cipher: DataCipher | None) -> Page:
    where = q.where_sql()
    total = conn.execute(f"SELECT COUNT(*) FROM agents WHERE {where}", q.params).fetchone()[0]
    # A team's cost is the sum of its members': when both are listed, count the spend once.
    total_cost = conn.execute(
        f"SELECT COALESCE(SUM(cost), 0) FROM agents WHERE ({where}) AND NOT (kind = 'team' AND agent_id IN "
        f"(SELECT parent_id FROM agents WHERE ({where}) AND parent_id IS NOT NULL))",
        (*q.params, *q.params)).fetchone()[0]
    by_model = dict(conn.execute(f"SELECT model, COUNT(*) FROM agents WHERE {where} GROUP BY model "
                                 "ORDER BY COUNT(*) DESC, model", q.params).fetchall())
    offset, rows_where, rows_params = q.offset, where, q.params
    if q.after is not None:  # a cursor: the rows after its position, and how many come before them
        clause, after_params = q.after
        rows_where, rows_params, offset = f"({where}) AND {clause}", [*q.params, *after_params], 0
        offset = total - conn.execute(f"SELECT COUNT(*) FROM agents WHERE {rows_where}", rows_params).fetchone()[0]
    rows = conn.execute(f"SELECT * FROM agents WHERE {rows_where} ORDER BY {q.order} LIMIT ? OFFSET ?",
                        (*rows_params, q.limit, 0 if q.after is not None else offset)).fetchall()
    agents = [from_row(r, cipher) for r in rows]
    return Page(total, total_cost, by_model, agents, offset, _position(conn, q, agents))


def _position(conn: sqlite3.Connection, q: AgentQuery, agents: list[Agent]) -> tuple[Any, int] | None:
    """The sort key and rowid of the page's last agent (None: an empty page)."""
    if not agents:
        return None
    row = conn.execute(f"SELECT {q.sort_key}, rowid FROM agents WHERE agent_id = ?", (agents[-1].agent_id,)).fetchone()
    return (row[0], row[1]) if row is not None else None


def _page_sealed(conn: sqlite3.Connection, q: AgentQuery, cipher: DataCipher | None) -> Page:
    """Filters on encrypted fields: decrypt what SQL selected, then filter, count, page."""
    rows = conn.execute(f"SELECT * FROM agents WHERE {q.where_sql()} ORDER BY {q.order}", q.params)
    matched = [a for a in (from_row(r, cipher) for r in rows) if q.matches(a)]
    parents = {a.parent_id for a in matched if a.parent_id}
    total_cost = sum(a.cost or 0.0 for a in matched if not (a.kind == KIND_TEAM and a.agent_id in parents))
    by_model: dict[str, int] = {}
    for a in matched:
        by_model[a.model] = by_model.get(a.model, 0) + 1
    by_model = dict(sorted(by_model.items(), key=lambda kv: (-kv[1], kv[0])))
    offset = q.offset
    if q.after is not None:  # the first matched agent past the cursor's position
        clause, after_params = q.after
        after = {r[0] for r in conn.execute(f"SELECT agent_id FROM agents WHERE ({q.where_sql()}) AND {clause}",
                                            [*q.params, *after_params])}
        offset = next((i for i, a in enumerate(matched) if a.agent_id in after), len(matched))
    agents = matched[offset:offset + q.limit]
    return Page(len(matched), total_cost, by_model, agents, offset, _position(conn, q, agents))
