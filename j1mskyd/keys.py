"""API keys: creation, lookup by token, scopes, revocation and rotation.

A key has an id (``key_<hex>``, safe to log), a bearer token (shown once, stored only as
its SHA-256) and a signing secret (shown once, stored encrypted with the data key,
because verifying an HMAC needs it).  ``admin:write`` implies every other scope.

The daemon keeps the keys in memory for the request path and notices changes made by
another process (``j1mskyd keys ...`` on the same state dir) through sqlite's
``PRAGMA data_version``, checked at most every ``REFRESH_SECONDS``; so a key revoked
from the command line stops working within that time.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .crypto import DataCipher
from .errors import Conflict

SCOPES = ("agents:read", "agents:write", "billing:read", "admin:write")
ADMIN = "admin:write"
TOKEN_PREFIX = "jsk_"
REFRESH_SECONDS = 2.0


class KeyError_(ValueError):
    """A bad key request (unknown scope, unknown id...): the API turns it into a 4xx."""


class LastAdminKey(Conflict):
    """Revoking it would leave no admin key (409)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_scopes(scopes: Iterable[str] | str) -> tuple[str, ...]:
    """A comma-separated string (the CLI) or a list of scope names (the API's JSON)."""
    if isinstance(scopes, str):
        scopes = scopes.split(",")
    elif not isinstance(scopes, (list, tuple)) or not all(isinstance(s, str) for s in scopes):
        # e.g. JSON 7, {"agents:read": true} or [1]: never iterate keys or crash on .strip()
        raise KeyError_(f"scopes must be a list of scope names ({', '.join(SCOPES)})")
    items = [s.strip() for s in scopes]
    items = [s for s in items if s]
    unknown = [s for s in items if s not in SCOPES]
    if unknown:
        raise KeyError_(f"unknown scope(s): {', '.join(unknown)} (known: {', '.join(SCOPES)})")
    if not items:
        raise KeyError_(f"at least one scope is required ({', '.join(SCOPES)})")
    return tuple(dict.fromkeys(items))


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

    cipher: Any = field(default=None, repr=False, compare=False)
    _secret: str | None = field(default=None, repr=False, compare=False)

    @property
    def secret(self) -> str:
        """The signing secret, decrypted on first use (cryptography stays unloaded until then)."""
        if self._secret is None:
            self._secret = self.cipher.decrypt(self.sealed_secret, f"{self.key_id}/secret") \
                if self.cipher is not None else self.sealed_secret
        return self._secret

    def allows(self, scope: str | None) -> bool:
        return scope is None or ADMIN in self.scopes or scope in self.scopes

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def public(self, now: float) -> dict[str, object]:
        """What GET /keys shows: never the token or the secret."""
        from .agent import iso
        return {"key_id": self.key_id, "name": self.name, "scopes": list(self.scopes), "status": self.state(now),
                "require_signature": self.require_signature, "created_at": iso(self.created_at),
                "last_used_at": iso(self.last_used_at), "expires_at": iso(self.expires_at),
                "revoked_at": iso(self.revoked_at), "revoke_reason": self.revoke_reason,
                "rotated_to": self.rotated_to}


@dataclass(frozen=True)
class NewKey:
    """A freshly made key with its one-time secrets."""

    key: ApiKey
    token: str = field(repr=False)
    secret: str = field(repr=False)

    def reveal(self) -> dict[str, object]:
        return {"key_id": self.key.key_id, "name": self.key.name, "token": self.token, "secret": self.secret,
                "scopes": list(self.key.scopes), "require_signature": self.key.require_signature}


_COLUMNS = ("key_id", "name", "token_hash", "secret", "scopes", "require_signature", "created_at", "last_used_at",
            "expires_at", "revoked_at", "revoke_reason", "rotated_to")


def _row_to_key(row: sqlite3.Row, cipher: DataCipher) -> ApiKey:
    return ApiKey(key_id=row["key_id"], name=row["name"], scopes=tuple(row["scopes"].split(",")),
                  token_hash=row["token_hash"], sealed_secret=row["secret"], cipher=cipher,
                  require_signature=bool(row["require_signature"]), created_at=row["created_at"],
                  last_used_at=row["last_used_at"], expires_at=row["expires_at"], revoked_at=row["revoked_at"],
                  revoke_reason=row["revoke_reason"], rotated_to=row["rotated_to"])


# -- plain sqlite functions: the daemon calls them through its Store, the CLI directly --------
def read_keys(conn: sqlite3.Connection, cipher: DataCipher) -> dict[str, ApiKey]:
    return {r["key_id"]: _row_to_key(r, cipher) for r in conn.execute("SELECT * FROM api_keys ORDER BY created_at")}


def make_key(name: str, scopes: Iterable[str] | str, cipher: DataCipher, *, require_signature: bool = False,
             now: float | None = None) -> tuple[NewKey, tuple[str, tuple[object, ...]]]:
    """A new key and the INSERT that stores it (token hashed, secret sealed)."""
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise KeyError_("name must be a non-empty string of at most 100 characters")
    scopes = parse_scopes(scopes)
    key_id = "key_" + secrets.token_hex(8)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    secret = secrets.token_urlsafe(32)
    sealed = cipher.encrypt(secret, f"{key_id}/secret")
    key = ApiKey(key_id=key_id, name=name.strip(), scopes=scopes, token_hash=hash_token(token), sealed_secret=sealed,
                 require_signature=require_signature, created_at=time.time() if now is None else now, cipher=cipher,
                 _secret=secret)
    values = (key.key_id, key.name, key.token_hash, sealed, ",".join(scopes),
              int(require_signature), key.created_at, None, None, None, None, None)
    sql = f"INSERT INTO api_keys ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    return NewKey(key, token, secret), (sql, values)


def revoke_statement(key_id: str, reason: str, now: float) -> tuple[str, tuple[object, ...]]:
    return ("UPDATE api_keys SET revoked_at = ?, revoke_reason = ? WHERE key_id = ? AND revoked_at IS NULL",
            (now, reason, key_id))


def rotate_statements(old: ApiKey, new: NewKey, grace_seconds: float, now: float) -> list[tuple[str, tuple]]:
    """The old key keeps working for the grace period, then expires; it names its successor."""
    expires = now + grace_seconds
    if old.expires_at is not None:
        expires = min(expires, old.expires_at)
    return [("UPDATE api_keys SET expires_at = ?, rotated_to = ? WHERE key_id = ?", (expires, new.key.key_id,
                                                                                    old.key_id))]


# What the CLI can change (create, revoke, rotate) changes one of these; the daemon's
# last_used_at writes change none.
_KEYS_FINGERPRINT = "SELECT COUNT(*), MAX(created_at), TOTAL(revoked_at), TOTAL(expires_at) FROM api_keys"


class KeyRing:
    """The daemon's in-memory view of the keys, kept fresh from the database."""

    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}
        self._by_hash: dict[str, ApiKey] = {}
        self.data_version: int | None = None

    def replace(self, keys: dict[str, ApiKey], data_version: int | None = None) -> None:
        self.keys = keys
        self._by_hash = {k.token_hash: k for k in keys.values()}
        self.data_version = data_version

    def lookup(self, token: str) -> ApiKey | None:
        # By the SHA-256 of a 256-bit random token: the dict's equality check on the hash
        # leaks nothing usable about the token, so no second, constant-time comparison.
        return self._by_hash.get(hash_token(token))

    def __len__(self) -> int:
        return len(self.keys)


class KeyService:
    """Keys for the daemon: the ring for requests, writes through the store."""

    BOOTSTRAP_FILE = "bootstrap-admin.key"

    def __init__(self, store, grace_seconds: float = 86_400.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.ring = KeyRing()
        self._used: dict[str, float] = {}  # key_id -> last use not yet written
        self._fingerprint: Any = None

    async def reload(self) -> None:
        cipher = self.store.cipher

        def read(conn: sqlite3.Connection) -> tuple[dict[str, ApiKey], int, Any]:
            # The version first: a commit landing between the two statements then leaves
            # an old version beside new keys (the next refresh reloads again), never a new
            # version beside old keys (a CLI revocation missed until some later change).
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            fingerprint = conn.execute(_KEYS_FINGERPRINT).fetchone()  # before the keys, like the version
            return read_keys(conn, cipher), version, fingerprint

        keys, version, self._fingerprint = await self.store.read(read)
        self.ring.replace(keys, version)

    async def refresh(self) -> None:
        """Reload when another process (the CLI) changed the keys; flush last-use times.

        ``data_version`` moves with every commit of another connection, and the daemon's own
        writer is one: under traffic it moves every time.  So a moved version only leads to a
        look at the keys' fingerprint, and a reload only when that changed too.
        """
        known = self.ring.data_version

        def look(conn: sqlite3.Connection) -> tuple[int, Any]:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            return version, (conn.execute(_KEYS_FINGERPRINT).fetchone() if version != known else None)

        version, fingerprint = await self.store.read(look)
        if fingerprint is not None:
            if fingerprint != self._fingerprint:
                await self.reload()
            else:
                self.ring.data_version = version
        if self._used:
            used, self._used = self._used, {}
            # Written in batches, once per refresh at most: a Pi's SD card is not a log device.
            await self.store.write(*(("UPDATE api_keys SET last_used_at = ? WHERE key_id = ?", (ts, kid))
                                     for kid, ts in used.items()))

    def authenticate(self, token: str) -> ApiKey | None:
        key = self.ring.lookup(token)
        if key is None or key.state(self.clock()) != "active":
            return None
        key.last_used_at = self._used[key.key_id] = self.clock()
        return key

    def get(self, key_id: str) -> ApiKey:
        key = self.ring.keys.get(key_id)
        if key is None:
            raise LookupError(key_id)
        return key

    async def create(self, name: str, scopes: Iterable[str] | str, require_signature: bool = False) -> NewKey:
        new, insert = make_key(name, scopes, self.store.cipher, require_signature=require_signature,
                               now=self.clock())
        await self.store.write(insert, fail_fast=True)
        await self.reload()
        return new

    async def revoke(self, key_id: str, reason: str, *, force: bool = False) -> ApiKey:
        """Revoke now.  The last active admin key is refused (409) unless ``force``: without it
        nobody can manage keys over HTTP any more (only `j1mskyd keys` on the host can)."""
        key = self.get(key_id)
        if key.revoked_at is not None:
            raise KeyError_(f"{key_id} is already revoked")
        now = self.clock()
        if not force and ADMIN in key.scopes and key.state(now) == "active" and not any(
                k.key_id != key_id and ADMIN in k.scopes and k.state(now) == "active" for k in self.ring.keys.values()):
            raise LastAdminKey(f"{key_id} is the last active admin key; create another admin key before revoking it")
        await self.store.write(revoke_statement(key_id, reason, self.clock()), fail_fast=True)
        await self.reload()
        return self.get(key_id)

    async def rotate(self, key_id: str) -> NewKey:
        old = self.get(key_id)
        if old.state(self.clock()) != "active":
            raise KeyError_(f"{key_id} is {old.state(self.clock())}; only an active key can be rotated")
        new, insert = make_key(old.name, old.scopes, self.store.cipher, require_signature=old.require_signature,
                               now=self.clock())
        await self.store.write(insert, *rotate_statements(old, new, self.grace_seconds, self.clock()),
                               fail_fast=True)
        await self.reload()
        return new

    async def bootstrap(self, state_dir: str) -> NewKey | None:
        """First start with no keys at all: make an admin key and leave it in a 0600 file.

        The token goes to that file (and to the terminal when there is one), never to the
        log, which under systemd is the journal that many users can read.
        """
        if len(self.ring):
            return None
        import contextlib
        import json
        import os
        import sys
        new = await self.create("bootstrap-admin", [ADMIN])
        path = os.path.join(state_dir, self.BOOTSTRAP_FILE)
        # A fresh 0600 file renamed into place: O_CREAT's mode would not narrow a stale,
        # wider file left at ``path``, and O_EXCL|O_NOFOLLOW never writes through a symlink.
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
        if sys.stderr.isatty():
            print(f"\nj1mskyd: created the first admin API key (shown once; also in {path}):\n"
                  f"  key id: {new.key.key_id}\n  token:  {new.token}\n  secret: {new.secret}\n", file=sys.stderr)
        return new
