"""GET /agents (filters, the JSON filter language, sort, pagination, links, meta),
GET /agent/{id} and GET /agents/active, through real HTTP against the offline provider."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from j1mskyd.app import build_app
from j1mskyd.providers import ProviderSettings
from tests.conftest import make_config, route_models, wait_status

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

# (model, task): different models and lengths give different costs; the tasks also
# carry LIKE's wildcard characters, to prove they are matched literally.
TASKS = [
    ("k2p5", "Write a Python function to calculate fibonacci"),
    ("k2p5", "Summarise: " + "lorem ipsum " * 30),
    ("sonnet", "Are you 100% sure about this plan?"),
    ("sonnet", "Rename snake_case identifiers to camelCase"),
    ("opus", "Design a landing page for our product"),
    ("opus", "Write blog post about AI " + "x" * 200),
    ("k2p5", "Fix the back\\slash in C:\\temp paths"),
]


def priced_config(tmp_path, **kwargs):
    """The embedded default with opus made expensive, so some agents cost more than $1.  The budget
    and the spike limit are raised to hold an opus agent's worst case (4096 output tokens at $50 per 1k)."""
    base = make_config(tmp_path, **kwargs)
    models = dict(base.models)
    models["opus"] = dataclasses.replace(models["opus"], input_per_1k=50.0, output_per_1k=50.0)
    budget = dataclasses.replace(base.budget, daily_budget=10_000.0, monthly_ceiling=300_000.0,
                                 spike_per_hour=10_000.0)
    return dataclasses.replace(base, models=models, budget=budget)


def offset_pagination(pagination: dict) -> dict:
    """The offset fields of a page's pagination (the page and cursor fields have their own
    tests: tests/test_agents_pagination.py)."""
    return {k: v for k, v in pagination.items() if k not in ("page", "per_page", "cursor", "next_cursor")}


@pytest.fixture
def config(tmp_path):  # overrides conftest's: the `client` fixture serves this one
    return priced_config(tmp_path)


async def spawn(client, model: str, task: str, **extra) -> dict:
    resp = await client.post("/api/spawn", json={"model": model, "task": task, **extra})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def listing(client, query: str | dict = "", status: int = 200) -> dict:
    if isinstance(query, dict):
        query = urlencode(query)
    resp = await client.get("/api/agents" + ("?" + query if query else ""))
    assert resp.status == status, await resp.text()
    return await resp.json()


def exact_cost(config, got: dict) -> float:
    """The cost from the agent's real token counts and its model's prices (what the runtime bills)."""
    model = config.models[got["served_by"]["model"]]
    u = got["usage"]
    return u["input_tokens"] / 1000 * model.input_per_1k + u["output_tokens"] / 1000 * model.output_per_1k


@pytest.fixture
async def population(client, config):
    """Seven completed agents; returns the ground truth, in spawn order, one dict each."""
    spawned = [await spawn(client, model, task) for model, task in TASKS]
    truth = []
    for i, s in enumerate(spawned):
        got = await wait_status(client, s["agent_id"])
        assert got["status"] == "completed", got
        truth.append(got | {"index": i, "exact_cost": exact_cost(config, got)})
    return truth


def ids(page: dict) -> list[str]:
    return [a["agent_id"] for a in page["data"]]


def pick(truth, pred) -> set[str]:
    return {t["agent_id"] for t in truth if pred(t)}


# -- the seed's two examples ------------------------------------------------------------------
async def test_seed_example_high_cost_this_month(client, population):
    page = await listing(client, "cost_gt=1.00&created_after=2026-02-01&limit=50")
    expected = pick(population, lambda t: t["exact_cost"] > 1.0)
    assert expected and len(expected) < len(population)
    assert set(ids(page)) == expected
    assert offset_pagination(page["pagination"]) == {"total": len(expected), "limit": 50, "offset": 0, "has_more": False,
                                  "next_offset": None, "previous_offset": None}
    assert page["meta"]["by_model"] == {"opus": len(expected)}
    assert page["meta"]["total_cost"] == pytest.approx(
        sum(t["exact_cost"] for t in population if t["agent_id"] in expected), abs=1e-6)
    for a in page["data"]:
        assert set(a) >= {"agent_id", "model", "status", "task", "team", "created_at", "started_at",
                          "estimated_cost", "actual_cost"}
        assert ISO_Z.match(a["created_at"]) and ISO_Z.match(a["started_at"])
        assert a["actual_cost"] > 1.0


async def test_seed_example_running_k2p5_newest_first(aiohttp_client, tmp_path):
    base = make_config(tmp_path)
    slow = dataclasses.replace(base.providers["offline"], options={"delay": 3.0})
    client = await aiohttp_client(build_app(make_config(tmp_path, providers={"offline": slow})))
    k2p5 = [(await spawn(client, "k2p5", f"task {i}"))["agent_id"] for i in range(3)]
    other = (await spawn(client, "sonnet", "not k2p5"))["agent_id"]
    for agent_id in [*k2p5, other]:
        await wait_status(client, agent_id, ("running",))
    query = "status=running&model=k2p5&sort=-created_at&limit=20"
    page = await poll_listing(client, query, lambda p: p["pagination"]["total"] == 3)
    assert ids(page) == k2p5[::-1]
    assert all(a["status"] == "running" and a["model"] == "k2p5" and a["actual_cost"] is None
               for a in page["data"])
    assert page["pagination"]["limit"] == 20 and page["pagination"]["has_more"] is False
    assert page["meta"] == {"total_cost": 0, "by_model": {"k2p5": 3}}
    assert (await listing(client, "status=completed"))["pagination"]["total"] == 0


async def poll_listing(client, query: str, ok, timeout: float = 2.0) -> dict:
    """A running agent's status reaches the database a moment after it changes in memory."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        page = await listing(client, query)
        if ok(page) or loop.time() > end:
            return page
        await asyncio.sleep(0.01)


# -- the JSON filter: every operator -------------------------------------------------------------
async def test_filter_eq_scalar_and_explicit(client, population):
    for f in ({"model": "sonnet"}, {"model": {"eq": "sonnet"}}, {"status": "completed", "model": "sonnet"}):
        page = await listing(client, {"filter": json.dumps(f)})
        assert set(ids(page)) == pick(population, lambda t: t["model"] == "sonnet")


async def test_filter_ne(client, population):
    page = await listing(client, {"filter": json.dumps({"model": {"ne": "k2p5"}})})
    assert set(ids(page)) == pick(population, lambda t: t["model"] != "k2p5")


@pytest.mark.parametrize("op,pred", [
    ("gt", lambda v, n: v > n), ("gte", lambda v, n: v >= n),
    ("lt", lambda v, n: v < n), ("lte", lambda v, n: v <= n),
])
async def test_filter_comparisons_on_exact_integers(client, population, op, pred):
    counts = sorted({t["usage"]["input_tokens"] for t in population})
    pivot = counts[len(counts) // 2]  # an existing value: tells gt from gte and lt from lte
    page = await listing(client, {"filter": json.dumps({"input_tokens": {op: pivot}}), "limit": 100})
    expected = pick(population, lambda t: pred(t["usage"]["input_tokens"], pivot))
    assert expected and set(ids(page)) == expected


@pytest.mark.parametrize("op,pred", [("gt", float.__gt__), ("gte", float.__ge__),
                                     ("lt", float.__lt__), ("lte", float.__le__)])
async def test_filter_comparisons_on_cost(client, population, op, pred):
    pivot = sorted(t["exact_cost"] for t in population)[3]  # an exact stored value
    page = await listing(client, {"filter": json.dumps({"cost": {op: pivot}})})
    assert set(ids(page)) == pick(population, lambda t: pred(t["exact_cost"], pivot))


async def test_filter_range_combines_operators(client, population):
    costs = sorted(t["exact_cost"] for t in population)
    lo, hi = costs[1], costs[4]
    page = await listing(client, {"filter": json.dumps({"cost": {"gt": lo, "lte": hi}})})
    assert set(ids(page)) == pick(population, lambda t: lo < t["exact_cost"] <= hi)
    assert len(page["data"]) == 3


async def test_filter_in_and_list_value(client, population):
    expected = pick(population, lambda t: t["model"] in ("sonnet", "opus"))
    for f in ({"model": {"in": ["sonnet", "opus"]}}, {"model": ["sonnet", "opus"]}):
        page = await listing(client, {"filter": json.dumps(f)})
        assert set(ids(page)) == expected
    one = population[0]["agent_id"]
    page = await listing(client, {"filter": json.dumps({"agent_id": [one, "subagent_0_0000"]})})
    assert ids(page) == [one]


async def test_plain_in_parameter_takes_a_comma_list(client, population):
    page = await listing(client, "model_in=sonnet,opus")
    assert set(ids(page)) == pick(population, lambda t: t["model"] in ("sonnet", "opus"))


@pytest.mark.parametrize("op,needle,pred", [
    ("contains", "landing", lambda s: "landing" in s),
    ("starts_with", "Write", lambda s: s.startswith("Write")),
    ("ends_with", "plan?", lambda s: s.endswith("plan?")),
])
async def test_filter_string_operators(client, population, op, needle, pred):
    page = await listing(client, {"filter": json.dumps({"task": {op: needle}})})
    expected = pick(population, lambda t: pred(t["task"]))
    assert expected and set(ids(page)) == expected


@pytest.mark.parametrize("op", ["contains", "starts_with", "ends_with"])
@pytest.mark.parametrize("needle", ["%", "_", "\\", "%%", "_%_"])
async def test_like_wildcards_are_literal(client, population, op, needle):
    page = await listing(client, {"filter": json.dumps({"task": {op: needle}})})
    test = {"contains": str.__contains__, "starts_with": str.startswith, "ends_with": str.endswith}[op]
    assert set(ids(page)) == pick(population, lambda t: test(t["task"], needle))


async def test_like_wildcards_each_match_only_their_task(client, population):
    for needle, fragment in (("100%", "100% sure"), ("snake_case", "snake_case"), ("k\\s", "back\\slash")):
        page = await listing(client, {"task_contains": needle})
        assert [a["task"] for a in page["data"]] and all(fragment in a["task"] for a in page["data"])
        assert len(page["data"]) == 1


async def test_suffixed_keys_inside_filter(client, population):
    pivot = sorted(t["exact_cost"] for t in population)[2]
    page = await listing(client, {"filter": json.dumps({"cost_gt": pivot, "created_after": "2026-02-01",
                                                        "model_ne": "opus"})})
    assert set(ids(page)) == pick(population, lambda t: t["exact_cost"] > pivot and t["model"] != "opus")


async def test_filter_and_plain_parameters_combine(client, population):
    page = await listing(client, {"model": "k2p5", "filter": json.dumps({"task": {"starts_with": "Write"}})})
    assert set(ids(page)) == pick(population, lambda t: t["model"] == "k2p5" and t["task"].startswith("Write"))
    assert len(page["data"]) == 1


@pytest.mark.parametrize("query,count", [
    ("created_after=2026-02-01", 7), ("created_after=2026-02-01T00:00:00Z", 7),
    ("created_after=2026-02-01T00:00:00%2B01:00", 7), ("created_after=2999-01-01", 0),
    ("created_before=2026-02-01", 0), ("created_before=2999-01-01T00:00:00Z", 7),
    ("status=failed", 0), ("status=completed", 7), ("model=codex", 0),
])
async def test_plain_parameters(client, population, query, count):
    assert (await listing(client, query))["pagination"]["total"] == count


# -- refusals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("query,field", [
    ("colour=red", "colour"),
    ("filter=" + json.dumps({"colour": "red"}), "colour"),
    ("filter=" + json.dumps({"cost": {"approx": 1}}), "cost"),
    ("filter=" + json.dumps({"cost": {}}), "cost"),
    ("filter={", "filter"),
    ("filter={'status': 'running'}", "filter"),
    ("filter=[1]", "filter"),
    ("filter=%22running%22", "filter"),
    ("filter=1", "filter"),
    ("filter=null", "filter"),
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit"), ("limit=-1", "limit"),
    ("limit=1.5", "limit"), ("limit=1_0", "limit"),
    ("offset=-1", "offset"), ("offset=x", "offset"), ("offset=" + "9" * 30, "offset"),
    ("sort=colour", "sort"), ("sort=-task", "sort"), ("sort=--cost", "sort"), ("sort=-+cost", "sort"),
    ("cost_gt=abc", "cost"), ("cost_gt=nan", "cost"), ("cost_gt=inf", "cost"),
    ("cost_gt=1_000", "cost"), ("cost_gt=%EF%BC%91", "cost"),  # float() takes both: "1000" and a fullwidth "1"
    ("filter=" + json.dumps({"cost": {"gt": 10 ** 400}}), "cost"),  # float() of it: OverflowError, a 500
    ("created_after=yesterday", "created_at"),
    ("filter=" + json.dumps({"model": {"in": []}}), "model"),
    ("filter=" + json.dumps({"model": {"in": "k2p5"}}), "model"),
    ("filter=" + json.dumps({"task": {"contains": 5}}), "task"),
    ("filter=" + json.dumps({"cost": {"gt": "cheap"}}), "cost"),
    ("filter=" + json.dumps({"cost": {"gt": True}}), "cost"),
    ("filter=" + json.dumps({"cost": {"contains": "1"}}), "cost"),
    ("filter=" + json.dumps({"created_at": {"starts_with": "2026"}}), "created_at"),
    ("filter=" + json.dumps({"model": None}), "model"),
    ("filter=" + json.dumps({"model": {"eq": ["k2p5"]}}), "model"),
    ("filter=" + json.dumps({"limit": 5}), "limit"),
    # Enumerated fields: a value that is not one of them (issue 18: ?status=done was a 200, empty).
    ("status=done", "status"), ("status_ne=finished", "status"), ("status_in=running,done", "status"),
    ("filter=" + json.dumps({"status": ["completed", "ok"]}), "status"),
    ("priority=urgent", "priority"), ("kind=robot", "kind"),
])
async def test_bad_queries_are_400_with_details(client, query, field):
    resp = await client.get("/api/agents?" + query.replace("+", "%2B"))
    assert resp.status == 400, await resp.text()
    body = await resp.json()
    error = body["error"]
    assert body["success"] is False and error["code"] == 400 and error["type"] == "VALIDATION_ERROR"
    assert error["request_id"] == resp.headers["X-Request-Id"]
    assert field in [d["field"] for d in error["details"]], error


async def test_an_unknown_status_names_the_valid_ones(client, population):
    page = await listing(client, "status=done", status=400)
    message = page["error"]["details"][0]["message"]
    assert message == ("status must be one of spawning, queued, running, completed, failed, cancelled; "
                       "got 'done'"), message
    # Each valid value still filters (none is refused).
    for status in ("spawning", "queued", "running", "completed", "failed", "cancelled"):
        await listing(client, f"status={status}")
    await listing(client, "priority=high&kind=chat")


async def test_several_query_errors_reported_together(client):
    page = await listing(client, "limit=0&offset=-1&sort=colour&colour=red", status=400)
    assert sorted(d["field"] for d in page["error"]["details"]) == ["colour", "limit", "offset", "sort"]


# -- sort ---------------------------------------------------------------------------------------
async def test_default_order_is_newest_first(client, population):
    page = await listing(client)
    assert ids(page) == [t["agent_id"] for t in population][::-1]


@pytest.mark.parametrize("sort,key", [
    ("created_at", lambda t: t["index"]),
    ("-created_at", lambda t: -t["index"]),
    ("cost", lambda t: (t["exact_cost"], t["index"])),
    ("-cost", lambda t: (-t["exact_cost"], -t["index"])),
    ("actual_cost", lambda t: (t["exact_cost"], t["index"])),
    ("estimated_cost", lambda t: (t["estimated_cost"], t["index"])),
    ("-model", lambda t: (tuple(-ord(c) for c in t["model"]), -t["index"])),
])
async def test_sort(client, population, sort, key):
    page = await listing(client, {"sort": sort})
    assert ids(page) == [t["agent_id"] for t in sorted(population, key=key)]


async def test_sort_by_cost_is_monotonic_in_the_listing(client, population):
    asc = [a["actual_cost"] for a in (await listing(client, "sort=cost"))["data"]]
    desc = [a["actual_cost"] for a in (await listing(client, "sort=-cost"))["data"]]
    assert asc == sorted(asc) and desc == sorted(desc, reverse=True) and asc[0] < asc[-1]


# -- pagination and links --------------------------------------------------------------------------
def query_of(link: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(link).query))


async def test_pagination_block_and_links_like_the_seed(client, population):
    page = await listing(client, "limit=2&offset=2")
    assert offset_pagination(page["pagination"]) == {"total": 7, "limit": 2, "offset": 2, "has_more": True,
                                  "next_offset": 4, "previous_offset": 0}
    assert page["links"] == {"self": "/api/agents?limit=2&offset=2", "next": "/api/agents?limit=2&offset=4",
                             "prev": "/api/agents?limit=2&offset=0", "first": "/api/agents?limit=2&offset=0",
                             "last": "/api/agents?limit=2&offset=6"}
    newest_first = [t["agent_id"] for t in population][::-1]
    assert ids(page) == newest_first[2:4]


async def test_first_and_last_pages(client, population):
    first = await listing(client, "limit=3")
    assert offset_pagination(first["pagination"]) == {"total": 7, "limit": 3, "offset": 0, "has_more": True,
                                   "next_offset": 3, "previous_offset": None}
    assert first["links"]["prev"] is None and first["links"]["last"] == "/api/agents?limit=3&offset=6"
    last = await listing(client, "limit=3&offset=6")
    assert offset_pagination(last["pagination"]) == {"total": 7, "limit": 3, "offset": 6, "has_more": False,
                                  "next_offset": None, "previous_offset": 3}
    assert last["links"]["next"] is None and len(last["data"]) == 1


async def test_default_limit_is_20(client, population):
    page = await listing(client)
    assert page["pagination"]["limit"] == 20 and page["pagination"]["offset"] == 0
    assert len(page["data"]) == 7


async def test_limit_100_is_allowed(client, population):
    assert (await listing(client, "limit=100"))["pagination"]["limit"] == 100


async def test_offset_past_the_end(client, population):
    page = await listing(client, "limit=5&offset=50")
    assert page["data"] == [] and page["pagination"]["total"] == 7 and page["pagination"]["has_more"] is False
    assert page["links"]["last"] == "/api/agents?limit=5&offset=5"
    # "prev" leads back to real data, not to another empty page.
    assert query_of(page["links"]["prev"])["offset"] == "5"


async def test_empty_listing(client):
    page = await listing(client)
    assert page["data"] == [] and page["meta"] == {"total_cost": 0, "by_model": {}}
    assert offset_pagination(page["pagination"]) == {"total": 0, "limit": 20, "offset": 0, "has_more": False,
                                  "next_offset": None, "previous_offset": None}
    assert page["links"]["first"] == page["links"]["last"] == page["links"]["self"] == "/api/agents?limit=20&offset=0"


async def test_links_keep_the_other_parameters(client, population):
    f = json.dumps({"cost": {"gt": 0}})
    page = await listing(client, {"model_ne": "opus", "sort": "-cost", "filter": f, "limit": 2, "offset": 2})
    for name in ("self", "next", "prev", "first", "last"):
        q = query_of(page["links"][name])
        assert q["model_ne"] == "opus" and q["sort"] == "-cost" and q["filter"] == f and q["limit"] == "2"
    # Following the links walks the whole filtered result once, in order.
    seen, link = [], page["links"]["first"]
    while link:
        resp = await client.get(link)
        assert resp.status == 200
        p = await resp.json()
        seen += ids(p)
        link = p["links"]["next"]
    expected = sorted((t for t in population if t["model"] != "opus"), key=lambda t: (-t["exact_cost"], -t["index"]))
    assert seen == [t["agent_id"] for t in expected]


async def test_meta_counts_the_whole_filtered_set_not_the_page(client, population):
    page = await listing(client, "limit=1")
    assert page["meta"]["by_model"] == {"k2p5": 3, "opus": 2, "sonnet": 2}
    assert page["meta"]["total_cost"] == pytest.approx(sum(t["exact_cost"] for t in population), abs=1e-6)
    assert list(page["meta"]["by_model"]) == ["k2p5", "opus", "sonnet"]  # most used first


# -- GET /agent/{id} ----------------------------------------------------------------------------------
async def test_status_has_the_seed_fields_and_exact_cost(client, config, population):
    for t in population:
        got = await (await client.get(f"/api/agent/{t['agent_id']}")).json()
        for name in ("agent_id", "model", "status", "task", "created", "started", "completed", "result", "cost"):
            assert name in got, name
        model_alias, task = TASKS[t["index"]]
        assert got["model"] == model_alias and got["task"] == task and got["status"] == "completed"
        for name in ("created", "started", "completed"):
            assert ISO_Z.match(got[name]), got[name]
        assert got["created"] <= got["started"] <= got["completed"]
        assert got["result"].startswith(f"[offline:{config.models[model_alias].upstream}]")
        # Offline token counts are ceil(len / 4); cost is tokens x the model's prices.
        assert got["usage"] == {"input_tokens": math.ceil(len(task) / 4),
                                "output_tokens": math.ceil(len(got["result"]) / 4)}
        m = config.models[model_alias]
        u = got["usage"]
        expected = (u["input_tokens"] * m.input_per_1k + u["output_tokens"] * m.output_per_1k) / 1000
        assert got["cost"] > 0 and got["cost"] == pytest.approx(expected, abs=1e-6)
        assert got["served_by"] == {"model": model_alias, "provider": "offline"}
        assert got["estimated_cost"] > 0 and got["error"] is None


async def test_status_of_a_fresh_agent(client):
    s = await spawn(client, "sonnet", "just spawned")
    got = await (await client.get(f"/api/agent/{s['agent_id']}")).json()
    assert got["agent_id"] == s["agent_id"] and got["status"] in ("queued", "running", "completed")
    assert ISO_Z.match(got["created"])


async def test_estimate_matches_the_config(client, config):
    task = "y" * 400
    s = await spawn(client, "sonnet", task)
    m = config.models["sonnet"]
    expected = 100 / 1000 * m.input_per_1k + m.typical_output_tokens / 1000 * m.output_per_1k
    assert s["estimated_cost"] == pytest.approx(expected, abs=1e-6)


# -- GET /agents/active ----------------------------------------------------------------------------------
async def test_active_agents(aiohttp_client, tmp_path):
    """opus is served by a slow provider and stays running; k2p5 completes at once."""
    base = make_config(tmp_path)
    slow = ProviderSettings(name="slow", plugin="offline", max_concurrency=4, options={"delay": 3.0})
    cfg = make_config(tmp_path, providers={"offline": base.providers["offline"], "slow": slow},
                      models=route_models(base, {"opus": "slow"}))
    client = await aiohttp_client(build_app(cfg))

    empty = await (await client.get("/api/agents/active")).json()
    assert empty == {"agents": [], "count": 0, "total_cost_today": 0}

    done = await wait_status(client, (await spawn(client, "k2p5", "quick one"))["agent_id"])
    slow_ids = [(await spawn(client, "opus", f"slow one {i}"))["agent_id"] for i in range(2)]
    for agent_id in slow_ids:
        await wait_status(client, agent_id, ("running",))
    resp = await client.get("/api/agents/active")
    assert resp.status == 200
    body = await resp.json()
    assert body["count"] == 2 == len(body["agents"])
    assert [a["agent_id"] for a in body["agents"]] == slow_ids  # oldest first
    for a in body["agents"]:
        assert set(a) >= {"agent_id", "model", "status", "task"}
        assert a["model"] == "opus" and a["status"] == "running" and a["task"].startswith("slow one")
    assert body["total_cost_today"] == pytest.approx(done["cost"], abs=1e-6)


# -- hostile queries: a 400, never a 500 ---------------------------------------------------------
@pytest.mark.parametrize("value", [
    "[" * 1100,  # deeper than json can recurse, short enough for aiohttp's request line limit
    '{"\\ud800": 1}',
    '{"task": {"contains": "\\ud800"}}', '{"task": {"eq": "a\\udfffb"}}', '{"model": ["k2p5", "\\ud800"]}',
], ids=["deep", "surrogate-key", "surrogate-contains", "surrogate-eq", "surrogate-in"])
async def test_hostile_filters_are_400(client, value):
    resp = await client.get("/api/agents", params={"filter": value})
    assert resp.status == 400, resp.status
    error = (await resp.json())["error"]
    assert error["type"] == "VALIDATION_ERROR" and error["details"]
