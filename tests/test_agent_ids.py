"""Agent ids are never drawn twice.  A daemon restarted within the second of its last spawn
(or with its clock stepped back) draws its ids under a later second than any stored (CI saw a
task resumed at start fail on the database's unique id); and a second asked for more ids than
its 10,000 (refused batches draw one per entry, and store none) lends the next second's, instead
of drawing one of its own again (a later spawn was a 500 on the unique id)."""

from __future__ import annotations

import dataclasses

import pytest

from j1mskyd import agents as agents_module, worstcase
from j1mskyd.agents import _second_of
from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from tests.conftest import Clock
from tests.taskkit import upstream_config


@pytest.mark.parametrize("agent_id, expected", [
    ("subagent_1764000000_0007", 1764000000),
    ("subagent_1764000000_9999", 1764000000),
    (None, None),  # an empty table
    ("chatcmpl-x", None),  # ids of another shape carry no second
    ("subagent_1764000000_12345", None),
    ("subagent_1764000000_abcd", None),
    ("subagent_x_0001", None),
    ("x_subagent_1_0001", None),
])
def test_the_second_an_id_carries(agent_id, expected):
    assert _second_of(agent_id) == expected


async def _service(aiohttp_client, tmp_path, fake_upstream, clock):
    client = await aiohttp_client(build_app(upstream_config(tmp_path, fake_upstream), clock=clock))
    return client, client.app[SERVICES].agents


async def test_a_second_lends_the_next_one_its_ids_once_its_own_are_drawn(aiohttp_client, tmp_path, fake_upstream,
                                                                          monkeypatch):
    monkeypatch.setattr(agents_module.secrets, "randbelow", lambda n: 7)
    _, agents = await _service(aiohttp_client, tmp_path, fake_upstream, Clock())
    ids = [agents.new_id(100.5) for _ in range(10_001)]
    assert len(set(ids)) == 10_001
    assert ids[0] == "subagent_100_0007" and ids[9_999] == "subagent_100_0006"
    assert ids[10_000] == "subagent_101_0007"  # the 10,001st: the next second's
    assert agents.new_id(101.2) == "subagent_101_0008"  # the clock catches up: that second goes on
    assert agents.new_id(99.0) == "subagent_101_0009"  # the clock steps back: the second does not
    assert agents.new_id(102.0) == "subagent_102_0010"


async def test_a_restart_in_the_same_second_draws_no_id_twice(aiohttp_client, tmp_path, fake_upstream, monkeypatch):
    # The same random start and the same second in both runs: before, the second run's first
    # spawn drew the first run's first id and failed on the unique id.  It cannot know which of
    # that second's ids the first run drew and did not store, so it starts on the next second.
    monkeypatch.setattr(agents_module.secrets, "randbelow", lambda n: 0)
    cfg, clock, ids = upstream_config(tmp_path, fake_upstream), Clock(), []
    for _ in range(2):
        client = await aiohttp_client(build_app(cfg, clock=clock))
        for _ in range(3):
            resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "t"})
            assert resp.status == 200, await resp.text()
            ids.append((await resp.json())["agent_id"])
        await client.close()
    second = int(clock.t)
    assert ids == [f"subagent_{second + run}_{n:04d}" for run in (0, 1) for n in range(3)]


async def test_a_restart_with_the_clock_stepped_back_draws_after_the_latest_second_stored(
        aiohttp_client, tmp_path, fake_upstream, monkeypatch):
    monkeypatch.setattr(agents_module.secrets, "randbelow", lambda n: 0)
    cfg, clock, ids = upstream_config(tmp_path, fake_upstream), Clock(), []
    for step_back in (0, 3600):  # a Pi's clock, an hour behind at boot until NTP answers
        clock.t -= step_back
        client = await aiohttp_client(build_app(cfg, clock=clock))
        resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "t"})
        assert resp.status == 200, await resp.text()
        ids.append((await resp.json())["agent_id"])
        await client.close()
    second = int(clock.t) + 3600
    assert ids == [f"subagent_{second}_0000", f"subagent_{second + 1}_0000"]


async def test_refused_batches_that_draw_a_whole_second_of_ids_leave_the_next_spawn_a_fresh_one(
        aiohttp_client, tmp_path, fake_upstream, monkeypatch):
    # A batch refused whole (here: over the daily budget) draws an id per entry and stores none.
    # With a second's ids all drawn that way, the next spawn in the same second drew the first
    # spawn's id again and was a 500 (UNIQUE constraint failed).  Ten ids a second here: a refused
    # batch of 59 draws the nine the first spawn left of its second and five seconds' worth more,
    # and the next spawn came round to the first one's id.
    monkeypatch.setattr(agents_module, "_ID_SPACE", 10)
    cfg, clock = upstream_config(tmp_path, fake_upstream), Clock()
    one = worstcase.agent_bound(cfg.models, "k2p5", "b", None)
    cfg = dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, daily_budget=10 * one))
    client = await aiohttp_client(build_app(cfg, clock=clock))
    first = await client.post("/api/spawn", json={"model": "k2p5", "task": "b"})
    assert first.status == 200, await first.text()
    batch = await client.post("/api/spawn-batch", json={"agents": [{"model": "k2p5", "task": "b"}] * 59})
    assert batch.status == 402, await batch.text()
    second = await client.post("/api/spawn", json={"model": "k2p5", "task": "b"})
    assert second.status == 200, await second.text()
    ids = [(await first.json())["agent_id"], (await second.json())["agent_id"]]
    assert ids[0] != ids[1] and ids[1].startswith(f"subagent_{int(clock.t) + 6}_")
    listed = await client.get("/api/agents")
    assert sorted(a["agent_id"] for a in (await listed.json())["data"]) == sorted(ids)


async def test_a_start_on_an_empty_database_keeps_the_random_start(aiohttp_client, tmp_path, fake_upstream,
                                                                   monkeypatch):
    monkeypatch.setattr(agents_module.secrets, "randbelow", lambda n: 4321)
    client = await aiohttp_client(build_app(upstream_config(tmp_path, fake_upstream), clock=Clock()))
    assert client.app[SERVICES].agents.new_id(1.0) == "subagent_1_4321"
