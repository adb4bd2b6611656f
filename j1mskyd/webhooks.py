"""Webhooks: registrations, routing of events to them, and the delivery worker.

Delivery is durable and at least once.  The outbox rows (``deliveries``) are written
with the event in the transaction of the state change (events.py).  The worker sends
due deliveries through the webhook's sink plugin, at most ``PER_MINUTE`` in any
``PACE_WINDOW`` (a minute) per endpoint URL, one at a time per webhook (so a receiver
sees its events in order: a delivery waiting or failing holds back the later ones).
Each webhook with due deliveries has its own drain task (up to ``CONCURRENT_WEBHOOKS`` at
once, ``DRAINS_PER_MAKER`` of one key's), and every sink call is cancelled after
``call_timeout`` seconds (a failed attempt), so a receiver that hangs holds back its own
deliveries only.  The worker
retries a failure with exponential backoff (``RETRY_BASE`` s doubling, capped at an hour, with
jitter) until the delivery is ``GIVE_UP_AFTER`` old; then it is ``failed`` and can be
redelivered by hand.  A crash between sending and recording means the receiver may
see a delivery twice: it has the same ``X-J1MSKY-Delivery`` id both times.

A webhook belongs to the key that made it (``api_key_id``).  A key sees, changes and
lists the deliveries of its own webhooks only (another key's id is a 404, as an unknown
one); a key with admin:read sees them all, one with admin:write also changes them.  What
a webhook receives follows its maker: a key that sees only its own work gets the events
of its own work, and daemon-wide events (owner None) only of the types it named (not
through ``*``); a key that sees all (admin:read, admin:write) gets every event it
subscribed to, as does a webhook made while authentication was off (no key).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import os
import random
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from .agent_record import iso
from .errors import BadRequest, Conflict, Forbidden, NotFound, ValidationFailed
from .events import EventLog, agent_event_ids, event_types
from .plugin_api import Sink, SinkError, SinkSettings
from .plugins import bounded, build_sink, off_loop
from .store import Statement
from .request_fields import bad, changed, int_param
from .tenancy import ADMINS_ONLY, Viewer
from . import settings
from .webhook_request import AGENT_DONE, Headers, NewWebhook, WebhookChange, check_url, file_path
from .sink_files import FileConfinement
from .webhook_targets import Lookup, TargetPolicy, TargetRefused

__all__ = ["CONCURRENT_WEBHOOKS", "DRAINS_PER_MAKER", "DRAIN_BATCH", "GIVE_UP_AFTER", "PACE_WINDOW", "PER_MINUTE",
           "RETRY_BASE", "RETRY_CAP", "Webhook", "WebhookService"]

log = logging.getLogger(__name__)

PER_MINUTE = 50        # deliveries per endpoint (receiver URL) in any PACE_WINDOW seconds
PACE_WINDOW = 60.0
RETRY_BASE = 5.0
RETRY_CAP = 3600.0
GIVE_UP_AFTER = 24 * 3600.0
CONCURRENT_WEBHOOKS = 8  # drain tasks (webhooks being sent to) at once
# Of which the webhooks of one maker (a key; None: no key) may hold: one key's hung receivers
# (up to call_timeout each) cannot take every drain and stall the other keys' deliveries.
DRAINS_PER_MAKER = CONCURRENT_WEBHOOKS // 2
# Standing webhooks (POST /webhooks) of one key that sees only its own work.  Any agents:write
# key may make them: without a cap one key could make thousands, each one more delivery row
# per event in every event's commit and more work on every key's event path.  Keys that see
# all (the admins, who alone could make webhooks before keys were tenants) have no cap.
MAX_PER_KEY = 25
DRAIN_BATCH = 50         # due deliveries a drain reads at a time
AGENT_DELIVERIES = 100   # deliveries one agent's listing shows at most


@dataclass(frozen=True)
class Webhook:
    webhook_id: str
    url: str
    sink: str
    events: tuple[str, ...]
    secret: str
    status: str
    description: str | None
    api_key_id: str | None
    agent_id: str | None          # set for a spawn's own webhook_url: that agent's events only
    created_at: float
    last_triggered: float | None = None
    # Sent with each delivery by the http sink; kept sealed beside the webhook (HEADERS_SETTING),
    # never logged or shown (view() names them only).
    headers: Headers = ()

    def wants(self, type_: str, data: dict[str, Any], owner: str | None,
              sees_all: Callable[[str], bool]) -> bool:
        """Does this webhook get an event of ``type_`` about ``owner``'s work (None:
        daemon-wide)?  ``sees_all``: whether a key sees every key's work, asked only for a
        webhook's maker when the event is not its own (a dict lookup: this runs per event
        and webhook)."""
        # A paused webhook still gets its outbox rows: they wait, pending, until it is
        # resumed (the worker only sends for active ones).
        if self.agent_id is not None:
            return data.get("agent_id") == self.agent_id and type_ in AGENT_DONE
        if not ("*" in self.events or type_ in self.events):
            return False
        maker = self.api_key_id
        if maker is None or owner == maker or sees_all(maker):
            return True
        return owner is None and type_ in self.events  # daemon-wide: only asked for by name

    def view(self) -> dict[str, Any]:
        """The Kyros document's webhook object (never the secret)."""
        return {"id": self.webhook_id, "webhook_id": self.webhook_id, "url": self.url, "sink": self.sink,
                "events": list(self.events), "status": self.status, "active": self.status == "active",
                "headers": [name for name, _ in self.headers], "description": self.description,
                "agent_id": self.agent_id, "created_at": iso(self.created_at),
                "last_triggered": iso(self.last_triggered)}


def _owner(hook: Webhook) -> str:
    """Whose webhook it is, for viewers.  One made while authentication was off has no maker
    and hears every key's events (Webhook.wants): the admins' once keys are on, never the
    anonymous local caller's ([security] local_scopes), who sees only ownerless work."""
    return hook.api_key_id or ADMINS_ONLY


# A webhook's custom headers: a settings row per webhook (JSON, sealed like its secret), so that
# the webhooks table keeps its shape.
HEADERS_SETTING = "webhook.headers."


def _sealed_headers(hook: Webhook, cipher: Any) -> Statement:
    """The statement that stores ``hook``'s headers (or removes them: none)."""
    name = HEADERS_SETTING + hook.webhook_id
    if not hook.headers:
        return settings.delete(name)
    text = json.dumps(hook.headers)
    return settings.put(name, cipher.encrypt(text, f"{hook.webhook_id}/headers") if cipher else text, hook.created_at)


def _opened_headers(webhook_id: str, text: str, cipher: Any) -> Headers:
    plain = cipher.decrypt(text, f"{webhook_id}/headers") if cipher else text
    return tuple((str(name), str(value)) for name, value in json.loads(plain))


def _row(row: sqlite3.Row, cipher: Any) -> Webhook:
    secret = cipher.decrypt(row["secret"], f"{row['webhook_id']}/secret") if cipher else row["secret"]
    return Webhook(row["webhook_id"], row["url"], row["sink"], tuple(row["events"].split(",")), secret,
                   row["status"], row["description"], row["api_key_id"], row["agent_id"], row["created_at"],
                   row["last_triggered"])


# What a webhook's deliveries are sent as: a change of one releases those held back (update).
_SENT_AS = frozenset({"url", "secret", "headers", "status"})


class WebhookService:
    """``session`` is the webhook session (webhook_client.py) whose ``resolver`` applies
    ``targets`` at connect time; ``lookup`` resolves names when a URL is accepted (the
    loop's getaddrinfo unless given)."""

    def __init__(self, store: Any, events: EventLog, registry: Any, session: Any, *,
                 sees_all: Callable[[str], bool], acts: Callable[[str], bool] = lambda key_id: True,
                 clock: Callable[[], float] = time.time, targets: TargetPolicy = TargetPolicy(),
                 lookup: Lookup | None = None, resolver: Any = None, call_timeout: float = 30.0,
                 file_dirs: Iterable[str] = ()) -> None:
        self.store = store
        # Where the file sink may write ([webhooks] file_sink_dirs), never into the state dir.
        self.files = FileConfinement(file_dirs, forbidden=(os.path.dirname(store.path),))
        self.sees_all = sees_all  # key id -> does that key see every key's work (KeyService's memory)
        self.acts = acts  # key id -> is that key (or its successor) still active (KeyService.acts)
        self.events = events
        self.registry = registry
        self.session = session
        self.clock = clock
        self.targets = targets
        self.lookup = lookup
        self.resolver = resolver  # the session's GuardedResolver (its ``inner`` does the lookups)
        self.hooks: dict[str, Webhook] = {}
        self._sinks: dict[str, Any] = {}
        # Send times per endpoint (URL) within the last PACE_WINDOW: a sliding window, so
        # never more than PER_MINUTE in any minute, whichever webhooks share the URL.
        self._sent: dict[str, collections.deque[float]] = {}
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.call_timeout = call_timeout  # seconds one sink.deliver may take ([plugins] call_timeout)
        self._drains: dict[str, asyncio.Task[None]] = {}  # webhook_id -> its drain, while it runs
        self._making: dict[str, int] = {}  # key id -> its webhooks being made now (counted against MAX_PER_KEY)
        # webhook_id -> until when its pending deliveries are held back (a failure's backoff, the
        # pace): one queued meanwhile waits behind them, and its next_attempt_at says until when.
        self._held: dict[str, float] = {}
        events.attach_outbox(self)  # the log asks for delivery rows, wakes the worker (events.Outbox)

    # -- registrations --------------------------------------------------------------------------
    async def load(self) -> None:
        cipher = self.store.cipher
        def read(c: sqlite3.Connection) -> tuple[list[sqlite3.Row], dict[str, str], list[sqlite3.Row]]:
            return (c.execute("SELECT * FROM webhooks").fetchall(), settings.with_prefix(c, HEADERS_SETTING),
                    c.execute("SELECT webhook_id, MAX(next_attempt_at) FROM deliveries WHERE status = 'pending' "
                              "GROUP BY webhook_id").fetchall())

        rows, headers, held = await self.store.read(read)
        now = self.clock()
        self._held = {webhook_id: until for webhook_id, until in held if until > now}  # as the last run left them
        self.hooks = {r["webhook_id"]: _row(r, cipher) for r in rows}
        for name, text in headers.items():
            webhook_id = name[len(HEADERS_SETTING):]
            if webhook_id in self.hooks:
                self.hooks[webhook_id] = replace(self.hooks[webhook_id],
                                                 headers=_opened_headers(webhook_id, text, cipher))
        for hook in self.hooks.values():  # stored before the policy existed, or before a config change
            if hook.sink != "file":
                try:
                    self.targets.check_url(hook.url)
                except TargetRefused as exc:
                    log.warning("webhook %s: its target is refused (%s); its deliveries will fail until "
                                "its url or [webhooks] allowed_networks changes", hook.webhook_id, exc.message)
            elif (refused := self._file_refused(hook.url)) is not None:  # e.g. made before file_sink_dirs
                log.warning("webhook %s: its file is refused (%s); its deliveries will fail until its url or "
                            "[webhooks] file_sink_dirs changes", hook.webhook_id, refused)

    async def check_targets(self, urls: dict[str, Any]) -> list[dict[str, str]]:
        """The target policy when URLs are accepted: ``field -> url`` in, one field error per
        refused URL out (names looked up, concurrently; a refused address among them refuses)."""
        async def one(field: str, url: Any) -> dict[str, str] | None:
            try:
                await self.targets.check_accept(url, self.lookup)
            except TargetRefused as exc:
                return {"field": field, "message": f"{field} is refused: {exc.message}"}
            return None

        found = await asyncio.gather(*(one(f, u) for f, u in urls.items() if isinstance(u, str)))
        return [e for e in found if e is not None]

    async def _check_target(self, url: str, sink: str, writes_all: bool) -> str:
        """Where a webhook made or changed by a viewer that ``writes_all`` (or not) may send."""
        if sink != "file":
            errors = await self.check_targets({"url": url})
            if errors:
                raise ValidationFailed(errors)
            return url
        # The file sink appends to a file as the daemon's own user: a tenant's webhook could
        # otherwise write into any file the daemon may (it damaged the daemon's data key).
        if not writes_all:
            raise Forbidden("the file sink writes on the daemon's own disk: only a key with admin:write may use it")
        refused = self._file_refused(url)
        if refused is not None:
            raise bad("url", f"url is refused: {refused}")
        return url

    def _file_refused(self, url: str) -> str | None:
        """Why the file sink may not write where ``url`` points now (None: it may, by its name)."""
        return self.files.refusal(file_path(url))

    # -- the outbox, as the event log asks for it (events.Outbox) ---------------------------------
    def route(self, type_: str, data: dict[str, Any], owner: str | None = None) -> list[str]:
        """The webhooks that get this event.  A webhook whose maker was revoked or expired (with
        no successor) gets nothing more: revoking a key ends what it set up to hear."""
        hooks = self.hooks
        if not hooks:  # the usual daemon: two events an agent, no webhook to ask
            return []
        sees_all, acts = self.sees_all, self.acts
        return [h.webhook_id for h in hooks.values()
                if h.wants(type_, data, owner, sees_all) and (h.api_key_id is None or acts(h.api_key_id))]

    def delivery_rows(self, webhook_ids: Iterable[str], event_id: int, ts: float) -> list[Statement]:
        return [self._delivery_insert(webhook_id, event_id, ts) for webhook_id in webhook_ids]

    def _delivery_insert(self, webhook_id: str, event_id: int, now: float) -> Statement:
        """A new pending delivery of an event to a webhook: due now, or when the webhook's held
        deliveries are."""
        due = max(now, self._held.get(webhook_id, now))
        return ("INSERT INTO deliveries (delivery_id, webhook_id, event_id, status, attempts, next_attempt_at, "
                "created_at) VALUES (?, ?, ?, 'pending', 0, ?, ?)",
                ("dlv_" + secrets.token_hex(8), webhook_id, event_id, due, now))

    def wake(self) -> None:
        self._wake.set()

    @staticmethod
    def purge_settled(cutoff: float) -> tuple[list[Statement], str]:
        return ([("DELETE FROM deliveries WHERE status != 'pending' AND created_at < ?", (cutoff,))],
                "SELECT event_id FROM deliveries WHERE status = 'pending'")

    def _sealed_secret(self, hook: Webhook) -> str:
        cipher = self.store.cipher
        return cipher.encrypt(hook.secret, f"{hook.webhook_id}/secret") if cipher else hook.secret

    def _insert(self, hook: Webhook) -> tuple[str, tuple[Any, ...]]:
        secret = self._sealed_secret(hook)
        return ("INSERT OR REPLACE INTO webhooks (webhook_id, url, sink, events, secret, status, description, "
                "api_key_id, agent_id, created_at, last_triggered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (hook.webhook_id, hook.url, hook.sink, ",".join(hook.events), secret, hook.status,
                 hook.description, hook.api_key_id, hook.agent_id, hook.created_at, hook.last_triggered))

    def sink_kinds(self) -> list[str]:
        """The sink kinds a webhook may name (the loaded sink plugins'): what parse_new checks."""
        return self.registry.sink_kinds()

    async def create(self, req: NewWebhook, api_key_id: str | None, *, writes_all: bool) -> tuple[Webhook, str | None]:
        """A new webhook; the generated secret is returned once when the caller sent none.
        A key that sees only its own work may hold MAX_PER_KEY (409 past it).  ``writes_all``:
        the caller changes every key's work (admin:write), which the file sink needs."""
        capped = api_key_id if api_key_id is not None and not self.sees_all(api_key_id) else None
        if capped is not None:
            self._claim_slot(capped)  # before any await: racing creates cannot pass the cap together
        try:
            url = await self._check_target(req.url, req.sink, writes_all)
            generated: str | None = None
            if req.secret is None:
                secret = generated = secrets.token_urlsafe(32)
            else:
                secret = req.secret
            hook = Webhook("webhook_" + secrets.token_hex(6), url, req.sink, req.events, secret, req.status,
                           req.description, api_key_id, None, self.clock(), headers=req.headers)
            await self._build_sink(hook)
            await self.store.write(self._insert(hook), _sealed_headers(hook, self.store.cipher), fail_fast=True)
            self.hooks[hook.webhook_id] = hook
            return hook, generated
        finally:
            if capped is not None:
                self._making[capped] -= 1

    def _claim_slot(self, api_key_id: str) -> None:
        making = self._making.get(api_key_id, 0)
        held = sum(1 for h in self.hooks.values() if h.api_key_id == api_key_id and h.agent_id is None)
        if held + making >= MAX_PER_KEY:
            raise Conflict(f"This key has {held} webhooks, the most a key may have is {MAX_PER_KEY}: "
                           "delete one first")
        self._making[api_key_id] = making + 1

    def for_agent_statement(self, url: Any, agent_id: str, api_key_id: str | None,
                            secret: str | None = None) -> tuple[Webhook, Any]:
        """A spawn's own ``webhook_url``: a hook for that agent's end, stored with the agent.

        Its deliveries are signed with the spawning API key's webhook secret (its request
        secret for a key from before webhook secrets), which the caller already holds (a
        random one when authentication is off).
        """
        hook = Webhook("webhook_" + secrets.token_hex(6), check_url(url, "http"), "http", AGENT_DONE,
                       secret or secrets.token_urlsafe(32), "active", f"webhook_url of {agent_id}", api_key_id,
                       agent_id, self.clock())
        return hook, self._insert(hook)

    async def rotate_key_secret(self, keys: Any, key_id: str) -> tuple[str, int]:
        """A new webhook secret for API key ``key_id`` (``keys`` is the KeyService), and the
        key's spawn webhooks still waiting to be sent re-signed with it in the same
        transaction: a receiver that switched to the new secret gets no delivery it cannot
        verify.  Returns the secret (shown once) and how many webhooks were re-signed."""
        changed: list[Webhook] = []

        def resign(secret: str) -> list[tuple[str, tuple[Any, ...]]]:
            changed[:] = [replace(h, secret=secret) for h in self.hooks.values()
                          if h.agent_id is not None and h.api_key_id == key_id]
            return [("UPDATE webhooks SET secret = ? WHERE webhook_id = ?", (self._sealed_secret(h), h.webhook_id))
                    for h in changed]

        secret = await keys.rotate_webhook_secret(key_id, resign)
        for hook in changed:
            if hook.webhook_id in self.hooks:  # not delivered and forgotten meanwhile
                self.hooks[hook.webhook_id] = hook
                self._sinks.pop(hook.webhook_id, None)  # rebuilt with the new secret
        return secret, len(changed)

    def adopt(self, hook: Webhook) -> None:
        self.hooks[hook.webhook_id] = hook

    def get(self, webhook_id: str, viewer: Viewer | None) -> Webhook:
        """The webhook; 404 when unknown or another key's that ``viewer`` may not see (the
        same answer).  None: the daemon itself."""
        hook = self.hooks.get(webhook_id)
        if hook is None or (viewer is not None and not viewer.sees(_owner(hook))):
            raise NotFound(f"Webhook '{webhook_id}' not found")
        return hook

    def get_to_change(self, webhook_id: str, viewer: Viewer | None) -> Webhook:
        """get(), and 403 for another key's webhook to a viewer that sees it but may not change it."""
        hook = self.get(webhook_id, viewer)
        if viewer is not None and not viewer.changes(_owner(hook)):
            raise Forbidden(f"Webhook '{webhook_id}' belongs to another key; changing it needs admin:write")
        return hook

    def listed(self, viewer: Viewer) -> list[Webhook]:
        """The registered webhooks ``viewer`` may see (not a spawn's own webhook_url)."""
        return [h for h in self.hooks.values() if h.agent_id is None and viewer.sees(_owner(h))]

    async def update(self, webhook_id: str, change: WebhookChange, viewer: Viewer | None) -> Webhook:
        """``change`` was parsed for this webhook's sink (webhook_request.parse_change)."""
        hook = self.get_to_change(webhook_id, viewer)
        changes = changed(change)
        if "url" in changes:
            changes["url"] = await self._check_target(changes["url"], hook.sink,
                                                      viewer is None or viewer.writes_all)
        new = replace(hook, **changes)
        await self._build_sink(new)
        # A new target, secret or headers (what a failing receiver was refusing), or a resume:
        # its waiting deliveries go out now, not at the end of the backoff the old ones earned.
        release = [] if _SENT_AS.isdisjoint(changes) else [self._release(webhook_id)]
        held = self._held.get(webhook_id)
        await self.store.write(self._insert(new), _sealed_headers(new, self.store.cipher), *release, fail_fast=True)
        # Forgotten once stored (a failed write leaves new deliveries held like the old ones), and
        # only if no failed attempt held them again meanwhile (its hold is queued after the release).
        if release and self._held.get(webhook_id) == held:
            self._held.pop(webhook_id, None)
        self.hooks[webhook_id] = new
        self._wake.set()
        return new

    def _release(self, webhook_id: str) -> Statement:
        """This webhook's pending deliveries are due now (the caller forgets its held time once
        this is stored)."""
        now = self.clock()
        return ("UPDATE deliveries SET next_attempt_at = ? WHERE webhook_id = ? AND status = 'pending' "
                "AND next_attempt_at > ?", (now, webhook_id, now))

    async def delete(self, webhook_id: str, viewer: Viewer | None) -> None:
        self.get_to_change(webhook_id, viewer)
        await self.store.write(
            ("UPDATE deliveries SET status = 'failed', last_error = 'webhook deleted' "
             "WHERE webhook_id = ? AND status = 'pending'", (webhook_id,)),
            ("DELETE FROM webhooks WHERE webhook_id = ?", (webhook_id,)),
            settings.delete(HEADERS_SETTING + webhook_id), fail_fast=True)
        del self.hooks[webhook_id]
        self._sinks.pop(webhook_id, None)
        self._held.pop(webhook_id, None)

    async def test(self, webhook_id: str, viewer: Viewer | None) -> dict[str, Any]:
        """A ``webhook.test`` event delivered to this webhook only (a paused one gets it when
        resumed); the event is the webhook's maker's (other keys' readers do not see it)."""
        hook = self.get_to_change(webhook_id, viewer)
        event, stmts = self.events.statements_to("webhook.test", {"webhook_id": hook.webhook_id,
                                                                  "message": "Test delivery from j1mskyd"}, (),
                                                 owner=_owner(hook))
        delivery = self._delivery_insert(hook.webhook_id, event.id, event.ts)
        await self.store.write(*stmts, delivery, fail_fast=True)
        self.events.published([event])
        self._wake.set()  # its delivery row is written here, not by the event log (which wakes only for its own)
        return {"success": True, "delivery_id": delivery[1][0], "event_id": event.id}

    async def deliveries(self, webhook_id: str, params: dict[str, str], viewer: Viewer | None) -> dict[str, Any]:
        self.get(webhook_id, viewer)
        try:
            limit, offset = int_param(params, "limit", 50), int_param(params, "offset", 0)
            if not 1 <= limit <= 200 or not 0 <= offset < 10**18:  # SQLite integers are 64-bit
                raise ValueError
        except ValueError:
            raise bad("limit", "limit must be 1-200 and offset from 0 to 10^18") from None
        status = params.get("status")
        if status is not None and status not in ("pending", "delivered", "failed"):
            raise bad("status", "status must be pending, delivered or failed")
        where, args = _deliveries_where(webhook_id, status)

        def read(conn: sqlite3.Connection) -> tuple[int, list[sqlite3.Row], dict[int, str]]:
            total = conn.execute(f"SELECT COUNT(*) FROM deliveries WHERE {where}", args).fetchone()[0]
            rows = conn.execute(f"SELECT * FROM deliveries WHERE {where} ORDER BY created_at DESC, rowid DESC "
                                "LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
            return total, rows, event_types(conn, (r["event_id"] for r in rows))  # None: the event was purged

        await self.store.flush()
        total, rows, types = await self.store.read(read)
        data = [_delivery_view(r, types) for r in rows]
        return {"data": data, "pagination": {"total": total, "limit": limit, "offset": offset,
                                             "has_more": offset + limit < total}}

    async def for_agent(self, agent_id: str, owner: str, lo: float, hi: float,
                        viewer: Viewer | None) -> list[dict[str, Any]]:
        """The deliveries of one agent's events (stored from ``lo`` to ``hi``, by its key
        ``owner``) to the webhooks ``viewer`` may see, oldest first, each naming its webhook;
        at most AGENT_DELIVERIES (an agent has a handful of events)."""
        visible = [h for h, hook in self.hooks.items()
                   if viewer is None or viewer.sees(_owner(hook))]
        if not visible:
            return []
        cipher = self.store.cipher

        def read(conn: sqlite3.Connection) -> tuple[list[sqlite3.Row], dict[int, str]]:
            ids = agent_event_ids(conn, agent_id, owner, lo, hi, cipher)
            if not ids:
                return [], {}
            rows = conn.execute(
                f"SELECT * FROM deliveries WHERE event_id IN ({', '.join('?' * len(ids))}) "
                f"AND webhook_id IN ({', '.join('?' * len(visible))}) ORDER BY created_at, rowid LIMIT ?",
                (*ids, *visible, AGENT_DELIVERIES)).fetchall()
            return rows, event_types(conn, (r["event_id"] for r in rows))

        await self.store.flush()
        rows, types = await self.store.read(read)
        return [{"webhook_id": r["webhook_id"], "url": self.hooks[r["webhook_id"]].url, **_delivery_view(r, types)}
                for r in rows if r["webhook_id"] in self.hooks]

    async def redeliver(self, webhook_id: str, delivery_id: str, viewer: Viewer | None) -> dict[str, Any]:
        self.get_to_change(webhook_id, viewer)
        row = await self.store.read(lambda c: c.execute(
            "SELECT status, event_id FROM deliveries WHERE delivery_id = ? AND webhook_id = ?",
            (delivery_id, webhook_id)).fetchone())
        if row is None:
            raise NotFound(f"Delivery '{delivery_id}' not found for webhook '{webhook_id}'")
        if row["status"] == "pending":
            raise BadRequest("This delivery is still pending; it will be retried")
        # A new delivery of the same event (its own id), so a receiver can tell them apart.
        new = self._delivery_insert(webhook_id, row["event_id"], self.clock())
        await self.store.write(new, fail_fast=True)
        self._wake.set()
        return {"success": True, "delivery_id": new[1][0], "redelivers": delivery_id}

    # -- the worker ---------------------------------------------------------------------------------
    async def _build_sink(self, hook: Webhook) -> Sink:
        """The webhook's sink from its plugin's factory, run off the loop for ``call_timeout``
        seconds at most (plugins.off_loop); a factory that refuses, fails or hangs refuses the webhook."""
        sink_settings: SinkSettings = {"webhook_id": hook.webhook_id, "url": hook.url, "secret": hook.secret,
                                       "headers": dict(hook.headers), "open_file": self.files.open_append}
        try:
            sink = await off_loop(self.registry, "sink", hook.sink,
                                  functools.partial(build_sink, self.registry, hook.sink, sink_settings, self.session),
                                  self.call_timeout)
        except KeyError:
            raise bad("sink", f"no sink plugin '{hook.sink}' is loaded") from None
        except Exception as exc:  # noqa: BLE001 - a plugin refusing its settings is the caller's 400
            raise bad("url", f"sink '{hook.sink}' refused this webhook: {exc}") from None
        self._sinks[hook.webhook_id] = sink
        return sink

    def start(self) -> None:
        self._worker = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._worker, *self._drains.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _active_ids(self, skip: frozenset[str | None] = frozenset()) -> tuple[str, list[str]]:
        """SQL and ids for the active webhooks no drain is working on: a paused one's
        deliveries wait, pending, and so do those of a webhook whose maker was revoked or
        expired (queued before that: not sent after it); a draining one's are its drain's business.
        ``skip``: makers whose webhooks are left out (those holding their share of the drains)."""
        acts = self.acts
        ids = [h.webhook_id for h in self.hooks.values() if h.status == "active" and h.webhook_id not in self._drains
               and (h.api_key_id is None or acts(h.api_key_id)) and h.api_key_id not in skip]
        return ", ".join("?" * len(ids)) or "NULL", ids

    # A webhook's deliveries go out in the order they were queued (rowid: the events' order): its
    # first pending one (its head) goes first, and while the head waits (a failure's backoff, the
    # pace) the later ones wait behind it, also those queued after it was held back (due at once
    # when made).  sqlite takes the bare columns from the row of the MIN(rowid): the head's.  The
    # unary + keeps webhook_id off its index, whose rows hold every delivery of the last 7 days:
    # the pending ones are found through deliveries_due (0.1 ms, not 45, with 100,000 kept).
    _HEADS = ("SELECT webhook_id, next_attempt_at AS due, created_at AS since, MIN(rowid) FROM deliveries "
              "WHERE status = 'pending' AND +webhook_id IN ({}) GROUP BY webhook_id")

    async def _due_hooks(self, now: float) -> list[str]:
        """The webhooks whose head is due, the longest waiting first."""
        marks, ids = self._active_ids()
        if not ids:  # nothing to deliver to: no read (a thread hop) for a daemon without webhooks
            return []
        rows = await self.store.read(lambda c: c.execute(
            f"SELECT webhook_id FROM ({self._HEADS.format(marks)}) WHERE due <= ? ORDER BY since", (*ids, now)
        ).fetchall())
        return [r["webhook_id"] for r in rows]

    async def _next_due(self, skip: frozenset[str | None] = frozenset()) -> float | None:
        marks, ids = self._active_ids(skip)
        if not ids:
            return None
        row = await self.store.read(lambda c: c.execute(
            f"SELECT MIN(due) FROM ({self._HEADS.format(marks)})", ids).fetchone())
        return row[0]

    def _start_drains(self, due: list[str]) -> frozenset[str | None]:
        """A drain for each of ``due`` while there is room, at most DRAINS_PER_MAKER per maker;
        returns the makers that hold their share (their webhooks wait for one of their drains
        to end, which wakes the worker)."""
        makers = collections.Counter(self._maker(w) for w in self._drains)
        for webhook_id in due:
            if len(self._drains) >= CONCURRENT_WEBHOOKS:
                break
            maker = self._maker(webhook_id)
            if makers[maker] < DRAINS_PER_MAKER:
                makers[maker] += 1
                self._drains[webhook_id] = asyncio.ensure_future(self._drain(webhook_id))
        return frozenset(m for m, n in makers.items() if n >= DRAINS_PER_MAKER)

    def _maker(self, webhook_id: str) -> str | None:
        hook = self.hooks.get(webhook_id)
        return None if hook is None else hook.api_key_id

    async def _run(self) -> None:
        """The dispatcher: starts a drain for each webhook with something due, then sleeps
        until the next delivery is due, an event is published, or a drain ends."""
        while True:
            self._wake.clear()
            full: frozenset[str | None] = frozenset()
            try:
                if len(self._drains) < CONCURRENT_WEBHOOKS:
                    full = self._start_drains(await self._due_hooks(self.clock()))
                nxt = await self._next_due(full)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the worker must survive anything and retry
                log.exception("webhook worker round failed")
                nxt = self.clock() + 5
            delay = 30.0 if nxt is None else min(max(nxt - self.clock(), 0.05), 30.0)
            if len(self._drains) >= CONCURRENT_WEBHOOKS:
                delay = 30.0  # no room: the next drain to end wakes us
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
                # lands as the event fires, and stop() would then wait forever.
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _drain(self, webhook_id: str) -> None:
        """Send one webhook's due deliveries in order until none is due or one does not go
        out (paced, failing: the later ones wait behind it).  Runs beside the other
        webhooks' drains, so a receiver that hangs stalls only its own deliveries."""
        try:
            while True:
                hook = self.hooks.get(webhook_id)
                if hook is None or hook.status != "active":
                    return  # deleted or paused meanwhile
                rows = await self.store.read(lambda c: c.execute(
                    "SELECT * FROM deliveries WHERE +webhook_id = ? AND status = 'pending' "  # as _HEADS
                    "ORDER BY rowid LIMIT ?", (webhook_id, DRAIN_BATCH)).fetchall())
                if not rows:
                    return
                for row in rows:
                    if row["next_attempt_at"] > self.clock():
                        return  # not due yet: the later ones wait behind it
                    if not await self._attempt(webhook_id, row):
                        return  # rate-limited or failing: keep this receiver's order
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one webhook's trouble must not end the worker
            log.exception("webhook %s: its drain failed unexpectedly", webhook_id)
        finally:
            self._drains.pop(webhook_id, None)
            self._wake.set()  # the dispatcher looks at this webhook again

    def _hold_back(self, webhook_id: str, until: float) -> tuple[str, tuple[Any, ...]]:
        """This webhook's pending deliveries wait until ``until`` (the one at the head does too)."""
        self._held[webhook_id] = until
        return ("UPDATE deliveries SET next_attempt_at = ? WHERE webhook_id = ? AND status = 'pending' "
                "AND next_attempt_at < ?", (until, webhook_id, until))

    def _pace(self, endpoint: str, now: float) -> float:
        """0 and count one send to ``endpoint`` if it may have one now; else seconds to wait."""
        if len(self._sent) > 1000:  # forget endpoints idle for a whole window
            self._sent = {u: d for u, d in self._sent.items() if d and d[-1] > now - PACE_WINDOW}
        sent = self._sent.setdefault(endpoint, collections.deque())
        while sent and sent[0] <= now - PACE_WINDOW:
            sent.popleft()
        if len(sent) >= PER_MINUTE:
            return max(sent[0] + PACE_WINDOW - now, 0.01)
        sent.append(now)
        return 0.0

    async def _attempt(self, webhook_id: str, row: sqlite3.Row) -> bool:
        """Send one delivery; True when it succeeded."""
        now = self.clock()
        hook = self.hooks.get(webhook_id)
        if hook is None:
            await self.store.write(("UPDATE deliveries SET status = 'failed', last_error = 'webhook deleted' "
                                    "WHERE delivery_id = ?", (row["delivery_id"],)))
            return False
        wait = self._pace(hook.url, now)
        if wait > 0:
            await self.store.write(self._hold_back(webhook_id, now + wait))
            return False
        event = await self.events.get(row["event_id"])
        if event is None:
            await self.store.write(("UPDATE deliveries SET status = 'failed', last_error = 'event purged' "
                                    "WHERE delivery_id = ?", (row["delivery_id"],)))
            return False
        attempts = row["attempts"] + 1
        try:
            if hook.sink != "file":
                # Again at every delivery: a literal address passes no resolver, and the
                # policy (or the URL) may have changed since it was accepted.  (A file sink's
                # place is judged by its open, race-free: sink_files.)
                try:
                    self.targets.check_url(hook.url)
                except TargetRefused as exc:
                    raise SinkError(f"target refused: {exc.message}") from None
            sink = self._sinks.get(webhook_id) or await self._build_sink(hook)
            async with bounded(self.call_timeout, lambda: SinkError(
                    f"sink did not return within {self.call_timeout:g} s (cancelled by the daemon)")):
                await sink.deliver(event.payload(), delivery_id=row["delivery_id"], event=event.type)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any sink failure is a failed attempt
            status = exc.status if isinstance(exc, SinkError) else None
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            gave_up = now - row["created_at"] >= GIVE_UP_AFTER
            delay = min(RETRY_CAP, RETRY_BASE * 2 ** (attempts - 1)) * random.uniform(0.8, 1.2)
            await self.store.write(
                ("UPDATE deliveries SET attempts = ?, last_error = ?, last_status = ?, status = ?, "
                 "next_attempt_at = ? WHERE delivery_id = ?",
                 (attempts, message[:500], status, "failed" if gave_up else "pending", now + delay,
                  row["delivery_id"])),
                # The later ones wait behind it (order kept, a down receiver not hammered).
                *(() if gave_up else (self._hold_back(webhook_id, now + delay),)))
            if gave_up:
                self._held.pop(webhook_id, None)
            return False
        await self.store.write(
            # last_error and last_status tell why an attempt failed: a delivered one has neither.
            ("UPDATE deliveries SET attempts = ?, status = 'delivered', delivered_at = ?, last_error = NULL, "
             "last_status = NULL WHERE delivery_id = ?", (attempts, self.clock(), row["delivery_id"])),
            ("UPDATE webhooks SET last_triggered = ? WHERE webhook_id = ?", (self.clock(), webhook_id)))
        self._held.pop(webhook_id, None)  # sent: what it held back is due
        current = self.hooks.get(webhook_id)  # re-read: it may have been changed or deleted meanwhile
        if current is not None and current.agent_id is not None:
            # A spawn's own webhook has done its one job (its agent's end): forget it, so
            # routing does not scan a list that grows with every such spawn.
            del self.hooks[webhook_id]
            self._sinks.pop(webhook_id, None)
            await self.store.write(("DELETE FROM webhooks WHERE webhook_id = ? AND NOT EXISTS (SELECT 1 FROM "
                                    "deliveries WHERE webhook_id = ? AND status = 'pending')",
                                    (webhook_id, webhook_id)))
        elif current is not None:
            self.hooks[webhook_id] = replace(current, last_triggered=self.clock())
        return True


def _delivery_view(r: sqlite3.Row, types: dict[int, str]) -> dict[str, Any]:
    """One delivery as the API shows it (``types``: the stored events' types by id; None: purged)."""
    return {"delivery_id": r["delivery_id"], "event_id": r["event_id"], "event": types.get(r["event_id"]),
            "status": r["status"], "attempts": r["attempts"], "last_error": r["last_error"],
            "last_status": r["last_status"], "created_at": iso(r["created_at"]),
            "next_attempt_at": iso(r["next_attempt_at"]) if r["status"] == "pending" else None,
            "delivered_at": iso(r["delivered_at"])}


def _deliveries_where(webhook_id: str, status: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause (and its arguments) picking one webhook's deliveries, of one status when given."""
    where, args = "webhook_id = ?", [webhook_id]
    if status:
        where += " AND status = ?"
        args.append(status)
    return where, args
