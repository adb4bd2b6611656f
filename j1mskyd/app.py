"""build_app(config) -> web.Application: services, plugins, routes and their lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from . import statedir
from .agents import AgentService
from .api.common import CONFIG, SERVICES
from .api.middleware import LIMITER, METRICS, MIDDLEWARES, REPLAY_GUARD
from .api.rate_headers import RATE_HEADERS, RateHeaders
from .audit import Actor, AuditLog
from .events import EventLog
from .idempotency import IdempotencyStore
from .ipcontrol import IpControl
from .api.routes import setup_routes
from .breaker import CircuitBreaker, StateChanges
from .budget import Budget, BudgetPolicy
from .config import Config
from .keys import KeyService
from .metrics import Metrics
from .netguard import IpPolicy, parse_networks
from .plugins import PluginError, PluginRegistry, build_provider, load_plugins
from .pricing_history import PricingHistory
from .provider_pool import ProviderSlot
from .ratelimit import ENDPOINT_CLASSES, BucketFile, Buckets, Limit, RequestLimiter
from .runtime import AgentRuntime
from .signing import ReplayGuard
from .store import CLOSE_GRACE, Store
from .ttlcache import TTLCache
from .webhook_client import webhook_session
from .webhook_targets import policy_from
from .webhooks import WebhookService

log = logging.getLogger(__name__)
BUILTIN_PLUGINS = Path(__file__).parent / "builtin_plugins"
_PRUNE_EVERY = 60.0  # seconds between sweeps of full (forgettable) rate-limit buckets
_MAINTENANCE_EVERY = 3600.0
_EVENTS_KEEP_DAYS = 7.0  # GET /events, SSE and WebSocket can resume within this window


def _load_all_plugins(registry: PluginRegistry, dropin: Path | None, config: Config) -> None:
    """load_plugins with the built-ins from a real directory.  Inside a zipapp
    (j1mskyd.pyz) they are zip members: copy them to a private temporary directory
    for the load (the loader reads each file once), then remove it."""
    def load(builtin: Path) -> None:
        load_plugins(registry, builtin, dropin, disabled=config.plugins.disabled,
                     timeout=config.plugins.load_timeout, require_root=config.plugins.require_root)

    if BUILTIN_PLUGINS.is_dir():
        return load(BUILTIN_PLUGINS)
    from importlib.resources import files
    with tempfile.TemporaryDirectory(prefix="j1msky-builtin-") as tmp:  # mode 0700
        for entry in files(__package__).joinpath("builtin_plugins").iterdir():
            if entry.name.endswith(".py"):
                (Path(tmp) / entry.name).write_bytes(entry.read_bytes())
        load(Path(tmp))


@dataclass
class Services:
    """Everything the handlers reach, created at start-up inside the running loop."""

    store: Store
    registry: PluginRegistry
    session: aiohttp.ClientSession
    slots: dict[str, ProviderSlot]
    runtime: AgentRuntime
    agents: AgentService
    budget: Budget
    bucket_file: BucketFile
    keys: KeyService
    ip_control: IpControl
    audit: AuditLog
    idempotency: IdempotencyStore
    events: EventLog
    webhooks: WebhookService
    pricing_history: PricingHistory
    started: float = field(default_factory=time.monotonic)
    health_cache: tuple[tuple, bytes, int] | None = None  # (stamp, body, status) of GET /health
    breaker_changes: StateChanges = field(default_factory=StateChanges)  # shared by the slots' breakers
    # The v4.1 caches: model recommendations 30 s, pricing calculations 5 min.
    caches: dict[str, TTLCache] = field(default_factory=lambda: {"recommendations": TTLCache(30.0),
                                                                  "pricing": TTLCache(300.0)})


def state_db_path(config: Config) -> str:
    return os.path.join(config.server.state_dir, "j1msky.db")


def ratelimit_path(config: Config) -> str:
    return os.path.join(config.server.state_dir, "ratelimits.json")


def _build_slots(config: Config, registry: PluginRegistry, session: aiohttp.ClientSession,
                 changes: StateChanges) -> dict[str, ProviderSlot]:
    slots = {}
    rt = config.runtime
    for name, settings in config.providers.items():
        client, error = None, None
        try:
            client = build_provider(registry, settings, session)
        except PluginError as exc:
            error = str(exc)
            log.error("provider %s unavailable: %s", name, error)
        breaker = CircuitBreaker(rt.breaker_threshold, rt.breaker_reset_seconds, changes=changes)
        slots[name] = ProviderSlot(settings, client, breaker, error)
    return slots


async def _persist_buckets(app: web.Application, services: Services) -> None:
    """Save the rate-limit counters every few seconds when they changed; prune now and then."""
    loop = asyncio.get_running_loop()
    interval = app[CONFIG].limits.persist_interval
    limiter: RequestLimiter = app[LIMITER]
    runtime = services.runtime
    last_prune = loop.time()
    failing = False
    while True:
        await asyncio.sleep(interval)
        if loop.time() - last_prune >= _PRUNE_EVERY:
            last_prune = loop.time()
            limiter.buckets.prune(lambda key: limiter.limit_for(key) or runtime.limit_for(key))
        if not limiter.buckets.changed:
            continue  # idle: no thread hop, no write
        try:
            await loop.run_in_executor(None, services.bucket_file.save_if_changed)
        except OSError as exc:  # a full disk must not stop the daemon; the next round retries
            # Said once per outage, not every few seconds into a log on the same full disk.
            log.log(logging.DEBUG if failing else logging.ERROR, "could not save rate-limit counters: %s "
                    "(retried every %g s)", exc, interval)
            failing = True
        else:
            if failing:
                log.info("rate-limit counters saved again")
            failing = False


def _budget_event(events: EventLog, budget: Budget, old: str, new: str, caches: dict[str, TTLCache]) -> None:
    """budget.notice/warning/critical when spend crosses a threshold upward; a new budget
    level invalidates the caches (recommendations and prices depend on it)."""
    for cache in caches.values():
        cache.clear()
    levels = ("ok", "notice", "warning", "critical")
    log.log(logging.WARNING if new in ("warning", "critical") else logging.INFO,
            "budget alert level %s -> %s (%.2f%% of the daily budget spent)", old, new,
            budget.utilization_pct)
    if levels.index(new) > levels.index(old):
        events.emit_soon(f"budget.{new}", budget.snapshot() | {"previous_level": old})


def _audit_finish(audit: AuditLog, agent) -> None:
    if agent.status in ("completed", "failed") and agent.kind != "member":
        event = "agent.complete" if agent.status == "completed" else "agent.fail"
        audit.record(event, Actor(api_key_id=agent.api_key), severity="info" if event == "agent.complete" else "warning",
                     resource_type="agent", resource_id=agent.agent_id,
                     details={"model": agent.served_model or agent.model, "cost": agent.cost, "error": agent.error})


async def _maintenance(services: Services) -> None:
    """Hourly: retention of agent data, audit log, events and pricing history; expired idempotency records."""
    while True:
        for job in (services.agents.purge_expired, services.audit.purge, services.idempotency.purge,
                    lambda: services.events.purge(_EVENTS_KEEP_DAYS),
                    services.pricing_history.purge):
            try:
                await job()
            except Exception:  # noqa: BLE001 - retried next hour; never stops the daemon
                log.exception("maintenance job %s failed", getattr(job, "__qualname__", job))
        await asyncio.sleep(_MAINTENANCE_EVERY)


async def _refresh_keys(keys: KeyService) -> None:
    """Pick up keys created or revoked by `j1mskyd keys ...`; write last-use times in batches."""
    while True:
        await keys.wait_refresh()  # faster while live streams watch their keys
        try:
            await keys.refresh()
        except Exception:  # noqa: BLE001 - a failed refresh is retried; requests keep the last view
            log.exception("refreshing API keys failed")


async def _lifecycle(app: web.Application):
    """cleanup_ctx: a plain async generator (aiohttp 3.8 refuses an asynccontextmanager)."""
    config: Config = app[CONFIG]
    loop = asyncio.get_running_loop()
    state_dir = Path(config.server.state_dir)
    statedir.prepare(str(state_dir))  # 0700 before anything is read or written there
    store = Store(state_db_path(config), synchronous=config.store.synchronous)
    await loop.run_in_executor(None, store.open)

    registry = PluginRegistry()
    dropin = Path(config.plugins.dropin_dir) if config.plugins.dropin_dir else None
    # On the loop's own thread, not the executor: bookworm's Python 3.11.2 can fail an
    # ast.parse racing another thread's (tracebacks call it too; CPython gh-106905).
    # Start-up serves nothing yet, so blocking here for a few file reads is harmless.
    _load_all_plugins(registry, dropin, config)

    limiter: RequestLimiter = app[LIMITER]
    bucket_file = BucketFile(ratelimit_path(config), limiter.buckets)
    loaded = await loop.run_in_executor(None, bucket_file.load)
    b = config.budget
    budget = Budget(BudgetPolicy(b.daily_budget, b.monthly_ceiling, b.spike_per_hour, b.max_agents_per_key))

    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=30))
    # Webhooks get a session of their own, guarded by the target policy; providers keep
    # the shared one (a local model server on loopback is a legitimate provider).
    targets = policy_from(config.webhooks.allowed_networks, config.server.host, config.server.port)
    hook_session, hook_resolver = webhook_session(targets)
    try:
        breaker_changes = StateChanges()
        slots = _build_slots(config, registry, session, breaker_changes)
        runtime = AgentRuntime(config, store, slots, buckets=limiter.buckets, budget=budget)
        agents = AgentService(config, store, runtime, budget)
        keys = KeyService(store, config.security.key_rotation_grace_hours * 3600)
        sec = config.security
        ip_control = IpControl(store, IpPolicy(parse_networks(sec.allowed_ips), sec.enforce_allowlist,
                                               parse_networks(sec.trusted_proxies)), sec.log_violations)
        audit = AuditLog(store)
        events = EventLog(store)
        webhooks = WebhookService(store, events, registry, hook_session, targets=targets,
                                  resolver=hook_resolver)
        runtime.events = events
        agents.webhooks = webhooks
        services = app[SERVICES] = Services(store, registry, session, slots, runtime, agents, budget, bucket_file,
                                            keys, ip_control, audit, IdempotencyStore(store), events, webhooks,
                                            PricingHistory(store, config.pricing.history_days),
                                            breaker_changes=breaker_changes)
        await events.load()
        await webhooks.load()
        changed, stmts = await services.pricing_history.policy_change(config.pricing.policy)
        announced = []
        if changed is not None:
            log.info("pricing policy changed since the last start (policy %s)", changed["policy_hash"])
            event, event_stmts = events.statements("pricing.policy_changed", changed)
            announced, stmts = [event], stmts + event_stmts
        if stmts:
            await store.write(*stmts)
            events.published(announced)
        budget.on_level_change = lambda old, new: _budget_event(events, budget, old, new, services.caches)
        await keys.reload()
        await ip_control.load()
        await audit.load()
        runtime.listeners.append(lambda agent: _audit_finish(audit, agent))
        if config.security.auth:
            first = await keys.bootstrap(str(state_dir))
            if first is not None:
                log.warning("no API keys existed: created admin key %s; its token is in %s (mode 0600)",
                            first.key.key_id, state_dir / KeyService.BOOTSTRAP_FILE)
        recovered = await agents.recover()
    except BaseException:
        await session.close()
        await hook_session.close()
        await store.close()
        raise
    if any(recovered.values()):
        log.info("recovered agents after restart: %s", recovered)
    runtime.start()
    webhooks.start()
    saver = asyncio.ensure_future(_persist_buckets(app, services))
    key_refresher = asyncio.ensure_future(_refresh_keys(services.keys))
    maintenance = asyncio.ensure_future(_maintenance(services))
    log.info("j1mskyd ready: %d providers, %d models, %d rate-limit counters restored, state in %s",
             len(slots), len(config.models), loaded, state_dir)
    try:
        yield
    finally:
        # With the disk full, writes waiting for space may hold the stop (runtime.stop
        # saves the running agents) for this long at most, not until space returns.
        store.give_up_after(CLOSE_GRACE)
        saver.cancel()
        key_refresher.cancel()
        maintenance.cancel()
        await runtime.stop()
        await webhooks.stop()
        for slot in services.slots.values():
            await slot.close()
        await session.close()
        await hook_session.close()
        await store.close()
        try:
            await loop.run_in_executor(None, bucket_file.save_if_changed)
        except OSError as exc:
            log.error("could not save rate-limit counters: %s", exc)
        log.info("j1mskyd stopped; state saved in %s", state_dir)


async def _close_live_readers(app: web.Application) -> None:
    """on_shutdown: SSE and WebSocket readers end now instead of holding the stop for seconds."""
    services = app.get(SERVICES)
    if services is not None:
        services.events.close_all()


def build_app(config: Config) -> web.Application:
    app = web.Application(middlewares=list(MIDDLEWARES), client_max_size=config.server.max_body_bytes)
    app[CONFIG] = config
    app[METRICS] = Metrics()
    lim = config.limits
    app[LIMITER] = RequestLimiter(
        Buckets(), {cls: Limit(getattr(lim, cls), lim.window_seconds) for cls in ENDPOINT_CLASSES}, lim.per_ip)
    app[RATE_HEADERS] = RateHeaders(app[LIMITER])
    app[REPLAY_GUARD] = ReplayGuard()
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_close_live_readers)
    setup_routes(app)
    return app
