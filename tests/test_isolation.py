"""Keys as tenants, isolation (issue 15): a key sees only what it created, on every route and stream.

One daemon on loopback, three keys besides the bootstrap admin: A and B (agents:read,
agents:write, billing:read: ordinary clients) and R (admin:read: reads everything, writes
nothing).  A makes work of every kind (a spawn, a team, a batch, two front-door chat calls,
a live agent, a webhook with deliveries); B makes a little of its own.

The walk takes every route of the app's route table and needs a class for it: a list
that shows work, a route that takes an id of a key's work, a stream, a route that makes
work, or a named exemption with its reason.  A route added later that is in none of them
fails the walk, so a new route that shows work gets classified (and checked) first.
Besides the checks of its class, every GET route B may call is asked with A's ids in its
path, and its answer must hold none of A's marks (agent ids, task text, webhook id and
URL, key id).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import secrets
from typing import Any

import aiohttp
import pytest

from j1mskyd.api.route_table import PUBLIC, ROUTE_TABLE
from j1mskyd.app import build_app
from j1mskyd.config import ModelConfig, WebhooksConfig
from j1mskyd.providers import ProviderSettings
from tests.conftest import auth_config, bearer, bootstrap_key
from tests.receiver import Receiver
from tests.test_events_live import Sse, ws_next

LIMIT = aiohttp.ClientTimeout(total=10)
BOUND = 10.0  # seconds a stream may take to bring an event (no timing is asserted: a generous bound)
USER = ("agents:read", "agents:write", "billing:read")

# -- the classes of the route table -----------------------------------------------------------------
# Paths without their /api (/api/v1) prefix.  "list": shows work in a list, checked below;
# "id": takes an id of a key's work; "stream": checked by test_streams_*; "make": makes work
# owned by the caller (the lists then show it to its key and R only).
LISTS = {("GET", "/agents"), ("GET", "/agents/active"), ("GET", "/events"), ("GET", "/webhooks"), ("GET", "/tasks"),
         ("GET", "/escalations"), ("GET", "/tasks/costs")}
ID_ROUTES = {
    ("GET", "/agent/{agent_id}"), ("DELETE", "/agent/{agent_id}"), ("DELETE", "/agent/{agent_id}/data"),
    ("GET", "/agent/{agent_id}/deliveries"),
    ("GET", "/webhooks/{webhook_id}"), ("PUT", "/webhooks/{webhook_id}"), ("DELETE", "/webhooks/{webhook_id}"),
    ("POST", "/webhooks/{webhook_id}/test"), ("GET", "/webhooks/{webhook_id}/deliveries"),
    ("POST", "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"),
    # Tasks (tests/test_tasks_api.py holds the rest of their tenancy).
    ("GET", "/tasks/{task_id}"), ("PUT", "/tasks/{task_id}"), ("DELETE", "/tasks/{task_id}"),
    ("POST", "/tasks/{task_id}/submit"), ("GET", "/escalations/{esc_id}"),
}
STREAMS = {("GET", "/events/stream"), ("GET", "/ws")}
MAKES = {("POST", "/spawn"), ("POST", "/spawn-team"), ("POST", "/spawn-batch"), ("POST", "/webhooks"),
         ("POST", "/tasks"), ("POST", "/escalations"),
         ("POST", "/v1/chat/completions"), ("POST", "/v1/messages")}
DAEMON_WIDE = "daemon-wide: the daemon's own state, no key's work in it"
EXEMPT = {
    ("GET", "/health"): "public liveness, no key's work",
    ("GET", "/openapi.json"): "public: the API's description",
    ("GET", "/"): "public: the dashboard page (its data comes from the routes checked here)",
    ("GET", "/static/{name}"): "public: the dashboard's files",
    ("POST", "/agent"): "a sunset path: 410 pointing to /spawn",
    ("GET", "/status"): "a sunset path: 410 pointing to /agent/{agent_id}",
    ("DELETE", "/cancel"): "a sunset path: 410 pointing to /agent/{agent_id}",
    ("GET", "/plugins"): DAEMON_WIDE + " (the loaded plugins)",
    ("GET", "/rate-limits"): "the calling key's own counters and the providers' quotas",
    ("GET", "/system"): DAEMON_WIDE + " (aggregate counts, no ids or text)",
    ("GET", "/metrics"): DAEMON_WIDE + " (aggregate counters per route)",
    ("GET", "/metrics/timeseries"): "admin:read only: rolled-up counts and spend of every key's work",
    ("GET", "/billing/usage"): "a key's own spend only, grouped or not (tests/test_billing_groups.py); "
                               "the leak check below still asks it as B",
    ("POST", "/keys"): "admin:write only",
    ("GET", "/keys"): "admin:read only: an admin reads every key",
    ("DELETE", "/keys/{key_id}"): "admin:write only",
    ("POST", "/keys/{key_id}/rotate"): "admin:write only",
    ("POST", "/keys/{key_id}/webhook-secret/rotate"): "admin:write only",
    ("GET", "/security/ip-whitelist"): "admin:read only",
    ("PUT", "/security/ip-whitelist"): "admin:write only",
    ("POST", "/security/block-ip"): "admin:write only",
    ("GET", "/security/blocked-ips"): "admin:read only",
    ("DELETE", "/security/block-ip/{ip}"): "admin:write only",
    ("POST", "/security/audit"): "admin:write only",
    ("GET", "/security/audit"): "admin:read only: the audit log of every key",
    **{(m, p): DAEMON_WIDE + " (the pricing desk: quotes and reports of the daemon's prices)" for m, p in (
        ("POST", "/pricing/quote"), ("POST", "/pricing/batch-quotes"), ("POST", "/pricing/decision"),
        ("POST", "/pricing/scenario"), ("POST", "/pricing/portfolio-alert"), ("POST", "/pricing/weekly-metrics"),
        ("POST", "/pricing/weekly-comparison"), ("POST", "/pricing/experiment-summary"),
        ("POST", "/pricing/exception-alert"), ("GET", "/pricing/weekly-metrics"),
        ("GET", "/pricing/weekly-comparison"), ("GET", "/pricing/experiment-summary"),
        ("GET", "/pricing/exception-alert"), ("GET", "/pricing/exceptions"),
        ("POST", "/pricing/exceptions/{exception_id}/close"), ("GET", "/pricing/status"),
        ("GET", "/pricing/health"), ("GET", "/pricing/report"))},
    ("POST", "/pricing/webhook"): "admin:write only (pricing webhooks)",
    ("GET", "/pricing/webhooks"): "admin:write only (pricing webhooks)",
    ("DELETE", "/pricing/webhook/{webhook_id}"): "admin:write only (pricing webhooks)",
    ("GET", "/orchestrator/status"): DAEMON_WIDE + " (providers, budget level)",
    ("GET", "/cache/status"): DAEMON_WIDE + " (cache sizes)",
    ("POST", "/cache/invalidate"): "admin:write only",
    ("POST", "/admin/reload"): "admin:write only (the daemon's configuration)",
    ("POST", "/orchestrator/recommend-model"): DAEMON_WIDE + " (a recommendation, nothing stored)",
    ("GET", "/models"): DAEMON_WIDE + " (the configured models)",
    ("GET", "/models/{name}"): DAEMON_WIDE + " (a configured model)",
    ("POST", "/models/select"): DAEMON_WIDE + " (a selection, nothing stored)",
    ("POST", "/orchestrator/experiment/results"): DAEMON_WIDE + " (a computation on the sent numbers, nothing "
                                                  "stored)",
    ("GET", "/v1/models"): DAEMON_WIDE + " (the configured models)",
    ("GET", "/v1/models/{name}"): DAEMON_WIDE + " (a configured model)",
    ("POST", "/v1/messages/count_tokens"): "an estimate of the sent text: nothing stored",
    ("GET", "/roles"): DAEMON_WIDE + " (the configured roles)",
    ("GET", "/roles/{role}"): DAEMON_WIDE + " (a configured role)",
    ("PUT", "/roles/{role}"): "admin:write only",
    ("GET", "/roles/{role}/status"): "a role's figures over the caller's own tasks' steps (the leak walk asks it as B)",
    ("GET", "/workflows"): DAEMON_WIDE + " (the configured workflows)",
    ("POST", "/escalations/{esc_id}/decision"): "admin:write only",
}
# The Kyros API (/kyros/v1; docs/kyros.md), by full path: its tenancy tests are
# tests/test_kyros_tasks.py and tests/test_kyros_services.py; here its GETs are walked for A's marks
# and its id routes answer the local caller 404.
K = "/kyros/v1"
KYROS_IDS = {("GET", K + "/tasks/{task_id}"), ("PUT", K + "/tasks/{task_id}"), ("DELETE", K + "/tasks/{task_id}"),
             ("GET", K + "/escalation/{escalation_id}/status"), ("GET", K + "/webhooks/{webhook_id}"),
             ("PUT", K + "/webhooks/{webhook_id}"), ("DELETE", K + "/webhooks/{webhook_id}"),
             ("POST", K + "/webhooks/{webhook_id}/test")}
LISTS |= {("GET", K + "/tasks"), ("GET", K + "/escalations"), ("GET", K + "/webhooks")}
STREAMS |= {("GET", K + "/ws")}
MAKES |= {("POST", K + "/tasks"), ("POST", K + "/agents/{role}/submit"), ("POST", K + "/escalation/submit"),
          ("POST", K + "/webhooks")}
EXEMPT |= {
    ("GET", K + "/models"): DAEMON_WIDE + " (the configured models)",
    ("GET", K + "/models/{model_name}"): DAEMON_WIDE + " (a configured model)",
    ("POST", K + "/models/select"): DAEMON_WIDE + " (a selection, nothing stored)",
    ("GET", K + "/monitoring/health"): DAEMON_WIDE + " (providers, database, models)",
    ("GET", K + "/monitoring/metrics"): "admin:read only: rolled-up counts and spend of every key's work",
    ("GET", K + "/monitoring/costs"): "a key's own tasks' spend (TaskService.costs with its viewer)",
    ("GET", K + "/monitoring/alerts"): "the budget's daemon-wide events and open breakers, as the key's viewer reads "
                                       "the event log",
    ("GET", K + "/agents/{role}/status"): "a role's figures over the key's own steps",
    ("GET", K + "/agents/{role}/configuration"): DAEMON_WIDE + " (a role's configuration)",
    ("PUT", K + "/agents/{role}/configuration"): "admin:write only",
    ("GET", K + "/configuration/agents/{role}"): DAEMON_WIDE + " (a role's configuration)",
    ("GET", K + "/configuration"): DAEMON_WIDE + " (the roles' configuration)",
    ("PUT", K + "/configuration"): "admin:write only",
    ("POST", K + "/escalation/{escalation_id}/approve"): "admin:write only",
}
# The key and project routes: their own tests hold the key's-own rule there (another key's id
# or project: 404; tests/test_key_limits_api.py, tests/test_projects.py).
EXEMPT |= {
    ("GET", "/keys/me"): "the calling key's own record (scope 'key')",
    ("GET", "/keys/{key_id}"): "admin:read, or the key's own id (another key's: 404)",
    ("PATCH", "/keys/{key_id}"): "admin:write only",
    ("POST", "/projects"): "admin:write only",
    ("GET", "/projects"): "admin:read only",
    ("GET", "/projects/{project_id}"): "admin:read, or a member key's own project (another: 404)",
    ("PATCH", "/projects/{project_id}"): "admin:write only",
    ("DELETE", "/projects/{project_id}"): "admin:write only",
}


def _bare(path: str) -> str:
    for prefix in ("/api/v1", "/api"):
        if path.startswith(prefix + "/"):
            return path[len(prefix):]
    return path


@dataclasses.dataclass
class Key:
    key_id: str
    token: str

    @property
    def h(self) -> dict[str, str]:
        return bearer(self.token)


@dataclasses.dataclass
class World:
    client: Any
    admin: Key
    a: Key
    b: Key
    r: Key
    receivers: dict[str, Receiver]  # one per key's webhook: "a", "b", "r"
    task: str                       # the text of A's work
    agent: str                      # A's spawn, completed
    team: str                       # A's team agent
    members: list[str]
    batch: str
    chats: list[str]                # A's front-door calls (kind chat)
    live: str                       # A's agent that keeps running
    hook: str                       # A's webhook
    delivery: str                   # one of its deliveries, delivered
    b_agent: str
    b_hook: str
    a_task: str                     # A's task (pending), its title the text of A's work
    a_esc: str                      # an escalation of it

    @property
    def a_ids(self) -> list[str]:
        return [self.agent, self.team, *self.members, self.batch, *self.chats, self.live]

    @property
    def marks(self) -> list[str]:
        """What no answer to B may hold."""
        return [*self.a_ids, self.task, self.hook, self.receivers["a"].url, self.a.key_id, self.a_task, self.a_esc]


def _config(tmp_path):
    # The keyless local caller is on (the embedded default's local_scopes): every proof here
    # holds with it, and test_the_local_caller_* holds it to the same rules.
    cfg = auth_config(tmp_path, local_scopes=USER)
    base = cfg.providers["offline"]
    slow = ProviderSettings(name="slow", plugin="offline", max_concurrency=4, options={"delay": 60.0})
    models = {**cfg.models, "slowpoke": ModelConfig("slowpoke", "slow", "slowpoke", 0.001, 0.002, 0.0015)}
    return dataclasses.replace(
        cfg, providers={"offline": base, "slow": slow}, models=models,
        webhooks=WebhooksConfig(allowed_networks=("127.0.0.0/8",)),
        budget=dataclasses.replace(cfg.budget, daily_budget=10_000.0, monthly_ceiling=300_000.0,
                                   spike_per_hour=10_000.0))


async def _json(resp) -> Any:
    text = await resp.text()
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _ok(resp, status: int = 200) -> Any:
    body = await _json(resp)
    assert resp.status == status, body
    return body


async def _new_key(client, admin: Key, *scopes: str) -> Key:
    body = await _ok(await client.post("/api/keys", json={"name": "k", "scopes": list(scopes)}, headers=admin.h), 201)
    return Key(body["key_id"], body["token"])


async def _settled(client, key: Key, agent_id: str) -> dict:
    for _ in range(1000):
        body = await _ok(await client.get(f"/api/agent/{agent_id}", headers=key.h))
        if body["status"] in ("completed", "failed", "cancelled"):
            return body
        await asyncio.sleep(0.01)
    raise AssertionError(f"{agent_id} did not finish")


async def _until(predicate, what: str) -> Any:
    for _ in range(1000):
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def make_world(aiohttp_client, tmp_path, receivers: dict[str, Receiver]) -> World:
    cfg = _config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    boot = bootstrap_key(cfg)
    admin = Key(boot["key_id"], boot["token"])
    a, b = await _new_key(client, admin, *USER), await _new_key(client, admin, *USER)
    r = await _new_key(client, admin, "admin:read")
    task = "the task of A " + secrets.token_hex(6)

    hook = (await _ok(await client.post("/api/webhooks", json={"url": receivers["a"].url, "events": ["*"]},
                                        headers=a.h), 201))["data"]["webhook_id"]
    b_hook = (await _ok(await client.post("/api/webhooks", json={"url": receivers["b"].url, "events": ["*"]},
                                          headers=b.h), 201))["data"]["webhook_id"]
    agent = (await _ok(await client.post("/api/spawn", json={"model": "k2p5", "task": task}, headers=a.h)))["agent_id"]
    team_body = await _ok(await client.post("/api/spawn-team", json={"team": "team_coding", "task": task}, headers=a.h))
    batch = (await _ok(await client.post("/api/spawn-batch", json={"agents": [{"model": "k2p5", "task": task}]},
                                         headers=a.h)))["agents"][0]["agent_id"]
    await _ok(await client.post("/v1/chat/completions", headers=a.h, json={
        "model": "k2p5", "messages": [{"role": "user", "content": task}]}))
    await _ok(await client.post("/v1/messages", headers=a.h, json={
        "model": "k2p5", "max_tokens": 64, "messages": [{"role": "user", "content": task}]}))
    live = (await _ok(await client.post("/api/spawn", json={"model": "slowpoke", "task": task},
                                        headers=a.h)))["agent_id"]
    b_agent = (await _ok(await client.post("/api/spawn", json={"model": "k2p5", "task": "B's own task"},
                                           headers=b.h)))["agent_id"]
    for agent_id in (agent, team_body["agent_id"], batch, b_agent):
        await _settled(client, a if agent_id != b_agent else b, agent_id)
    chats = [x["agent_id"] for x in (await _ok(await client.get("/api/agents?kind=chat", headers=a.h)))["data"]]
    assert len(chats) == 2

    async def delivered() -> str | None:
        rows = (await _ok(await client.get(f"/api/webhooks/{hook}/deliveries?status=delivered", headers=a.h)))["data"]
        return rows[0]["delivery_id"] if rows else None

    delivery = await _until(delivered, "a delivery of A's webhook")
    a_task = (await _ok(await client.post("/api/tasks", json={"title": task, "type": "review", "start": False},
                                          headers=a.h), 201))["id"]
    a_esc = (await _ok(await client.post("/api/escalations", json={"task_id": a_task, "reason": task},
                                         headers=a.h), 201))["escalation_id"]
    return World(client, admin, a, b, r, receivers, task, agent, team_body["agent_id"], team_body["members"], batch,
                 chats, live, hook, delivery, b_agent, b_hook, a_task, a_esc)


@pytest.fixture
async def receivers():
    recs = {name: await Receiver(secret=None).start() for name in ("a", "b", "r")}
    yield recs
    for rec in recs.values():
        await rec.stop()


@pytest.fixture
async def world(aiohttp_client, tmp_path, receivers) -> World:
    return await make_world(aiohttp_client, tmp_path, receivers)


def leaks(world: World, body: Any) -> list[str]:
    text = body if isinstance(body, str) else json.dumps(body)
    return [m for m in world.marks if m in text]


# -- the walk ----------------------------------------------------------------------------------------
def _body(method: str, bare: str) -> dict[str, str] | None:
    """A valid body for a route that reads one (so that an id route answers for its id, not its body)."""
    if bare.endswith("/submit"):
        return {"role": "critic"}
    return {"description": "x"} if method in ("PUT", "PATCH", "POST") else None


def _fill(pattern: str, world: World) -> str:
    values = {"agent_id": world.agent, "webhook_id": world.hook, "delivery_id": world.delivery,
              "key_id": world.a.key_id, "name": "k2p5", "ip": "127.0.0.9", "exception_id": "exc_x",
              "project_id": "prj_000000000000", "task_id": world.a_task, "esc_id": world.a_esc, "role": "critic",
              "escalation_id": world.a_esc, "model_name": "k2p5"}  # the last two: Kyros's names
    return re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], pattern)


async def test_every_route_is_classified_and_no_get_shows_a_work_of_a_to_b(world):
    table = world.client.app[ROUTE_TABLE]
    unclassified, leaked = [], []
    for (method, pattern), scope in sorted(table.scopes.items()):
        bare = _bare(pattern)
        key = (method, bare)
        if key not in LISTS | ID_ROUTES | KYROS_IDS | STREAMS | MAKES and key not in EXEMPT:
            unclassified.append(f"{method} {pattern} ({scope})")
        if method != "GET" or key in STREAMS:
            continue
        path = _fill(pattern, world)
        resp = await world.client.get(path, headers=world.b.h, timeout=LIMIT)
        # An id B sent is B's to read back (a 404 names it): anything else of A's is a leak.
        found = [m for m in leaks(world, await _json(resp)) if m not in path]
        if found:
            leaked.append(f"{pattern} -> {resp.status}: {found}")
        if scope == PUBLIC:
            assert key in EXEMPT, pattern
    assert unclassified == [], "classify these routes in tests/test_isolation.py"
    assert leaked == []
    # Every class names routes the app has (a renamed route cannot hide behind a stale entry).
    bare_routes = {(m, _bare(p)) for m, p in table.scopes}
    assert (LISTS | ID_ROUTES | KYROS_IDS | STREAMS | MAKES | set(EXEMPT)) - bare_routes == set()


async def test_the_walk_fails_on_a_new_route_that_shows_work(aiohttp_client, tmp_path):
    """The classification bites: a route added to the table without a class is reported."""
    cfg = _config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    table = client.app[ROUTE_TABLE]
    known = LISTS | ID_ROUTES | KYROS_IDS | STREAMS | MAKES | set(EXEMPT)
    table.scopes[("GET", "/api/agents/everyone")] = "agents:read"  # as RouteTable.add would record it
    assert [p for (m, p) in table.scopes if (m, _bare(p)) not in known] == ["/api/agents/everyone"]


async def _ids(client, key: Key, path: str) -> set[str]:
    body = await _ok(await client.get(path, headers=key.h))
    items = body.get("data") if isinstance(body.get("data"), list) else body.get("agents", [])
    return {x.get("agent_id") or x.get("webhook_id") or (x.get("data") or {}).get("agent_id") for x in items}


async def test_lists_show_a_work_to_a_and_to_admin_read_only(world):
    c, a, b, r = world.client, world.a, world.b, world.r
    mine = {world.agent, world.team, world.batch, *world.chats, world.live}
    for prefix in ("/api", "/api/v1"):
        for path, expected in ((f"{prefix}/agents?limit=100", mine),
                               (f"{prefix}/agents?limit=100&include_members=true", mine | set(world.members)),
                               (f"{prefix}/agents?kind=chat", set(world.chats)),
                               (f"{prefix}/agents?status=completed&sort=cost&limit=100", mine - {world.live}),
                               (f"{prefix}/agents?filter=" + json.dumps({"task": {"contains": world.task[-12:]}})
                                + "&limit=100", mine),  # a filter on the sealed task: decrypted, filtered in Python
                               (f"{prefix}/agents/active", {world.live})):
            assert (await _ids(c, a, path)) == expected, path
            assert (await _ids(c, r, path)) >= expected, path
            assert (await _ids(c, b, path)).isdisjoint(expected | set(world.members)), path
        # B's own page: its one agent, its counts and total (A's spend not in it).
        page = await _ok(await c.get(f"{prefix}/agents?include_members=true&limit=1", headers=b.h))
        assert page["pagination"]["total"] == 1 and page["pagination"]["has_more"] is False
        assert set(page["meta"]["by_model"]) == {"k2p5"}
        b_cost = (await _ok(await c.get(f"/api/agent/{world.b_agent}", headers=b.h)))["cost"]
        assert page["meta"]["total_cost"] == pytest.approx(b_cost, abs=1e-6)
        # A sees_all viewer filters by key; another key's filter selects nothing for B.
        assert (await _ids(c, r, f"{prefix}/agents?api_key={a.key_id}&limit=100")) == mine
        assert (await _ids(c, r, f"{prefix}/agents?api_key={b.key_id}")) == {world.b_agent}
        assert (await _ids(c, b, f"{prefix}/agents?api_key={a.key_id}")) == set()
        # Webhooks: each key its own; R all.
        assert (await _ids(c, a, f"{prefix}/webhooks")) == {world.hook}
        assert (await _ids(c, b, f"{prefix}/webhooks")) == {world.b_hook}
        assert (await _ids(c, r, f"{prefix}/webhooks")) >= {world.hook, world.b_hook}
        # Events: A's agent events to A and R, never to B.
        events = f"{prefix}/events?limit=500"
        assert {world.agent, world.team} <= await _ids(c, a, events)
        assert {world.agent, world.b_agent} <= await _ids(c, r, events)
        assert (await _ids(c, b, events)).isdisjoint(world.a_ids)
        assert world.b_agent in await _ids(c, b, events)
    # /agents/active's total: the key's own spend today for B, the daemon's for R.
    b_today = (await _ok(await c.get("/api/agents/active", headers=b.h)))["total_cost_today"]
    all_today = (await _ok(await c.get("/api/agents/active", headers=r.h)))["total_cost_today"]
    assert b_today == pytest.approx(b_cost, abs=1e-6) and all_today > b_today


async def _error(resp, status: int) -> dict:
    body = await _json(resp)
    assert resp.status == status, body
    return body["error"]


async def test_every_id_route_answers_b_404_as_for_an_unknown_id(world):
    c, a, b, r = world.client, world.a, world.b, world.r
    unknown = {"agent_id": "subagent_1_0000", "webhook_id": "webhook_000000000000", "delivery_id": "dlv_0",
               "task_id": "task_0000000000000000", "esc_id": "esc_0000000000000000"}
    checked = set()
    for prefix in ("/api", "/api/v1"):
        for method, bare in sorted(ID_ROUTES):
            ids_of_a = {"agent_id": world.agent, "webhook_id": world.hook, "delivery_id": world.delivery,
                        "task_id": world.a_task, "esc_id": world.a_esc}
            agent_ids = [world.agent, world.team, *world.members, world.chats[0], world.live] \
                if "{agent_id}" in bare else [None]
            for agent_id in agent_ids:
                if agent_id:
                    ids_of_a["agent_id"] = agent_id
                path = prefix + re.sub(r"\{([^}]+)\}", lambda m: ids_of_a[m.group(1)], bare)
                body = _body(method, bare) if method in ("PUT", "POST") and bare != "/webhooks/{webhook_id}/test" \
                    and "redeliver" not in bare else None
                theirs = await _error(await c.request(method, path, json=body, headers=b.h), 404)
                # The unknown id's answer, for the same shape of path.
                if "{webhook_id}" in bare and "{delivery_id}" in bare:
                    # B's own webhook with A's delivery id is as unknown as any delivery of it.
                    fake = prefix + bare.replace("{webhook_id}", unknown["webhook_id"]).replace(
                        "{delivery_id}", world.delivery)
                else:
                    fake = prefix + re.sub(r"\{([^}]+)\}", lambda m: unknown[m.group(1)], bare)
                none = await _error(await c.request(method, fake, json=body, headers=b.h), 404)
                for id_name, value in ids_of_a.items():
                    theirs["message"] = theirs["message"].replace(value, "ID")
                    none["message"] = none["message"].replace(unknown[id_name], "ID")
                assert (theirs["type"], theirs["message"]) == (none["type"], none["message"]), path
                checked.add((method, bare))
                # R sees A's work: a read answers, a write is refused with 403 (it sees it: nothing confirmed).
                resp = await c.request(method, path, json=body, headers=r.h)
                if method == "GET":
                    assert resp.status == 200, (path, await resp.text())
                else:
                    assert (await _error(resp, 403))["type"] == "FORBIDDEN", path
    assert checked == ID_ROUTES
    # A itself reaches its work through them (the 404s above are not a route that is broken).
    assert (await _ok(await c.get(f"/api/agent/{world.team}", headers=a.h)))["members"]
    assert (await _ok(await c.request("DELETE", f"/api/agent/{world.live}", headers=a.h)))["success"] is True
    assert (await _ok(await c.request("DELETE", f"/api/agent/{world.agent}/data", headers=a.h)))["success"] is True
    await _ok(await c.post(f"/api/webhooks/{world.hook}/deliveries/{world.delivery}/redeliver", headers=a.h), 202)
    await _ok(await c.post(f"/api/webhooks/{world.hook}/test", headers=a.h), 202)
    await _ok(await c.put(f"/api/webhooks/{world.hook}", json={"description": "mine"}, headers=a.h))
    await _ok(await c.delete(f"/api/webhooks/{world.hook}", headers=a.h))
    # The admin (admin:write) changes any key's work.
    await _ok(await c.delete(f"/api/webhooks/{world.b_hook}", headers=world.admin.h))


# -- streams ----------------------------------------------------------------------------------------
async def _open_ws(client, key: Key, events: list[str]):
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "auth", "token": key.token})
    assert (await ws_next(ws, BOUND))["success"] is True
    await ws.send_json({"type": "subscribe", "events": events})
    assert (await ws_next(ws, BOUND))["type"] == "subscribed"
    return ws


async def _sse_until(sse: Sse, agent_id: str, kind: str = "agent.completed") -> list[dict]:
    seen = []
    while True:
        event = await sse.next(BOUND)
        assert event is not None, "the stream ended"
        seen.append(event)
        if event["event"] == kind and event["data"]["data"].get("agent_id") == agent_id:
            return seen


async def _ws_until(ws, agent_id: str, kind: str = "agent.completed") -> list[dict]:
    seen = []
    while True:
        msg = await ws_next(ws, BOUND)
        seen.append(msg)
        if msg.get("type") == kind and msg.get("data", {}).get("agent_id") == agent_id:
            return seen


async def test_streams_never_carry_a_events_to_b_live_or_replayed(world):
    """SSE and WebSocket, live and replayed: B gets its own events and the daemon-wide ones,
    R (admin:read) gets both keys'.  Events are sent in id order, so once B's stream has
    brought B's later event, any event of A's would have come before it."""
    c, a, b, r = world.client, world.a, world.b, world.r
    streams = {}
    for name, key in (("a", a), ("b", b), ("r", r)):
        resp = await c.get("/api/events/stream", headers=key.h)
        assert resp.status == 200
        sse = Sse(resp)
        # Live-only agent.started goes to the readers that name it: they all do.
        ws = await _open_ws(c, key, ["agent.spawned", "agent.started", "agent.completed"])
        streams[name] = (sse, ws)
    a_new = (await _ok(await c.post("/api/spawn", json={"model": "k2p5", "task": world.task}, headers=a.h)))["agent_id"]
    seen_r = await _sse_until(streams["r"][0], a_new) + await _ws_until(streams["r"][1], a_new)
    seen_a = await _sse_until(streams["a"][0], a_new) + await _ws_until(streams["a"][1], a_new)
    b_new = (await _ok(await c.post("/api/spawn", json={"model": "k2p5", "task": "B again"}, headers=b.h)))["agent_id"]
    seen_b = await _sse_until(streams["b"][0], b_new) + await _ws_until(streams["b"][1], b_new)
    seen_r += await _sse_until(streams["r"][0], b_new) + await _ws_until(streams["r"][1], b_new)
    marks = [*world.marks, a_new]
    assert not [m for m in marks if m in json.dumps(seen_b)], "B's live streams carried A's events"
    assert any(m.get("type") == "agent.started" for m in seen_b)  # the live-only events of its own did come
    assert a_new in json.dumps(seen_a) and b_new not in json.dumps(seen_a)
    assert a_new in json.dumps(seen_r) and b_new in json.dumps(seen_r)
    for sse, ws in streams.values():
        sse.resp.close()
        await ws.close()

    # Replayed from the start: SSE with Last-Event-ID 0, WebSocket with last_event_id 0.
    resp = await c.get("/api/events/stream", headers={**b.h, "Last-Event-ID": "0"})
    replay_sse = await _sse_until(Sse(resp), b_new)
    resp.close()
    ws = await c.ws_connect("/api/ws")
    await ws.send_json({"type": "auth", "token": b.token})
    await ws_next(ws, BOUND)
    await ws.send_json({"type": "subscribe", "events": ["*"], "last_event_id": 0})
    replay_ws = await _ws_until(ws, b_new)
    await ws.close()
    assert world.b_agent in json.dumps(replay_sse) and world.b_agent in json.dumps(replay_ws)
    assert not [m for m in marks if m in json.dumps(replay_sse + replay_ws)], "a replay carried A's events"
    # R's replay holds A's history.
    resp = await c.get("/api/events/stream", headers={**r.h, "Last-Event-ID": "0"})
    assert world.agent in json.dumps(await _sse_until(Sse(resp), b_new))
    resp.close()


async def test_a_key_webhook_gets_only_its_own_work(world):
    """B's webhook (events "*") gets B's agent events and none of A's; an admin's webhook gets every key's."""
    c, a, b = world.client, world.a, world.b
    await _ok(await c.post("/api/webhooks", json={"url": world.receivers["r"].url, "events": ["*"]},
                           headers=world.admin.h), 201)
    a_new = (await _ok(await c.post("/api/spawn", json={"model": "k2p5", "task": world.task}, headers=a.h)))["agent_id"]
    await _settled(c, a, a_new)  # A's events are written (and routed) before any of B's below
    b_new = (await _ok(await c.post("/api/spawn", json={"model": "k2p5", "task": "B"}, headers=b.h)))["agent_id"]

    def at(name: str) -> list[dict]:
        return [x.payload for x in world.receivers[name].received]

    async def b_done() -> bool:
        return any(p["event"] == "agent.completed" and p["data"].get("agent_id") == b_new for p in at("b"))

    async def r_both() -> bool:
        return {a_new, b_new} <= {p["data"].get("agent_id") for p in at("r")}

    async def a_own() -> bool:  # each webhook drains on its own: A's is not waited for by B's or R's
        return a_new in json.dumps(at("a"))

    # A webhook's deliveries go out in order: had B's webhook been routed A's earlier events,
    # they would have arrived before B's completion.
    await _until(b_done, "B's completion at B's webhook")
    await _until(r_both, "both keys' events at R's webhook")
    await _until(a_own, "A's agent at A's webhook")
    assert not [m for m in [*world.marks, a_new] if m in json.dumps(at("b"))]
    assert world.b_agent in json.dumps(at("b"))
    assert a_new in json.dumps(at("a"))


async def test_daemon_wide_events_reach_a_key_webhook_only_when_named(world):
    """A daemon-wide event (no owner) goes to a non-admin key's webhook only when it named its
    type; an admin's "*" takes it; another key's event never reaches B's."""
    c, b = world.client, world.b
    named = (await _ok(await c.post("/api/webhooks", json={"url": world.receivers["b"].url,
                                                           "events": ["budget.warning"]}, headers=b.h), 201))["data"]
    r_all = (await _ok(await c.post("/api/webhooks", json={"url": world.receivers["r"].url, "events": ["*"]},
                                    headers=world.admin.h), 201))["data"]
    hooks = _services(c).webhooks
    routed = set(hooks.route("budget.warning", {}, None))
    assert named["webhook_id"] in routed and r_all["webhook_id"] in routed
    assert world.b_hook not in routed  # B's "*" does not take daemon-wide events
    assert world.hook not in routed
    of_a = set(hooks.route("agent.completed", {"agent_id": world.agent}, world.a.key_id))
    assert world.hook in of_a and r_all["webhook_id"] in of_a
    assert world.b_hook not in of_a and named["webhook_id"] not in of_a


def _services(client) -> Any:
    from j1mskyd.api.common import SERVICES
    return client.app[SERVICES]


# -- the local caller ([security] local_scopes) -------------------------------------------------------
async def test_the_local_caller_sees_no_key_s_work_and_reaches_no_admin_route(world):
    """A request with no key from loopback is the local caller: on every route its scopes do
    not cover (keys, projects, security, audit, admin) it gets the 401 of a missing key; on
    the others it holds none of A's marks, A's ids answer it 404 as unknown ids do, and what
    it makes is ownerless: shown to it and to keys that see all, never to A or B."""
    c, a, b, r = world.client, world.a, world.b, world.r
    table = c.app[ROUTE_TABLE]
    unrefused, leaked, confirmed = [], [], []
    for (method, pattern), scope in sorted(table.scopes.items()):
        bare = _bare(pattern)
        if scope == PUBLIC or (method, bare) in STREAMS | MAKES:
            continue
        path = _fill(pattern, world)
        body = _body(method, bare)
        if scope not in USER:
            resp = await c.request(method, path, json=body, timeout=LIMIT)
            error = (await _json(resp))["error"]  # the native envelope's type, Kyros's code
            if resp.status != 401 or error.get("type", error["code"]) != "UNAUTHORIZED":
                unrefused.append(f"{method} {pattern} ({scope}) -> {resp.status}")
        elif (method, bare) in ID_ROUTES | KYROS_IDS:
            if (await c.request(method, path, json=body, timeout=LIMIT)).status != 404:
                confirmed.append(f"{method} {pattern}")
        elif method == "GET":
            found = [m for m in leaks(world, await _json(await c.get(path, timeout=LIMIT))) if m not in path]
            if found:
                leaked.append(f"{pattern}: {found}")
    assert unrefused == [], "the local caller reached a route its local_scopes do not grant"
    assert confirmed == [], "an id route confirmed A's id to the local caller"
    assert leaked == []
    # What it makes is ownerless: its own and the admins' to see, not A's or B's.
    mine = (await _ok(await c.post("/api/spawn", json={"model": "k2p5", "task": "local work"})))["agent_id"]
    assert (await _ok(await c.get(f"/api/agent/{mine}")))["agent_id"] == mine
    listed = {x["agent_id"] for x in (await _ok(await c.get("/api/agents?limit=100")))["data"]}
    assert listed == {mine}
    for key in (a, b):
        assert (await c.get(f"/api/agent/{mine}", headers=key.h)).status == 404
    assert mine in {x["agent_id"] for x in (await _ok(await c.get("/api/agents?limit=100", headers=r.h)))["data"]}


async def test_the_local_caller_s_streams_and_webhooks_carry_no_key_s_events(world):
    """Live and replayed (SSE, WebSocket without a key or an auth message) and at its webhook:
    the local caller gets its own (ownerless) agents' events, never A's."""
    c, a = world.client, world.a
    resp = await c.get("/api/events/stream", headers={"Last-Event-ID": "0"})
    assert resp.status == 200
    sse = Sse(resp)
    ws = await c.ws_connect("/api/ws")
    await ws.send_json({"type": "subscribe", "events": ["*"], "last_event_id": 0})  # no auth message: local
    assert (await ws_next(ws, BOUND))["type"] == "subscribed"
    hook = (await _ok(await c.post("/api/webhooks", json={"url": world.receivers["r"].url, "events": ["*"]}),
                      201))["data"]["webhook_id"]
    a_new = (await _ok(await c.post("/api/spawn", json={"model": "k2p5", "task": world.task}, headers=a.h)))["agent_id"]
    await _settled(c, a, a_new)
    mine = (await _ok(await c.post("/api/spawn", json={"model": "k2p5", "task": "local"})))["agent_id"]
    seen = await _sse_until(sse, mine) + await _ws_until(ws, mine)
    resp.close()
    await ws.close()

    async def delivered() -> bool:
        return any(x.payload["data"].get("agent_id") == mine and x.payload["event"] == "agent.completed"
                   for x in world.receivers["r"].received)

    await _until(delivered, "the local caller's completion at its webhook")
    at_hook = [x.payload for x in world.receivers["r"].received]
    marks = [*world.marks, a_new]
    assert not [m for m in marks if m in json.dumps(seen)], "the local caller's streams carried A's events"
    assert not [m for m in marks if m in json.dumps(at_hook)], "the local caller's webhook got A's events"
    assert mine in json.dumps(seen)
    hooks = _services(c).webhooks
    assert hook not in hooks.route("agent.completed", {"agent_id": a_new}, a.key_id)
    assert hook in hooks.route("agent.completed", {"agent_id": mine}, "anonymous")


# -- idempotency records are per key ---------------------------------------------------------------
async def test_another_key_replaying_an_idempotency_key_gets_its_own_fresh_result(world):
    """Idempotency records are keyed by (api key, Idempotency-Key): B sending A's
    Idempotency-Key with A's very body makes B's own agent; it never gets A's answer."""
    c, a, b = world.client, world.a, world.b
    body = {"model": "k2p5", "task": world.task}
    first = await _ok(await c.post("/api/spawn", json=body, headers={**a.h, "Idempotency-Key": "shared-1"}))
    again = await _ok(await c.post("/api/spawn", json=body, headers={**a.h, "Idempotency-Key": "shared-1"}))
    assert again["agent_id"] == first["agent_id"]  # A's replay: the record is there, and answers A
    resp = await c.post("/api/spawn", json=body, headers={**b.h, "Idempotency-Key": "shared-1"})
    theirs = await _ok(resp)
    assert theirs["agent_id"] != first["agent_id"]
    assert not [m for m in world.marks if m in json.dumps(theirs)]
    assert resp.headers.get("Idempotent-Replayed", "false") != "true"
    # The fresh agent is B's own: B reads it, A does not even learn it exists.
    await _ok(await c.get(f"/api/agent/{theirs['agent_id']}", headers=b.h))
    await _error(await c.get(f"/api/agent/{theirs['agent_id']}", headers=a.h), 404)
    # And B's own replay answers B's result, not A's.
    replay = await _ok(await c.post("/api/spawn", json=body, headers={**b.h, "Idempotency-Key": "shared-1"}))
    assert replay["agent_id"] == theirs["agent_id"]


async def test_events_stored_before_they_had_owners_are_shown_to_admins_only(world):
    """An agent event stored without an owner (written before migration 8 gave events one) is
    not taken for a daemon-wide one: a key that sees all reads it, B does not; a daemon-wide
    event (a budget level) B reads."""
    c, b, r = world.client, world.b, world.r
    services = _services(c)
    old, old_stmts = services.events.statements("agent.completed", {"agent_id": "subagent_0_old", "task": "old"})
    wide, wide_stmts = services.events.statements("budget.warning", {"level": "warning"})
    await services.store.write(*old_stmts, *wide_stmts)
    b_ids = {e["id"] for e in (await _ok(await c.get("/api/events?limit=500", headers=b.h)))["data"]}
    r_ids = {e["id"] for e in (await _ok(await c.get("/api/events?limit=500", headers=r.h)))["data"]}
    assert wide.id in b_ids and old.id not in b_ids
    assert {wide.id, old.id} <= r_ids


async def test_a_websocket_that_authenticates_again_goes_on_as_the_new_key(world):
    """A socket subscribed as R (sees all), then authenticated as B: from then on it carries
    B's view, not R's (A's next agent does not reach it, B's does)."""
    c, a, b = world.client, world.a, world.b
    ws = await _open_ws(c, world.r, ["agent.completed"])
    await ws.send_json({"type": "auth", "token": b.token})
    while (reply := await ws_next(ws, BOUND)).get("type") != "auth":
        pass  # the replay of R's history may come first
    assert reply["success"] is True
    a_new = (await _ok(await c.post("/api/spawn", json={"model": "k2p5", "task": world.task}, headers=a.h)))["agent_id"]
    await _settled(c, a, a_new)
    b_new = (await _ok(await c.post("/api/spawn", json={"model": "k2p5", "task": "B"}, headers=b.h)))["agent_id"]
    seen = await _ws_until(ws, b_new)
    await ws.close()
    assert a_new not in json.dumps(seen)


async def test_the_target_policy_holds_for_a_webhook_made_by_any_key(world, loopback_only):
    """Any key with agents:write makes webhooks now: the target policy refuses an inside
    address from it as from an admin (literal addresses: judged without a connection or a
    lookup; loopback_only fails the test should anything try one), and nothing is stored."""
    c, b = world.client, world.b
    before = await _ids(c, world.r, "/api/webhooks")
    for url in ("http://169.254.169.254/latest/meta-data", "http://10.0.0.1/hook", "http://[fd00::1]/hook"):
        error = await _error(await c.post("/api/webhooks", json={"url": url, "events": ["*"]}, headers=b.h), 400)
        assert "refused" in json.dumps(error), error
    assert await _ids(c, world.r, "/api/webhooks") == before
