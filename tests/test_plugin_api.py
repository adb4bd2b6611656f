"""The plugin contract (j1mskyd/plugin_api.py): every hook documented and tested, each hook
exercised through a real daemon app with a drop-in plugin, and the daemon's own timeout
around provider calls and ``close``.

``test_every_hook_is_documented_and_tested`` is the guard (after Datasette's test that every
hookspec is documented): a method added to one of the contract's Protocols fails it until
docs/plugins.md has a ``### `Protocol.method`` heading and some test is named
``test_hook_<protocol>_<method>``.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import re
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from j1mskyd import plugin_api, plugins
from j1mskyd.app import build_app
from j1mskyd.config import ConfigError, load_config
from j1mskyd.plugin_api import ProviderSettings
from j1mskyd.plugins import PluginRegistry, load_plugins
from tests.conftest import make_config, route_models, wait_status
from tests.test_events_live import open_sse

ROOT = Path(__file__).resolve().parent.parent


def contract_protocols() -> list[type]:
    """Every Protocol the contract module declares (a new one is covered too)."""
    return [v for v in vars(plugin_api).values()
            if isinstance(v, type) and getattr(v, "_is_protocol", False) and v.__module__ == plugin_api.__name__]


def own_hooks(protocol: type) -> list[str]:
    return sorted(n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_"))


def test_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(node.name)
    return names


test_names.__test__ = False  # a helper, not a test


def test_every_hook_is_documented_and_tested():
    docs = (ROOT / "docs" / "plugins.md").read_text()
    headings = set(re.findall(r"^#+ `(\w+\.\w+)", docs, re.MULTILINE))
    tests = test_names()
    protocols = contract_protocols()
    assert {p.__name__ for p in protocols} >= {"Provider", "StreamingProvider", "Closable", "Sink", "Registrar"}
    missing = []
    for protocol in protocols:
        for hook in own_hooks(protocol):
            if f"{protocol.__name__}.{hook}" not in headings:
                missing.append(f"docs/plugins.md has no '### `{protocol.__name__}.{hook}`' heading")
            if f"test_hook_{protocol.__name__.lower()}_{hook}" not in tests:
                missing.append(f"no test named test_hook_{protocol.__name__.lower()}_{hook}")
    assert not missing, missing
    assert "j1mskyd/plugin_api.py" in docs  # the docs point to the contract itself


def test_the_api_version_is_the_contracts_and_documented():
    assert plugins.J1MSKY_PLUGIN_API is plugin_api.J1MSKY_PLUGIN_API == 1
    assert "J1MSKY_PLUGIN_API = 1" in (ROOT / "docs" / "plugins.md").read_text()


def test_implements_needs_every_hook_callable():
    class Complete:
        async def complete(self, request): ...

    class Streams(Complete):
        def stream(self, request): ...

    class NotCallable:
        complete = "not a method"

    assert plugin_api.implements(Complete(), plugin_api.Provider)
    assert not plugin_api.implements(Complete(), plugin_api.StreamingProvider)
    assert plugin_api.implements(Streams(), plugin_api.StreamingProvider)
    assert not plugin_api.implements(NotCallable(), plugin_api.Provider)  # isinstance alone says yes
    assert isinstance(NotCallable(), plugin_api.Provider)
    assert not plugin_api.implements(None, plugin_api.Closable)


# -- each hook through a real app ------------------------------------------------------------------

def dropin(tmp_path, name: str, source: str) -> Path:
    plugdir = tmp_path / "plugins.d"
    plugdir.mkdir(mode=0o755, parents=True, exist_ok=True)
    (plugdir / f"{name}.py").write_text(source)
    (plugdir / f"{name}.py").chmod(0o644)
    return plugdir


def config_with(tmp_path, plugdir: Path, providers: dict[str, ProviderSettings] | None = None,
                every_model: str | None = None, call_timeout: float | None = None, **runtime):
    base = make_config(tmp_path, runtime=runtime)
    extra = {} if call_timeout is None else {"call_timeout": call_timeout}
    cfg = dataclasses.replace(base, plugins=dataclasses.replace(base.plugins, dropin_dir=str(plugdir),
                                                                require_root=False, **extra))
    if providers:
        cfg = dataclasses.replace(cfg, providers=dict(base.providers) | providers)
    if every_model:  # every alias served by one provider: no fallback to the offline one
        cfg = dataclasses.replace(cfg, models=route_models(base, {a: every_model for a in base.models}))
    return cfg


async def spawn(client, task: str = "one two three") -> str:
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": task})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["agent_id"]


PROVIDERS = '''
import asyncio
from j1mskyd.plugin_api import CompletionResult

J1MSKY_PLUGIN_API = 1
CLOSED = []

class Echo:
    def __init__(self, settings, session):
        self.name = settings.name
    async def complete(self, request):
        return CompletionResult(text="whole:" + request.prompt, input_tokens=1, output_tokens=2)

class Chunky(Echo):
    async def stream(self, request):
        for word in request.prompt.split():
            yield word + " "
        yield CompletionResult(text="streamed:" + request.prompt, input_tokens=1, output_tokens=3)

class Sleepy(Echo):
    async def complete(self, request):
        await asyncio.Event().wait()    # ignores request.timeout: never answers

class Tidy(Echo):
    async def close(self):
        CLOSED.append(self.name)

class Stuck(Echo):
    async def close(self):
        await asyncio.Event().wait()

class NoComplete:
    complete = None
    def __init__(self, settings, session):
        pass

def register(registry):
    for kind, factory in [("echo", Echo), ("chunky", Chunky), ("sleepy", Sleepy), ("tidy", Tidy),
                          ("stuck", Stuck), ("no_complete", NoComplete)]:
        registry.add_provider(kind, factory)
'''


def provider(name: str, kind: str, **kw) -> dict[str, ProviderSettings]:
    return {name: ProviderSettings(name=name, plugin=kind, **kw)}


async def test_hook_provider_complete(aiohttp_client, tmp_path):
    plugdir = dropin(tmp_path, "kinds", PROVIDERS)
    cfg = config_with(tmp_path, plugdir, provider("p", "echo") | provider("broken", "no_complete"), every_model="p")
    client = await aiohttp_client(build_app(cfg))
    done = await wait_status(client, await spawn(client, "hello there"))
    assert done["status"] == "completed" and done["result"] == "whole:hello there"
    # A factory whose object has no callable complete() leaves its provider unavailable.
    listed = await (await client.get("/api/plugins")).json()
    assert "without complete()" in listed["providers"]["broken"]["error"]


async def test_hook_streamingprovider_stream(aiohttp_client, tmp_path):
    plugdir = dropin(tmp_path, "kinds", PROVIDERS)
    client = await aiohttp_client(build_app(config_with(tmp_path, plugdir, provider("p", "chunky"), every_model="p")))
    # Nobody listens for agent.output: complete() answers.
    assert (await wait_status(client, await spawn(client, "a b")))["result"] == "whole:a b"
    sse = await open_sse(client, "/api/events/stream?types=agent.output,agent.completed")
    agent_id = await spawn(client, "a b")
    events: list[dict] = []
    while not events or events[-1]["event"] != "agent.completed":  # the first one's is replayed: skipped
        [event] = await sse.take(1)
        if event["data"]["data"]["agent_id"] == agent_id:
            events.append(event)
    assert [e["data"]["data"].get("delta") for e in events[:-1]] == ["a ", "b "]
    assert events[-1]["data"]["data"]["result"] == "streamed:a b"
    sse.resp.close()


async def stop_within(client: TestClient, seconds: float = 10.0) -> None:
    # Generous: the stuck close() is cut off after call_timeout (0.2 s); without the bound
    # the shutdown would wait on it forever.
    async with asyncio.timeout(seconds):
        await client.close()


async def test_hook_closable_close(tmp_path):
    plugdir = dropin(tmp_path, "kinds", PROVIDERS)
    cfg = config_with(tmp_path, plugdir, provider("stuck1", "stuck") | provider("tidy1", "tidy"), call_timeout=0.2)
    client = TestClient(TestServer(build_app(cfg)))
    await client.start_server()
    closed = sys.modules["j1msky_plugins.kinds"].CLOSED
    assert closed == []
    await stop_within(client)
    assert closed == ["tidy1"]  # closed at shutdown, after the stuck one was given up on


async def test_a_provider_that_ignores_its_timeout_is_cancelled_by_the_daemon(aiohttp_client, tmp_path):
    plugdir = dropin(tmp_path, "kinds", PROVIDERS)
    cfg = config_with(tmp_path, plugdir, provider("p", "sleepy", timeout=0.3), every_model="p", max_attempts=1)
    client = await aiohttp_client(build_app(cfg))
    # The agent's own timeout is minutes away: only the daemon's bound on the call ends it.
    done = await wait_status(client, await spawn(client), timeout=20)
    assert done["status"] == "failed", done
    assert "timeout: p: no answer within 0.3 s (cancelled by the daemon)" in done["error"]


SINKS = '''
J1MSKY_PLUGIN_API = 1
SEEN = []

class Collector:
    def __init__(self, settings, session):
        self.webhook_id = settings["webhook_id"]
    async def deliver(self, payload, *, delivery_id, event):
        SEEN.append((self.webhook_id, delivery_id, event, payload))

class NoDeliver:
    def __init__(self, settings, session):
        pass

def register(registry):
    assert registry.api_version == 1
    registry.add_sink("collector", Collector)
    registry.add_sink("no_deliver", NoDeliver)
    registry.add_provider("unused", lambda settings, session: None)
'''


async def test_hook_sink_deliver(aiohttp_client, tmp_path):
    plugdir = dropin(tmp_path, "sinks", SINKS)
    client = await aiohttp_client(build_app(config_with(tmp_path, plugdir)))
    resp = await client.post("/api/webhooks", json={"url": "https://x.invalid/", "sink": "collector",
                                                    "events": ["agent.completed"]})
    assert resp.status == 201, await resp.text()
    hook_id = (await resp.json())["data"]["id"]
    seen = sys.modules["j1msky_plugins.sinks"].SEEN
    agent_id = await spawn(client)
    for _ in range(500):  # bounded: 10 s
        if seen:
            break
        await asyncio.sleep(0.02)
    [(webhook_id, delivery_id, event, payload)] = seen
    assert webhook_id == hook_id and delivery_id.startswith("dlv_") and event == "agent.completed"
    assert payload["event"] == "agent.completed" and payload["data"]["agent_id"] == agent_id
    # A factory whose object cannot deliver is refused when the webhook is created.
    resp = await client.post("/api/webhooks", json={"url": "https://x.invalid/", "sink": "no_deliver",
                                                    "events": ["*"]})
    body = await resp.json()
    assert resp.status == 400 and "without deliver()" in body["error"]["details"][0]["message"]


def load(tmp_path, source: str) -> PluginRegistry:
    registry = PluginRegistry()
    load_plugins(registry, tmp_path / "no-builtins", dropin(tmp_path, "sinks", source), require_root=False)
    return registry


def test_hook_registrar_add_provider(tmp_path):
    registry = load(tmp_path, SINKS)
    assert registry.provider_kinds() == ["unused"]
    [record] = [r for r in registry.report() if r["name"] == "sinks"]
    assert record["status"] == "loaded" and record["provides"]["providers"] == ["unused"]
    bad = load(tmp_path / "b", SINKS.replace('lambda settings, session: None', '"not callable"'))
    assert bad.provider_kinds() == [] and "factory is not callable" in bad.report()[-1]["reason"]


def test_hook_registrar_add_sink(tmp_path):
    registry = load(tmp_path, SINKS)
    assert registry.sink_kinds() == ["collector", "no_deliver"]
    # A kind that breaks the naming rule refuses the whole plugin: nothing of it is registered.
    bad = load(tmp_path / "b", SINKS.replace('"collector"', '"Bad-Kind"'))
    assert bad.sink_kinds() == [] and bad.provider_kinds() == []
    assert "must match" in bad.report()[-1]["reason"]


@pytest.mark.parametrize("module", ["j1mskyd.providers", "j1mskyd.sinks"])
def test_the_old_import_paths_are_the_contracts_names(module):
    # Drop-in plugins written before plugin_api.py import from these: same objects.
    mod = __import__(module, fromlist=["__all__"])
    for name in mod.__all__:
        if hasattr(plugin_api, name):
            assert getattr(mod, name) is getattr(plugin_api, name), name


@pytest.mark.parametrize("line, reason", [("call_timeout = 0", "must be > 0"),
                                          ('call_timeout = "30"', "must be a number"),
                                          ("call_timeout = true", "must be a number")])
def test_call_timeout_is_checked_like_the_other_plugin_keys(tmp_path, line, reason):
    path = tmp_path / "config.toml"
    shipped = (ROOT / "etc" / "j1msky" / "config.toml").read_text()
    env = {"J1MSKY_SECRETS_FILE": str(tmp_path / "absent.env"), "XDG_STATE_HOME": str(tmp_path / "state")}
    assert "\ncall_timeout = 30.0 " in shipped  # the shipped file states the default
    assert load_config(None, env).plugins.call_timeout == 30.0
    path.write_text(shipped.replace("\ncall_timeout = 30.0 ", f"\n{line} "))
    with pytest.raises(ConfigError) as info:
        load_config(path, env)
    assert [(i.key, reason in i.reason) for i in info.value.issues] == [("plugins.call_timeout", True)]
