"""Dispatch on submit (AgentRuntime._admit_early): a chat call's provider request starts as soon
as its insert is *submitted*, so the upstream's time overlaps the insert's commit; the caller
still gets nothing before the insert is on disk, nothing else about the call is written before
it, and a call whose insert fails leaves no trace.  The store's commit is held back by a real
second sqlite writer (``BEGIN IMMEDIATE``), the full disk injected at the write connection as in
tests/test_store_full.py; real runtime, store, budget and loopback upstreams."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import Callable

import pytest

from j1mskyd.chat_request import ChatFailed
from j1mskyd.store import StoreFull
from tests.test_chat_service import app_client, chat, collect
from tests.test_runtime import two_provider_config
from tests.test_store_full import FullDisk
from tests.writelock import hold_writes, release


async def until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(3):  # a bound (under the store's 5 s busy timeout), not a timing claim
        while not predicate():
            await asyncio.sleep(0.005)
    assert predicate(), what


def rows(services, sql: str, *args) -> list[tuple]:
    return [tuple(r) for r in services.store.read_sync(lambda c: c.execute(sql, args).fetchall())]


def only_call(services):
    (agent,) = services.runtime.live.values()
    return agent


@pytest.mark.parametrize("stream", [False, True])
async def test_the_upstream_is_called_while_the_insert_commits_and_the_caller_waits_for_it(
        aiohttp_client, tmp_path, upstreams, stream):
    primary, secondary = upstreams
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    other = await hold_writes(services.store)
    try:
        starting = asyncio.ensure_future(services.chat.start(chat(stream=stream)))
        await until(lambda: len(primary.calls) == 1, "the upstream called before the insert committed")
        await until(lambda: only_call(services).status == "completed", "the answer in, its final write held")
        assert not starting.done()  # the caller gets nothing before its insert is on disk
        agent_id = only_call(services).agent_id
        assert rows(services, "SELECT COUNT(*) FROM agents WHERE agent_id = ?", agent_id) == [(0,)]
    finally:
        release(other)
    call = await asyncio.wait_for(starting, 10)
    assert call.agent_id == agent_id
    assert "".join(await asyncio.wait_for(collect(call), 10)) == "fake reply"  # the deltas kept for the caller
    outcome = await asyncio.wait_for(call.outcome(), 10)
    assert outcome.text == "fake reply" and outcome.provider == "primary"
    # On disk as a call dispatched after its commit would be: the final write carries the
    # `running` write's columns (none was written before the insert), one ledger row, the
    # events in order.
    (status, started_at, runs, completed_at), = rows(
        services, "SELECT status, started_at, runs, completed_at FROM agents WHERE agent_id = ?", agent_id)
    assert status == "completed" and runs == 1 and started_at is not None and completed_at >= started_at
    assert rows(services, "SELECT COUNT(*) FROM usage WHERE agent_id = ?", agent_id) == [(1,)]
    assert [t for (t,) in rows(services, "SELECT type FROM events ORDER BY id")] == ["agent.spawned",
                                                                                  "agent.completed"]
    assert not services.runtime.live and services.slots["primary"].active == 0
    assert services.budget.reserved == pytest.approx(0.0)


async def test_a_long_call_is_written_running_once_its_insert_commits(aiohttp_client, tmp_path, upstreams):
    """A call still running when its insert commits gets its `running` write then (so a crash
    counts the run, and /api/agents?status=running lists it), as a call dispatched after the
    commit would."""
    primary, secondary = upstreams
    primary.delay = 30.0  # ended below by a cancel
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    other = await hold_writes(services.store)
    try:
        starting = asyncio.ensure_future(services.chat.start(chat()))
        await until(lambda: len(primary.calls) == 1, "the upstream called before the insert committed")
    finally:
        release(other)
    call = await asyncio.wait_for(starting, 10)
    await until(lambda: rows(services, "SELECT status, runs FROM agents WHERE agent_id = ?", call.agent_id)
                == [("running", 1)], "the running write after the insert")
    await asyncio.wait_for(call.cancel(), 10)
    with pytest.raises(ChatFailed) as failed:
        await asyncio.wait_for(call.outcome(), 10)
    assert failed.value.kind == "cancelled"
    assert rows(services, "SELECT status, runs FROM agents WHERE agent_id = ?", call.agent_id) == [("cancelled", 1)]


@pytest.mark.parametrize("when", ["answered", "running"])
async def test_a_call_whose_insert_fails_is_dropped_without_a_trace(aiohttp_client, tmp_path, upstreams, when):
    """The insert finds the disk full (507 to the caller) after the call was dispatched: whether
    the upstream had answered (its final write held back) or was still working (its task is
    cancelled), nothing about the call is written, nobody is told, its slot and reservation
    are freed, and the next call runs."""
    primary, secondary = upstreams
    if when == "running":
        primary.delay = 30.0
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    events_before = rows(services, "SELECT COUNT(*) FROM events")
    # In place before the insert's group begins (on the connection it finds then), full once the call is out.
    disk = services.store._wconn = FullDisk(services.store._wconn)
    disk.full = False
    other = await hold_writes(services.store)
    try:
        starting = asyncio.ensure_future(services.chat.start(chat()))
        await until(lambda: len(primary.calls) == 1, "the upstream called before the insert committed")
        agent = only_call(services)
        if when == "answered":
            await until(lambda: agent.status == "completed", "the answer in, its final write held")
        else:
            assert agent.status == "running"
        disk.full = True
    finally:
        release(other)
    with pytest.raises(StoreFull):
        await asyncio.wait_for(starting, 10)
    await until(lambda: not services.runtime.live and services.slots["primary"].active == 0, "the call dropped")
    assert services.budget.reserved == pytest.approx(0.0) and services.runtime.running_count() == 0
    disk.full = False
    primary.delay = 0.0
    await until(lambda: services.store.full is None, "the store's probe to find space")
    outcome = await asyncio.wait_for((await services.chat.start(chat())).outcome(), 10)  # the next one runs
    assert outcome.text == "fake reply"
    assert rows(services, "SELECT COUNT(*) FROM agents WHERE agent_id = ?", agent.agent_id) == [(0,)]
    assert rows(services, "SELECT COUNT(*) FROM usage WHERE agent_id = ?", agent.agent_id) == [(0,)]
    assert rows(services, "SELECT COUNT(*) FROM agents") == [(1,)]  # the next call's own
    assert rows(services, "SELECT COUNT(*) FROM events") == [(events_before[0][0] + 2,)]  # its spawned, completed
    assert services.runtime.completed_total == 1 and services.runtime.failed_total == 0


async def test_a_live_reader_of_the_text_keeps_the_call_behind_its_commit(aiohttp_client, tmp_path, upstreams):
    """A live reader of ``agent.output`` (the dashboard, an event stream of everything) must see
    ``agent.spawned`` before the call's text, and ``agent.spawned`` is told only after the
    commit: such a call is dispatched after its commit, as every call was before."""
    primary, secondary = upstreams
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    reader = services.events.subscribe(["agent.output"])
    other = await hold_writes(services.store)
    try:
        starting = asyncio.ensure_future(services.chat.start(chat(stream=True)))
        await asyncio.sleep(0.3)  # time enough for an early dispatch to reach the upstream
        assert primary.calls == []
    finally:
        release(other)
        services.events.unsubscribe(reader)
    call = await asyncio.wait_for(starting, 10)
    assert (await asyncio.wait_for(call.outcome(), 10)).text == "fake reply"


async def test_a_caller_that_leaves_while_the_insert_commits_cancels_the_call(aiohttp_client, tmp_path, upstreams):
    """The caller (its client disconnected) is cancelled while the insert commits, after the call
    was dispatched: the call is cancelled as one whose client leaves later is, recorded as such,
    and its reservation is settled by its own end (not released early and then counted again)."""
    primary, secondary = upstreams
    primary.delay = 30.0  # ended by the cancel
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    other = await hold_writes(services.store)
    try:
        starting = asyncio.ensure_future(services.chat.start(chat()))
        await until(lambda: len(primary.calls) == 1, "the upstream called before the insert committed")
        agent = only_call(services)
        assert services.budget.reserved > 0
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert services.budget.reserved > 0  # still the running call's
    finally:
        release(other)
    await until(lambda: not services.runtime.live and services.slots["primary"].active == 0, "the call cancelled")
    assert rows(services, "SELECT status FROM agents WHERE agent_id = ?", agent.agent_id) == [("cancelled",)]
    assert services.budget.reserved == pytest.approx(0.0) and services.budget._live_per_key == {}


def record_units(services) -> list[list[str]]:
    """The SQL of each unit the store commits from now on, group by group."""
    seen: list[list[str]] = []
    commit = services.store._commit_batch

    def recorded(units):
        seen.extend([sql for sql, _ in unit] for unit in units if unit)
        return commit(units)

    services.store._commit_batch = recorded
    return seen


async def test_a_quick_call_that_is_not_streamed_commits_its_insert_with_its_end(
        aiohttp_client, tmp_path, upstreams, monkeypatch):
    """Its caller waits for the end anyway: the insert waits for it (runtime.DEFER_INSERT) and
    both commit as one unit, one transaction instead of two; on disk as two commits would leave it."""
    from j1mskyd import runtime as runtime_mod

    monkeypatch.setattr(runtime_mod, "DEFER_INSERT", 30.0)  # the call surely ends first
    primary, secondary = upstreams
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    units = record_units(services)
    call = await asyncio.wait_for(services.chat.start(chat()), 10)
    outcome = await asyncio.wait_for(call.outcome(), 10)
    assert outcome.text == "fake reply"
    ours = [u for u in units if any(sql.startswith(("INSERT INTO agents", "INSERT INTO usage", "UPDATE agents SET status"))
                                    for sql in u)]  # not the maintenance's purge, a unit of its own
    assert len(ours) == 1, units
    (unit,) = ours
    assert unit[0].startswith("INSERT INTO agents") and any(sql.startswith("INSERT INTO usage") for sql in unit)
    assert any(sql.startswith("UPDATE agents") for sql in unit)
    (status, started_at, runs), = rows(services, "SELECT status, started_at, runs FROM agents WHERE agent_id = ?",
                                       call.agent_id)
    assert status == "completed" and runs == 1 and started_at is not None
    assert [t for (t,) in rows(services, "SELECT type FROM events ORDER BY id")] == ["agent.spawned",
                                                                                  "agent.completed"]
    assert rows(services, "SELECT COUNT(*) FROM usage WHERE agent_id = ?", call.agent_id) == [(1,)]
    assert not services.runtime.live and services.runtime._done == {} and not services.runtime._deferred
    assert services.budget.reserved == pytest.approx(0.0)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_streamed_call_or_a_slow_one_has_its_row_on_disk_while_it_runs(
        aiohttp_client, tmp_path, upstreams, monkeypatch, stream):
    """A streamed call's insert waits only for the call's start (its first byte waits for the
    insert); a call that is not streamed has its insert committed without its end once
    DEFER_INSERT has passed."""
    from j1mskyd import runtime as runtime_mod

    monkeypatch.setattr(runtime_mod, "DEFER_INSERT", 0.05)
    primary, secondary = upstreams
    primary.delay = 30.0  # ended below by a cancel
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    starting = asyncio.ensure_future(services.chat.start(chat(stream=stream)))
    await until(lambda: len(primary.calls) == 1, "the upstream called")
    agent_id = only_call(services).agent_id
    await until(lambda: rows(services, "SELECT status FROM agents WHERE agent_id = ?", agent_id) == [("running",)],
                "the call's row on disk while it runs")
    call = await asyncio.wait_for(starting, 10)
    await asyncio.wait_for(call.cancel(), 10)
    assert rows(services, "SELECT status FROM agents WHERE agent_id = ?", agent_id) == [("cancelled",)]


def states_after_commits(services) -> list[list[tuple]]:
    """Each chat row's (agent_id, status, runs) as a crash right after each commit would leave them on disk,
    read by another connection in the writer's thread as soon as that commit has returned."""
    seen: list[list[tuple]] = []
    commit = services.store._commit_batch

    def observed(units):
        out = commit(units)
        with contextlib.closing(sqlite3.connect(services.store.path)) as other:
            seen.append([tuple(r) for r in other.execute("SELECT agent_id, status, runs FROM agents WHERE kind = 'chat'")])
        return out

    services.store._commit_batch = observed
    return seen


@contextlib.asynccontextmanager
async def dispatched_while_its_insert_waits(services, primary, monkeypatch, *, b_delay: float | None = None):
    """Call a holds the provider's one slot (streamed, its upstream slow); call b, not streamed,
    is queued behind it with its insert deferred.  With the writer busy with another group, b's
    time is up (its insert goes to the store alone, queued) and a reload gives the provider
    room, so b is dispatched while its insert waits for the writer (``b_delay``: its upstream's
    delay).  Yields (a's call, b's start, b's id) once b's run began, the writer still held."""
    from j1mskyd import runtime as runtime_mod

    runtime, slot, store = services.runtime, services.slots["primary"], services.store
    primary.delay = 30.0
    first = await asyncio.wait_for(services.chat.start(chat("a", stream=True)), 10)
    monkeypatch.setattr(runtime_mod, "DEFER_INSERT", 30.0)  # its time is made up by hand below
    second = asyncio.ensure_future(services.chat.start(chat("b")))
    await until(lambda: len(runtime._deferred) == 1, "b queued behind a, its insert deferred")
    (b_id,) = runtime._deferred
    other = await hold_writes(services.store)
    try:
        store.submit([("DELETE FROM ip_blocks WHERE ip = ?", ("127.0.0.9",))])
        await until(lambda: not store._pending, "the writer busy with another group")
        runtime._submit_insert(b_id)
        if b_delay is not None:
            primary.delay = b_delay
        slot.resize(dataclasses.replace(slot.settings, max_concurrency=2))
        runtime._schedule()
        await until(lambda: b_id in runtime._started, "b running, its running write queued behind its insert")
        yield first, second, b_id
    finally:
        release(other)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_slow_call_is_on_disk_running_from_its_insert(aiohttp_client, tmp_path, upstreams, monkeypatch,
                                                              stream):
    """Its upstream request left at admission; its insert commits with its `running` state in the
    same unit (not streamed: once DEFER_INSERT has passed; streamed: submitted at the call's
    start).  A crash after that commit finds the call running, so the next start bills the call
    it cut (a queued row is not billed); and the call costs two commits (insert, end), not three
    (insert, running, end)."""
    from j1mskyd import runtime as runtime_mod

    monkeypatch.setattr(runtime_mod, "DEFER_INSERT", 0.05)
    primary, secondary = upstreams
    primary.delay = 30.0  # ended below by a cancel
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    states = states_after_commits(services)
    units = record_units(services)
    starting = asyncio.ensure_future(services.chat.start(chat(stream=stream)))
    await until(lambda: len(primary.calls) == 1, "the upstream called")
    call = await asyncio.wait_for(starting, 10)  # its insert is on disk
    await asyncio.wait_for(services.store.flush(), 10)  # and a running write of its own, if any
    first = next(s for s in states if s)
    assert first == [(call.agent_id, "running", 1)], states  # never on disk as queued while its call was out
    # One statement stores it as started (agent_record.as_started): no update of its own.
    assert len([u for u in units if any(sql.startswith("INSERT INTO agents") for sql in u)]) == 1
    assert not any(sql.startswith("UPDATE agents SET status") for u in units for sql in u), units
    await asyncio.wait_for(call.cancel(), 10)
    (status, runs, started_at), = rows(services, "SELECT status, runs, started_at FROM agents WHERE agent_id = ?",
                                       call.agent_id)
    assert status == "cancelled" and runs == 1 and started_at is not None
    assert not services.runtime._late_start and not services.runtime._deferred


async def test_a_call_that_waited_for_a_slot_has_its_start_queued_right_behind_its_insert(
        aiohttp_client, tmp_path, upstreams, monkeypatch):
    """A call queued behind a busy provider has its insert go alone (it is not out: stored queued).
    When a slot takes it while that insert still waits for the writer, its `running` write is
    queued right behind it and they commit in one transaction: no commit leaves it queued on disk
    while its request is out.  (Had the writer taken the insert already, the start would commit in
    the next group, as a spawn's does: docs/runtime.md.)"""
    primary, secondary = upstreams
    client, services = await app_client(
        aiohttp_client, two_provider_config(tmp_path, primary, secondary, primary_limit=1))
    states = states_after_commits(services)
    async with dispatched_while_its_insert_waits(services, primary, monkeypatch) as (first, second, b_id):
        await until(lambda: len(primary.calls) == 2, "b's request out, its insert still waiting for the writer")
    call = await asyncio.wait_for(second, 10)
    await asyncio.wait_for(services.store.flush(), 10)
    b_states = [[r for r in s if r[0] == b_id] for s in states]
    first_b = next(s for s in b_states if s)
    assert first_b == [(b_id, "running", 1)], b_states
    await asyncio.wait_for(call.cancel(), 10)
    await asyncio.wait_for(first.cancel(), 10)


async def test_a_call_whose_final_write_fails_stays_running_on_disk_so_a_restart_bills_it(
        aiohttp_client, tmp_path, upstreams, monkeypatch):
    """A call that waited for a slot, dispatched and answered while its insert (stored queued)
    still waited for the writer: its final write takes back its `running` write and then fails
    (an I/O error).  The run is counted on disk all the same (the `running` write goes again):
    the row says running, which the next start bills as a cut call, not queued, which it would
    not bill although the call went out."""
    primary, secondary = upstreams
    client, services = await app_client(
        aiohttp_client, two_provider_config(tmp_path, primary, secondary, primary_limit=1))
    runtime, store = services.runtime, services.store
    commit = store._commit_batch
    failed: list[bool] = []

    def io_error_once(units):  # the unit of b's end (its ledger row) meets an I/O error
        if not failed and any(sql.startswith("INSERT INTO usage") for u in units for sql, _ in u):
            failed.append(True)
            raise sqlite3.OperationalError("disk I/O error")
        return commit(units)

    store._commit_batch = io_error_once
    async with dispatched_while_its_insert_waits(services, primary, monkeypatch, b_delay=0.0) as (first, second, b_id):
        b = runtime.live[b_id]
        await until(lambda: b.status == "completed", "b answered, its final write held behind its insert")
    call = await asyncio.wait_for(second, 10)
    assert (await asyncio.wait_for(call.outcome(), 10)).text == "fake reply"
    await asyncio.wait_for(store.flush(), 10)
    assert failed
    assert rows(services, "SELECT status, runs FROM agents WHERE agent_id = ?", b_id) == [("running", 1)]
    assert rows(services, "SELECT COUNT(*) FROM usage WHERE agent_id = ?", b_id) == [(0,)]
    await asyncio.wait_for(first.cancel(), 10)


async def test_a_dropped_call_leaves_no_running_write_waiting_out_a_full_disk(
        aiohttp_client, tmp_path, upstreams, monkeypatch):
    """A call that waited for a slot has its `running` write queued behind its insert; the group
    of both finds the disk full, the insert is refused (507) and the call dropped.  Its running
    write (an update of a row that does not exist) is taken back although the full disk put it
    back in the queue (Store.discard): nothing about the call waits in memory for space."""
    primary, secondary = upstreams
    client, services = await app_client(
        aiohttp_client, two_provider_config(tmp_path, primary, secondary, primary_limit=1))
    runtime, store = services.runtime, services.store
    async with dispatched_while_its_insert_waits(services, primary, monkeypatch) as (first, second, b_id):
        disk = store._wconn = FullDisk(store._wconn)  # the group of b's insert and running write meets it
    with pytest.raises(StoreFull):
        await asyncio.wait_for(second, 10)
    await until(lambda: b_id not in runtime.live, "b dropped")
    waiting = [sql for unit, _, _ in store._pending for sql, args in unit if b_id in args]
    assert waiting == []
    disk.full = False
    await until(lambda: store.full is None, "the store's probe to find space")
    await asyncio.wait_for(store.flush(), 10)
    assert rows(services, "SELECT COUNT(*) FROM agents WHERE agent_id = ?", b_id) == [(0,)]
    assert not runtime._started and not runtime._deferred and not runtime._unwritten
    await asyncio.wait_for(first.cancel(), 10)


async def test_a_quick_call_whose_one_unit_fails_is_dropped_without_a_trace(
        aiohttp_client, tmp_path, upstreams, monkeypatch):
    """The unit of insert and end finds the disk full: 507 (StoreFull) to the caller, nothing
    about the call on disk, nobody told, its slot and reservation freed, no waiter left."""
    from j1mskyd import runtime as runtime_mod

    monkeypatch.setattr(runtime_mod, "DEFER_INSERT", 30.0)
    primary, secondary = upstreams
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    events_before = rows(services, "SELECT COUNT(*) FROM events")
    audit_before = rows(services, "SELECT COUNT(*) FROM audit_log")
    told: list[str] = []
    services.runtime.listeners = (*services.runtime.listeners, lambda agent: told.append(agent.agent_id))
    spent_before = services.budget.spent_today
    disk = services.store._wconn = FullDisk(services.store._wconn)
    with pytest.raises(StoreFull):
        await asyncio.wait_for(services.chat.start(chat()), 10)
    assert len(primary.calls) == 1  # it was called, and answered, before the one unit failed
    await until(lambda: not services.runtime.live and services.slots["primary"].active == 0, "the call dropped")
    assert services.budget.reserved == pytest.approx(0.0) and services.runtime._done == {}
    # What the provider billed for the answer counts against the budget (in memory: no row).
    assert services.budget.spent_today > spent_before
    assert told == [] and services.runtime.completed_total == 0
    disk.full = False
    await until(lambda: services.store.full is None, "the store's probe to find space")
    assert rows(services, "SELECT COUNT(*) FROM agents") == [(0,)]
    assert rows(services, "SELECT COUNT(*) FROM usage") == [(0,)]
    assert rows(services, "SELECT COUNT(*) FROM events") == events_before
    assert rows(services, "SELECT COUNT(*) FROM audit_log") == audit_before


async def test_event_ids_commit_in_order_while_an_insert_waits(aiohttp_client, tmp_path, upstreams, monkeypatch):
    """A deferred insert's agent.spawned takes its id when the insert is submitted, not when the
    call began: ids commit in order, so a reader resuming after id N (Last-Event-ID) is sent every
    event that commits later.  Another call's events commit while the first call's insert waits."""
    from j1mskyd import runtime as runtime_mod

    monkeypatch.setattr(runtime_mod, "DEFER_INSERT", 30.0)
    primary, secondary = upstreams
    primary.delay = 0.3
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    reader = services.events.subscribe(["agent.spawned", "agent.completed"])
    try:
        slow = asyncio.ensure_future(services.chat.start(chat()))
        await until(lambda: len(primary.calls) == 1, "the slow call under way, its insert waiting")
        quick = await asyncio.wait_for(services.chat.start(chat(model="minimax-m2.5", stream=True)), 10)
        await asyncio.wait_for(quick.outcome(), 10)
        call = await asyncio.wait_for(slow, 10)
        await asyncio.wait_for(call.outcome(), 10)
        told = []
        while not reader.queue.empty():
            event = reader.queue.get_nowait()
            told.append((event.id, event.type, event.data["agent_id"]))
    finally:
        services.events.unsubscribe(reader)
    assert [agent for _, _, agent in told] == [quick.agent_id, quick.agent_id, call.agent_id, call.agent_id]
    assert [event_id for event_id, _, _ in told] == sorted(event_id for event_id, _, _ in told)  # in order
    assert [(i, t) for i, t in rows(services, "SELECT id, type FROM events WHERE type LIKE 'agent.%' ORDER BY id")] \
        == [(event_id, kind) for event_id, kind, _ in told]


async def test_a_queued_call_cancelled_while_its_insert_waits_leaves_no_trace_on_a_full_disk(
        aiohttp_client, tmp_path, upstreams, monkeypatch):
    """A call with no task of its own (queued behind the provider's one slot) is cancelled while
    its insert waits, and the unit of its insert and its end finds the disk full: nothing about
    it is written when space returns (no event, no audit entry), nobody is told."""
    from j1mskyd import runtime as runtime_mod

    primary, secondary = upstreams
    primary.delay = 30.0  # the first call holds the slot; ended below
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary,
                                                                          primary_limit=1))
    runtime = services.runtime
    first = await asyncio.wait_for(services.chat.start(chat(stream=True)), 10)
    await until(lambda: len(primary.calls) == 1, "the first call running")
    monkeypatch.setattr(runtime_mod, "DEFER_INSERT", 30.0)
    events_before = rows(services, "SELECT COUNT(*) FROM events")
    audit_before = rows(services, "SELECT COUNT(*) FROM audit_log")
    told: list[str] = []
    runtime.listeners = (*runtime.listeners, lambda agent: told.append(agent.agent_id))
    disk = services.store._wconn = FullDisk(services.store._wconn)
    second = asyncio.ensure_future(services.chat.start(chat()))
    await until(lambda: len(runtime.live) == 2, "the second call queued")
    (queued,) = [a for a in runtime.live.values() if a.agent_id != first.agent_id]
    assert queued.status == "queued" and queued.agent_id in runtime._deferred
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    await until(lambda: queued.agent_id not in runtime.live, "the second call gone")
    disk.full = False
    await until(lambda: services.store.full is None, "the store's probe to find space")
    await services.store.flush()
    assert rows(services, "SELECT COUNT(*) FROM agents WHERE agent_id = ?", queued.agent_id) == [(0,)]
    assert rows(services, "SELECT COUNT(*) FROM events") == events_before
    assert rows(services, "SELECT COUNT(*) FROM audit_log") == audit_before
    assert told == [] and runtime._done.get(queued.agent_id) is None
    await asyncio.wait_for(first.cancel(), 10)


async def test_a_deferred_unit_tells_its_events_in_the_step_its_group_tells_theirs(
        aiohttp_client, tmp_path, upstreams, monkeypatch):
    """The events of a deferred insert's unit are told (published to live readers) from the
    store's own future, as every other unit's are: in id order within a group.  A live reader
    forwards only ids above the last it sent, so an event told after a higher id is lost to it.
    Another unit with an event is queued in the same step as the call's unit, after it, as
    _write_final queues any agent's end."""
    from j1mskyd import runtime as runtime_mod

    monkeypatch.setattr(runtime_mod, "DEFER_INSERT", 30.0)
    primary, secondary = upstreams
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    store, events = services.store, services.events
    reader = events.subscribe(["agent.spawned", "agent.completed", "agent.failed"])
    submit = store.submit
    others: list[int] = []

    def submit_and_another(statements, *, fail_fast=False):
        statements = list(statements)
        unit = submit(statements, fail_fast=fail_fast)
        texts = [sql for sql, _ in statements]
        if not others and texts[0].startswith("INSERT INTO agents") and \
                any(sql.startswith("UPDATE agents") for sql in texts):
            event, stmts = events.statements("agent.failed", {"agent_id": "another"}, "anonymous")
            others.append(event.id)
            submit(stmts).add_done_callback(lambda f: events.published([event]))
        return unit

    monkeypatch.setattr(store, "submit", submit_and_another)
    try:
        call = await asyncio.wait_for(services.chat.start(chat()), 10)
        await asyncio.wait_for(call.outcome(), 10)
        await services.store.flush()
        told = []
        while not reader.queue.empty():
            told.append(reader.queue.get_nowait().id)
    finally:
        events.unsubscribe(reader)
    assert len(told) == 3 and others[0] in told
    assert told == sorted(told)


async def test_a_caller_cancelled_in_the_step_its_unit_commits_leaves_nothing_waiting(
        aiohttp_client, tmp_path, upstreams, monkeypatch):
    """The caller is cancelled (its client left) in the loop step where the unit of its insert
    and its end commits: the call's cancel finds it ended and out of the runtime, and returns;
    no waiter and no cancel task is left behind."""
    from j1mskyd import runtime as runtime_mod

    monkeypatch.setattr(runtime_mod, "DEFER_INSERT", 30.0)
    primary, secondary = upstreams
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary))
    store, runtime = services.store, services.runtime
    submit = store.submit
    starting: list[asyncio.Future] = []

    def submit_and_leave(statements, *, fail_fast=False):
        statements = list(statements)
        unit = submit(statements, fail_fast=fail_fast)
        texts = [sql for sql, _ in statements]
        if texts[0].startswith("INSERT INTO agents") and any(sql.startswith("UPDATE agents") for sql in texts):
            unit.add_done_callback(lambda f: starting[0].cancel())
        return unit

    monkeypatch.setattr(store, "submit", submit_and_leave)
    starting.append(asyncio.ensure_future(services.chat.start(chat())))
    with pytest.raises(asyncio.CancelledError):
        await starting[0]
    await until(lambda: not runtime._abandoned, "the cancel task ended")
    assert not runtime.live and runtime._done == {}
    assert rows(services, "SELECT status FROM agents") == [("completed",)]


async def two_calls_behind_one_slot(aiohttp_client, tmp_path, upstreams, monkeypatch):
    """A daemon whose primary provider has one slot, held by a streamed call (its insert on
    disk); calls after it queue with their inserts deferred (DEFER_INSERT made long)."""
    from j1mskyd import runtime as runtime_mod

    primary, secondary = upstreams
    primary.delay = 30.0
    client, services = await app_client(aiohttp_client, two_provider_config(tmp_path, primary, secondary,
                                                                          primary_limit=1))
    first = await asyncio.wait_for(services.chat.start(chat(stream=True)), 10)
    await until(lambda: len(primary.calls) == 1, "the first call running")
    monkeypatch.setattr(runtime_mod, "DEFER_INSERT", 30.0)
    return services, first


async def test_a_stop_does_not_end_again_a_queued_call_dropped_meanwhile(aiohttp_client, tmp_path, upstreams,
                                                                         monkeypatch):
    """The stop ends queued calls one by one.  Ending the first submits its unit; the second's
    insert goes in the same group (its time is up); the disk is full, both are refused and
    dropped.  The stop, on to the second, must not write an end for a call with no row."""
    services, first = await two_calls_behind_one_slot(aiohttp_client, tmp_path, upstreams, monkeypatch)
    store, runtime = services.store, services.runtime
    starting = [asyncio.ensure_future(services.chat.start(chat(text))) for text in ("a", "b")]
    await until(lambda: len(runtime._deferred) == 2, "both queued, their inserts waiting")
    a_id, b_id = list(runtime._deferred)
    submit = store.submit
    disk: list[FullDisk] = []

    def submit_and_fill(statements, *, fail_fast=False):
        statements = list(statements)
        unit = submit(statements, fail_fast=fail_fast)
        if not disk and statements[0][0].startswith("INSERT INTO agents") and statements[0][1][0] == a_id:
            disk.append(FullDisk(store._wconn))
            store._wconn = disk[0]
            runtime._submit_insert(b_id)  # its timer, in the same step
        return unit

    monkeypatch.setattr(store, "submit", submit_and_fill)
    stopping = asyncio.ensure_future(runtime.stop())
    for start in starting:
        with pytest.raises(StoreFull):
            await asyncio.wait_for(start, 10)
    await until(lambda: a_id not in runtime.live and b_id not in runtime.live, "both dropped")
    disk[0].full = False
    await asyncio.wait_for(stopping, 10)
    await store.flush()
    for agent_id in (a_id, b_id):
        assert rows(services, "SELECT COUNT(*) FROM agents WHERE agent_id = ?", agent_id) == [(0,)]
        assert rows(services, "SELECT COUNT(*) FROM audit_log WHERE resource_id = ?", agent_id) == [(0,)]
    # The first call, interrupted by the stop (its row on disk), has the one agent.failed.
    assert rows(services, "SELECT COUNT(*) FROM events WHERE type = 'agent.failed'") == [(1,)]
    assert runtime._done == {} and not runtime._abandoned


async def test_a_caller_leaving_as_its_insert_is_refused_leaves_no_end_and_no_cancel_waiting(
        aiohttp_client, tmp_path, upstreams, monkeypatch):
    """The disk is known full; the caller leaves in the step its queued call's insert is
    refused (the call is dropped, never having run): the cancel that its leaving starts finds
    the call gone, writes nothing and ends."""
    services, first = await two_calls_behind_one_slot(aiohttp_client, tmp_path, upstreams, monkeypatch)
    store, runtime = services.store, services.runtime
    starting = asyncio.ensure_future(services.chat.start(chat("b")))
    await until(lambda: len(runtime._deferred) == 1, "queued, its insert waiting")
    (b_id,) = list(runtime._deferred)
    events_before = rows(services, "SELECT COUNT(*) FROM events")
    disk = store._wconn = FullDisk(store._wconn)
    with pytest.raises(StoreFull):  # the store learns that the disk is full
        await asyncio.wait_for(store.submit([("DELETE FROM events WHERE 0", ())], fail_fast=True), 10)
    starting.cancel()
    runtime._submit_insert(b_id)  # its time is up, in the same step
    with pytest.raises(asyncio.CancelledError):
        await starting
    await until(lambda: b_id not in runtime.live and not runtime._abandoned, "dropped, the cancel ended")
    assert b_id not in runtime._done  # (the first call, still running, has its waiter)
    disk.full = False
    await until(lambda: store.full is None, "the store's probe to find space")
    await store.flush()
    assert rows(services, "SELECT COUNT(*) FROM agents WHERE agent_id = ?", b_id) == [(0,)]
    assert rows(services, "SELECT COUNT(*) FROM events") == events_before
    await asyncio.wait_for(first.cancel(), 10)


async def test_a_reader_of_the_text_that_comes_after_admission_sees_the_spawn_first(
        aiohttp_client, tmp_path, upstreams, monkeypatch):
    """A reader of agent.output subscribes while a call that is not streamed waits in the queue
    (its insert deferred): when the call starts, streamed for that reader, its insert goes to the
    store at once, and the reader is told agent.spawned before the first agent.output."""
    services, first = await two_calls_behind_one_slot(aiohttp_client, tmp_path, upstreams, monkeypatch)
    primary = upstreams[0]
    runtime = services.runtime
    starting = asyncio.ensure_future(services.chat.start(chat()))
    await until(lambda: len(runtime._deferred) == 1, "queued, its insert waiting")
    (agent_id,) = list(runtime._deferred)
    reader = services.events.subscribe(["agent.spawned", "agent.output"])
    try:
        primary.delay, primary.chunk_delay = 0.05, 0.01
        await asyncio.wait_for(first.cancel(), 10)  # its slot goes to the queued call
        call = await asyncio.wait_for(starting, 10)
        await asyncio.wait_for(call.outcome(), 10)
        told = []
        while not reader.queue.empty():
            event = reader.queue.get_nowait()
            if event.data.get("agent_id") == agent_id:
                told.append(event.type)
    finally:
        services.events.unsubscribe(reader)
    assert told[0] == "agent.spawned" and "agent.output" in told, told
