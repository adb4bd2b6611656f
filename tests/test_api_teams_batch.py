"""POST /spawn-team and POST /spawn-batch through real HTTP: responses, completion, cost,
members in status and listings, all-or-nothing batches and their limits."""

from __future__ import annotations

import dataclasses
import json

import pytest

from j1mskyd.app import build_app
from j1mskyd.providers import ProviderSettings
from tests.conftest import make_config, route_models, wait_status

SEED_TEAM = {"team": "team_creative", "task": "Design a landing page for our product", "priority": "high"}


def labels(config, team_id: str) -> list[str]:
    return [f"{config.models[a].provider}/{config.models[a].upstream}" for a in config.teams[team_id].members]


async def spawn_team(client, body: dict) -> dict:
    resp = await client.post("/api/spawn-team", json=body)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def agents(client, query: str = "") -> dict:
    resp = await client.get("/api/agents" + ("?" + query if query else ""))
    assert resp.status == 200, await resp.text()
    return await resp.json()


def ids(page: dict) -> list[str]:
    return [a["agent_id"] for a in page["data"]]


# -- teams ---------------------------------------------------------------------------------------
async def test_spawn_team_seed_example(client, config):
    body = await spawn_team(client, SEED_TEAM)
    assert body["success"] is True and body["status"] == "spawning"
    assert body["agent_id"].startswith("subagent_") and body["team"] == "team_creative"
    assert body["models"] == labels(config, "team_creative") == ["offline/claude-opus-4-6", "offline/k2p5"]
    assert len(body["members"]) == 2 and len(set(body["members"] + [body["agent_id"]])) == 3
    # The team's estimate is its members': ~4 chars a token in, each model's typical output out.
    tokens_in = -(-len(SEED_TEAM["task"]) // 4)
    expected = sum(tokens_in / 1000 * m.input_per_1k + m.typical_output_tokens / 1000 * m.output_per_1k
                   for m in (config.models[a] for a in config.teams["team_creative"].members))
    assert body["estimated_cost"] == pytest.approx(expected, abs=1e-6)


async def test_team_labels_are_provider_slash_upstream(aiohttp_client, tmp_path):
    """With k2p5 on a provider named kimi-coding and sonnet on one named anthropic (both
    served offline here), team_coding's labels are exactly the seed's."""
    base = make_config(tmp_path)
    providers = {"offline": base.providers["offline"],
                 "kimi-coding": ProviderSettings(name="kimi-coding", plugin="offline"),
                 "anthropic": ProviderSettings(name="anthropic", plugin="offline")}
    cfg = make_config(tmp_path, providers=providers,
                      models=route_models(base, {"k2p5": "kimi-coding", "sonnet": "anthropic"}))
    client = await aiohttp_client(build_app(cfg))
    body = await spawn_team(client, {"team": "team_coding", "task": "Write a Python function", "priority": "normal"})
    assert body["models"] == ["kimi-coding/k2p5", "anthropic/claude-sonnet-4-6"]
    done = await wait_status(client, body["agent_id"])
    assert done["status"] == "completed"
    assert done["models"] == ["kimi-coding/k2p5", "anthropic/claude-sonnet-4-6"]
    assert "## kimi-coding/k2p5" in done["result"] and "## anthropic/claude-sonnet-4-6" in done["result"]
    served = [(await wait_status(client, m["agent_id"]))["served_by"] for m in done["members"]]
    assert served == [{"model": "k2p5", "provider": "kimi-coding"}, {"model": "sonnet", "provider": "anthropic"}]


async def test_team_completes_with_combined_result_and_summed_cost(client, config):
    body = await spawn_team(client, SEED_TEAM)
    done = await wait_status(client, body["agent_id"])
    assert done["status"] == "completed" and done["error"] is None
    assert done["team"] == "team_creative" and done["priority"] == "high"
    assert [m["agent_id"] for m in done["members"]] == body["members"]
    assert [m["model"] for m in done["members"]] == list(config.teams["team_creative"].members)

    members = [await wait_status(client, m) for m in body["members"]]
    assert all(m["status"] == "completed" and m["parent_id"] == body["agent_id"] for m in members)
    assert all(m["task"] == SEED_TEAM["task"] and m["priority"] == "high" for m in members)
    for label, member in zip(labels(config, "team_creative"), members):
        assert f"## {label}\n{member['result']}" in done["result"]
    assert done["cost"] == pytest.approx(sum(m["cost"] for m in members), abs=1e-6)
    assert [m["cost"] for m in done["members"]] == [m["cost"] for m in members]
    assert all(m["status"] == "completed" for m in done["members"])
    assert done["usage"] == {"input_tokens": sum(m["usage"]["input_tokens"] for m in members),
                             "output_tokens": sum(m["usage"]["output_tokens"] for m in members)}
    assert body["estimated_cost"] == pytest.approx(sum(m["estimated_cost"] for m in members), abs=1e-6)


async def test_members_hidden_from_listing_unless_asked(client):
    team = await spawn_team(client, {"team": "team_coding", "task": "Build it"})
    plain = (await (await client.post("/api/spawn", json={"model": "k2p5", "task": "alone"})).json())["agent_id"]
    await wait_status(client, team["agent_id"])
    await wait_status(client, plain)

    default = await agents(client)
    assert set(ids(default)) == {team["agent_id"], plain}
    assert default["pagination"]["total"] == 2
    listed_team = next(a for a in default["data"] if a["agent_id"] == team["agent_id"])
    assert listed_team["team"] == "team_coding" and listed_team["status"] == "completed"

    for flag in ("true", "1", "yes", "TRUE"):
        everything = await agents(client, f"include_members={flag}")
        assert set(ids(everything)) == {team["agent_id"], plain, *team["members"]}
    for flag in ("false", "0", "no", ""):
        assert set(ids(await agents(client, f"include_members={flag}"))) == {team["agent_id"], plain}
    resp = await client.get("/api/agents?include_members=on")  # silently meant no
    assert resp.status == 400 and (await resp.json())["error"]["details"][0]["field"] == "include_members"

    only_members = await agents(client, f"include_members=true&parent_id={team['agent_id']}")
    assert set(ids(only_members)) == set(team["members"])
    # The team id filter finds the team agent (its members only when asked).
    assert ids(await agents(client, "team=team_coding")) == [team["agent_id"]]
    # Members keep their links in the links of a paged listing.
    page = await agents(client, "include_members=true&limit=1")
    assert "include_members=true" in page["links"]["next"]


async def test_total_cost_counts_team_spend_once(client):
    team = await spawn_team(client, {"team": "team_coding", "task": "Build it"})
    plain = (await (await client.post("/api/spawn", json={"model": "opus", "task": "alone"})).json())["agent_id"]
    team_done = await wait_status(client, team["agent_id"])
    plain_done = await wait_status(client, plain)
    spent = team_done["cost"] + plain_done["cost"]

    assert (await agents(client))["meta"]["total_cost"] == pytest.approx(spent, abs=1e-6)
    assert (await agents(client, "include_members=true"))["meta"]["total_cost"] == pytest.approx(spent, abs=1e-6)
    members_only = await agents(client, f"include_members=true&parent_id={team['agent_id']}")
    assert members_only["meta"]["total_cost"] == pytest.approx(team_done["cost"], abs=1e-6)
    teams_only = await agents(client, "include_members=true&team=team_coding&parent_id_ne=" + team["agent_id"])
    assert teams_only["meta"]["total_cost"] == pytest.approx(team_done["cost"], abs=1e-6)


async def test_ne_matches_agents_without_the_field(client):
    """team_ne=team_coding must include the agents that belong to no team at all."""
    team = await spawn_team(client, {"team": "team_coding", "task": "Build it"})
    other = await spawn_team(client, {"team": "team_research", "task": "Look it up"})
    plain = (await (await client.post("/api/spawn", json={"model": "k2p5", "task": "alone"})).json())["agent_id"]
    expected = {other["agent_id"], plain}
    assert set(ids(await agents(client, "team_ne=team_coding"))) == expected
    page = await agents(client, "filter=" + json.dumps({"team": {"ne": "team_coding"}}))
    assert set(ids(page)) == expected
    assert team["agent_id"] not in ids(page)


async def test_standby_team_still_accepts_work(client, config):
    assert config.teams["team_business"].status == "standby"
    body = await spawn_team(client, {"team": "team_business", "task": "Plan the quarter", "priority": "low"})
    assert body["team"] == "team_business" and body["team_status"] == "standby"
    assert body["models"] == labels(config, "team_business")
    done = await wait_status(client, body["agent_id"])
    assert done["status"] == "completed" and done["cost"] > 0


@pytest.mark.parametrize("team_id", ["team_coding", "team_creative", "team_research", "team_business"])
async def test_every_seed_team(client, config, team_id):
    body = await spawn_team(client, {"team": team_id, "task": "Do the team thing"})
    assert body["models"] == labels(config, team_id)
    assert (await wait_status(client, body["agent_id"]))["status"] == "completed"


async def test_cancel_a_queued_team(aiohttp_client, tmp_path):
    base = make_config(tmp_path)
    slow = dataclasses.replace(base.providers["offline"], options={"delay": 3.0})
    client = await aiohttp_client(build_app(make_config(tmp_path, runtime={"max_concurrency": 1},
                                                        providers={"offline": slow})))
    blocker = (await (await client.post("/api/spawn", json={"model": "k2p5", "task": "hold"})).json())["agent_id"]
    await wait_status(client, blocker, ("running",))
    team = await spawn_team(client, {"team": "team_coding", "task": "Build it"})
    resp = await client.delete(f"/api/agent/{team['agent_id']}")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["success"] is True and body["message"] == "Agent cancelled"
    assert body["refund"] == pytest.approx(team["estimated_cost"], abs=1e-6)
    done = await wait_status(client, team["agent_id"], ("cancelled",), timeout=2.0)
    assert {m["status"] for m in done["members"]} == {"cancelled"}


# -- batches -------------------------------------------------------------------------------------
BATCH = [{"model": "k2p5", "task": "first"},
         {"model": "sonnet", "task": "second", "priority": "high"},
         {"model": "opus", "task": "third", "timeout": 60}]


async def total(client) -> int:
    return (await agents(client, "include_members=true"))["pagination"]["total"]


async def test_batch_spawns_one_agent_each_in_order(client):
    resp = await client.post("/api/spawn-batch", json={"agents": BATCH})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["success"] is True and body["count"] == 3
    assert [a["model"] for a in body["agents"]] == ["k2p5", "sonnet", "opus"]
    assert all(a["status"] == "spawning" and a["estimated_cost"] > 0 for a in body["agents"])
    batch_ids = [a["agent_id"] for a in body["agents"]]
    assert len(set(batch_ids)) == 3
    for item, agent_id in zip(BATCH, batch_ids):
        done = await wait_status(client, agent_id)
        assert done["status"] == "completed" and done["task"] == item["task"] and done["model"] == item["model"]
        assert done["priority"] == item.get("priority", "normal")
        assert done["timeout"] == item.get("timeout", 300)
    assert await total(client) == 3


async def test_batch_accepts_a_bare_list(client):
    resp = await client.post("/api/spawn-batch", json=BATCH[:2])
    assert resp.status == 200 and (await resp.json())["count"] == 2


async def refused_batch(client, body) -> list[dict]:
    before = await total(client)
    resp = await client.post("/api/spawn-batch", json=body)
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error["type"] == "VALIDATION_ERROR" and error["code"] == 400 and error["request_id"]
    assert await total(client) == before
    return error["details"]


async def test_one_bad_entry_refuses_the_whole_batch(client):
    details = await refused_batch(client, {"agents": [BATCH[0], {"model": "k2p5", "task": ""}, BATCH[2]]})
    assert details == [{"field": "agents[1].task", "message": "Task cannot be empty"}]


async def test_every_bad_entry_is_reported(client):
    details = await refused_batch(client, {"agents": [
        {"model": "gpt", "task": "x"}, BATCH[1], {"model": "k2p5", "task": "x" * 2001, "priority": "urgent"},
        "not an object", {"model": ["k2p5"], "task": "x", "timeout": 0}]})
    assert [d["field"] for d in details] == ["agents[0].model", "agents[2].task", "agents[2].priority",
                                             "agents[3]", "agents[4].timeout", "agents[4].model"]


@pytest.mark.parametrize("body", [{"agents": []}, [], {}, {"agents": "k2p5"}, {"agents": None},
                                  {"agents": {"model": "k2p5", "task": "x"}}, "agents", 3])
async def test_batch_needs_a_non_empty_list(client, body):
    details = await refused_batch(client, body)
    assert [d["field"] for d in details] == ["agents"]


async def test_batch_limit(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(make_config(tmp_path, runtime={"max_batch": 3})))
    details = await refused_batch(client, {"agents": [BATCH[0]] * 4})
    assert details[0]["field"] == "agents" and "3" in details[0]["message"]
    resp = await client.post("/api/spawn-batch", json={"agents": [BATCH[0]] * 3})
    assert resp.status == 200 and (await resp.json())["count"] == 3


async def test_default_batch_limit_is_100(client):
    await refused_batch(client, {"agents": [BATCH[0]] * 101})
    resp = await client.post("/api/spawn-batch", json={"agents": [BATCH[0]] * 100})
    assert resp.status == 200
    body = await resp.json()
    assert len({a["agent_id"] for a in body["agents"]}) == 100


async def test_team_status_survives_a_model_removed_from_the_config(aiohttp_client, tmp_path):
    """An old team whose member model was later removed from the config is still readable."""
    first = await aiohttp_client(build_app(make_config(tmp_path)))
    team = await spawn_team(first, {"team": "team_coding", "task": "Build it"})
    await wait_status(first, team["agent_id"])
    await first.close()

    base = make_config(tmp_path)
    models = {alias: m for alias, m in base.models.items() if alias != "sonnet"}
    models = {alias: dataclasses.replace(m, fallback=None if m.fallback == "sonnet" else m.fallback)
              for alias, m in models.items()}
    second = await aiohttp_client(build_app(make_config(tmp_path, models=models)))
    resp = await second.get(f"/api/agent/{team['agent_id']}")
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["status"] == "completed"
    assert body["models"] == ["offline/k2p5", "sonnet"]  # no provider known for a removed alias
    assert (await agents(second, "include_members=true"))["pagination"]["total"] == 3
