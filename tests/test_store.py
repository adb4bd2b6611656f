"""The sqlite store: migrations, group commit, isolation of a bad unit, the state-dir lock."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from j1mskyd import store as S
from j1mskyd.store import Store, StoreError



async def test_schema_is_current_and_file_private(store, tmp_path):
    version = store.read_sync(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
    assert version == S.SCHEMA_VERSION
    assert store.read_sync(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    assert (tmp_path / "j1msky.db").stat().st_mode & 0o077 == 0


async def test_forward_migration_from_version_1_keeps_rows(tmp_path):
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path, isolation_level=None)
    for stmt in S._statements(S.MIGRATIONS[0]):
        conn.execute(stmt)
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO usage (ts, agent_id, model, provider, input_tokens, output_tokens, cost) "
                 "VALUES (1, 'a', 'k2p5', 'x', 1, 1, 0.5)")
    conn.close()
    s = Store(path)
    s.open()
    row = s.read_sync(lambda c: c.execute("SELECT cost, api_key FROM usage").fetchone())
    assert tuple(row) == (0.5, "anonymous")
    await s.close()


async def test_the_daemon_writes_through_a_connection_other_than_the_one_that_migrated(tmp_path):
    """The migrating connection, which keeps the migrations' prepared statements and written
    pages in its caches while it is open, is closed once the schema is current: the write
    connection made none of the first start's changes (the data key's check value among them),
    and what it writes next is there after a restart."""
    path = str(tmp_path / "j1msky.db")
    store = Store(path)
    store.open()
    assert store._wconn is not None and store._wconn.total_changes == 0
    assert store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM settings").fetchone()[0]) == 1  # the check
    await store.write(("INSERT INTO settings (name, value, updated_at) VALUES ('probe', '1', 0)", ()))
    assert store._wconn.total_changes == 1
    await store.close()
    again = Store(path)
    again.open()
    try:
        probe = again.read_sync(lambda c: c.execute("SELECT value FROM settings WHERE name = 'probe'").fetchone())
        assert probe[0] == "1"
    finally:
        await again.close()


def test_a_newer_database_is_refused(tmp_path):
    path = str(tmp_path / "new.db")
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={S.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path).open()


async def test_concurrent_writes_are_group_committed(store):
    sql = "INSERT INTO usage (ts, agent_id, model, provider, input_tokens, output_tokens, cost) VALUES (?,?,?,?,?,?,?)"
    await asyncio.gather(*(store.write((sql, (i, f"a{i}", "m", "p", 1, 1, 0.1))) for i in range(500)))
    assert store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM usage").fetchone()[0]) == 500
    assert store.commits < 500  # many units per transaction


async def test_a_failing_unit_fails_alone_and_atomically(store):
    sql = "INSERT INTO usage (ts, agent_id, model, provider, input_tokens, output_tokens, cost) VALUES (?,?,?,?,?,?,?)"
    good = store.submit([(sql, (1, "good", "m", "p", 1, 1, 0.1))])
    bad = store.submit([(sql, (2, "half", "m", "p", 1, 1, 0.1)), ("INSERT INTO nowhere VALUES (1)", ())])
    await good
    with pytest.raises(StoreError, match="nowhere"):
        await bad
    ids = store.read_sync(lambda c: [r[0] for r in c.execute("SELECT agent_id FROM usage")])
    assert ids == ["good"]  # the bad unit's first statement was rolled back with it


async def test_units_around_a_failing_one_commit_once(store):
    """A group runs without savepoints first and again with them when a unit fails: the units
    before and after the bad one are in the database exactly once, the bad one not at all."""
    sql = "INSERT INTO usage (ts, agent_id, model, provider, input_tokens, output_tokens, cost) VALUES (?,?,?,?,?,?,?)"
    units = [[(sql, (1, "before", "m", "p", 1, 1, 0.1))],
             [(sql, (2, "half", "m", "p", 1, 1, 0.1)), ("INSERT INTO nowhere VALUES (1)", ())],
             [(sql, (3, "after", "m", "p", 1, 1, 0.1)), (sql, (4, "after", "m", "p", 1, 1, 0.1))]]
    futures = [store.submit(u) for u in units]  # queued together: one group
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StoreError)
    ids = store.read_sync(lambda c: [r[0] for r in c.execute("SELECT agent_id FROM usage ORDER BY ts")])
    assert ids == ["before", "after", "after"]


async def test_second_store_on_the_same_database_is_refused(store, tmp_path):
    with pytest.raises(StoreError, match="in use by another j1mskyd"):
        Store(str(tmp_path / "j1msky.db")).open()
    await store.close()
    again = Store(str(tmp_path / "j1msky.db"))
    again.open()  # the lock went with the first store
    await again.close()


async def test_writes_after_close_are_refused(store):
    await store.close()
    with pytest.raises(StoreError):
        store.submit([("SELECT 1", ())])


@pytest.mark.parametrize("bad_value", ["b\ud800", 2**70])
async def test_an_unbindable_unit_fails_alone(store, bad_value):
    sql = "INSERT INTO usage (ts, agent_id, model, provider, input_tokens, output_tokens, cost) VALUES (?,?,?,?,?,?,?)"
    good = store.submit([(sql, (1, "good", "m", "p", 1, 1, 0.1))])
    bad = store.submit([(sql, (2, "bad", "m", "p", bad_value, 1, 0.1) if isinstance(bad_value, int)
                         else (2, bad_value, "m", "p", 1, 1, 0.1))])
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert results[0] is None and isinstance(results[1], StoreError)
    assert store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM usage").fetchone()[0]) == 1


async def test_close_waits_for_a_read_running_in_another_thread(tmp_path):
    """A read still running in the executor (a webhook worker's) keeps its connection until
    it ends: closing it underneath crashed the interpreter in sqlite3 on bookworm."""
    import threading
    s = Store(str(tmp_path / "j1msky.db"))
    s.open()
    inside, release = threading.Event(), threading.Event()

    def slow(conn):
        inside.set()
        release.wait(10)
        return conn.execute("SELECT COUNT(*) FROM agents").fetchone()[0]  # the connection is still open

    loop = asyncio.get_running_loop()
    reading = loop.run_in_executor(None, s.read_sync, slow)
    await loop.run_in_executor(None, inside.wait, 10)
    closing = asyncio.ensure_future(s.close())
    await asyncio.sleep(0.2)
    assert not closing.done()  # waits for the read
    release.set()
    assert await reading == 0
    await closing
    with pytest.raises(StoreError):
        s.read_sync(lambda c: 1)


def test_a_group_runs_as_runs_of_one_text_with_the_same_effect():
    """store._batched: a statement joins the latest run of its own table only when that run has
    its text (it then moves past other tables' statements alone), and a statement that may touch
    more than one table is a barrier nothing moves past."""
    from j1mskyd.store import _batched

    ins_a, upd_a = "INSERT INTO a (x) VALUES (?)", "UPDATE a SET x = ? WHERE x = ?"
    ins_b = "INSERT INTO b (y) VALUES (?)"
    purge = "DELETE FROM b WHERE y NOT IN (SELECT x FROM a)"
    units = [[(ins_a, (1,)), (ins_b, (1,))], [(ins_a, (2,)), (ins_b, (2,))], [(upd_a, (3, 1))],
             [(ins_a, (4,)), (ins_b, (4,))], [(purge, ())], [(ins_b, (5,))]]
    assert _batched(units) == [(ins_a, [(1,), (2,)]), (ins_b, [(1,), (2,), (4,)]), (upd_a, [(3, 1)]),
                               (ins_a, [(4,)]), (purge, [()]), (ins_b, [(5,)])]


async def test_the_schema_has_no_triggers_nor_foreign_keys(store):
    """What lets store._batched run one table's statements before another's: no statement on one
    table changes or checks another.  A migration that adds a trigger or a foreign key must make
    _batched treat the tables it links as one (or every statement on them as a barrier)."""
    tables = store.read_sync(lambda c: [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")])
    assert "agents" in tables and "audit_log" in tables
    assert store.read_sync(lambda c: c.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()) == []
    for table in tables:
        assert store.read_sync(lambda c: c.execute(f"PRAGMA foreign_key_list({table})").fetchall()) == [], table


_EVENT = "INSERT INTO events (id, ts, type, data, api_key) VALUES (?, ?, ?, ?, ?)"


def _traced(store: Store) -> list[str]:
    """The statements the store's write connection runs from now on (each run of one, as sqlite
    starts it), with their parameters expanded."""
    ran: list[str] = []
    assert store._wconn is not None
    store._wconn.set_trace_callback(ran.append)
    return ran


async def test_rows_of_one_insert_run_as_statements_of_several_rows_in_order(store):
    """store._insert_rows: 45 units of one event row each, queued together, are 45 rows in the
    order given, written by 4 statements (32 + 8 + 4 + 1 rows), not 45."""
    ran = _traced(store)
    futures = [store.submit([(_EVENT, (i, float(i), "agent.spawned", f"data {i}", None if i % 3 else "key_x"))])
               for i in range(1, 46)]  # queued together: one group
    await asyncio.gather(*futures)
    rows = store.read_sync(lambda c: [tuple(r) for r in c.execute("SELECT id, ts, type, data, api_key FROM events")])
    assert rows == [(i, float(i), "agent.spawned", f"data {i}", None if i % 3 else "key_x") for i in range(1, 46)]
    inserts = [sql for sql in ran if sql.startswith("INSERT INTO events")]
    assert [sql.count("), (") + 1 for sql in inserts] == [32, 8, 4, 1]


async def test_a_unit_failing_inside_a_statement_of_several_rows_fails_alone(store):
    """A duplicate id in the 20th of 40 rows: the group runs again unit by unit; that unit fails
    (rolled back whole, its second row too), the 39 others commit once."""
    units = [[(_EVENT, (i, float(i), "agent.spawned", "d", None))] for i in range(1, 41)]
    units[19] = [(_EVENT, (1000, 20.0, "agent.spawned", "half", None)), (_EVENT, (7, 20.0, "agent.spawned", "dup", None))]
    results = await asyncio.gather(*(store.submit(u) for u in units), return_exceptions=True)
    assert isinstance(results[19], StoreError) and "UNIQUE" in str(results[19])
    assert all(r is None for i, r in enumerate(results) if i != 19)
    ids = store.read_sync(lambda c: [r[0] for r in c.execute("SELECT id FROM events ORDER BY id")])
    assert ids == [i for i in range(1, 41) if i != 20]


def test_a_wide_insert_keeps_each_statement_under_999_parameters():
    """A 40-column row: at most 16 rows (640 parameters) a statement, whatever the run's length,
    and the same rows as one statement each would write."""
    conn = sqlite3.connect(":memory:")
    columns = [f"c{i}" for i in range(40)]
    conn.execute(f"CREATE TABLE wide ({', '.join(columns)})")
    sql = f"INSERT INTO wide ({', '.join(columns)}) VALUES ({', '.join('?' * 40)})"
    rows = [tuple(r * 100 + c for c in range(40)) for r in range(50)]
    sizes: list[int] = []

    def execute(text: str, params) -> None:
        sizes.append(len(params))
        conn.execute(text, params)

    S._insert_rows(execute, sql, S._values_row(sql) or "", rows)
    assert sizes == [640, 640, 640, 40 * 2]  # 16 + 16 + 16 + 2 rows
    assert conn.execute("SELECT * FROM wide ORDER BY rowid").fetchall() == rows


@pytest.mark.parametrize("sql", [
    "INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
    "INSERT INTO t (a) SELECT ? WHERE NOT EXISTS (SELECT 1 FROM t)",
    "INSERT INTO t (a, b) VALUES (?, 1)",
    "INSERT OR IGNORE INTO t (a) VALUES (?)",
    "UPDATE t SET a = ?",
])
def test_only_a_plain_insert_of_placeholders_is_written_several_rows_at_once(sql):
    assert S._values_row(sql) is None
