"""The `running` write of an agent (issue 13, CPU per agent): it bounds re-runs after a crash
(restart_attempts), so it reaches the disk while a call goes on; but a call that ends before
the write has left the store's queue has its final write carry the same columns instead, and
the `running` write is taken back (Store.withdraw): one statement fewer, the same disk states."""

from __future__ import annotations

import asyncio
import gc

from j1mskyd.agent_record import KIND_AGENT, Agent, insert, update
from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.store import Store
from j1mskyd.providers import ProviderSettings
from tests.conftest import make_config
from tests.test_plugin_api import config_with, dropin
from tests.test_runtime import spawn, two_provider_config
from tests.writelock import hold_writes, release

_SETTING = "INSERT INTO settings (name, value, updated_at) VALUES (?, '', 0)"


def _names(store: Store) -> list[str]:
    return store.read_sync(lambda c: [r[0] for r in c.execute("SELECT name FROM settings WHERE value = '' ORDER BY name")])


async def test_a_withdrawn_unit_writes_nothing_and_its_future_still_resolves(store):
    kept = store.queue([(_SETTING, ("kept",))])
    dropped = store.queue([(_SETTING, ("dropped",))])
    assert store.withdraw(dropped)  # still queued: the flusher has not started
    await asyncio.gather(kept.future, dropped.future)
    assert _names(store) == ["kept"]


async def test_a_unit_the_flusher_took_is_not_withdrawn(store):
    queued = store.queue([(_SETTING, ("written",))])
    await asyncio.sleep(0)  # the flusher takes the queue (the commit runs in a thread)
    assert not store.withdraw(queued)
    await queued.future
    assert not store.withdraw(queued)  # committed: nothing to take back
    assert _names(store) == ["written"]


async def test_a_unit_kept_while_its_agent_runs_does_not_keep_its_group_with_it(store):
    """The runtime keeps an agent's running write (its Queued) for as long as the agent runs,
    to take it back at the end; the units committed with it (other agents' inserts with their
    sealed tasks, audit rows) must not live that long too: ~2 KB an agent with 10,000 running."""
    mine = store.queue([(_SETTING, ("mine",))])
    others = [store.submit([(_SETTING, (f"other-{i}",))]) for i in range(3)]
    await asyncio.gather(mine.future, *others)
    held = gc.get_referents(mine)  # its statements, its future, where it was queued
    assert not any(isinstance(r, list) and r is not mine.statements for r in held)  # no list of the group
    assert not store.withdraw(mine) and not store.discard(mine)
    assert _names(store) == ["mine", "other-0", "other-1", "other-2"]


async def test_a_slow_call_is_running_on_disk_with_its_run_counted(aiohttp_client, tmp_path, upstreams):
    """The guarantee the `running` write is for: while the upstream holds the call, a crash
    would find the agent running with this run counted (recovery bounds re-runs with it)."""
    primary, secondary = upstreams
    primary.delay = 30.0
    client = await aiohttp_client(build_app(two_provider_config(tmp_path, primary, secondary)))
    store = client.server.app[SERVICES].store
    agent_id = await spawn(client)
    await primary.wait_calls(1)
    await store.flush()
    row = await store.read(lambda c: c.execute("SELECT status, runs, started_at FROM agents WHERE agent_id = ?",
                                               (agent_id,)).fetchone())
    assert (row["status"], row["runs"]) == ("running", 1) and row["started_at"] is not None


async def _held_store_run(runtime, store, agent) -> None:
    """Run ``agent`` (queued on disk) while another writer holds the database, so that its
    `running` write is still queued when its call ends; then let the store go."""
    other = await hold_writes(store)
    try:
        blocker = store.submit([(_SETTING, ("blocker",))])
        await asyncio.sleep(0)  # the writer takes the blocker and waits for the database
        await runtime.recover([agent], {})
        for _ in range(300):  # until its call ended (the provider answers at once)
            if agent.status not in ("queued", "running"):
                break
            await asyncio.sleep(0.01)
    finally:
        release(other)
    await blocker
    if agent.agent_id in runtime.live:
        await runtime.wait(agent.agent_id)
    await store.flush()


# A provider whose answer cannot be stored: a token count past sqlite's 64-bit integers.
UNSTORABLE_PLUGIN = '''
J1MSKY_PLUGIN_API = 1
from j1mskyd.providers import CompletionResult

class Unstorable:
    def __init__(self, settings, session):
        pass

    async def complete(self, request):
        return CompletionResult(text="ok", input_tokens=2**70, output_tokens=1)

def register(registry):
    registry.add_provider("unstorable", Unstorable)
'''


async def test_a_final_write_that_fails_leaves_the_run_counted_as_before(aiohttp_client, tmp_path):
    """The `running` write was taken back and the final write then failed (its unit alone, a
    value sqlite cannot hold): the run is written after all, so the row is `running` with this
    run counted, as when the two were separate (recovery bounds its re-runs)."""
    plugdir = dropin(tmp_path, "unstorable", UNSTORABLE_PLUGIN)
    cfg = config_with(tmp_path, plugdir, {"bad": ProviderSettings(name="bad", plugin="unstorable")},
                      every_model="bad")
    client = await aiohttp_client(build_app(cfg))
    services = client.server.app[SERVICES]
    store, runtime = services.store, services.runtime
    agent = Agent(agent_id="subagent_1_0003", kind=KIND_AGENT, model="k2p5", task="a quick one",
                  priority="normal", timeout=300, status="queued", estimated_cost=0.0)
    await store.write(insert(agent, store.cipher))
    await _held_store_run(runtime, store, agent)
    row = await store.read(lambda c: c.execute("SELECT status, runs, started_at FROM agents WHERE agent_id = ?",
                                               (agent.agent_id,)).fetchone())
    assert (row["status"], row["runs"]) == ("running", 1) and row["started_at"] is not None


async def queued_agent(aiohttp_client, tmp_path, agent_id: str):
    """A daemon on the offline provider, and a queued agent in its database as a start finds
    one (recover() runs it without a write awaited first, so the test decides what the store's
    writer is doing when it starts): (store, runtime, agent)."""
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    services = client.server.app[SERVICES]
    store = services.store
    agent = Agent(agent_id=agent_id, kind=KIND_AGENT, model="k2p5", task="a quick one",
                  priority="normal", timeout=300, status="queued", estimated_cost=0.0)
    await store.write(insert(agent, store.cipher))
    return store, services.runtime, agent


async def test_a_call_that_ends_before_its_running_write_left_the_queue_costs_one_update(aiohttp_client, tmp_path):
    store, runtime, agent = await queued_agent(aiohttp_client, tmp_path, "subagent_1_0001")
    traced: list[str] = []
    store._wconn.set_trace_callback(traced.append)
    await _held_store_run(runtime, store, agent)
    assert agent.status == "completed"
    store._wconn.set_trace_callback(None)
    updates = [s for s in traced if s.startswith("UPDATE agents") and f"'{agent.agent_id}'" in s]
    assert not [s for s in updates if "status = 'running'" in s], updates  # the `running` write was taken back
    final = [s for s in updates if "status = 'completed'" in s]
    assert len(final) == 1 and "started_at" in final[0] and "runs = 1" in final[0]  # ... and the final one carries it
    row = await store.read(lambda c: c.execute("SELECT status, runs, started_at FROM agents WHERE agent_id = ?",
                                               (agent.agent_id,)).fetchone())
    assert (row["status"], row["runs"]) == ("completed", 1) and row["started_at"] is not None


def test_an_update_reads_its_fields_in_one_call_and_seals_only_the_sealed_ones():
    """agent_record.update's plan per field set (SQL, one getter, sealed positions) gives
    what the statement always held: the values in order, sealed where the column is, agent_id last."""
    from j1mskyd.crypto import DataCipher
    cipher = DataCipher(b"k" * 32)
    agent = Agent(agent_id="subagent_1_0002", kind=KIND_AGENT, model="k2p5", task="t", priority="normal",
                  timeout=30, estimated_cost=0.0, status="completed", result="the answer", runs=2)
    sql, values = update(agent, "status", "result", "runs", "tool_calls", cipher=cipher)
    assert sql == "UPDATE agents SET status = ?, result = ?, runs = ?, tool_calls = ? WHERE agent_id = ?"
    assert values[0] == "completed" and values[2] == 2 and values[3] is None and values[4] == agent.agent_id
    assert values[1] != "the answer" and cipher.decrypt(values[1], f"{agent.agent_id}/result") == "the answer"
    assert update(agent, "status", "result") == (
        "UPDATE agents SET status = ?, result = ? WHERE agent_id = ?", ("completed", "the answer", agent.agent_id))
