"""Projects: budget scopes above keys (a key belongs to at most one project).

This module owns the ``projects`` table (its named operations: :func:`insert`,
:func:`update`, :func:`delete`, :func:`read_all`) and keeps the projects in memory for the
spawn path (:class:`ProjectService`, loaded at start; every change made through it updates
memory at once).  ``j1mskyd projects ...`` (projects_cli.py) writes from another process:
the daemon notices within keys.REFRESH_SECONDS (:meth:`ProjectService.refresh`, a look at the
table's fingerprint), as it notices the keys' changes.

Membership is a column of the keys (``api_keys.project_id``), which keys.py owns: a change
of members is written with :func:`keys.membership_statements` in the same unit as the
project's row, and the key ring is reloaded after it, so ``ApiKey.project_id`` (what the
budget asks at a spawn) is current when the answer goes out.

A project's spend is not kept here: the ledger's rows carry the project a spend was made
under (``usage.project_id``, stamped at spawn), so moving a key to another project, or
deleting a project, leaves the past spend where it was made.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from . import jsonx
from .agent_record import iso
from .errors import Conflict, NotFound, ValidationFailed
from .keys import READ_ALL, ApiKey, KeyService, membership_statements
from .project_request import NewProject, ProjectChange
from .request_fields import changed
from .store import Statement, Store
from .tenancy import Allowance, day_start

__all__ = ["Move", "Project", "ProjectService", "delete", "fingerprint", "insert", "read_all", "update"]

_COLUMNS = ("project_id", "name", "max_budget", "budget_duration", "budget_anchor", "metadata", "created_at",
            "updated_at")


@dataclass(frozen=True)
class Project:
    project_id: str
    name: str
    max_budget: float | None
    budget_duration: str | None
    budget_anchor: float | None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0

    def allowance(self) -> Allowance | None:
        """The project's budget, or None (its keys' own and the daemon's still apply)."""
        if self.max_budget is None:
            return None
        return Allowance("project", self.project_id, self.max_budget, self.budget_duration or "1d",
                         self.budget_anchor if self.budget_anchor is not None else day_start(self.created_at))

    def public(self, members: list[str]) -> dict[str, Any]:
        return {"project_id": self.project_id, "name": self.name, "max_budget": self.max_budget,
                "budget_duration": self.budget_duration, "metadata": self.metadata, "members": members,
                "created_at": iso(self.created_at), "updated_at": iso(self.updated_at)}


@dataclass(frozen=True)
class Move:
    """A key that joined a project from another one (a key belongs to at most one)."""

    key_id: str
    from_project_id: str

    def public(self) -> dict[str, str]:
        return {"key_id": self.key_id, "from_project_id": self.from_project_id}


# -- the table's named operations ----------------------------------------------------------------
def insert(project: Project) -> Statement:
    return (f"INSERT INTO projects ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            _values(project))


def update(project: Project) -> Statement:
    sets = ", ".join(f"{c} = ?" for c in _COLUMNS[1:])
    return f"UPDATE projects SET {sets} WHERE project_id = ?", (*_values(project)[1:], project.project_id)


def delete(project_id: str) -> Statement:
    return "DELETE FROM projects WHERE project_id = ?", (project_id,)


# What changes with every write of the table (a new row, a change: updated_at, a deletion).
_FINGERPRINT = "SELECT COUNT(*), group_concat(project_id || '/' || updated_at, ' ') FROM projects"


def fingerprint(conn: sqlite3.Connection) -> tuple[object, ...]:
    return tuple(conn.execute(_FINGERPRINT).fetchone())


def read_all(conn: sqlite3.Connection) -> dict[str, Project]:
    rows = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM projects").fetchall()
    return {r[0]: Project(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else {}, r[6], r[7])
            for r in rows}


def _values(p: Project) -> tuple[object, ...]:
    return (p.project_id, p.name, p.max_budget, p.budget_duration, p.budget_anchor, jsonx.compact(p.metadata),
            p.created_at, p.updated_at)


# -- the service ---------------------------------------------------------------------------------
class ProjectService:
    """The projects in memory, and their changes through the store (each one unit, with the
    members' key rows)."""

    def __init__(self, store: Store, keys: KeyService, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock
        self.projects: dict[str, Project] = {}
        self._names_taken: set[str] = set()  # names of projects being written: a racing twin gets 409
        self._fingerprint: tuple[object, ...] | None = None  # the table's, when memory was loaded

    async def load(self) -> None:
        self._fingerprint, self.projects = await self.store.read(lambda conn: (fingerprint(conn), read_all(conn)))

    async def refresh(self) -> None:
        """Reload when the table changed under another process (the CLI); a change made
        here was in memory already, and reloads once, harmlessly."""
        if await self.store.read(fingerprint) != self._fingerprint:
            await self.load()

    def get(self, project_id: str) -> Project:
        project = self.projects.get(project_id)
        if project is None:
            raise NotFound(f"Project '{project_id}' not found")
        return project

    def visible(self, project_id: str, key: ApiKey | None) -> Project:
        """The project as ``key`` may see it: a key with admin:read (or none: authentication
        is off) sees every project, any other key only its own; another's answers as an
        unknown id does (404), so ids are not confirmed."""
        if key is not None and not key.allows(READ_ALL) and key.project_id != project_id:
            raise NotFound(f"Project '{project_id}' not found")
        return self.get(project_id)

    def members(self, project_id: str) -> list[str]:
        """The key ids in the project (revoked and expired ones too: they still belong to it)."""
        return sorted(k.key_id for k in self.keys.ring.keys.values() if k.project_id == project_id)

    def allowance(self, project_id: str | None) -> Allowance | None:
        """The budget of ``project_id`` (a key's project), or None: no project, or no budget."""
        project = self.projects.get(project_id) if project_id is not None else None
        return project.allowance() if project is not None else None

    def allowances(self, key_id: str) -> tuple[Allowance, ...]:
        """The budgets above a spawn of ``key_id`` besides the daemon's, as budget.Budget asks
        for them at every check: the key's own, then its project's.  Memory only."""
        key = self.keys.find(key_id)
        project = self.allowance(key.project_id) if key is not None else None
        return self.keys.allowances(key_id) + ((project,) if project is not None else ())

    def view(self, project: Project) -> dict[str, Any]:
        return project.public(self.members(project.project_id))

    async def create(self, req: NewProject) -> tuple[Project, list[Move]]:
        self._check_members("members", req.members)
        now = self.clock()
        project = Project("prj_" + secrets.token_hex(8), req.name, req.max_budget, req.budget_duration,
                          day_start(now) if req.max_budget is not None else None, req.metadata, now, now)
        moves = self._moves(project.project_id, req.members)
        with self._claim(None, req.name):
            await self.store.write(insert(project), *membership_statements(project.project_id, req.members),
                                   fail_fast=True)
            self.projects[project.project_id] = project
        await self.keys.reload()
        return project, moves

    async def update(self, project_id: str, change: ProjectChange) -> tuple[Project, list[Move], list[str]]:
        """The project as changed, the keys that moved into it from another project, and the
        keys that left it."""
        old = self.get(project_id)
        fields = changed(change)
        current = set(self.members(project_id))
        self._check_members("members", fields.get("members", ()))
        self._check_members("add_members", change.add_members)
        self._check_members("remove_members", change.remove_members)
        strangers = [k for k in change.remove_members if k not in current]
        if strangers:
            raise ValidationFailed([{"field": "remove_members",
                                     "message": f"not members of {project_id}: {', '.join(strangers)}"}])
        wanted = set(fields["members"]) if "members" in fields else (current | set(change.add_members)) - set(
            change.remove_members)
        joining = sorted(wanted - current)
        leaving = sorted(current - wanted)
        new = self._changed(old, fields)
        moves = self._moves(project_id, joining)
        with self._claim(old, new.name):
            await self.store.write(update(new), *membership_statements(project_id, joining, leaving), fail_fast=True)
            self.projects[project_id] = new
        await self.keys.reload()
        return new, moves, leaving

    async def delete(self, project_id: str) -> tuple[Project, list[str]]:
        """Delete the project; its keys leave it (returned).  Its ledger rows keep its id."""
        project = self.get(project_id)
        released = self.members(project_id)
        await self.store.write(*membership_statements(project_id, (), released), delete(project_id),
                               fail_fast=True)
        self.projects.pop(project_id, None)
        await self.keys.reload()
        return project, released

    # -- helpers -------------------------------------------------------------------------------
    def _changed(self, old: Project, fields: dict[str, Any]) -> Project:
        new = replace(old, updated_at=self.clock())
        if "name" in fields:
            new = replace(new, name=fields["name"])
        if "metadata" in fields:
            new = replace(new, metadata=fields["metadata"])
        if "budget" in fields:
            amount, duration = fields["budget"]
            if amount is None:
                anchor = None
            elif duration != old.budget_duration or old.max_budget is None:
                anchor = day_start(self.clock())  # a new period starts today
            else:
                anchor = old.budget_anchor  # a new amount keeps the period
            new = replace(new, max_budget=amount, budget_duration=duration, budget_anchor=anchor)
        return new

    def _check_members(self, field_name: str, key_ids: Iterable[str]) -> None:
        unknown = [k for k in key_ids if k not in self.keys.ring.keys]
        if unknown:
            raise ValidationFailed([{"field": field_name, "message": f"unknown API key(s): {', '.join(unknown)}"}])

    def _moves(self, project_id: str, key_ids: Iterable[str]) -> list[Move]:
        ring = self.keys.ring.keys
        return [Move(k, old) for k in key_ids if (old := ring[k].project_id) is not None and old != project_id]

    @contextlib.contextmanager
    def _claim(self, old: Project | None, name: str) -> Iterator[None]:
        """Hold ``name`` while its write is on its way: another project with it is a 409 now,
        not a failed write later (the table's unique index would refuse it)."""
        if old is not None and old.name == name:
            yield
            return
        if name in self._names_taken or any(p.name == name for p in self.projects.values()):
            raise Conflict(f"A project named '{name}' already exists")
        self._names_taken.add(name)
        try:
            yield
        finally:
            self._names_taken.discard(name)
