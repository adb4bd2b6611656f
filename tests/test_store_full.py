"""A full disk at the store boundary: sqlite's own "database or disk is full" injected into the
write connection (tests/test_full_disk.py fills a real filesystem).  Units that carry work already
done wait in memory, in order, and commit once space returns; a client's write fails fast (507)."""

from __future__ import annotations

import asyncio
import errno
import sqlite3

import pytest

from j1mskyd.errors import InsufficientStorage
from j1mskyd.store import Store, StoreFull, is_disk_full

INSERT = "INSERT INTO settings (name, value, updated_at) VALUES (?, ?, 0)"


class FullDisk:
    """The store's write connection, failing like sqlite on a full disk while ``full`` is set:
    at COMMIT (where a WAL transaction writes its pages), or at a statement naming ``at``."""

    def __init__(self, conn: sqlite3.Connection, at: str = "COMMIT") -> None:
        self.conn, self.at, self.full, self.failures = conn, at, True, 0

    def execute(self, sql: str, params=()):
        if self.full and (sql == self.at or (self.at != "COMMIT" and self.at in str(params))):
            self.failures += 1
            if sql == "COMMIT":
                self.conn.execute("ROLLBACK")  # sqlite rolls a transaction back on SQLITE_FULL
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows):  # a group's statements of one text (store._batched): each one
        for params in rows:
            self.execute(sql, params)

    def cursor(self):  # a group's statements go through one cursor (store._run_together): fail those too
        return self

    def __getattr__(self, name: str):  # in_transaction, close...
        return getattr(self.conn, name)


@pytest.fixture
async def store(tmp_path):
    s = Store(str(tmp_path / "j1msky.db"), encrypt=False)
    s.open()
    yield s
    s.give_up_after(0)
    await s.close()


def names(store: Store) -> list[str]:
    return [r[0] for r in store.read_sync(lambda c: c.execute("SELECT name FROM settings ORDER BY rowid"))]


async def until(predicate, what: str) -> None:
    async with asyncio.timeout(10):  # a bound, not a timing claim
        while not predicate():
            await asyncio.sleep(0.01)


async def test_writes_wait_for_space_in_order_then_commit(store):
    disk = store._wconn = FullDisk(store._wconn)
    first = store.submit([(INSERT, ("a", "1"))])
    second = store.submit([(INSERT, ("b", "2"))])
    await until(lambda: disk.failures >= 2, "a retry")  # retried, with backoff
    assert store.full == "database or disk is full" and not first.done() and not second.done()
    third = store.submit([(INSERT, ("c", "3"))])  # queued behind the waiting ones
    assert names(store) == []  # reads go on: nothing is on disk yet
    disk.full = False
    await asyncio.gather(first, second, third)
    assert names(store) == ["a", "b", "c"]
    assert store.full is None and store.state_changes == 2 and store.pending_writes() == 0


async def test_a_clients_write_fails_fast_with_507_and_changes_nothing(store):
    disk = store._wconn = FullDisk(store._wconn)
    kept = store.submit([(INSERT, ("result", "1"))])
    refused = store.submit([(INSERT, ("spawn", "1"))], fail_fast=True)  # same group as the kept one
    with pytest.raises(StoreFull) as caught:
        await refused
    assert isinstance(caught.value, InsufficientStorage) and caught.value.status == 507
    assert caught.value.type == "INSUFFICIENT_STORAGE" and "disk space" in caught.value.message
    with pytest.raises(StoreFull):  # while the disk is full: refused at once, never tried
        await store.write((INSERT, ("spawn2", "1")), fail_fast=True)
    disk.full = False
    await kept
    assert names(store) == ["result"]


async def test_space_coming_back_is_noticed_without_other_writes(store):
    """Only a refused spawn found the disk full: the store keeps probing, so /health and the next
    spawn see the space return (they would otherwise be refused for ever)."""
    disk = store._wconn = FullDisk(store._wconn)
    with pytest.raises(StoreFull):
        await store.write((INSERT, ("spawn", "1")), fail_fast=True)
    await until(lambda: disk.failures >= 2, "a probe")
    assert store.full is not None
    disk.full = False
    await until(lambda: store.full is None, "the probe to find space")
    await store.write((INSERT, ("spawn", "2")), fail_fast=True)
    assert [tuple(r) for r in store.read_sync(lambda c: c.execute("SELECT name, value FROM settings"))] == [("spawn", "2")]


async def test_a_unit_that_finds_the_disk_full_holds_its_whole_group(store):
    """A unit failing for space is not "this unit's fault": the group waits whole, so a later
    unit (an agent's final state) can never land before an earlier one (its start)."""
    store._wconn = disk = FullDisk(store._wconn, at="b")
    units = [store.submit([(INSERT, (n, n))]) for n in "abc"]
    await until(lambda: disk.failures >= 1, "the failure")
    assert names(store) == []
    disk.full = False
    await asyncio.gather(*units)
    assert names(store) == ["a", "b", "c"]


async def test_flush_does_not_wait_for_space(store):
    """Readers flush before they read (events, audit): a full disk must not hang them."""
    store._wconn = FullDisk(store._wconn)
    waiting = store.submit([(INSERT, ("a", "1"))])
    async with asyncio.timeout(10):
        await store.flush()
    assert not waiting.done() and store.full is not None
    store._wconn.full = False
    await waiting


async def test_other_errors_are_not_retried(store):
    store.submit([(INSERT, ("a", "1"))])
    await store.flush()
    with pytest.raises(Exception, match="UNIQUE") as caught:
        await store.write((INSERT, ("a", "again")))
    assert not isinstance(caught.value, StoreFull) and store.full is None


async def test_close_on_a_full_disk_gives_up_after_the_grace(tmp_path, caplog):
    s = Store(str(tmp_path / "j1msky.db"), encrypt=False)
    s.open()
    s._wconn = disk = FullDisk(s._wconn)
    waiting = s.submit([(INSERT, ("a", "1"))])
    await until(lambda: disk.failures >= 1, "the failure")
    s.give_up_after(0)  # what the daemon's stop does, with CLOSE_GRACE
    async with asyncio.timeout(10):
        await s.close()
    with pytest.raises(StoreFull):
        await waiting
    assert "1 writes could not be saved" in caplog.text


def test_disk_full_is_recognised_from_sqlite_and_the_os(tmp_path):
    conn = sqlite3.connect(str(tmp_path / "x.db"))
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA max_page_count = 2")  # sqlite's own SQLITE_FULL, with its error code
    with pytest.raises(sqlite3.OperationalError) as real:
        conn.executemany("INSERT INTO t VALUES (?)", [("x" * 4000,)] * 10)
    assert is_disk_full(real.value)
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    conn.close()
