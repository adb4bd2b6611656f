"""The event log: what happened, durably, in order; and who is listening right now.

An event is written in the same store unit as the state change it announces (the
caller adds :meth:`EventLog.statements` to its unit), together with one webhook
delivery row per subscribed webhook (the outbox, whose rows and their SQL are the
webhook service's: the log asks it for them through :class:`Outbox`).  Only after that unit commits does
:meth:`EventLog.published` tell live listeners (SSE, WebSocket) and wake the webhook
worker, so nobody hears of a change that a crash could still undo.

Event ids are allocated here (the daemon is the only writer), so they are known before
the commit and are the cursor of GET /events and the SSE ``id:``.  Event data can
quote a task or a result: it is sealed with the data key like the agents' own text.

Each event has an owner (``events.api_key``): the key whose work it is about (an agent's
events: the key that spawned it), or None for a daemon-wide event (a budget level, a
pricing policy change).  A reader that sees only its own key's work (tenancy.Viewer) gets
its own events and the daemon-wide ones, live and replayed alike.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import jsonx, settings
from .agent_record import iso
from .store import Statement
from .tenancy import Viewer

__all__ = ["AGENT_EVENTS", "AGENT_EVENTS_SQL", "EVENT_TYPES", "Event", "EventLog", "LIVE_ONLY", "OWNED_TYPES", "Outbox",
           "PRICING_EVENTS", "Publisher", "QUEUE_SIZE", "SHUTDOWN", "Subscription", "TASK_EVENTS", "agent_event_data",
           "agent_event_ids", "event_types", "open_data"]

AGENT_EVENTS = ("agent.spawned", "agent.completed", "agent.failed", "agent.cancelled")
LIVE_ONLY = ("agent.started", "agent.output")   # to live readers only: never stored, never to webhooks
PRICING_EVENTS = ("pricing.quote_generated", "pricing.quote_approved", "pricing.quote_escalated",
                  "pricing.exception_created", "pricing.margin_alert", "pricing.budget_warning",
                  "pricing.budget_critical", "pricing.policy_changed")
# Tasks (tasks.py): owned by the task's key.  task.progress: a step started or ended.
TASK_EVENTS = ("task.created", "task.progress", "task.completed", "task.failed", "task.cancelled",
               "escalation.submitted", "escalation.approved", "escalation.rejected")
# Types always about one key's work (stored with their owner since events.api_key exists).  A stored one without
# an owner was written before events had owners: it is not shown as daemon-wide, only to the
# readers that see every key's work.
OWNED_TYPES = AGENT_EVENTS + LIVE_ONLY + TASK_EVENTS + ("budget.exceeded", "rate_limit.exhausted", "webhook.test")
EVENT_TYPES = AGENT_EVENTS + LIVE_ONLY + TASK_EVENTS + PRICING_EVENTS + ("budget.notice", "budget.warning", "budget.critical",
                                                          "budget.exceeded", "rate_limit.exhausted",
                                                          "security.violation", "webhook.test")


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    type: str
    data: dict[str, Any]
    # Webhook deliveries written with it: the outbox's worker is woken only for events that have some.
    deliveries: int = field(default=0, compare=False, repr=False)
    # The key whose work it is about; None: daemon-wide (every reader may see it).
    owner: str | None = field(default=None, compare=False, repr=False)

    def __init__(self, id: int, ts: float, type: str, data: dict[str, Any],  # noqa: A002 (the fields' names)
                 deliveries: int = 0, owner: str | None = None) -> None:
        # What the generated __init__ does, without its object.__setattr__ call per field (how a
        # frozen dataclass gets past its own __setattr__): ~10,000 instructions an event, two
        # events an agent.  The instance dict is filled directly; it stays frozen to assignment.
        d = self.__dict__
        d["id"], d["ts"], d["type"], d["data"], d["deliveries"], d["owner"] = id, ts, type, data, deliveries, owner

    def payload(self) -> dict[str, Any]:
        """The J1MSKY API reference's webhook payload shape: event, timestamp, data (plus the event id)."""
        return {"event": self.type, "timestamp": iso(self.ts), "data": self.data, "id": self.id}


QUEUE_SIZE = 1000  # events a live listener may lag behind before it is cut off
LAST_ID_SETTING = "events.last_id"  # the newest id taken when events were last purged (EventLog.purge)
SHUTDOWN = "daemon stopping"  # Subscription.ended when the daemon stops


class Subscription:
    """One live listener: a bounded queue; a listener too slow to keep up is cut off
    (it can resume from its last event id), so it never holds the daemon's memory.
    A ``None`` in the queue tells the reader to stop; ``ended`` says why, when the
    daemon ended it (its key was lost, the daemon stops) rather than the reader's lag."""

    def __init__(self, types: frozenset[str] | None, maxsize: int | None = None,
                 viewer: Viewer | None = None, head: int = 0) -> None:
        self.types = types
        self.viewer = viewer  # None: sees every key's events
        # The newest event published before this listener existed: a replay reads up to it
        # and no further, so every later event (and every live-only one) reaches the reader
        # through the queue, in the order it happened.
        self.head = head
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize or QUEUE_SIZE)
        self.overflowed = False
        self.ended: str | None = None

    def end(self, reason: str) -> None:
        """Stop the reader now: what it has not read yet is dropped, and a reader waiting
        on the queue wakes at once with the stop marker."""
        if self.ended is None:
            self.ended = reason
        queue = self.queue
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

    def offer(self, event: Event) -> None:
        if self.ended is not None or (self.types is not None and event.type not in self.types):
            return
        if self.viewer is not None and not self.viewer.sees(event.owner):
            return  # another key's work
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self.queue = asyncio.Queue(1)
            self.queue.put_nowait(None)  # tells the reader to close


class Publisher(Protocol):
    """What a producer of events needs from the event log, and all it may use: the runtime,
    the budget and the webhook test publish through this and know nothing of the log's
    readers or of the webhook outbox behind it (EventLog implements it)."""

    def statements(self, type_: str, data: dict[str, Any], owner: str | None = None
                   ) -> tuple[Event, list[Statement]]: ...

    def published(self, events: Iterable[Event]) -> None: ...

    async def emit(self, type_: str, data: dict[str, Any], owner: str | None = None) -> Event: ...

    def wants(self, type_: str, *, named: bool = False) -> bool: ...

    def publish_live(self, type_: str, data: dict[str, Any], *, named: bool = False,
                     owner: str | None = None) -> None: ...


class Outbox(Protocol):
    """The webhook outbox as the event log sees it (webhooks.WebhookService implements it;
    the log never imports it).  The ``deliveries`` table is the outbox's: the log writes and
    purges delivery rows only through the statements it is given here."""

    def route(self, type_: str, data: dict[str, Any], owner: str | None = None) -> list[str]:
        """The webhooks that want this event (their ids); ``owner``: whose work it is about
        (None: daemon-wide)."""
        ...

    def delivery_rows(self, webhook_ids: Iterable[str], event_id: int, ts: float) -> list[Statement]:
        """The statements adding one pending delivery of the event per webhook."""
        ...

    def wake(self) -> None:
        """Events committed: their deliveries may be due."""
        ...

    def purge_settled(self, cutoff: float) -> tuple[list[Statement], str]:
        """The statements dropping settled deliveries made before ``cutoff``, and a query of
        the event ids a delivery still waits for (those events are kept)."""
        ...


class _NoOutbox:
    """The outbox of a log no webhook service subscribed to: no webhooks, nothing waits."""

    def route(self, type_: str, data: dict[str, Any], owner: str | None = None) -> list[str]:
        return []

    def delivery_rows(self, webhook_ids: Iterable[str], event_id: int, ts: float) -> list[Statement]:
        return []

    def wake(self) -> None:
        pass

    def purge_settled(self, cutoff: float) -> tuple[list[Statement], str]:
        return [], "SELECT NULL WHERE 0"  # no event id: every old event may go


class EventLog:
    def __init__(self, store: Any, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._next_id = 1
        self._head = 0  # the newest id published to the live readers (a new reader replays up to it)
        self.subscribers: set[Subscription] = set()
        self.outbox: Outbox = _NoOutbox()  # the webhook service, once it subscribed (attach_outbox)
        self.on_published: Callable[[], None] = lambda: None  # the outbox's wake-up
        self._throttle: dict[str, float] = {}

    def attach_outbox(self, outbox: Outbox) -> None:
        """The webhook service subscribes here (once), after it was made with this log: the
        log depends on the :class:`Outbox` interface, not on the webhook service, so neither
        module needs the other at construction."""
        if not isinstance(self.outbox, _NoOutbox):
            raise RuntimeError("this event log already has an outbox")
        self.outbox, self.on_published = outbox, outbox.wake

    async def load(self) -> None:
        def read(c: sqlite3.Connection) -> int:
            stored = c.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            return max(stored, int(settings.get(c, LAST_ID_SETTING) or 0))

        last = await self.store.read(read)
        self._next_id = last + 1
        self._head = last

    @property
    def newest(self) -> int:
        """The id of the newest event published (0: none yet)."""
        return self._head

    # -- writing ----------------------------------------------------------------------------
    def _seal(self, event_id: int, data: dict[str, Any]) -> str:
        text = jsonx.compact(data)
        cipher = self.store.cipher
        return cipher.encrypt(text, f"event/{event_id}") if cipher is not None else text

    def _open(self, event_id: int, text: str) -> dict[str, Any]:
        return open_data(self.store.cipher, event_id, text)

    def statements(self, type_: str, data: dict[str, Any], owner: str | None = None
                   ) -> tuple[Event, list[Statement]]:
        """The event and the statements that store it with its webhook deliveries.
        ``owner``: the key whose work it is about (None: a daemon-wide event)."""
        return self._statements(type_, data, self.outbox.route(type_, data, owner), owner)

    def statements_to(self, type_: str, data: dict[str, Any], webhook_ids: Iterable[str],
                      owner: str | None = None) -> tuple[Event, list[Statement]]:
        """The event and the statements that store it with deliveries to ``webhook_ids`` only,
        whichever webhooks subscribe to its type (a test delivery goes to the one it tests)."""
        return self._statements(type_, data, list(webhook_ids), owner)

    def statements_if_wanted(self, type_: str, data: dict[str, Any]) -> tuple[Event, list[Statement]] | None:
        """The same (a daemon-wide event), or None when no webhook and no live reader wants
        it: for events that only announce a record kept elsewhere (pricing), nobody's
        interest, no write."""
        hooks = self.outbox.route(type_, data)
        if not hooks and not self.wants(type_):
            return None
        return self._statements(type_, data, hooks, None)

    def _statements(self, type_: str, data: dict[str, Any], hooks: list[str],
                    owner: str | None) -> tuple[Event, list[Statement]]:
        event = Event(self._next_id, self.clock(), type_, data, len(hooks), owner)
        self._next_id += 1
        stmts: list[Statement] = [("INSERT INTO events (id, ts, type, data, api_key) VALUES (?, ?, ?, ?, ?)",
                                   (event.id, event.ts, event.type, self._seal(event.id, data), owner))]
        if hooks:  # no webhook wants it (the usual case): no call for an empty list
            stmts.extend(self.outbox.delivery_rows(hooks, event.id, event.ts))
        return event, stmts

    def published(self, events: Iterable[Event]) -> None:
        """Call after the unit holding these events committed."""
        deliveries = 0
        head = self._head
        for event in events:
            deliveries += event.deliveries
            if event.id > head:
                head = event.id
            for sub in list(self.subscribers):
                sub.offer(event)
        self._head = head
        if deliveries:  # the webhook worker has new rows to send (it reads the outbox: two queries a round)
            self.on_published()

    async def emit(self, type_: str, data: dict[str, Any], owner: str | None = None) -> Event:
        """An event that is not part of another state change (budget levels, violations...)."""
        event, stmts = self.statements(type_, data, owner)
        await self.store.write(*stmts)
        self.published([event])
        return event

    def emit_soon(self, type_: str, data: dict[str, Any], *, throttle_key: str | None = None,
                  every: float = 60.0, owner: str | None = None) -> None:
        """emit() from synchronous code (a middleware, a callback).

        With ``throttle_key``, at most one such event per key per ``every`` seconds: a
        scanner hammering the daemon must not flood receivers and the SD card.
        """
        if throttle_key is not None:
            now = self.clock()
            if now - self._throttle.get(throttle_key, 0.0) < every:
                return
            if len(self._throttle) > 10_000:
                self._throttle = {k: t for k, t in self._throttle.items() if now - t < every}
            self._throttle[throttle_key] = now
        asyncio.ensure_future(self.emit(type_, data, owner))

    def wants(self, type_: str, *, named: bool = False) -> bool:
        """Is any live listener interested in this type (so it is worth producing)?  With
        ``named``, only listeners that asked for it by name count, not those taking everything."""
        return any((sub.types is None and not named) or (sub.types is not None and type_ in sub.types)
                   for sub in self.subscribers)

    def publish_live(self, type_: str, data: dict[str, Any], *, named: bool = False,
                     owner: str | None = None) -> None:
        """A live-only event (id 0): to current listeners, never stored or sent to webhooks.
        For ``agent.output`` deltas (many per agent, worthless after the agent's end) and
        ``agent.started`` (a moment, not worth a write per agent)."""
        event = Event(0, self.clock(), type_, data, owner=owner)
        for sub in list(self.subscribers):
            if not named or (sub.types is not None and type_ in sub.types):
                sub.offer(event)

    # -- reading ----------------------------------------------------------------------------
    def subscribe(self, types: Iterable[str] | None = None, viewer: Viewer | None = None) -> Subscription:
        """A live listener; ``viewer``: whose events it may get (None: everyone's)."""
        sub = Subscription(frozenset(types) if types else None, viewer=viewer, head=self._head)
        self.subscribers.add(sub)
        return sub

    def close_all(self) -> None:
        """At shutdown: tell every live reader to finish (they resume from their last id)."""
        for sub in list(self.subscribers):
            sub.end(SHUTDOWN)

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    async def after(self, last_id: int, limit: int, types: Iterable[str] | None = None,
                    viewer: Viewer | None = None, upto: int | None = None) -> list[Event]:
        """Events with id > last_id (and <= ``upto``, when given), oldest first (what a
        resuming reader missed); those ``viewer`` may see (None: all): its key's own and the
        daemon-wide ones."""
        wanted = tuple(types or ())
        where, args = "id > ?", list[Any]([last_id])
        if upto is not None:
            where += " AND id <= ?"
            args.append(upto)
        if wanted:
            where += f" AND type IN ({', '.join('?' * len(wanted))})"
            args.extend(wanted)
        if viewer is not None and not viewer.sees_all:
            owners = viewer.owners
            where += (f" AND (api_key IN ({', '.join('?' * len(owners))})"
                      f" OR (api_key IS NULL AND type NOT IN ({', '.join('?' * len(OWNED_TYPES))})))")
            args.extend((*owners, *OWNED_TYPES))

        def read(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return conn.execute(f"SELECT * FROM events WHERE {where} ORDER BY id LIMIT ?", (*args, limit)).fetchall()

        await self.store.flush()
        rows = await self.store.read(read)
        return [self._event(r) for r in rows]

    def _event(self, row: sqlite3.Row) -> Event:
        return Event(row["id"], row["ts"], row["type"], self._open(row["id"], row["data"]), owner=row["api_key"])

    async def get(self, event_id: int) -> Event | None:
        row = await self.store.read(lambda c: c.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone())
        return self._event(row) if row else None

    async def purge(self, keep_days: float) -> None:
        """Events older than ``keep_days`` whose deliveries are all settled, and those settled
        deliveries (the outbox would otherwise grow on the SD card for ever)."""
        cutoff = self.clock() - keep_days * 86_400
        settled, waited_for = self.outbox.purge_settled(cutoff)
        newest = await self.store.read(lambda c: c.execute("SELECT MAX(ts) FROM events").fetchone()[0])
        # When the newest event goes too, the ids taken so far are kept, so that a start after
        # every event was purged does not number from 1 again: a receiver that drops the ids it
        # has seen, and a reader resuming, would miss the new ones.  (Written only then: a purge
        # that leaves events changes nothing else.)
        floor = [settings.put(LAST_ID_SETTING, str(self._next_id - 1), self.clock())] \
            if newest is not None and newest < cutoff else []
        await self.store.write(*settled, (f"DELETE FROM events WHERE ts < ? AND id NOT IN ({waited_for})", (cutoff,)),
                               *floor)


def event_types(conn: sqlite3.Connection, event_ids: Iterable[int]) -> dict[int, str]:
    """The type of each of these events still stored (for a listing of another table's rows
    that name events; runs inside the caller's read)."""
    ids = list(dict.fromkeys(event_ids))
    if not ids:
        return {}
    rows = conn.execute(f"SELECT id, type FROM events WHERE id IN ({', '.join('?' * len(ids))})", ids).fetchall()
    return {row[0]: row[1] for row in rows}


def open_data(cipher: Any, event_id: int, text: str) -> dict[str, Any]:
    """A stored event's data, decrypted when the store encrypts (``cipher``: its DataCipher)."""
    return json.loads(cipher.decrypt(text, f"event/{event_id}") if cipher is not None else text)


# Found through events_ts (the window), not by reading every event of the key.
AGENT_EVENTS_SQL = ("SELECT id, data FROM events WHERE api_key = ? AND ts >= ? AND ts <= ? "
                    "AND type LIKE 'agent.%' ORDER BY id")


def agent_event_ids(conn: sqlite3.Connection, agent_id: str, owner: str, lo: float, hi: float,
                    cipher: Any) -> list[int]:
    """The ids of the stored events about one agent (its key's ``agent.*`` events from ``lo``
    to ``hi``, whose data names it), oldest first; runs inside the caller's read.  The data
    may be encrypted, so the agent is matched after decrypting, within that bounded window."""
    rows = conn.execute(AGENT_EVENTS_SQL, (owner, lo, hi)).fetchall()
    return [r[0] for r in rows if open_data(cipher, r[0], r[1]).get("agent_id") == agent_id]


def agent_event_data(agent: Any) -> dict[str, Any]:
    """The J1MSKY API reference's webhook ``data`` for an agent event."""
    data = {"agent_id": agent.agent_id, "model": agent.served_model or agent.model, "status": agent.status,
            "task": agent.task, "result": agent.result, "cost": agent.cost,
            "estimated_cost": agent.estimated_cost, "team": agent.team, "priority": agent.priority}
    if agent.error:
        data["error"] = agent.error
    return data
