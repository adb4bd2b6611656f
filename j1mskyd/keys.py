"""API keys: creation, lookup by token, scopes, revocation and rotation.

A key has an id (``key_<hex>``, safe to log), a bearer token (shown once, stored only as
its SHA-256), a signing secret for its requests and a webhook secret that signs the
webhooks of its spawns (each shown once, stored encrypted with the data key, because
an HMAC needs them).  ``admin:write`` implies every other scope.

Two secrets, because whoever verifies a webhook (a receiver, often another machine)
must hold its secret, and must not thereby be able to sign API requests as the key.
A key made before webhook secrets existed has none: its spawns' webhooks stay signed
with its request secret (the receivers already configured keep working) until its
webhook secret is rotated once.  Rotating the key carries the webhook secret over to
the successor (the receivers need not change); rotating the webhook secret changes
only that.

The daemon keeps the keys in memory for the request path and notices changes made by
another process (``j1mskyd keys ...`` on the same state dir) through sqlite's
``PRAGMA data_version``, checked every ``REFRESH_SECONDS`` (every ``STREAM_REFRESH_SECONDS``
while a live stream holds a key); so a key revoked from the command line stops working
within that time.

Live streams (SSE, WebSocket) authenticate once and then stay open, so they *watch* their
key (:meth:`KeyService.watch`): every change of the keys (made here, or noticed from the
database) and a timer at the earliest expiry of a watched key tell the watchers whose key
no longer grants what they need.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .crypto import DataCipher
from .durable import fsync_dir
from .errors import BadRequest, Conflict
from .key_request import KeyLimits
from .plain_text import name_problem
from .request_fields import bad, changed
from .store import Store
from .tenancy import Allowance, day_start

__all__ = ["ADMIN", "ANY_KEY", "AlreadyRotated", "ApiKey", "KeyRefused", "KeyRing", "KeyService", "KeyWatch", "LastAdminKey",
           "NewKey", "READ_ALL", "REFRESH_SECONDS", "SCOPES", "STREAM_REFRESH_SECONDS", "TOKEN_PREFIX", "hash_token",
           "lost_reason", "make_key", "membership_statements", "parse_scopes", "read_keys", "revoke_statement",
           "rotate_statements", "update_statement", "webhook_secret_statement"]

log = logging.getLogger(__name__)

SCOPES = ("agents:read", "agents:write", "billing:read", "admin:read", "admin:write")
ADMIN = "admin:write"
ANY_KEY = "key"           # a route scope every active key holds (its own record: GET /keys/me)
READ_ALL = "admin:read"   # every read, of every key's work (no writes); admin:write implies it
# What admin:read grants besides itself: the read scopes.  Seeing every key's work is
# tenancy.Viewer's sees_all, which admin:read and admin:write both give.
_READ_ALL_GRANTS = frozenset(("agents:read", "billing:read", READ_ALL))
TOKEN_PREFIX = "jsk_"
REFRESH_SECONDS = 2.0          # the look for another process's key changes, and the last-use flush
STREAM_REFRESH_SECONDS = 0.5   # that look while a live stream watches a key: it must close within 1 s


class KeyRefused(BadRequest):
    """A key request that cannot be done (a key already revoked, an expired one...): a 400
    through the API, exit status 2 from the CLI."""


class LastAdminKey(Conflict):
    """Revoking it would leave no admin key (409)."""


class AlreadyRotated(Conflict):
    """The key is in its rotation grace period, with a live successor (409): a second
    rotation would leave several live successors of one key."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_scopes(scopes: object) -> tuple[str, ...]:
    """A list of scope names (the API's JSON; the CLI splits its comma-separated text first).
    A string is refused: the API took "agents:read" for a list of one (a client that sends
    text where a list belongs has a bug worth hearing of)."""
    if not isinstance(scopes, (list, tuple)) or not all(isinstance(s, str) for s in scopes):
        # e.g. JSON "agents:read", 7, {"agents:read": true} or [1]: never iterate or crash on .strip()
        raise bad("scopes", f"scopes must be a list of scope names ({', '.join(SCOPES)})")
    items = [s.strip() for s in scopes]
    items = [s for s in items if s]
    unknown = [s for s in items if s not in SCOPES]
    if unknown:
        raise bad("scopes", f"unknown scope(s): {', '.join(unknown)} (known: {', '.join(SCOPES)})")
    if not items:
        raise bad("scopes", f"at least one scope is required ({', '.join(SCOPES)})")
    return tuple(dict.fromkeys(items))


def _parse_name(name: object) -> str:
    """A new key's name: 1-100 characters that print as what they are (plain_text)."""
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise bad("name", "name must be a non-empty string of at most 100 characters")
    problem = name_problem(name)
    if problem is not None:
        raise bad("name", problem)
    return name.strip()


@dataclass
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]
    token_hash: str = field(repr=False)
    sealed_secret: str = field(repr=False)    # as stored: opened only when a signature is checked
    require_signature: bool = False
    created_at: float = 0.0
    last_used_at: float | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    revoke_reason: str | None = None
    rotated_to: str | None = None
    sealed_webhook_secret: str | None = field(default=None, repr=False)  # None: a key from before them
    # Tenant limits (migration 8); None everywhere: no limit of the key's own (the daemon's apply).
    max_budget: float | None = None           # USD per budget period
    budget_duration: str | None = None        # tenancy.DURATIONS name
    budget_anchor: float | None = None        # start of the first budget period
    models: tuple[str, ...] | None = None     # aliases and teams the key may use; None: all
    max_concurrency: int | None = None        # live agents; None: [budget] max_agents_per_key
    limits: dict[str, int] | None = None      # requests per window by endpoint class, over [limits]
    metadata: dict[str, Any] = field(default_factory=dict)  # free-form labels (owner, project...)
    project_id: str | None = None             # the project it belongs to, if any

    cipher: Any = field(default=None, repr=False, compare=False)
    _secret: str | None = field(default=None, repr=False, compare=False)
    _webhook_secret: str | None = field(default=None, repr=False, compare=False)

    @property
    def secret(self) -> str:
        """The signing secret, decrypted on first use (cryptography stays unloaded until then)."""
        if self._secret is None:
            self._secret = self.cipher.decrypt(self.sealed_secret, f"{self.key_id}/secret") \
                if self.cipher is not None else self.sealed_secret
        return self._secret

    @property
    def own_webhook_secret(self) -> str | None:
        """The webhook secret, or None for a key made before webhook secrets existed."""
        if self._webhook_secret is None and self.sealed_webhook_secret is not None:
            self._webhook_secret = self.cipher.decrypt(self.sealed_webhook_secret, f"{self.key_id}/webhook_secret") \
                if self.cipher is not None else self.sealed_webhook_secret
        return self._webhook_secret

    @property
    def webhook_secret(self) -> str:
        """What signs the webhooks of this key's spawns: its webhook secret, or (a key from
        before them, until its webhook secret is rotated) its request signing secret."""
        return self.own_webhook_secret or self.secret

    def allows(self, scope: str | None) -> bool:
        """Deny by default: no scope (a route that declares none) is allowed to no key."""
        if scope is None:
            return False
        if scope == ANY_KEY or ADMIN in self.scopes or scope in self.scopes:
            return True
        return READ_ALL in self.scopes and scope in _READ_ALL_GRANTS

    def may_use(self, name: str) -> bool:
        """May this key spawn on model alias or team ``name``?  Any, when it has no list."""
        return self.models is None or name in self.models

    @property
    def sees_all(self) -> bool:
        """Sees every key's work (agents, events, webhooks, usage), not only its own."""
        return ADMIN in self.scopes or READ_ALL in self.scopes

    def allowance(self, family: tuple[str, ...] = ()) -> Allowance | None:
        """The key's own budget, or None.  ``family``: the other keys of its rotation family
        (KeyRing.family), whose spend counts against it too."""
        if self.max_budget is None:
            return None
        return Allowance("key", self.key_id, self.max_budget, self.budget_duration or "1d",
                         self.budget_anchor if self.budget_anchor is not None else day_start(self.created_at),
                         family)

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def public(self, now: float) -> dict[str, Any]:
        """What GET /keys shows: never the token or the secret."""
        from .agent_record import iso
        return {"key_id": self.key_id, "name": self.name, "scopes": list(self.scopes), "status": self.state(now),
                "require_signature": self.require_signature, "created_at": iso(self.created_at),
                "last_used_at": iso(self.last_used_at), "expires_at": iso(self.expires_at),
                "revoked_at": iso(self.revoked_at), "revoke_reason": self.revoke_reason,
                "rotated_to": self.rotated_to,
                "webhook_signing": "request_secret" if self.sealed_webhook_secret is None else "webhook_secret",
                **self.limits_view()}

    def limits_view(self) -> dict[str, Any]:
        """The key's own limits (None: the daemon's apply) and its project."""
        return {"max_budget": self.max_budget, "budget_duration": self.budget_duration if self.max_budget is not None
                else None, "models": None if self.models is None else list(self.models),
                "max_concurrency": self.max_concurrency, "limits": self.limits, "metadata": self.metadata,
                "project_id": self.project_id}


@dataclass(frozen=True)
class NewKey:
    """A freshly made key with its one-time secrets."""

    key: ApiKey
    token: str = field(repr=False)
    secret: str = field(repr=False)
    webhook_secret: str | None = field(default=None, repr=False)  # None: carried over, not new

    def reveal(self) -> dict[str, object]:
        shown: dict[str, object] = {"key_id": self.key.key_id, "name": self.key.name, "token": self.token,
                                    "secret": self.secret}
        if self.webhook_secret is not None:
            shown["webhook_secret"] = self.webhook_secret
        return {**shown, "scopes": list(self.key.scopes), "require_signature": self.key.require_signature}


_COLUMNS = ("key_id", "name", "token_hash", "secret", "scopes", "require_signature", "created_at", "last_used_at",
            "expires_at", "revoked_at", "revoke_reason", "rotated_to", "webhook_secret", "max_budget",
            "budget_duration", "budget_anchor", "models", "max_concurrency", "limits", "metadata", "project_id")
# The limit columns stored as JSON text (NULL: none).
_JSON_COLUMNS = frozenset(("models", "limits", "metadata"))


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(list(value) if isinstance(value, tuple) else value, separators=(",", ":"), ensure_ascii=False)


def _limit_values(key: ApiKey) -> tuple[object, ...]:
    """The limit columns of ``key``, as stored (the tail of _COLUMNS)."""
    return (key.max_budget, key.budget_duration, key.budget_anchor, _json_text(key.models), key.max_concurrency,
            _json_text(key.limits), _json_text(key.metadata or None), key.project_id)


def _apply(key: ApiKey, limits: KeyLimits, now: float) -> dict[str, object]:
    """Set ``limits`` on ``key`` (in memory); returns the columns whose value changed, as
    stored (a value sent again as it is changes nothing, and is not said to).

    A budget set where there was none, or with another duration, starts its periods at the
    UTC midnight of today (budget_anchor); a new amount alone keeps the period."""
    fields = changed(limits)
    columns: dict[str, object] = {}

    def put(name: str, value: Any, stored: object) -> None:
        old = getattr(key, name)
        # The JSON columns by their text: {"flag": 1} == {"flag": True} in Python, not in JSON.
        if (_json_text(old or None) != stored) if name in _JSON_COLUMNS else old != value:
            setattr(key, name, value)
            columns[name] = stored

    if "max_budget" in fields:
        amount, duration = fields.pop("max_budget"), fields.pop("budget_duration")
        if amount is None:
            anchor = None
        elif key.max_budget is None or duration != key.budget_duration or key.budget_anchor is None:
            anchor = day_start(now)
        else:
            anchor = key.budget_anchor
        for name, value in (("max_budget", amount), ("budget_duration", duration), ("budget_anchor", anchor)):
            put(name, value, value)
    for name, value in fields.items():
        if name == "metadata":
            value = value or {}
        put(name, value, _json_text(value or None) if name in _JSON_COLUMNS else value)
    return columns


def update_statement(key_id: str, columns: dict[str, object]) -> tuple[str, tuple[object, ...]]:
    """Store changed limit columns of a key (from _apply)."""
    return (f"UPDATE api_keys SET {', '.join(f'{c} = ?' for c in columns)} WHERE key_id = ?",
            (*columns.values(), key_id))


def _json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _row_to_key(row: sqlite3.Row, cipher: DataCipher | None) -> ApiKey:
    models = _json_or_none(row["models"])
    return ApiKey(max_budget=row["max_budget"], budget_duration=row["budget_duration"],
                  budget_anchor=row["budget_anchor"], models=None if models is None else tuple(models),
                  max_concurrency=row["max_concurrency"], limits=_json_or_none(row["limits"]),
                  metadata=_json_or_none(row["metadata"]) or {}, project_id=row["project_id"],
                  key_id=row["key_id"], name=row["name"], scopes=tuple(row["scopes"].split(",")),
                  token_hash=row["token_hash"], sealed_secret=row["secret"], cipher=cipher,
                  require_signature=bool(row["require_signature"]), created_at=row["created_at"],
                  last_used_at=row["last_used_at"], expires_at=row["expires_at"], revoked_at=row["revoked_at"],
                  revoke_reason=row["revoke_reason"], rotated_to=row["rotated_to"],
                  sealed_webhook_secret=row["webhook_secret"])


# -- plain sqlite functions: the daemon calls them through its Store, the CLI directly --------
def read_keys(conn: sqlite3.Connection, cipher: DataCipher | None) -> dict[str, ApiKey]:
    return {r["key_id"]: _row_to_key(r, cipher) for r in conn.execute("SELECT * FROM api_keys ORDER BY created_at")}


def make_key(name: object, scopes: object, cipher: DataCipher, *, require_signature: bool = False,
             now: float | None = None, webhook_secret: str | None = None, limits: KeyLimits | None = None,
             like: ApiKey | None = None) -> tuple[NewKey, tuple[str, tuple[object, ...]]]:
    """A new key and the INSERT that stores it (token hashed, secrets sealed).

    ``webhook_secret``: a rotated key's, carried over (then not shown again); else a new one.
    ``limits``: the new key's own limits (parsed by key_request.parse_limits); ``like``: a
    rotated key, whose name, limits, budget period, expiry and project the successor keeps."""
    key_name = like.name if like is not None else _parse_name(name)  # a rotated key's stored name is kept
    scopes = parse_scopes(scopes)
    key_id = "key_" + secrets.token_hex(8)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    # New secrets are derived from the data key (crypto.DataCipher.new_secret), not sealed: no AES,
    # so the first start's bootstrap key does not load `cryptography`.  A carried-over webhook
    # secret was chosen elsewhere: that one is sealed.
    sealed, secret = cipher.new_secret(f"{key_id}/secret")
    if webhook_secret is not None:
        new_hook_secret, hook_secret = None, webhook_secret
        sealed_hook = cipher.encrypt(webhook_secret, f"{key_id}/webhook_secret")
    else:
        sealed_hook, new_hook_secret = cipher.new_secret(f"{key_id}/webhook_secret", WEBHOOK_SECRET_PREFIX)
        hook_secret = new_hook_secret
    key = ApiKey(key_id=key_id, name=key_name, scopes=scopes, token_hash=hash_token(token), sealed_secret=sealed,
                 require_signature=require_signature, created_at=time.time() if now is None else now, cipher=cipher,
                 _secret=secret, sealed_webhook_secret=sealed_hook, _webhook_secret=hook_secret)
    if like is not None:
        key.max_budget, key.budget_duration, key.budget_anchor = like.max_budget, like.budget_duration, like.budget_anchor
        key.models, key.max_concurrency, key.limits = like.models, like.max_concurrency, like.limits
        key.metadata, key.project_id = dict(like.metadata), like.project_id
        if like.rotated_to is None:  # an expiry set on the key (not the grace of an earlier rotation)
            key.expires_at = like.expires_at
    if limits is not None:
        _apply(key, limits, key.created_at)
    values = (key.key_id, key.name, key.token_hash, sealed, ",".join(scopes),
              int(require_signature), key.created_at, None, key.expires_at, None, None, None, sealed_hook,
              *_limit_values(key))
    sql = f"INSERT INTO api_keys ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    return NewKey(key, token, secret, new_hook_secret), (sql, values)


WEBHOOK_SECRET_PREFIX = "whsec_"  # + 43 characters: told apart from the request secret at a glance


def webhook_secret_statement(key: ApiKey, stored: str) -> tuple[str, tuple[object, ...]]:
    """Store a new webhook secret of ``key`` (``stored``: as DataCipher.new_secret gives it)."""
    return "UPDATE api_keys SET webhook_secret = ? WHERE key_id = ?", (stored, key.key_id)


def revoke_statement(key_id: str, reason: str, now: float) -> tuple[str, tuple[object, ...]]:
    return ("UPDATE api_keys SET revoked_at = ?, revoke_reason = ? WHERE key_id = ? AND revoked_at IS NULL",
            (now, reason, key_id))


def rotate_statements(old: ApiKey, insert: tuple[str, tuple[object, ...]], new: NewKey, grace_seconds: float,
                      now: float) -> list[tuple[str, tuple]]:
    """The old key keeps working for the grace period, then expires; it names its successor.

    One unit, guarded in SQL: the old key is marked only while it is active and has no live
    successor, and the new key (``insert``, from make_key) is stored only if that mark was
    made.  So two rotations racing (two requests, or the CLI beside the daemon) mint one
    successor, and the caller sees whether it was its own.
    """
    expires = _grace_end(old, grace_seconds, now)
    mark = ("UPDATE api_keys SET expires_at = ?, rotated_to = ? WHERE key_id = ?"
            " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)"
            " AND (rotated_to IS NULL OR NOT EXISTS (SELECT 1 FROM api_keys AS s WHERE s.key_id = api_keys.rotated_to"
            " AND s.revoked_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > ?)))",
            (expires, new.key.key_id, old.key_id, now, now))
    _, values = insert
    if len(values) != len(_COLUMNS):
        raise ValueError("the key's INSERT does not match the api_keys columns")
    store_new = (f"INSERT INTO api_keys ({', '.join(_COLUMNS)}) SELECT {', '.join('?' * len(_COLUMNS))}"
                 " WHERE changes() = 1", values)  # changes(): rows the mark just above updated
    return [mark, store_new]


def _grace_end(old: ApiKey, grace_seconds: float, now: float) -> float:
    """When a key rotated now stops working: at the end of the grace, or at its own expiry if sooner."""
    return now + grace_seconds if old.expires_at is None else min(now + grace_seconds, old.expires_at)


def _any_admin(keys: Iterable[ApiKey], now: float, lasting: bool) -> bool:
    """Is one of ``keys`` an active admin key (``lasting``: one with no expiry)?"""
    return any(ADMIN in k.scopes and k.state(now) == "active" and (not lasting or k.expires_at is None)
               for k in keys)


def membership_statements(project_id: str | None, key_ids: Iterable[str],
                          leaving: Iterable[str] = ()) -> list[tuple[str, tuple[object, ...]]]:
    """Put ``key_ids`` in ``project_id`` (a key belongs to at most one project: this moves it
    from any other) and take ``leaving`` out of it.  For projects.py, which owns the projects
    but not the keys' rows."""
    out: list[tuple[str, tuple[object, ...]]] = [
        ("UPDATE api_keys SET project_id = NULL WHERE key_id = ? AND project_id = ?", (kid, project_id))
        for kid in leaving]
    out += [("UPDATE api_keys SET project_id = ? WHERE key_id = ?", (project_id, kid)) for kid in key_ids]
    return out


# Every column a change of a key's standing can touch (what the CLI does, or an operator's
# edit of the scopes or limits; a rotated webhook secret), never last_used_at: the daemon's own last-use writes change nothing
# here.  A few dozen short rows: microseconds.
_KEYS_FINGERPRINT = ("SELECT COUNT(*), group_concat(key_id || '/' || scopes || '/' || require_signature || '/'"
                     " || IFNULL(revoked_at, '') || '/' || IFNULL(expires_at, '') || '/' || IFNULL(rotated_to, '')"
                     " || '/' || IFNULL(hex(webhook_secret), '')"
                     " || '/' || IFNULL(max_budget, '') || '/' || IFNULL(budget_duration, '') || '/'"
                     " || IFNULL(budget_anchor, '') || '/' || IFNULL(models, '') || '/' || IFNULL(max_concurrency, '')"
                     " || '/' || IFNULL(limits, '') || '/' || IFNULL(hex(metadata), '') || '/' || IFNULL(project_id, ''),"
                     " ' ') FROM api_keys")


def rotation_families(keys: dict[str, ApiKey]) -> dict[str, tuple[str, ...]]:
    """Each rotated key's family: every key linked to it by rotations, before and after it
    (a key, its successor in the grace period, that one's successor...), without itself.
    A successor keeps its key's limits, and so its budget: one budget, whichever of the
    family's tokens spends it.  Keys never rotated are left out."""
    links: dict[str, set[str]] = {}
    for key in keys.values():
        if key.rotated_to is not None and key.rotated_to in keys:
            links.setdefault(key.key_id, set()).add(key.rotated_to)
            links.setdefault(key.rotated_to, set()).add(key.key_id)
    family: dict[str, tuple[str, ...]] = {}
    for start in links:
        if start in family:
            continue
        seen, todo = {start}, [start]
        while todo:
            for other in links[todo.pop()] - seen:
                seen.add(other)
                todo.append(other)
        for key_id in seen:
            family[key_id] = tuple(sorted(seen - {key_id}))
    return family


class KeyRing:
    """The daemon's in-memory view of the keys, kept fresh from the database."""

    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}
        self._by_hash: dict[str, ApiKey] = {}
        self.data_version: int | None = None
        self.family: dict[str, tuple[str, ...]] = {}  # key id -> the other keys of its rotation family

    def replace(self, keys: dict[str, ApiKey], data_version: int | None = None) -> None:
        self.keys = keys
        self._by_hash = {k.token_hash: k for k in keys.values()}
        self.data_version = data_version
        self.family = rotation_families(keys)

    def lookup(self, token: str) -> ApiKey | None:
        # By the SHA-256 of a 256-bit random token: the dict's equality check on the hash
        # leaks nothing usable about the token, so no second, constant-time comparison.
        return self._by_hash.get(hash_token(token))

    def __len__(self) -> int:
        return len(self.keys)


def lost_reason(key: ApiKey | None, scope: str | None, now: float) -> str | None:
    """Why ``key`` no longer grants ``scope`` (a short text, a WebSocket close reason), or None."""
    if key is None:
        return "key deleted"
    state = key.state(now)
    if state != "active":
        return f"key {state}"
    if not key.allows(scope):
        return f"key lacks scope {scope}"
    return None


class KeyWatch:
    """A live stream's hold on its key: ``on_lost(reason)`` is called once, when the key
    stops granting ``scope``.  It is called from the key service's own code (a reload, a
    timer), so it must only signal (end a queue, schedule a close), never block or raise."""

    __slots__ = ("key_id", "scope", "on_lost", "lost")

    def __init__(self, key_id: str, scope: str | None, on_lost: Callable[[str], None]) -> None:
        self.key_id = key_id
        self.scope = scope
        self.on_lost = on_lost
        self.lost: str | None = None


class KeyService:
    """Keys for the daemon: the ring for requests, writes through the store."""

    BOOTSTRAP_FILE = "bootstrap-admin.key"

    def __init__(self, store: Store, grace_seconds: float = 86_400.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.ring = KeyRing()
        self._used: dict[str, float] = {}  # key_id -> last use not yet written
        self._flushed_at = 0.0             # time.monotonic() of the last last-use flush
        self._fingerprint: Any = None
        self._watches: dict[str, set[KeyWatch]] = {}  # key_id -> streams holding it
        self._timer: asyncio.TimerHandle | None = None  # at the earliest expiry of a watched key
        self._first_watch = asyncio.Event()  # wakes wait_refresh() from its long sleep
        self._looked_at = -math.inf  # the loop's time when the last look at the database began
        self._sleep: asyncio.Timeout | None = None  # wait_refresh()'s long sleep, while it sleeps
        self._change_lock = asyncio.Lock()  # one revoke, update or rotate at a time (_changing)

    def set_rotation_grace(self, seconds: float) -> None:
        """``[security] key_rotation_grace_hours`` of a reloaded configuration: rotations from
        now on (a key rotated before keeps the expiry it was given)."""
        self.grace_seconds = seconds

    @property
    def _cipher(self) -> DataCipher:
        """What seals new secrets: the daemon's store always encrypts (only tests open one without)."""
        assert self.store.cipher is not None
        return self.store.cipher

    async def reload(self) -> None:
        cipher = self.store.cipher

        def read(conn: sqlite3.Connection) -> tuple[dict[str, ApiKey], int, Any]:
            # The version first: a commit landing between the two statements then leaves
            # an old version beside new keys (the next refresh reloads again), never a new
            # version beside old keys (a CLI revocation missed until some later change).
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            fingerprint = conn.execute(_KEYS_FINGERPRINT).fetchone()  # before the keys, like the version
            return read_keys(conn, cipher), version, fingerprint

        self._looked_at = asyncio.get_running_loop().time()
        keys, version, self._fingerprint = await self.store.read(read)
        self.ring.replace(keys, version)
        if self._watches:
            self._recheck()

    async def refresh(self) -> None:
        """Reload when another process (the CLI) changed the keys; flush last-use times.

        ``data_version`` moves with every commit of another connection, and the daemon's own
        writer is one: under traffic it moves every time.  So a moved version only leads to a
        look at the keys' fingerprint, and a reload only when that changed too.
        """
        known = self.ring.data_version
        self._looked_at = asyncio.get_running_loop().time()

        def look(conn: sqlite3.Connection) -> tuple[int, Any]:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            return version, (conn.execute(_KEYS_FINGERPRINT).fetchone() if version != known else None)

        version, fingerprint = await self.store.read(look)
        if fingerprint is not None:
            if fingerprint != self._fingerprint:
                await self.reload()
            else:
                self.ring.data_version = version
        # Last-use times every REFRESH_SECONDS whatever the look's pace (a look may come a
        # hair early, hence the half-interval of slack).
        now = time.monotonic()
        if self._used and now - self._flushed_at >= REFRESH_SECONDS - STREAM_REFRESH_SECONDS / 2:
            used, self._used, self._flushed_at = self._used, {}, now
            # Written in batches, once per refresh at most: a Pi's SD card is not a log device.
            await self.store.write(*(("UPDATE api_keys SET last_used_at = ? WHERE key_id = ?", (ts, kid))
                                     for kid, ts in used.items()))

    async def wait_refresh(self) -> None:
        """Sleep until the next refresh is due: REFRESH_SECONDS, or STREAM_REFRESH_SECONDS
        while a live stream watches a key (a CLI revocation must close it within 1 s).  A
        first watcher cuts the long sleep short (:meth:`_look_soon`): its key may have changed
        during it."""
        if self._watches:
            await asyncio.sleep(STREAM_REFRESH_SECONDS)
            return
        self._first_watch.clear()
        try:
            async with asyncio.timeout(REFRESH_SECONDS) as self._sleep:
                await self._first_watch.wait()
        except TimeoutError:
            pass
        finally:
            self._sleep = None

    def _look_soon(self) -> None:
        """A first watcher: the next look comes at most STREAM_REFRESH_SECONDS after the last
        one began, as while a stream watches: at once when that is past, else by ending the
        long sleep then.  Not at once every time: a chat call watches its key, and a look per
        call (a task step and a read on the executor) sat in the answer's path."""
        loop = asyncio.get_running_loop()
        due = self._looked_at + STREAM_REFRESH_SECONDS
        sleep = self._sleep
        if sleep is None or sleep.expired() or due <= loop.time():  # expired: it is waking anyway
            self._first_watch.set()
        else:
            ends = sleep.when()
            if ends is None or due < ends:
                sleep.reschedule(due)

    # -- live streams watch their key ---------------------------------------------------------
    def watch(self, key_id: str, scope: str | None, on_lost: Callable[[str], None]) -> KeyWatch:
        """Call ``on_lost(reason)`` once when the key is revoked, expires (its rotation grace
        ends), loses ``scope`` or disappears: at once for a change made through this service,
        within STREAM_REFRESH_SECONDS for one made by another process, at the expiry itself
        (a timer).  A key already lost is told so on the next turn of the loop."""
        watch = KeyWatch(key_id, scope, on_lost)
        if not self._watches:
            self._look_soon()
        self._watches.setdefault(key_id, set()).add(watch)
        asyncio.get_running_loop().call_soon(self._recheck)
        return watch

    def unwatch(self, watch: KeyWatch) -> None:
        group = self._watches.get(watch.key_id)
        if group is not None:
            group.discard(watch)
            if not group:
                del self._watches[watch.key_id]
        if not self._watches and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _recheck(self) -> None:
        """Tell the watchers whose key no longer grants their scope; arm the expiry timer."""
        now = self.clock()
        earliest: float | None = None
        for key_id, group in list(self._watches.items()):
            key = self.ring.keys.get(key_id)
            for watch in list(group):
                reason = lost_reason(key, watch.scope, now)
                if reason is None:
                    continue
                group.discard(watch)
                watch.lost = reason
                try:
                    watch.on_lost(reason)
                except Exception:  # noqa: BLE001 - one stream's failure must not spare the others
                    log.exception("closing a stream of %s failed", key_id)
            if not group:
                del self._watches[key_id]
            elif key is not None and key.expires_at is not None:
                earliest = key.expires_at if earliest is None else min(earliest, key.expires_at)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if earliest is not None:
            # One timer, at the earliest deadline; it re-arms for the next one.  A wake a
            # little early (monotonic and wall clocks drift apart) just re-arms.
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + max(0.0, earliest - now), self._recheck)

    def authenticate(self, token: str) -> ApiKey | None:
        key = self.ring.lookup(token)
        if key is None or key.state(self.clock()) != "active":
            return None
        key.last_used_at = self._used[key.key_id] = self.clock()
        return key

    def find(self, key_id: str) -> ApiKey | None:
        """The key of that id, or None (the spawn path's look-up: memory only)."""
        return self.ring.keys.get(key_id)

    def allowances(self, key_id: str) -> tuple[Allowance, ...]:
        """The key's own budget, as budget.Budget asks for it (nothing for an unknown key),
        shared with its rotation family."""
        key = self.ring.keys.get(key_id)
        allowance = key.allowance(self.ring.family.get(key_id, ())) if key is not None else None
        return () if allowance is None else (allowance,)

    def acts(self, key_id: str) -> bool:
        """Does what ``key_id`` made (its webhooks) still act for it?  Yes while the key is
        active, and after it expired while a key of its rotation family (its successor) is;
        never once it is revoked: a webhook a stolen token made must not outlive the token.  A
        key unknown here (the anonymous caller of a daemon without authentication) acts."""
        key = self.ring.keys.get(key_id)
        if key is None:
            return True
        now = self.clock()
        state = key.state(now)
        if state != "expired":
            return state == "active"
        return any((k := self.ring.keys.get(other)) is not None and k.state(now) == "active"
                   for other in self.ring.family.get(key_id, ()))

    def get(self, key_id: str) -> ApiKey:
        key = self.ring.keys.get(key_id)
        if key is None:
            raise LookupError(key_id)
        return key

    async def create(self, name: object, scopes: object, require_signature: bool = False, *,
                     limits: KeyLimits | None = None,
                     before_commit: Callable[[NewKey], None] | None = None) -> NewKey:
        """``before_commit(new)`` runs (blocking) before the key's row is written: the bootstrap
        key's token file is on disk before the key exists, never the other way round.
        ``limits``: the key's own (key_request.parse_limits)."""
        new, insert = make_key(name, scopes, self._cipher, require_signature=require_signature,
                               now=self.clock(), limits=limits)
        if before_commit is not None:
            before_commit(new)
        await self.store.write(insert, fail_fast=True)
        await self.reload()
        return new

    async def update(self, key_id: str, limits: KeyLimits, *, force: bool = False) -> tuple[ApiKey, dict[str, object]]:
        """Change a key's own limits (PATCH /keys/{key_id}, ``j1mskyd keys update``); returns
        the key as it is now and the columns that changed.  A revoked or expired key is refused
        (400): both are final (an expiry cleared revived the key, and its queued webhooks went
        out), as for rotate().  So is a new expires_at for a rotated key: it is the end of the
        rotation's grace period (a cleared one left the old token working for ever).
        Live streams of the key hear of a new expires_at at once (the reload rechecks them).
        An expiry for the last active admin key that had none is refused (409) unless ``force``."""
        async with self._changing():
            key = self.get(key_id)
            state = key.state(self.clock())
            if state != "active":
                raise KeyRefused(f"{key_id} is {state}; its limits cannot change")
            if key.rotated_to is not None and "expires_at" in changed(limits):
                raise bad("expires_at", f"{key_id} was rotated to {key.rotated_to}: its expires_at is the end of its "
                                        "rotation grace period and cannot change (revoke it to end it now)")
            draft = replace(key, metadata=dict(key.metadata))  # the ring's key changes with the reload
            columns = _apply(draft, limits, self.clock())
            if not force:  # an expiry is a revocation set for later: revoke()'s guard
                self._keep_an_admin(key_id, "giving it an expires_at", draft)
            if columns:
                await self.store.write(update_statement(key_id, columns), fail_fast=True)
                await self.reload()
        return self.get(key_id), columns

    async def revoke(self, key_id: str, reason: str, *, force: bool = False) -> ApiKey:
        """Revoke now.  Refused (409) unless ``force`` when it would leave no active admin key
        that does not expire (_keep_an_admin)."""
        async with self._changing():
            key = self.get(key_id)
            if key.revoked_at is not None:
                raise KeyRefused(f"{key_id} is already revoked")
            if not force:
                self._keep_an_admin(key_id, "revoking it", replace(key, revoked_at=self.clock()))
            await self.store.write(revoke_statement(key_id, reason, self.clock()), fail_fast=True)
            await self.reload()
        return self.get(key_id)

    @contextlib.asynccontextmanager
    async def _changing(self) -> AsyncIterator[None]:
        """One change of a key's standing at a time, judged on the keys as stored now.  The
        admin guard reads the ring, then the change writes: two revocations sent at once (A
        revokes B, B revokes A) each saw the other admin key still active and both went
        through.  The reload also takes in a change the CLI made since the last refresh."""
        async with self._change_lock:
            await self.reload()
            yield

    def _keep_an_admin(self, key_id: str, doing: str, *after: ApiKey) -> None:
        """Refuse (409) a change that leaves no active admin key, or none that does not expire
        where there was one; ``after``: the keys the change touches, as it leaves them (a new
        one among them: added).  The one home of the rule for revoke, update and rotate:
        without an admin key nobody can manage keys over HTTP (only `j1mskyd keys` on the host
        can), and an admin key that expires is one revoked later (a rotation's successor
        revoked left only the old key, in its grace period)."""
        now = self.clock()
        before = list(self.ring.keys.values())
        touched = {k.key_id: k for k in after}
        later = [touched.pop(k.key_id, k) for k in before] + list(touched.values())
        for lasting in (False, True):
            if _any_admin(before, now, lasting) and not _any_admin(later, now, lasting):
                raise LastAdminKey(f"{key_id} is the last active admin key{' with no expiry' if lasting else ''}; "
                                   f"create another admin key with no expires_at before {doing}")

    async def rotate(self, key_id: str) -> NewKey:
        """A successor for an active key.  A key already in its rotation grace period, whose
        successor is still active, is refused (409): rotate the successor instead."""
        async with self._changing():
            old = self.get(key_id)
            now = self.clock()
            if old.state(now) != "active":
                raise KeyRefused(f"{key_id} is {old.state(now)}; only an active key can be rotated")
            successor = self.ring.keys.get(old.rotated_to) if old.rotated_to else None
            if successor is not None and successor.state(now) == "active":
                from .agent_record import iso
                raise AlreadyRotated(f"{key_id} was already rotated to {successor.key_id} and works only until "
                                     f"{iso(old.expires_at)}; rotate {successor.key_id} instead")
            new, insert = make_key(old.name, old.scopes, self._cipher, require_signature=old.require_signature,
                                   now=now, webhook_secret=old.own_webhook_secret, like=old)
            # The successor keeps the old key's scopes and (the grace aside) its expiry: never
            # refused today, but the rule has one home whatever rotation becomes.
            self._keep_an_admin(key_id, "rotating it", replace(old, expires_at=_grace_end(old, self.grace_seconds, now),
                                                               rotated_to=new.key.key_id), new.key)
            await self.store.write(*rotate_statements(old, insert, new, self.grace_seconds, now), fail_fast=True)
            await self.reload()
        if new.key.key_id not in self.ring.keys:  # another rotation or a revocation came first (the CLI)
            raise AlreadyRotated(f"{key_id} was rotated or revoked meanwhile; nothing was changed")
        return new

    async def rotate_webhook_secret(self, key_id: str,
                                    also: Callable[[str], list[tuple[str, tuple]]] = lambda secret: []) -> str:
        """A new webhook secret for an active key, returned once; ``also(secret)`` gives
        statements committed with it (the key's pending spawn webhooks, re-signed)."""
        key = self.get(key_id)
        now = self.clock()
        if key.state(now) != "active":
            raise KeyRefused(f"{key_id} is {key.state(now)}; only an active key's webhook secret can be rotated")
        if key.rotated_to is not None:
            raise KeyRefused(f"{key_id} was rotated to {key.rotated_to}, which holds its webhook secret now: "
                            "rotate that key's")
        stored, secret = self._cipher.new_secret(f"{key.key_id}/webhook_secret", WEBHOOK_SECRET_PREFIX)
        await self.store.write(webhook_secret_statement(key, stored), *also(secret), fail_fast=True)
        await self.reload()
        return secret

    async def bootstrap(self, state_dir: str) -> NewKey | None:
        """First start with no keys at all: make an admin key and leave it in a 0600 file.

        The token goes to that file (and to the terminal when there is one), never to the
        log, which under systemd is the journal that many users can read.
        """
        if len(self.ring):
            return None
        import json
        import os
        import sys
        path = os.path.join(state_dir, self.BOOTSTRAP_FILE)

        def keep(new: NewKey) -> None:
            # A fresh 0600 file renamed into place: O_CREAT's mode would not narrow a stale,
            # wider file left at ``path``, and O_EXCL|O_NOFOLLOW never writes through a symlink.
            # Synced with its directory before the key's row is committed: a power cut between
            # the two leaves a token for a key that was never made (the next start makes the
            # key and this file anew), never a key whose token is lost.
            tmp = path + ".tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(new.reveal(), fh, indent=2)
                    fh.write("\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            fsync_dir(state_dir)

        new = await self.create("bootstrap-admin", [ADMIN], before_commit=keep)
        if sys.stderr.isatty():
            print(f"\nj1mskyd: created the first admin API key (shown once; also in {path}):\n"
                  f"  key id: {new.key.key_id}\n  token:  {new.token}\n  secret: {new.secret}\n"
                  f"  webhook secret: {new.webhook_secret}\n", file=sys.stderr)
        return new
