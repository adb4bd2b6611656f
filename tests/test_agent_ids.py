"""Agent ids stay unique across a restart: a daemon restarted within the second of its last
spawn (or with its clock stepped back) numbers its ids on from the ones stored, instead of
drawing that second's ids again from a random start (CI saw a task resumed at start fail on
the database's unique id)."""

from __future__ import annotations

import pytest

from j1mskyd import agents as agents_module
from j1mskyd.agents import _after
from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from tests.conftest import Clock
from tests.taskkit import upstream_config


@pytest.mark.parametrize("recent, expected", [
    (["subagent_100_0007"], 8),
    (["subagent_100_9999"], 0),  # the counter's 4 digits go round
    # admissions in flight together commit out of their ids' order: the highest is what counts
    (["subagent_100_0005", "subagent_100_0007", "subagent_100_0006"], 8),
    (["subagent_100_0001", "subagent_100_9999", "subagent_100_0000"], 2),  # ... across the wrap too
    (["subagent_100_0003", "subagent_99_6000"], 4),  # half a cycle behind the newest: long past
    (["chatcmpl-x", "subagent_100_0003"], 4),  # ids of another shape are not the counter's
    (["subagent_100_12345", "subagent_100_abcd", "x_0001"], None),
    ([], None),
])
def test_the_counter_goes_on_after_the_highest_recent_id(recent, expected):
    assert _after(recent) == expected


async def test_a_restart_in_the_same_second_draws_no_id_twice(aiohttp_client, tmp_path, fake_upstream, monkeypatch):
    # The same random start and the same second in both runs: before, the second run's first
    # spawn drew the first run's first id and failed on the unique id.
    monkeypatch.setattr(agents_module.secrets, "randbelow", lambda n: 0)
    cfg, clock, ids = upstream_config(tmp_path, fake_upstream), Clock(), []
    for _ in range(2):
        client = await aiohttp_client(build_app(cfg, clock=clock))
        for _ in range(3):
            resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "t"})
            assert resp.status == 200, await resp.text()
            ids.append((await resp.json())["agent_id"])
        await client.close()
    assert ids == [f"subagent_{int(clock.t)}_{n:04d}" for n in range(6)]


async def test_a_start_on_an_empty_database_keeps_the_random_start(aiohttp_client, tmp_path, fake_upstream,
                                                                   monkeypatch):
    monkeypatch.setattr(agents_module.secrets, "randbelow", lambda n: 4321)
    client = await aiohttp_client(build_app(upstream_config(tmp_path, fake_upstream), clock=Clock()))
    assert client.app[SERVICES].agents.new_id(1.0) == "subagent_1_4321"
