"""Idempotency-Key records: a retried POST/PUT returns the first answer instead of acting twice.

Scope is the API key (two clients may pick the same Idempotency-Key).  A record holds a
hash of method, path and body, and the first successful (2xx) answer; it lives 24 hours
in sqlite, so it holds across restarts.  Two concurrent requests with one key: the
second waits for the first and then gets its answer, so the side effect runs once.
Failed requests (4xx/5xx) are not recorded: fixing the request and retrying with the
same key is allowed.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["IdempotencyStore", "KEY_PATTERN", "Recorded", "TTL_SECONDS", "fingerprint"]

TTL_SECONDS = 24 * 3600
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as Stripe and the IETF draft allow


@dataclass(frozen=True)
class Recorded:
    body_hash: str
    status: int
    response: bytes
    content_type: str


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b"\0" + path.encode() + b"\0" + body).hexdigest()


class IdempotencyStore:
    def __init__(self, store: Any, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._in_flight: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def begin(self, scope: str, key: str) -> Recorded | None:
        """The recorded answer for (scope, key), or None after claiming it for this request.

        Returns only after any concurrent request holding the same key has finished.
        """
        while (pending := self._in_flight.get((scope, key))) is not None:
            await asyncio.shield(pending)
        # Claim before looking: no await may separate the check above from the claim.
        self._in_flight[(scope, key)] = asyncio.get_running_loop().create_future()
        try:
            found = await self.lookup(scope, key)
        except BaseException:
            self.end(scope, key)
            raise
        if found is not None:
            self.end(scope, key)
        return found

    def end(self, scope: str, key: str) -> None:
        fut = self._in_flight.pop((scope, key), None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def lookup(self, scope: str, key: str) -> Recorded | None:
        cutoff = self.clock() - TTL_SECONDS

        def read(conn: sqlite3.Connection) -> sqlite3.Row | None:
            return conn.execute("SELECT body_hash, status, response, content_type FROM idempotency "
                                "WHERE api_key_id = ? AND idem_key = ? AND created_at >= ?",
                                (scope, key, cutoff)).fetchone()

        row = await self.store.read(read)
        if row is None:
            return None
        return Recorded(row[0], row[1], self._open(scope, key, row[2]), row[3])

    # Answers can hold secrets (POST /keys returns a token): stored sealed like agent text.
    def _seal(self, scope: str, key: str, response: bytes) -> bytes | str:
        cipher = self.store.cipher
        return cipher.encrypt(response.decode("utf-8"), f"idem/{scope}/{key}") if cipher is not None else response

    def _open(self, scope: str, key: str, stored: bytes | str) -> bytes:
        if isinstance(stored, str):
            return self.store.cipher.decrypt(stored, f"idem/{scope}/{key}").encode("utf-8")
        return bytes(stored)

    async def record(self, scope: str, key: str, method: str, path: str, body_hash: str, status: int,
                     response: bytes, content_type: str) -> None:
        await self.store.write((
            "INSERT OR REPLACE INTO idempotency (api_key_id, idem_key, method, path, body_hash, status, response, "
            "content_type, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (scope, key, method, path, body_hash, status, self._seal(scope, key, response), content_type,
             self.clock())))

    async def purge(self) -> None:
        await self.store.write(("DELETE FROM idempotency WHERE created_at < ?", (self.clock() - TTL_SECONDS,)))
