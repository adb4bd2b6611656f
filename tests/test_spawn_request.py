"""The typed spawn requests (spawn_request.py): the parser builds them without the frozen
dataclass's __init__ (a speed measure), so here they are checked against the constructor."""

from __future__ import annotations

import dataclasses

import pytest

from j1mskyd.spawn_request import SpawnParser, SpawnRequest, TeamRequest
from tests.conftest import make_config


@pytest.fixture
def parser(tmp_path):
    return SpawnParser(make_config(tmp_path))


def test_a_parsed_spawn_is_the_request_the_constructor_makes(parser):
    model = next(iter(parser.config.models))
    body = {"model": model, "task": "say ok", "priority": "high", "timeout": 12,
            "privacy": {"retention_days": 2}, "webhook_url": "https://example.invalid/hook"}
    made = SpawnRequest(model=model, task="say ok", priority="high", timeout=12.0, retention_days=2.0,
                        webhook_url="https://example.invalid/hook")
    for parsed in (parser.spawn(body), parser.batch([body])[0]):
        assert parsed == made and hash(parsed) == hash(made) and repr(parsed) == repr(made)
        assert vars(parsed) == vars(made)  # every field set, none more
        with pytest.raises(dataclasses.FrozenInstanceError):
            parsed.task = "changed"  # type: ignore[misc]
    minimal = parser.spawn({"model": model, "task": "t"})
    assert vars(minimal) == vars(SpawnRequest(model=model, task="t", timeout=minimal.timeout))


def test_a_parsed_team_is_the_request_the_constructor_makes(parser):
    team_id, team = next(iter(parser.config.teams.items()))
    parsed = parser.team({"team": team_id, "task": "plan"})
    made = TeamRequest(team=team, task="plan", timeout=parsed.timeout)
    assert parsed == made and vars(parsed) == vars(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.team = None  # type: ignore[misc]
