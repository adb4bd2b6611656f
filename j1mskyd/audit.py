"""The audit log: who did what, from where, in the J1MSKY API reference's entry format.

Entries go through the store's group commit without being awaited, so auditing never
slows a request; they are in the same queue as the state changes they describe.
Settings (``POST /security/audit``) live in the ``settings`` table.  ``api.key.used`` is
recorded at most once per key per minute: a Pi's SD card should not get a row per GET.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from . import jsonx, settings
from .agent_record import Agent, iso, money
from .agent_query import parse_time
from .request_fields import int_param
from .errors import ValidationFailed
from .pii import preview
from .request_fields import changed
from .store import Statement

if TYPE_CHECKING:  # security_request imports this module's names
    from .security_request import AuditChange

__all__ = ["Actor", "AuditLog", "AuditSettings", "EVENTS", "KEY_USED_EVERY", "LOG_LEVELS", "MAX_OFFSET", "SETTING",
           "SYSTEM", "entry"]

EVENTS = ("agent.spawn", "agent.complete", "agent.fail", "api.key.used", "config.change", "security.violation")
LOG_LEVELS = ("minimal", "standard", "verbose")
MAX_OFFSET = 10**18  # SQLite integers are 64-bit: a larger OFFSET is an OverflowError, not "no rows"
SETTING = "audit"
KEY_USED_EVERY = 60.0
_INSERT = ("INSERT INTO audit_log (ts, event, severity, api_key_id, ip_address, user_agent, request_id, "
           "resource_type, resource_id, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


@dataclass(frozen=True)
class AuditSettings:
    enabled: bool = True
    log_level: str = "standard"
    retention_days: int = 90
    include_request_body: bool = False
    include_response_body: bool = False
    events: tuple[str, ...] = EVENTS


@dataclass
class Actor:
    """Who and where, from the request that caused the event (empty for the runtime's own)."""

    api_key_id: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


SYSTEM = Actor()


class AuditLog:
    def __init__(self, store: Any, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.settings = AuditSettings()
        self._key_used: dict[str, float] = {}

    async def load(self) -> None:
        stored = await self.store.read(lambda c: settings.get(c, SETTING))
        if stored is not None:
            data = json.loads(stored)
            data["events"] = tuple(data.get("events", EVENTS))
            self.settings = AuditSettings(**data)

    async def configure(self, change: AuditChange) -> AuditSettings:
        """``change`` is what POST /security/audit sent (security_request.parse_audit_change)."""
        new = replace(self.settings, **changed(change))
        value = json.dumps(asdict(new))
        await self.store.write(settings.put(SETTING, value, self.clock()), fail_fast=True)
        self.settings = new
        return new

    def wants(self, event: str) -> bool:
        s = self.settings
        return s.enabled and event in s.events

    def key_used_due(self, key_id: str) -> bool:
        """Is an ``api.key.used`` entry due for this key (wanted, and none in the last minute)?
        Asked before the entry is built: it is, for nearly every request, not due."""
        if not self.wants("api.key.used"):
            return False
        now = self.clock()
        if now - self._key_used.get(key_id, 0.0) < KEY_USED_EVERY:
            return False
        self._key_used[key_id] = now
        return True

    def record(self, event: str, actor: Actor = SYSTEM, *, severity: str = "info", resource_type: str | None = None,
               resource_id: str | None = None, details: dict[str, Any] | None = None) -> None:
        entry = self.statement(event, actor, severity=severity, resource_type=resource_type,
                               resource_id=resource_id, details=details)
        if entry is not None:
            self.store.submit([entry])

    def statement(self, event: str, actor: Actor = SYSTEM, *, severity: str = "info",
                  resource_type: str | None = None, resource_id: str | None = None,
                  details: dict[str, Any] | None = None) -> Statement | None:
        """:meth:`record`'s entry as a statement for the caller's own unit (None: not wanted), for
        an entry that commits with the state it records (an agent's end: runtime.py)."""
        if not self.wants(event):
            return None
        return self._entry(event, severity, actor, resource_type, resource_id, details or {})

    def _entry(self, event: str, severity: str, actor: Actor, resource_type: str | None, resource_id: str | None,
               details: dict[str, Any]) -> Statement:
        """The row itself, its arguments in order (the two entries of every agent call this without
        :meth:`statement`'s keywords: ~1,500 instructions an entry)."""
        return (_INSERT, (self.clock(), event, severity, actor.api_key_id, actor.ip_address,
                          (actor.user_agent or "")[:200] or None, actor.request_id, resource_type, resource_id,
                          self._seal(details)))

    def spawn_entry(self, actor: Actor, agent: Agent) -> Statement | None:
        """The ``agent.spawn`` entry of an agent a request spawned (a team: its lead), as a
        statement for the spawn's own transaction (AgentService's ``recorder``)."""
        if not self.wants("agent.spawn"):
            return None
        return self._entry("agent.spawn", "info", actor, "agent", agent.agent_id,
                           {"model": agent.model, "team": agent.team, "task_preview": preview(agent.task),
                            "estimated_cost": money(agent.estimated_cost)})

    def end_entry(self, agent: Agent) -> Statement | None:
        """The audit entry of an agent's end (completed or failed; not a team's member), which the
        runtime commits with that end (its ``recorders``); None: none."""
        status = agent.status
        if status == "completed":
            event, severity = "agent.complete", "info"
        elif status == "failed":
            event, severity = "agent.fail", "warning"
        else:
            return None
        if agent.kind == "member" or not self.wants(event):
            return None
        return self._entry(event, severity, Actor(agent.api_key), "agent", agent.agent_id,
                           {"model": agent.served_model or agent.model, "cost": agent.cost, "error": agent.error})

    def _seal(self, details: dict[str, Any]) -> str:
        """Details may quote a task (task_preview): they are encrypted like the task itself."""
        text = jsonx.compact(details)
        cipher = self.store.cipher
        return cipher.encrypt(text, "audit/details") if cipher is not None else text

    async def purge(self) -> None:
        """Drop entries older than the retention period."""
        cutoff = self.clock() - self.settings.retention_days * 86_400
        await self.store.write(("DELETE FROM audit_log WHERE ts < ?", (cutoff,)))

    async def query(self, params: dict[str, str]) -> dict[str, Any]:
        where: list[str] = []
        args: list[object] = []
        errors: list[dict[str, str]] = []
        for name in ("event", "severity", "api_key_id", "ip_address", "resource_id", "request_id"):
            if params.get(name):
                where.append(f"{name} = ?")
                args.append(params[name])
        for name, op in (("from", ">="), ("to", "<")):
            if params.get(name):
                value = parse_time(name, params[name], errors)
                where.append(f"ts {op} ?")
                args.append(value)
        try:
            limit, offset = int_param(params, "limit", 50), int_param(params, "offset", 0)
            if not 1 <= limit <= 500 or not 0 <= offset < MAX_OFFSET:
                raise ValueError
        except ValueError:
            errors.append({"field": "limit", "message": "limit must be 1-500 and offset from 0 to 10^18"})
        if errors:
            raise ValidationFailed(errors)
        sql_where = " AND ".join(where) or "1"

        def read(conn: sqlite3.Connection) -> tuple[int, list[sqlite3.Row]]:
            total = conn.execute(f"SELECT COUNT(*) FROM audit_log WHERE {sql_where}", args).fetchone()[0]
            rows = conn.execute(f"SELECT * FROM audit_log WHERE {sql_where} ORDER BY ts DESC, id DESC "
                                "LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
            return total, rows

        await self.store.flush()  # entries are written without waiting: show the ones already made
        total, rows = await self.store.read(read)
        return {"data": [entry(r, self.store.cipher) for r in rows],
                "pagination": {"total": total, "limit": limit, "offset": offset,
                               "has_more": offset + limit < total}}


def entry(row: sqlite3.Row, cipher: Any = None) -> dict[str, Any]:
    """One row in the API reference's "Audit Log Entry" shape."""
    details = row["details"]
    if cipher is not None:
        details = cipher.decrypt(details, "audit/details")
    return {"timestamp": iso(row["ts"]), "event": row["event"], "severity": row["severity"],
            "api_key_id": row["api_key_id"], "ip_address": row["ip_address"], "user_agent": row["user_agent"],
            "request_id": row["request_id"],
            "resource": {"type": row["resource_type"], "id": row["resource_id"]} if row["resource_type"] else None,
            "details": json.loads(details)}

