"""What the spawn path was made cheaper by (issue 13, CPU per agent) keeps its guarantees:
nonces read in blocks stay unique (also across a fork), and the webhook outbox's worker is
woken for events that wrote deliveries, not for every event."""

from __future__ import annotations

import asyncio
import os

from j1mskyd import crypto
from j1mskyd.crypto import PREFIX, DataCipher
from j1mskyd.events import EventLog


def _nonce(sealed: str) -> bytes:
    import base64
    return base64.b64decode(sealed[len(PREFIX):])[:12]


def test_nonces_are_unique_across_blocks_and_every_value_opens():
    cipher = DataCipher(b"k" * 32)
    count = crypto._Nonces.BLOCK * 3 + 7  # several refills of the pool
    sealed = [cipher.encrypt(f"text {i}", f"ctx/{i}") for i in range(count)]
    assert len({_nonce(s) for s in sealed}) == count
    assert [cipher.decrypt(s, f"ctx/{i}") for i, s in enumerate(sealed)] == [f"text {i}" for i in range(count)]


def test_a_forked_child_never_uses_its_parents_next_nonces():
    cipher = DataCipher(b"k" * 32)
    cipher.encrypt("fill the pool", "ctx")  # the parent holds drawn, unused nonces now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the nonces it uses, and leave at once
        try:
            os.write(write, b"".join(_nonce(cipher.encrypt("child", "ctx")) for _ in range(8)))
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 4096):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = {_nonce(cipher.encrypt("parent", "ctx")) for _ in range(8)}
    child_nonces = {child[i:i + 12] for i in range(0, len(child), 12)}
    assert len(child_nonces) == 8
    assert not parent & child_nonces


class _Store:
    cipher = None


class _Outbox:
    """An outbox (events.Outbox) that wants an event for the webhooks in ``wanted``."""

    def __init__(self) -> None:
        self.wanted: list[str] = []
        self.wakes = 0

    def route(self, type_, data, owner=None):
        return list(self.wanted)

    def delivery_rows(self, webhook_ids, event_id, ts):
        return [("INSERT INTO deliveries VALUES (?)", (w,)) for w in webhook_ids]

    def wake(self):
        self.wakes += 1

    def purge_settled(self, cutoff):
        return [], "SELECT NULL"


def test_the_outbox_is_woken_only_for_events_that_wrote_deliveries():
    log = EventLog(_Store())
    outbox = _Outbox()
    log.attach_outbox(outbox)
    quiet, stmts = log.statements("agent.completed", {"agent_id": "a"})
    assert len(stmts) == 1  # the event row only
    log.published([quiet])
    assert outbox.wakes == 0  # no webhook wants it: the worker has nothing new to read
    outbox.wanted.append("wh_1")
    loud, stmts = log.statements("agent.completed", {"agent_id": "b"})
    assert len(stmts) == 2  # the event and its delivery row
    log.published([quiet, loud])
    assert outbox.wakes == 1


# -- the final write needs no task of its own (runtime._finish) ------------------------------

async def test_a_finish_goes_on_to_its_end_when_the_run_is_cancelled_while_its_write_waits(aiohttp_client,
                                                                                          tmp_path):
    """The runtime's _finish used to run in a task of its own (asyncio.shield) so that a stop
    or cancel arriving while the final write waits could not lose the outcome.  It now runs its
    after-the-write steps from the write's future instead: the run task cancelled at that moment
    still leaves the agent completed on disk with its ledger row, told to whoever waits for it,
    out of the live set, and counted."""
    from tests.test_running_write import queued_agent
    from tests.writelock import hold_writes, release

    store, runtime, agent = await queued_agent(aiohttp_client, tmp_path, "subagent_1_0007")
    completed_before = runtime.completed_total
    other = await hold_writes(store)  # the final write waits behind this writer
    try:
        blocker = store.submit([("INSERT INTO settings (name, value, updated_at) VALUES ('blocker', '', 0)", ())])
        await asyncio.sleep(0)  # the store's writer takes the blocker and waits for the database
        await runtime.recover([agent], {})
        done = runtime.wait(agent.agent_id)
        for _ in range(500):  # until its outcome is known and its final write queued
            if agent.status == "completed":
                break
            await asyncio.sleep(0.01)
        assert agent.status == "completed" and not done.done()
        task = runtime._tasks[agent.agent_id]
        task.cancel()  # as a stop would, while the final write waits
        await asyncio.gather(task, return_exceptions=True)
        assert not done.done()  # nothing is told before the write commits
    finally:
        release(other)
    await blocker
    assert (await asyncio.wait_for(done, 30)) is agent
    assert agent.agent_id not in runtime.live and runtime.completed_total == completed_before + 1
    row = await store.read(lambda c: c.execute("SELECT status, result FROM agents WHERE agent_id = ?",
                                               (agent.agent_id,)).fetchone())
    assert row["status"] == "completed"
    ledger = await store.read(lambda c: c.execute("SELECT COUNT(*) FROM usage WHERE agent_id = ?",
                                                  (agent.agent_id,)).fetchone()[0])
    assert ledger == 1


# -- the store's own writer thread (store._Writer) -------------------------------------------

async def test_a_write_commits_while_slow_reads_hold_every_executor_thread(store):
    """Commits run on the store's own thread, not in the loop's default executor: reads that
    hold all of the executor's threads (a slow listing, the webhook worker's reads) do not make
    a write wait for them.  (Through the executor, it queued behind them.)"""
    import threading

    release = threading.Event()
    slow = [asyncio.ensure_future(store.read(lambda conn: release.wait(60))) for _ in range(64)]  # > the pool
    await asyncio.sleep(0)  # they are handed to the executor
    try:
        await asyncio.wait_for(store.write(("INSERT INTO settings (name, value, updated_at) VALUES ('w', '', 0)", ())),
                               timeout=30)  # a bound, not a measure: it commits in ms
    finally:
        release.set()
        await asyncio.gather(*slow)
    assert store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM settings WHERE name = 'w'").fetchone()[0]) == 1


async def test_an_agents_end_and_its_audit_entry_commit_in_one_unit(aiohttp_client, tmp_path):
    """The audit entry of an agent's end is written in the unit of that end (AgentRuntime's
    recorders), not in a unit of its own after it: both commit together or not at all."""
    from j1mskyd.api.common import SERVICES
    from j1mskyd.app import build_app
    from tests.conftest import make_config, wait_status
    from tests.test_runtime import spawn

    client = await aiohttp_client(build_app(make_config(tmp_path)))
    store = client.server.app[SERVICES].store
    units: list[list[str]] = []
    submit = store.submit

    def recording(statements, **kw):
        statements = list(statements)
        units.append([sql for sql, _ in statements])
        return submit(statements, **kw)

    store.submit = recording
    agent_id = await spawn(client)
    assert (await wait_status(client, agent_id))["status"] == "completed"
    await store.flush()
    audited = [u for u in units if any(sql.startswith("INSERT INTO audit_log") for sql in u)]
    final = [u for u in units if any(sql.startswith("INSERT INTO usage") for sql in u)]
    assert len(final) == 1
    assert final[0] in audited  # agent.complete, with the final state and its ledger row
    inserted = [u for u in units if any(sql.startswith("INSERT INTO agents") for sql in u)]
    assert len(inserted) == 1 and inserted[0] in audited  # agent.spawn, with the agent's row
    assert len(audited) == 2  # no unit of an audit entry alone
    rows = await store.read(lambda c: c.execute("SELECT event FROM audit_log WHERE resource_id = ? ORDER BY id",
                                                (agent_id,)).fetchall())
    assert [r[0] for r in rows] == ["agent.spawn", "agent.complete"]


async def test_batch_and_team_spawns_audit_each_top_level_agent_in_the_spawns_unit(aiohttp_client, tmp_path):
    """A batch's agents and a team's lead each get their agent.spawn entry (the members ride on
    their lead's, as before), in the transaction that stores them, with what the answer said."""
    from j1mskyd.api.common import SERVICES
    from j1mskyd.app import build_app
    from tests.conftest import make_config

    client = await aiohttp_client(build_app(make_config(tmp_path)))
    services = client.server.app[SERVICES]
    batch = await (await client.post("/api/spawn-batch", json={"agents": [
        {"task": "mail bob@example.com first", "model": "k2p5"}, {"task": "second", "model": "sonnet"}]})).json()
    team = await (await client.post("/api/spawn-team", json={"team": "team_coding", "task": "together"})).json()
    await services.store.flush()
    audited = {}
    for (event, resource_id) in await services.store.read(lambda c: c.execute(
            "SELECT event, resource_id FROM audit_log WHERE event = 'agent.spawn' ORDER BY id").fetchall()):
        audited[resource_id] = event
    entries = await services.audit.query({"event": "agent.spawn"})
    details = {e["resource"]["id"]: e["details"] for e in entries["data"]}
    ids = [a["agent_id"] for a in batch["agents"]] + [team["agent_id"]]
    assert sorted(audited) == sorted(ids)  # not the members
    assert details[ids[0]] == {"model": "k2p5", "team": None, "task_preview": "mail [email] first",
                               "estimated_cost": batch["agents"][0]["estimated_cost"]}
    assert details[ids[2]] == {"model": "team_coding", "team": "team_coding", "task_preview": "together",
                               "estimated_cost": team["estimated_cost"]}
