"""How the daemon is put together (issue 13 item 3): services wired by construction, one
start-up step per resource, no import cycles, a Services bag holding only what handlers
reach; and the providers' HTTP session sized from the configured concurrency limits."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web

from j1mskyd import app as app_module
from j1mskyd.app import LIFECYCLE, Services, build_app, upstream_connector
from j1mskyd.api.common import METRICS, SERVICES
from j1mskyd.events import EventLog
from j1mskyd.provider_pool import Releases
from j1mskyd.providers import ProviderSettings
from tests.conftest import make_config, route_models
from tests.fakeupstream import FakeUpstream

PACKAGE = Path(app_module.__file__).parent


class HoldingUpstream(FakeUpstream):
    """A fake upstream that holds every call until released, counting those in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.peak = 0
        self.target = 0
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def _begin(self, request: web.Request):
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.peak >= self.target:
            self.reached.set()
        try:
            await self.release.wait()
            return await super()._begin(request)
        finally:
            self.in_flight -= 1


# -- the upstream connection pool -----------------------------------------------------------
async def test_a_provider_max_concurrency_of_300_opens_300_upstream_calls(aiohttp_client, tmp_path):
    upstream = await HoldingUpstream().start()
    upstream.target = 300
    try:
        base = make_config(tmp_path, runtime={"max_concurrency": 10_000, "max_batch": 100})
        providers = dict(base.providers) | {"slow": ProviderSettings(
            name="slow", plugin="openai_compat", base_url=upstream.url + "/v1", api_key="sk-test", timeout=120,
            max_concurrency=300, hourly_limit=10_000)}
        cfg = dataclasses.replace(base, providers=providers, models=route_models(base, {"k2p5": "slow"}))
        client = await aiohttp_client(build_app(cfg))
        for _ in range(3):
            resp = await client.post("/api/spawn-batch",
                                     json={"agents": [{"model": "k2p5", "task": "hold"}] * 100})
            assert resp.status == 200, await resp.text()
        try:  # the default connector stopped at 100; a generous bound for a loaded machine
            await asyncio.wait_for(upstream.reached.wait(), 60)
        except asyncio.TimeoutError:
            pass
        assert upstream.peak == 300, f"the upstream saw at most {upstream.peak} calls at once"
        health = await (await client.get("/api/health")).json()
        assert health["agents"]["running"] == 300
        upstream.release.set()
    finally:
        upstream.release.set()
        await upstream.close()


async def test_the_upstream_pool_follows_the_runtime_limit():
    cfg = make_config(Path("/nonexistent"), runtime={"max_concurrency": 10_000})
    connector = upstream_connector(cfg)
    try:
        assert (connector.limit, connector.limit_per_host) == (10_000, 0)
    finally:
        await connector.close()


# -- wiring by construction ---------------------------------------------------------------
def test_app_wires_services_by_construction_only():
    """No service gets a dependency poked into it after construction (``x.attr = ...`` or
    ``x.attr.append(...)`` in app.py): the hidden loops of old came in that way.  The
    aiohttp app's own hooks (app.cleanup_ctx, app.on_shutdown) are how aiohttp is told."""
    tree = ast.parse((PACKAGE / "app.py").read_text())
    poked = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        poked += [ast.unparse(t) for t in targets if isinstance(t, ast.Attribute)]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("append", "extend", "add") and isinstance(node.func.value, ast.Attribute)
                and ast.unparse(node.func.value.value) != "app"):
            poked.append(ast.unparse(node.func))
    assert poked == []


def test_no_callback_is_poked_into_another_object():
    """Callbacks (``on_*``) are given to a constructor or subscribed through a method, never
    assigned onto another object (as the runtime once set each provider slot's ``on_release``):
    anywhere in the package, only ``self.on_x = ...`` may set one."""
    poked = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            poked += [f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(t)}" for t in targets
                      if isinstance(t, ast.Attribute) and t.attr.startswith("on_")
                      and not (isinstance(t.value, ast.Name) and t.value.id == "self")]
    assert poked == []


def test_the_slots_take_one_scheduler():
    released = Releases()
    first, second = (lambda: None), (lambda: None)
    released.subscribe(first)
    released.subscribe(first)  # the same one again (every slot of the pool shares the signal)
    with pytest.raises(RuntimeError, match="already have a scheduler"):
        released.subscribe(second)
    assert released.listener is first


class _Outbox:
    def __init__(self, hooks: list[str]) -> None:
        self.hooks = hooks

    def route(self, type_, data, owner=None):
        return self.hooks

    def delivery_rows(self, webhook_ids, event_id, ts):
        return [("INSERT", (w, event_id)) for w in webhook_ids]

    def wake(self):
        pass

    def purge_settled(self, cutoff):
        return [], "SELECT NULL WHERE 0"


def test_the_event_log_takes_one_outbox():
    log = EventLog(store=None)
    first = _Outbox([])
    log.attach_outbox(first)
    with pytest.raises(RuntimeError, match="already has an outbox"):
        log.attach_outbox(_Outbox(["webhook_x"]))
    assert log.outbox is first  # the first one stays


def test_the_event_log_writes_the_delivery_rows_its_outbox_gives():
    """The outbox's table is the outbox's: the log adds the rows it is handed, nothing of its own."""
    log = EventLog(store=SimpleNamespace(cipher=None))  # statements only: nothing is written
    log.attach_outbox(_Outbox(["webhook_a", "webhook_b"]))
    event, stmts = log.statements("agent.completed", {})
    assert [s for s in stmts if not s[0].startswith("INSERT INTO events")] == [
        ("INSERT", ("webhook_a", event.id)), ("INSERT", ("webhook_b", event.id))]


async def test_the_services_are_connected(client):
    """What the wiring promises, seen on a started app: the runtime publishes to the event
    log, the webhook service is the log's outbox and the spawn path's, the audit hears of
    finished agents, the budget's level changes reach the event log."""
    services = client.server.app[SERVICES]
    assert services.runtime.events is services.events
    assert services.agents.webhooks is services.webhooks
    assert services.events.outbox is services.webhooks
    # The audit's entry of an agent's end, written in the unit of that end (a recorder), and the
    # metrics of finished agents (GET /metrics; the dashboard's series are rolled up from them:
    # services.rollups.agents).
    assert len(services.runtime.recorders) == 1
    assert services.runtime.listeners == (client.server.app[METRICS].agents.observe,)
    assert services.rollups.agents is client.server.app[METRICS].agents
    # Every provider slot tells the runtime's scheduler when it frees room (given at construction).
    signals = {id(slot.released) for slot in services.slots.values()}
    assert len(signals) == 1
    assert next(iter(services.slots.values())).released.listener == services.runtime._schedule
    before = len(services.events.subscribers)
    sub = services.events.subscribe(["budget.notice"])
    try:
        services.budget.on_level_change("ok", "notice")
        event = await asyncio.wait_for(sub.queue.get(), 10)
        assert event.type == "budget.notice" and event.data["previous_level"] == "ok"
    finally:
        services.events.unsubscribe(sub)
    assert len(services.events.subscribers) == before


# -- the lifecycle ------------------------------------------------------------------------
async def test_a_failed_start_closes_what_the_earlier_steps_opened(tmp_path, monkeypatch):
    """A step failing half-way (here: after the services) leaves the database and both
    HTTP sessions closed, although aiohttp >= 3.9 runs no cleanup after a failed start."""
    opened = {}

    class Spy(app_module.SlotMaker):
        def __init__(self, registry, session, *rest):
            opened["session"] = session
            super().__init__(registry, session, *rest)

    async def failing(app):
        opened["store"] = app[app_module._STORE]
        opened["webhook"] = app[app_module._WEBHOOK_CLIENT][0]
        raise RuntimeError("step failed")
        yield  # pragma: no cover - an async generator, like the real steps

    monkeypatch.setattr(app_module, "SlotMaker", Spy)
    monkeypatch.setattr(app_module, "LIFECYCLE", (*LIFECYCLE[:-1], failing))
    runner = web.AppRunner(build_app(make_config(tmp_path)))
    with pytest.raises(RuntimeError, match="step failed"):
        await runner.setup()
    assert opened["store"]._closed
    assert opened["webhook"].closed
    assert opened["session"].closed


def test_the_lifecycle_reads_in_order():
    assert [step.__name__ for step in LIFECYCLE] == [
        "_state_store", "_rate_limit_counters", "_plugins", "_provider_session", "_webhook_session",
        "_services", "_agents_and_workers"]


# -- the module graph and the Services bag ----------------------------------------------------
def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:``: imports for annotations only, which
    never run and so make no cycle."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(path: Path) -> set[str]:
    """Package modules ``path`` imports at run time (relative imports resolved), at any depth."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            if node.module:
                found.add(".".join(base + [node.module]))
            else:
                found.update(".".join(base + [alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("j1mskyd"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("j1mskyd"))
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_package_has_no_import_cycles():
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    cycles = []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if dep in on_path:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in done:
                on_path.add(dep)
                visit(dep, path + [dep], on_path, done)
                on_path.discard(dep)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], {start}, done)
    assert cycles == []


def test_every_services_field_is_reached_by_a_handler():
    """The bag handlers reach through holds nothing they do not use (the listener's
    connection guard counts as a handler of connections)."""
    sources = [p.read_text() for p in (PACKAGE / "api").glob("*.py")] + [(PACKAGE / "listener.py").read_text()]
    text = "\n".join(sources)
    unused = [f.name for f in dataclasses.fields(Services)
              if f"services.{f.name}" not in text and f"SERVICES].{f.name}" not in text]
    assert unused == []
