"""build_app(config) -> web.Application: services, plugins, routes and their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import aiohttp
from aiohttp import web

from j1msky.ttlcache import TTLCache

from . import ledger, statedir
from .agents import AgentService
from .api.common import CONFIG, SERVICES, app_key
from .billing import Billing
from .chat_service import ChatService
from .api.middleware import LIMITER, METRICS, MIDDLEWARES, REPLAY_GUARD
from .api.rate_headers import RATE_HEADERS, RateHeaders
from .audit import AuditLog
from .events import EventLog
from .idempotency import IdempotencyStore
from .ipcontrol import IpControl
from .jobs import every, maintain_hourly, refresh_keys, save_counters
from .api.routes import setup_routes
from .breaker import StateChanges
from .budget import Budget, BudgetPolicy
from .config import EMBEDDED, Config, load_config
from .cookie_jar import UpstreamCookieJar
from .keys import KeyService
from .metrics import Metrics
from .timeseries import FLUSH_EVERY, Rollups
from .netguard import IpPolicy, parse_networks
from .orchestrator import Orchestrator
from .plugins import PluginRegistry, load_plugins
from .pricing_history import PricingHistory
from .pricing_service import PricingService
from .projects import ProjectService
from .provider_pool import ProviderSlot, SlotMaker
from .ratelimit import ENDPOINT_CLASSES, BucketFile, Buckets, Limit, RequestLimiter
from .reload import ConfigRef, Reloader
from .runtime import AgentRuntime
from .signing import ReplayGuard
from .store import CLOSE_GRACE, Store
from .tasks import TaskService
from .webhook_client import webhook_session
from .webhook_targets import policy_from
from .webhooks import WebhookService

__all__ = ["BUILTIN_PLUGINS", "LIFECYCLE", "Services", "build_app", "ratelimit_path", "state_db_path",
           "upstream_connector"]

log = logging.getLogger(__name__)
BUILTIN_PLUGINS = Path(__file__).parent / "builtin_plugins"


class _Timed(TypedDict, total=False):
    """build_app's clock as a keyword argument: ``{"clock": a test's clock}``, or ``{}`` (each service's own)."""

    clock: Callable[[], float]
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
    """What the request handlers reach (request.app[SERVICES]), created at start-up inside
    the running loop.  Who reaches what (tests/test_wiring.py fails on a field nobody reaches):

    - agents: api/agents (spawn, list, get, cancel)
    - audit: api/agents, keys, security, webhooks, pricing; middleware; listener (violations)
    - budget, runtime, slots: api/ops, orchestrator, pricing, system
    - caches: api/orchestrator, pricing
    - chat: api/frontdoor (the OpenAI/Anthropic front door: POST /v1/chat/completions, /v1/messages)
    - events: api/events, pricing; middleware and listener (security.violation)
    - health_cache, started, registry: api/system (GET /health, GET /plugins)
    - idempotency: middleware
    - ip_control: api/security; middleware; listener (refusal at accept)
    - keys: api/keys, events (a live stream ends with its key); middleware (auth)
    - pricing_history: api/orchestrator, pricing
    - projects: api/projects
    - reloader: api/ops (POST /admin/reload), system (GET /health); listener (SIGHUP)
    - rollups: api/ops (GET /metrics/timeseries: the dashboard's series)
    - store: api/ops, orchestrator, pricing, system (SQL that is to move into services of their own)
    - tasks: api/tasks (native /tasks, /roles, /workflows, /escalations) and the Kyros dialect
    - webhooks: api/webhooks, keys, pricing

    The HTTP sessions and the rate-limit counter file are not here: no handler needs them,
    their own start-up steps (LIFECYCLE) hold and close them.
    """

    store: Store
    registry: PluginRegistry
    slots: dict[str, ProviderSlot]
    runtime: AgentRuntime
    agents: AgentService
    chat: ChatService
    budget: Budget
    keys: KeyService
    ip_control: IpControl
    audit: AuditLog
    idempotency: IdempotencyStore
    events: EventLog
    webhooks: WebhookService
    pricing_history: PricingHistory
    pricing: PricingService
    orchestrator: Orchestrator
    billing: Billing
    projects: ProjectService
    rollups: Rollups
    tasks: TaskService
    reloader: Reloader
    # The caches of the API reference's v4.1 changelog: model recommendations 30 s, pricing calculations 5 min.
    caches: dict[str, TTLCache]
    started: float = field(default_factory=time.monotonic)
    health_cache: tuple[tuple, bytes, int] | None = None  # (stamp, body, status) of GET /health
    breaker_changes: StateChanges = field(default_factory=StateChanges)  # shared by the slots' breakers


def _new_caches() -> dict[str, TTLCache]:
    return {"recommendations": TTLCache(30.0), "pricing": TTLCache(300.0)}


def state_db_path(config: Config) -> str:
    return os.path.join(config.server.state_dir, "j1msky.db")


def ratelimit_path(config: Config) -> str:
    return os.path.join(config.server.state_dir, "ratelimits.json")


def upstream_connector(config: Config) -> aiohttp.TCPConnector:
    """The connection pool of the providers' shared session, sized from the concurrency limits.

    aiohttp's default (100 connections in all) silently capped the calls in flight: with
    the limits at 10,000 the upstream saw at most 100.  Each running agent holds at most
    one upstream call, so ``runtime.max_concurrency`` connections is exactly enough.  No
    per-host limit: aiohttp counts per (host, port, TLS), not per provider, so two
    providers on one host would share one provider's allowance; each provider's own
    ``max_concurrency`` is enforced by its slot (provider_pool.py) before it asks for a
    connection.
    """
    return aiohttp.TCPConnector(limit=config.runtime.max_concurrency, limit_per_host=0)


def _budget_policy(config: Config) -> BudgetPolicy:
    b = config.budget
    return BudgetPolicy(b.daily_budget, b.monthly_ceiling, b.spike_per_hour, b.max_agents_per_key)


def _ip_policy(config: Config) -> IpPolicy:
    sec = config.security
    return IpPolicy(parse_networks(sec.allowed_ips), sec.enforce_allowlist, parse_networks(sec.trusted_proxies))


def _request_limits(config: Config) -> dict[str, Limit]:
    lim = config.limits
    return {cls: Limit(getattr(lim, cls), lim.window_seconds) for cls in ENDPOINT_CLASSES}


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


def _sees_all(keys: KeyService, key_id: str) -> bool:
    """Does ``key_id`` see every key's work?  An unknown key (deleted from the database) does not."""
    try:
        return keys.get(key_id).sees_all
    except LookupError:
        return False


# -- the lifecycle: one start-up step per resource ------------------------------------------
# Each step is a plain async generator: it opens its resource, hands it to the later steps
# under one of these app-private keys, yields while the daemon serves, then closes it.
_STORE = app_key("j1msky.store")
_BUCKET_FILE = app_key("j1msky.bucket_file")
_PLUGINS = app_key("j1msky.plugins")
_SLOTS = app_key("j1msky.provider_slots")
_SLOT_MAKER = app_key("j1msky.slot_maker")  # makes the provider slots, at start and at a reload
_RELOAD_FROM = app_key("j1msky.reload_from")  # how a reload reads the config again (None: nothing to read)
_BREAKER_CHANGES = app_key("j1msky.breaker_changes")  # breaker state changes, counted per app
_WEBHOOK_CLIENT = app_key("j1msky.webhook_client")  # (session, its resolver, the target policy)
_CLOCK = app_key("j1msky.clock")  # build_app's clock, as the services' keyword argument (or none)


async def _state_store(app: web.Application) -> AsyncIterator[None]:
    """The state dir (0700 before anything is read or written there) and the database."""
    config: Config = app[CONFIG].current
    statedir.prepare(config.server.state_dir)
    store = Store(state_db_path(config), synchronous=config.store.synchronous)
    await asyncio.get_running_loop().run_in_executor(None, store.open)
    app[_STORE] = store
    try:
        yield
    finally:
        await store.close()


async def _rate_limit_counters(app: web.Application) -> AsyncIterator[None]:
    """The request counters, restored from their file and saved there again at the stop."""
    loop = asyncio.get_running_loop()
    bucket_file = BucketFile(ratelimit_path(app[CONFIG].current), app[LIMITER].buckets)
    loaded = await loop.run_in_executor(None, bucket_file.load)
    log.info("%d rate-limit counters restored", loaded)
    app[_BUCKET_FILE] = bucket_file
    try:
        yield
    finally:
        try:
            await loop.run_in_executor(None, bucket_file.save_if_changed)
        except OSError as exc:
            log.error("could not save rate-limit counters: %s", exc)


async def _plugins(app: web.Application) -> AsyncIterator[None]:
    """The built-in and drop-in plugins."""
    config: Config = app[CONFIG].current
    registry = PluginRegistry()
    dropin = Path(config.plugins.dropin_dir) if config.plugins.dropin_dir else None
    # On the loop's own thread, not the executor: bookworm's Python 3.11.2 can fail an
    # ast.parse racing another thread's (tracebacks call it too; CPython gh-106905).
    # Start-up serves nothing yet, so blocking here for a few file reads is harmless.
    _load_all_plugins(registry, dropin, config)
    app[_PLUGINS] = registry
    yield


async def _provider_session(app: web.Application) -> AsyncIterator[None]:
    """The providers' shared HTTP session (upstream_connector) and a slot per provider.
    A local model server on loopback is a legitimate provider: no target policy here.
    The slots' dict is changed in place by a reload; whichever slots it holds at the stop close."""
    config: Config = app[CONFIG].current
    session = aiohttp.ClientSession(connector=upstream_connector(config), cookie_jar=UpstreamCookieJar(),
                                    timeout=aiohttp.ClientTimeout(total=None, connect=30))
    try:
        changes = app[_BREAKER_CHANGES] = StateChanges()
        maker = app[_SLOT_MAKER] = SlotMaker(app[_PLUGINS], session, changes, config.plugins.call_timeout,
                                             app[_CLOCK].get("clock"))
        rt = config.runtime
        slots = app[_SLOTS] = await maker.make(config.providers.values(), rt.breaker_threshold,
                                               rt.breaker_reset_seconds)
        try:
            yield
        finally:  # all at once: one after another, 4 stuck close()s took 4 x call_timeout of the stop
            await asyncio.gather(*(slot.close(config.plugins.call_timeout) for slot in slots.values()))
    finally:
        await session.close()


async def _webhook_session(app: web.Application) -> AsyncIterator[None]:
    """The webhook deliveries' own session, guarded by the target policy (webhook_client.py)."""
    config: Config = app[CONFIG].current
    targets = policy_from(config.webhooks.allowed_networks, config.server.host, config.server.port)
    session, resolver = webhook_session(targets)
    app[_WEBHOOK_CLIENT] = (session, resolver, targets)
    try:
        yield
    finally:
        await session.close()


def _wire(app: web.Application) -> Services:
    """Every service, given what it depends on when it is made.  The two loops of old are
    broken by interfaces: the runtime publishes through events.Publisher, and the webhook
    service subscribes to the event log (EventLog.attach_outbox) instead of being known by it."""
    config: Config = app[CONFIG].current
    store: Store = app[_STORE]
    registry: PluginRegistry = app[_PLUGINS]
    hook_session, hook_resolver, targets = app[_WEBHOOK_CLIENT]
    timed: _Timed = app[_CLOCK]
    caches = _new_caches()
    events = EventLog(store, **timed)
    sec = config.security
    keys = KeyService(store, sec.key_rotation_grace_hours * 3600, **timed)
    # A webhook's maker decides what it receives (its own work's events, or all): asked of the keys in memory.
    webhooks = WebhookService(store, events, registry, hook_session, sees_all=functools.partial(_sees_all, keys),
                              acts=keys.acts,
                              targets=targets, resolver=hook_resolver, call_timeout=config.plugins.call_timeout,
                              file_dirs=config.webhooks.file_sink_dirs, **timed)
    projects = ProjectService(store, keys, **timed)
    # allowances: a key's own budget, then its project's.
    budget = Budget(_budget_policy(config),
                    on_level_change=lambda old, new: _budget_event(events, budget, old, new, caches),
                    allowances=projects.allowances, **timed)
    audit = AuditLog(store, **timed)
    runtime = AgentRuntime(config, store, app[_SLOTS], buckets=app[LIMITER].buckets, budget=budget, events=events,
                           listeners=[app[METRICS].agents.observe], recorders=[audit.end_entry],
                           **timed)
    ip_control = IpControl(store, _ip_policy(config), sec.log_violations, **timed)
    agents = AgentService(config, store, runtime, budget, webhooks, key_of=keys.find)
    history = PricingHistory(store, config.pricing.history_days, **timed)
    pricing = PricingService(config.models, config.pricing.policy, store, events, webhooks, history, budget,
                             runtime.clock, caches["pricing"])
    orchestrator = Orchestrator(config, store, budget, runtime, app[_SLOTS], agents, history, pricing,
                                caches["recommendations"], app[_BREAKER_CHANGES])
    chat = ChatService(config, agents, runtime)
    reloader = Reloader(app[CONFIG], app[_RELOAD_FROM], slots=app[_SLOTS], maker=app[_SLOT_MAKER], audit=audit,
                        announce=functools.partial(_announce_pricing_policy, events, history, store))
    # Who takes a reloaded configuration, in this order (the runtime first: the slots have
    # changed under it).  A service that holds configuration is registered here.
    limiter: RequestLimiter = app[LIMITER]
    reloader.register(
        runtime.apply_config, agents.apply_config, chat.apply_config, orchestrator.apply_config,
        lambda c: pricing.set_prices(c.models, c.pricing.policy),
        lambda c: history.set_keep_days(c.pricing.history_days),
        lambda c: budget.set_policy(_budget_policy(c)),
        lambda c: keys.set_rotation_grace(c.security.key_rotation_grace_hours * 3600),
        lambda c: ip_control.reconfigure(_ip_policy(c), c.security.log_violations),
        lambda c: limiter.set_limits(_request_limits(c), c.limits.per_ip),
    )
    # The config is asked at each use (a reload replaces app[CONFIG].current), never copied.
    tasks = TaskService(lambda: app[CONFIG].current, store, agents, runtime, events, audit, budget, **timed)
    return Services(store=store, registry=registry, slots=app[_SLOTS], runtime=runtime, agents=agents,
                    chat=chat, budget=budget, keys=keys, reloader=reloader,
                    projects=projects,
                    ip_control=ip_control, audit=audit, idempotency=IdempotencyStore(store, **timed), events=events,
                    webhooks=webhooks, pricing_history=history, pricing=pricing, orchestrator=orchestrator,
                    billing=Billing(store), caches=caches, breaker_changes=app[_BREAKER_CHANGES],
                    rollups=Rollups(store, app[METRICS].agents, **timed), tasks=tasks)


async def _announce_pricing_policy(events: EventLog, history: PricingHistory, store: Store, config: Config) -> None:
    """pricing.policy_changed when the pricing policy differs from the last one recorded (at
    the last start or reload)."""
    changed, stmts = await history.policy_change(config.pricing.policy)
    announced = []
    if changed is not None:
        log.info("pricing policy changed since the last start (policy %s)", changed["policy_hash"])
        event, event_stmts = events.statements("pricing.policy_changed", changed)
        announced, stmts = [event], stmts + event_stmts
    if stmts:
        await store.write(*stmts)
        events.published(announced)


async def _services(app: web.Application) -> AsyncIterator[None]:
    """The services (handlers reach them as app[SERVICES]), with their state loaded.  At the
    stop, after the runtime's: the provider clients a reload retired close."""
    config: Config = app[CONFIG].current
    services = app[SERVICES] = _wire(app)
    await services.events.load()
    await services.webhooks.load()
    await _announce_pricing_policy(services.events, services.pricing_history, services.store, config)
    await services.keys.reload()
    await services.projects.load()
    await services.ip_control.load()
    await services.audit.load()
    await services.tasks.load()
    if config.security.auth:
        state_dir = Path(config.server.state_dir)
        first = await services.keys.bootstrap(str(state_dir))
        if first is not None:
            log.warning("no API keys existed: created admin key %s; its token is in %s (mode 0600)",
                        first.key.key_id, state_dir / KeyService.BOOTSTRAP_FILE)
    try:
        yield
    finally:
        await services.reloader.close()


async def _restore_allowance_spend(services: Services) -> None:
    """Key (and project) budgets count the spend of their periods: per owner and UTC day from
    the ledger, since the earliest period start of any budget there is (yesterday at least).
    Every budget must be in the list (a project's too, even with no member key now)."""
    budget = services.budget
    allowances = [a for key_id in services.keys.ring.keys for a in budget.allowances(key_id)]
    # And every project's, members or none: a key may join one with a long period later.
    allowances += [a for p in services.projects.projects.values() if (a := p.allowance()) is not None]
    since = budget.spend_horizon(allowances, budget.clock())
    budget.restore_spend(await services.store.read(lambda conn: ledger.spend_by_day(conn, since)))


async def _agents_and_workers(app: web.Application) -> AsyncIterator[None]:
    """Agents recovered after a restart, then everything that runs by itself: the runtime,
    the webhook worker and the periodic jobs.  Stopped first: the running agents are saved
    while the store and the sessions are still open."""
    config: Config = app[CONFIG].current
    services: Services = app[SERVICES]
    await _restore_allowance_spend(services)
    recovered = await services.agents.recover()
    if any(recovered.values()):
        log.info("recovered agents after restart: %s", recovered)
    resumed = await services.tasks.recover()  # after the agents: a re-queued step is awaited
    if resumed["tasks"]:
        log.info("tasks resumed after restart: %s", resumed)
    services.runtime.start()
    services.webhooks.start()
    purges = (services.agents.purge_expired, services.audit.purge, services.idempotency.purge,
              functools.partial(services.events.purge, _EVENTS_KEEP_DAYS), services.pricing_history.purge,
              services.rollups.purge)
    jobs = [asyncio.ensure_future(job) for job in (
        save_counters(config.limits.persist_interval, app[LIMITER], app[_BUCKET_FILE], services.runtime),
        refresh_keys(services.keys, also=(services.projects.refresh,)),
        maintain_hourly(purges),
        every(FLUSH_EVERY, services.rollups.flush, aligned=True))]
    # "ready" itself is logged by listener.serve once the port is bound: a start that then
    # finds the address in use must not have said it was ready.
    log.info("j1mskyd started: %d providers, %d models, state in %s",
             len(services.slots), len(config.models), config.server.state_dir)
    try:
        yield
    finally:
        # With the disk full, writes waiting for space may hold the stop (runtime.stop
        # saves the running agents) for this long at most, not until space returns.
        services.store.give_up_after(CLOSE_GRACE)
        for job in jobs:
            job.cancel()
        await services.tasks.stop()  # no longer waiting for steps: they run again at the next start
        await services.runtime.stop()
        await services.webhooks.stop()
        try:  # the last minute's series; the store is still open
            await services.rollups.flush()
        except Exception as exc:  # noqa: BLE001 - a chart's minute is not worth a failed stop
            log.warning("could not save the last minute of the dashboard's series: %s", exc)


# The start-up in order, a table of contents; the stop runs it backwards.
LIFECYCLE = (
    _state_store,           # state dir and database: opened first, closed last
    _rate_limit_counters,   # request counters restored; saved at the stop
    _plugins,               # built-in and drop-in plugins
    _provider_session,      # upstream HTTP session sized from the limits; provider slots
    _webhook_session,       # webhook HTTP session behind the target policy
    _services,              # services wired by construction, their state loaded
    _agents_and_workers,    # recovered agents, runtime, webhook worker, periodic jobs
)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """The one cleanup_ctx entry: enters the LIFECYCLE steps in order and leaves them in
    reverse.  One entry rather than seven: aiohttp >= 3.9 runs no cleanup at all when the
    start-up fails (AppRunner.cleanup skips an app whose setup raised), so the steps
    already entered are left here, by the exit stack, on a failed start as on a stop.
    (A plain async generator: aiohttp 3.8 refuses an asynccontextmanager.)"""
    async with contextlib.AsyncExitStack() as steps:
        for step in LIFECYCLE:
            await steps.enter_async_context(contextlib.asynccontextmanager(step)(app))
        yield
    log.info("j1mskyd stopped; state saved in %s", app[CONFIG].current.server.state_dir)


async def _close_live_readers(app: web.Application) -> None:
    """on_shutdown: SSE and WebSocket readers end now instead of holding the stop for seconds."""
    services = app.get(SERVICES)
    if services is not None:
        services.events.close_all()


def build_app(config: Config, *, clock: Callable[[], float] | None = None,
              reload_from: Callable[[], Config] | None = None) -> web.Application:
    """The daemon's application.  ``clock``: one clock for every service that reads the time
    (tests move a fake one instead of sleeping); None leaves each on its own (the wall clock,
    the breakers' monotonic one).  ``reload_from``: how a reload (SIGHUP, POST /admin/reload)
    reads the configuration again; None: ``config.source`` again, as load_config read it
    (nothing for the embedded default)."""
    app = web.Application(middlewares=list(MIDDLEWARES), client_max_size=config.server.max_body_bytes)
    app[CONFIG] = ConfigRef(config)
    if reload_from is None and config.source != EMBEDDED:
        reload_from = functools.partial(load_config, config.source)
    app[_RELOAD_FROM] = reload_from
    timed: _Timed = {} if clock is None else {"clock": clock}
    app[_CLOCK] = timed
    app[METRICS] = Metrics()
    app[LIMITER] = RequestLimiter(Buckets(**timed), _request_limits(config), config.limits.per_ip)
    app[RATE_HEADERS] = RateHeaders(app[LIMITER])
    app[REPLAY_GUARD] = ReplayGuard()
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_close_live_readers)
    setup_routes(app)
    return app
