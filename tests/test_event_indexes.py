"""The events table's indexes: an agent's events are read through the time window of its life
(events_ts), not by reading every event its key ever had (the dropped events_key, which every
commit that stored events also had to write)."""

from __future__ import annotations

import sqlite3

from j1mskyd import store as S
from j1mskyd.events import AGENT_EVENTS_SQL, agent_event_ids
from j1mskyd.store import Store


def _indexes(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'events'")}


async def test_an_agent_s_events_are_read_through_the_time_window(tmp_path):
    s = Store(str(tmp_path / "j1msky.db"), encrypt=False)
    s.open()
    try:
        assert s.read_sync(_indexes) == {"events_ts"}
        plan = s.read_sync(lambda c: c.execute("EXPLAIN QUERY PLAN " + AGENT_EVENTS_SQL, ("k", 0, 1)).fetchall())
        steps = [row[3] for row in plan]  # the window's few rows are then put in id order
        assert steps[0] == "SEARCH events USING INDEX events_ts (ts>? AND ts<?)", steps
        assert not any(step.startswith("SCAN") for step in steps), steps
        # many events of the key before the agent's life, a few in it (its own and another agent's)
        await s.write(*[("INSERT INTO events (ts, type, data, api_key) VALUES (?, 'agent.completed', ?, 'k')",
                         (float(t), '{"agent_id": "old"}')) for t in range(500)])
        await s.write(("INSERT INTO events (ts, type, data, api_key) VALUES "
                       "(1000, 'agent.spawned', '{\"agent_id\": \"a\"}', 'k'), "
                       "(1001, 'agent.spawned', '{\"agent_id\": \"b\"}', 'k'), "
                       "(1002, 'agent.completed', '{\"agent_id\": \"a\"}', 'k'), "
                       "(1003, 'agent.completed', '{\"agent_id\": \"a\"}', 'other')", ()))
        ids = s.read_sync(lambda c: agent_event_ids(c, "a", "k", 999.0, 1010.0, None))
        assert ids == [501, 503]
    finally:
        await s.close()


async def test_a_database_from_before_loses_events_key(tmp_path):
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path, isolation_level=None)
    for migration in S.MIGRATIONS[:-1]:
        for stmt in S._statements(migration):
            conn.execute(stmt)
    conn.execute(f"PRAGMA user_version={S.SCHEMA_VERSION - 1}")
    assert "events_key" in _indexes(conn)
    conn.close()
    s = Store(path, encrypt=False)
    s.open()
    try:
        assert s.read_sync(_indexes) == {"events_ts"}
    finally:
        await s.close()
