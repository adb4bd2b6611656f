"""build_app(config) -> web.Application: services, plugins, routes and their lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from .agents import AgentService
from .api.common import CONFIG, SERVICES
from .api.middleware import IP_POLICY, MIDDLEWARES, STATS, RequestStats
from .api.routes import setup_routes
from .breaker import CircuitBreaker
from .config import Config
from .netguard import IpPolicy, parse_networks
from .plugins import PluginError, PluginRegistry, build_provider, load_plugins
from .provider_pool import ProviderSlot
from .runtime import AgentRuntime
from .store import Store

log = logging.getLogger(__name__)
BUILTIN_PLUGINS = Path(__file__).parent / "builtin_plugins"


@dataclass
class Services:
    """Everything the handlers reach, created at start-up inside the running loop."""

    store: Store
    registry: PluginRegistry
    session: aiohttp.ClientSession
    slots: dict[str, ProviderSlot]
    runtime: AgentRuntime
    agents: AgentService
    started: float = field(default_factory=time.monotonic)


def _build_slots(config: Config, registry: PluginRegistry, session: aiohttp.ClientSession) -> dict[str, ProviderSlot]:
    slots = {}
    rt = config.runtime
    for name, settings in config.providers.items():
        client, error = None, None
        try:
            client = build_provider(registry, settings, session)
        except PluginError as exc:
            error = str(exc)
            log.error("provider %s unavailable: %s", name, error)
        slots[name] = ProviderSlot(settings, client, CircuitBreaker(rt.breaker_threshold, rt.breaker_reset_seconds),
                                   error)
    return slots


async def _lifecycle(app: web.Application):
    """cleanup_ctx: a plain async generator (aiohttp 3.8 refuses an asynccontextmanager)."""
    config: Config = app[CONFIG]
    loop = asyncio.get_running_loop()
    state_dir = Path(config.server.state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = Store(state_db_path(config), synchronous=config.store.synchronous)
    await loop.run_in_executor(None, store.open)

    registry = PluginRegistry()
    dropin = Path(config.plugins.dropin_dir) if config.plugins.dropin_dir else None
    await loop.run_in_executor(None, lambda: load_plugins(
        registry, BUILTIN_PLUGINS, dropin, disabled=config.plugins.disabled,
        timeout=config.plugins.load_timeout, require_root=config.plugins.require_root))

    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=30))
    try:
        slots = _build_slots(config, registry, session)
        runtime = AgentRuntime(config, store, slots)
        agents = AgentService(config, store, runtime)
        services = app[SERVICES] = Services(store, registry, session, slots, runtime, agents)
        recovered = await agents.recover()
    except BaseException:
        await session.close()
        await store.close()
        raise
    if any(recovered.values()):
        log.info("recovered agents after restart: %s", recovered)
    runtime.start()
    log.info("j1mskyd ready: %d providers, %d models, state in %s", len(slots), len(config.models), state_dir)
    try:
        yield
    finally:
        await runtime.stop()
        for slot in services.slots.values():
            await slot.close()
        await session.close()
        await store.close()
        log.info("j1mskyd stopped; state saved in %s", state_dir)


def build_app(config: Config) -> web.Application:
    app = web.Application(middlewares=list(MIDDLEWARES), client_max_size=config.server.max_body_bytes)
    app[CONFIG] = config
    app[STATS] = RequestStats()
    sec = config.security
    app[IP_POLICY] = IpPolicy(parse_networks(sec.allowed_ips), sec.enforce_allowlist,
                              parse_networks(sec.trusted_proxies))
    app.cleanup_ctx.append(_lifecycle)
    setup_routes(app)
    return app


def state_db_path(config: Config) -> str:
    return os.path.join(config.server.state_dir, "j1msky.db")
