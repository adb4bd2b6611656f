"""The agent record (j1mskyd/agent_record.py): a typed dataclass whose fields are the agents table's columns."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

from j1mskyd import agent_record
from j1mskyd.agent_record import (
    ANONYMOUS, COLUMNS, COMPLETED, FAILED, KIND_AGENT, KIND_CHAT, KIND_MEMBER, KIND_TEAM, LIVE, PRIORITIES, SPAWNING,
    STATUSES, TERMINAL, Agent, Kind, Priority, Status, as_started, from_row, insert, update,
)
import pytest

from j1mskyd.agent_record import QUEUED, RUNNING
from j1mskyd.store import Store


def _agent(**overrides: typing.Any) -> Agent:
    fields: dict[str, typing.Any] = dict(
        agent_id="subagent_1764000000_0001", kind=KIND_MEMBER, parent_id="subagent_1764000000_0000",
        team="research", model="k2p5", served_model="k2p5-mini", provider="moonshot", task="summarise this",
        priority="high", timeout=30.0, status=COMPLETED, error=None, result="a summary",
        estimated_cost=0.25, cost=0.125, input_tokens=12, output_tokens=34, runs=1, attempts=2,
        created_at=1_764_000_000.0, started_at=1_764_000_001.0, completed_at=1_764_000_002.0,
        api_key="key_abc", retention_days=7.0, purged_at=None)
    fields.update(overrides)
    return Agent(**fields)


async def test_columns_are_the_agents_table_in_its_order(tmp_path):
    """A field added to Agent without its migration (or a column without its field) fails here."""
    store = Store(str(tmp_path / "j1msky.db"))
    store.open()
    try:
        table = await store.read(lambda c: [r[1] for r in c.execute("PRAGMA table_info(agents)")])
    finally:
        await store.close()
    assert COLUMNS == tuple(table)


async def test_a_row_reads_back_as_the_agent_that_wrote_it_sealed_or_not(tmp_path):
    for encrypt in (True, False):
        store = Store(str(tmp_path / f"j1msky-{encrypt}.db"), encrypt=encrypt)
        store.open()
        try:
            agent = _agent()
            await store.write(insert(agent, store.cipher))
            agent.status, agent.error = FAILED, "boom"
            await store.write(update(agent, "status", "error", cipher=store.cipher))
            stored = await store.read(lambda c: c.execute("SELECT * FROM agents").fetchone())
            sealed_task = await store.read(lambda c: c.execute("SELECT task FROM agents").fetchone()[0])
            back = from_row(stored, store.cipher)
        finally:
            await store.close()
        assert (sealed_task != agent.task) is encrypt
        assert [getattr(back, c) for c in COLUMNS] == [getattr(agent, c) for c in COLUMNS]
        # What lives in memory only starts afresh on a row read back.
        assert (back.members, back.reserved, back.billed) == ([], None, 0.0)


async def test_an_insert_as_started_stores_the_agent_as_it_is_once_started_and_nothing_else(tmp_path):
    """agent_record.as_started: an insert made while the agent was queued, its start (status,
    started_at, runs) set from the agent as it is now; every other value as the insert had it,
    the sealed task included.  Anything but an agent's insert is refused."""
    store = Store(str(tmp_path / "j1msky.db"))
    store.open()
    try:
        agent = _agent(status=QUEUED, started_at=None, runs=0, result=None, completed_at=None, kind=KIND_CHAT,
                       parent_id=None)
        queued = insert(agent, store.cipher)
        agent.status, agent.started_at, agent.runs, agent.task = RUNNING, 1_764_000_005.0, 1, "changed after"
        await store.write(as_started(queued, agent))
        back = from_row(await store.read(lambda c: c.execute("SELECT * FROM agents").fetchone()), store.cipher)
    finally:
        await store.close()
    assert (back.status, back.started_at, back.runs) == (RUNNING, 1_764_000_005.0, 1)
    assert back.task == "summarise this"  # what the insert sealed, not what the agent holds now
    assert [getattr(back, c) for c in COLUMNS if c not in ("status", "started_at", "runs", "task")] == \
        [getattr(agent, c) for c in COLUMNS if c not in ("status", "started_at", "runs", "task")]
    with pytest.raises(ValueError):
        as_started(update(agent, "status"), agent)


def test_defaults_of_a_new_agent():
    agent = Agent(agent_id="a", kind=KIND_AGENT, model="k2p5", task="t", priority="normal",
                  timeout=1.0, estimated_cost=0.0)
    assert (agent.status, agent.api_key, agent.runs, agent.attempts) == (SPAWNING, ANONYMOUS, 0, 0)
    assert isinstance(agent.created_at, float)
    other = Agent(agent_id="b", kind=KIND_AGENT, model="k2p5", task="t", priority="normal",
                  timeout=1.0, estimated_cost=0.0)
    assert agent.members is not other.members  # no shared mutable default


def test_agents_compare_by_identity_and_hash():
    """Two agents with equal fields are still two agents (the runtime keeps them in dicts and sets)."""
    one, two = _agent(), _agent()
    assert one != two and one == one
    assert len({one, two}) == 2


def test_an_agent_has_no_instance_dict():
    """slots: 10,000 live agents on a Pi each save their __dict__."""
    agent = _agent()
    assert not hasattr(agent, "__dict__")
    try:
        agent.not_a_field = 1  # type: ignore[attr-defined]
    except AttributeError:
        pass
    else:
        raise AssertionError("an attribute outside the fields was accepted")


def test_repr_leaves_out_the_users_text():
    text = repr(_agent(task="my secret plan", result="the secret answer"))
    assert "subagent_1764000000_0001" in text
    assert "secret" not in text


async def test_a_chat_agent_keeps_its_tool_calls_sealed_and_shows_its_kind_and_first_token(tmp_path):
    store = Store(str(tmp_path / "j1msky.db"))
    store.open()
    try:
        agent = _agent(kind=KIND_CHAT, parent_id=None, team=None, first_token_at=1_764_000_001.25,
                       tool_calls='[{"id":"call_1","name":"lookup","arguments":"{\\"q\\":\\"secret\\"}"}]')
        await store.write(insert(agent, store.cipher))
        raw = await store.read(lambda c: c.execute("SELECT tool_calls, first_token_at FROM agents").fetchone())
        back = from_row(await store.read(lambda c: c.execute("SELECT * FROM agents").fetchone()), store.cipher)
    finally:
        await store.close()
    assert "secret" not in raw[0] and "lookup" not in raw[0] and raw[1] == 1_764_000_001.25
    view = back.status_view()
    assert view["kind"] == KIND_CHAT and view["time_to_first_token"] == 1.25  # from its creation
    assert view["tool_calls"] == [{"id": "call_1", "name": "lookup", "arguments": '{"q":"secret"}'}]
    assert back.list_view()["kind"] == KIND_CHAT
    assert "secret" not in repr(back)
    # Other agents' views are as they were: no kind, no chat fields.
    plain = _agent().status_view()
    assert not {"kind", "time_to_first_token", "tool_calls"} & set(plain) and "kind" not in _agent().list_view()


def test_statuses_are_the_status_type():
    assert STATUSES == typing.get_args(Status)
    assert LIVE | TERMINAL == set(STATUSES) and not LIVE & TERMINAL
    assert set(PRIORITIES) == set(typing.get_args(Priority))
    assert {KIND_AGENT, KIND_TEAM, KIND_MEMBER, KIND_CHAT} == set(typing.get_args(Kind))
    stored = {f.name for f in dataclasses.fields(Agent)} - set(COLUMNS)
    assert stored == {"members", "reserved", "billed", "chat", "sink", "answer", "failure"}


def test_all_names_the_public_face():
    """__all__ is every public name the module defines itself (not what it imports)."""
    tree = ast.parse(Path(agent_record.__file__).read_text())
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    defined |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    assert sorted(agent_record.__all__) == sorted(n for n in defined if not n.startswith("_"))
