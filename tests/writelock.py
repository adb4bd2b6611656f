"""Another writer on a store's database, for tests that need the store's next group to wait."""

from __future__ import annotations

import asyncio
import sqlite3

from j1mskyd.store import Store


async def hold_writes(store: Store) -> sqlite3.Connection:
    """Take the database's write lock from a second connection (``BEGIN IMMEDIATE``): the store's
    next group waits for it, up to the store's busy timeout (5 s).

    Taken once the store's writer is idle.  A group already handed to the writer's thread but
    not yet begun would otherwise wait behind this lock instead, with every unit queued after it
    (a busy machine makes that window wide enough to hit), and the test would hold the wrong group.
    """
    async with asyncio.timeout(10):  # a bound, not a timing claim
        while store._flushing is not None:
            await asyncio.sleep(0.005)
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def release(other: sqlite3.Connection) -> None:
    other.execute("ROLLBACK")
    other.close()
