"""Plugin registry, the guarded loader for built-in and drop-in plugin files, and the
daemon's side of every plugin call (building, and the timeout around each call).

The contract a plugin is written against (the hooks as Protocols, the API version, the
types it gets and returns, what it may and may not do) is :mod:`j1mskyd.plugin_api`.

The drop-in loader applies these guards, in order:
directory trust, file-name filter, sorted order, file trust (O_NOFOLLOW + fstat of
the open fd), API version read from the AST before any code runs, import into the
private ``j1msky_plugins`` namespace from the same bytes, ``register`` under a
timeout.  A plugin that is refused or fails is logged and reported, never fatal.

``register`` is given a staging view offering only ``add_provider``, ``add_sink``
and ``api_version``; its registrations reach the registry only if the whole
plugin loads.

These guards keep untrusted *writers* out; they are not a sandbox.  Loaded plugin
code runs with the daemon's full privileges.
"""

from __future__ import annotations

import ast
import asyncio
import errno
import importlib.util
import logging
import os
import re
import stat
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterable

from .contained import ContainedSink, contained_provider
from .plugin_api import (
    J1MSKY_PLUGIN_API,
    Provider,
    ProviderFactory,
    ProviderSettings,
    Sink,
    SinkFactory,
    SinkSettings,
    implements,
)

__all__ = ["MAX_PLUGIN_BYTES", "NAMESPACE", "PluginError", "PluginRegistry", "bounded", "build_provider",
           "build_sink", "load_plugins", "off_loop"]

logger = logging.getLogger(__name__)

MAX_PLUGIN_BYTES = 1 << 20
NAMESPACE = "j1msky_plugins"
_FILE_RE = re.compile(r"^[a-z][a-z0-9_]*\.py$")
NOT_A_PLUGIN = "not a plugin (only .py files are plugins)"
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Python 3.11.2 (bookworm) keeps the AST validator's recursion depth in global state, so
# two threads parsing at once can fail with "AST constructor recursion depth mismatch"
# (CPython gh-106905, fixed in 3.11.5): parse and compile one file at a time.
_AST_LOCK = threading.Lock()



class PluginError(Exception):
    """A plugin was refused, or a provider could not be built from one."""


@dataclass
class _Record:
    name: str
    path: str
    source: str
    status: str
    reason: str | None = None
    providers: list[str] = field(default_factory=list)
    sinks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "source": self.source,
            "status": self.status,
            "reason": self.reason,
            "provides": {"providers": list(self.providers), "sinks": list(self.sinks)},
        }


class PluginRegistry:
    """Provider and sink factories by kind, plus what the loader did to each file."""

    def __init__(self) -> None:
        self._providers: dict[str, ProviderFactory] = {}
        self._sinks: dict[str, SinkFactory] = {}
        self._owner: dict[tuple[str, str], str] = {}  # (what, kind) -> plugin name
        # (what, kind) of drop-in plugins: their objects are built contained (contained.py).
        self._dropin: set[tuple[str, str]] = set()
        self._records: list[_Record] = []
        # Factory calls that outlived their timeout and still run, by (what, kind): a kind with
        # one is refused until it returns, so a hung factory holds one thread, not one per try.
        self._hung: dict[tuple[str, str], int] = {}
        self._hung_lock = threading.Lock()

    def add_provider(self, kind: str, factory: ProviderFactory) -> None:
        _check_entry("provider", kind, factory, self._providers, self._owner)
        self._providers[kind] = factory

    def add_sink(self, kind: str, factory: SinkFactory) -> None:
        _check_entry("sink", kind, factory, self._sinks, self._owner)
        self._sinks[kind] = factory

    def provider_factory(self, kind: str) -> ProviderFactory:
        return self._providers[kind]

    def sink_factory(self, kind: str) -> SinkFactory:
        return self._sinks[kind]

    def provider_kinds(self) -> list[str]:
        return sorted(self._providers)

    def sink_kinds(self) -> list[str]:
        return sorted(self._sinks)

    def report(self) -> list[dict[str, Any]]:
        """One entry per file or directory the loader looked at, in load order."""
        return [r.as_dict() for r in self._records]

    def is_dropin(self, what: str, kind: str) -> bool:
        return (what, kind) in self._dropin

    def _commit(self, staging: _Staging, *, trusted: bool) -> None:
        for kind, factory in staging.providers.items():
            self._providers[kind] = factory
            self._owner[("provider", kind)] = staging.plugin
        for kind, sink_factory in staging.sinks.items():
            self._sinks[kind] = sink_factory
            self._owner[("sink", kind)] = staging.plugin
        if not trusted:
            self._dropin.update(("provider", kind) for kind in staging.providers)
            self._dropin.update(("sink", kind) for kind in staging.sinks)


def _check_entry(what: str, kind: Any, factory: Any, existing: dict, owner: dict) -> None:
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise PluginError(f"{what} kind {kind!r} must match {_KIND_RE.pattern}")
    if not callable(factory):
        raise PluginError(f"{what} kind {kind!r}: factory is not callable")
    if kind in existing:
        by = owner.get((what, kind))
        raise PluginError(f"{what} kind {kind!r} is already provided" + (f" by plugin {by!r}" if by else ""))


class _Staging:
    """What ``register()`` sees (a :class:`~j1mskyd.plugin_api.Registrar`): registrations land
    here and reach the registry only if the whole plugin loads, so a failed or timed-out
    plugin leaves nothing behind."""

    api_version = J1MSKY_PLUGIN_API

    def __init__(self, registry: PluginRegistry, plugin: str) -> None:
        self._registry = registry
        self.plugin = plugin
        self.providers: dict[str, ProviderFactory] = {}
        self.sinks: dict[str, SinkFactory] = {}
        self.conflict: str | None = None
        self.closed = False  # set when the loader gives up; a late thread must not register

    def add_provider(self, kind: str, factory: ProviderFactory) -> None:
        self._add("provider", kind, factory, self.providers, self._registry._providers)

    def add_sink(self, kind: str, factory: SinkFactory) -> None:
        self._add("sink", kind, factory, self.sinks, self._registry._sinks)

    def _add(self, what: str, kind: str, factory: Any, mine: dict, theirs: dict) -> None:
        if self.closed:
            raise PluginError(f"plugin {self.plugin!r} registered after the loader gave up on it")
        try:
            _check_entry(what, kind, factory, theirs, self._registry._owner)
            _check_entry(what, kind, factory, mine, {(what, kind): self.plugin})
        except PluginError as exc:
            # Remembered so the plugin is refused even if its register() swallows this.
            self.conflict = self.conflict or str(exc)
            raise
        mine[kind] = factory


def build_provider(registry: PluginRegistry, settings: ProviderSettings, session: Any) -> Any:
    """Build the provider ``settings`` describes; any failure becomes ``PluginError``
    with a message naming the provider and plugin kind (never the API key)."""
    kind = settings.plugin
    try:
        factory = registry.provider_factory(kind)
    except KeyError:
        known = ", ".join(registry.provider_kinds()) or "none"
        raise PluginError(
            f"provider {settings.name!r}: no loaded plugin provides kind {kind!r} (loaded: {known})"
        ) from None
    try:
        provider = _not_a_coroutine(factory(settings, session))
    except Exception as exc:
        logger.exception("provider %r: plugin kind %r factory failed", settings.name, kind)
        message = _redact(f"{type(exc).__name__}: {exc}", settings.api_key)
        raise PluginError(f"provider {settings.name!r}: plugin kind {kind!r} failed to build: {message}") from exc
    if not implements(provider, Provider):
        raise PluginError(f"provider {settings.name!r}: plugin kind {kind!r} returned an object without complete()")
    return contained_provider(provider, settings.name) if registry.is_dropin("provider", kind) else provider


def build_sink(registry: PluginRegistry, kind: str, settings: SinkSettings, session: Any) -> Sink:
    """The sink of one webhook.  ``KeyError`` when no plugin provides ``kind``; whatever the
    factory raised when it refused the settings; ``PluginError`` when it built no Sink."""
    sink = _not_a_coroutine(registry.sink_factory(kind)(settings, session))
    if not implements(sink, Sink):
        raise PluginError(f"plugin kind {kind!r} returned an object without deliver()")
    return ContainedSink(sink, kind) if registry.is_dropin("sink", kind) else sink


class Bounded:
    """``asyncio.timeout`` that raises ``error()`` instead of ``TimeoutError`` when it expires.

    A slotted class rather than an ``asynccontextmanager`` generator: one is alive around every
    running agent's provider call, and the generator with its context-manager wrapper was
    ~0.5 KB (10,000 agents running: 5 MB)."""

    __slots__ = ("_scope", "_error")

    def __init__(self, seconds: float, error: Callable[[], Exception]) -> None:
        self._scope = asyncio.timeout(seconds)
        self._error = error

    async def __aenter__(self) -> None:
        await self._scope.__aenter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                        exc_tb: TracebackType | None) -> None:
        try:
            await self._scope.__aexit__(exc_type, exc_val, exc_tb)
        except TimeoutError:  # raised here only when this scope expired
            if self._scope.expired():
                raise self._error() from None
            raise


def bounded(seconds: float, error: Callable[[], Exception]) -> Bounded:
    """The daemon's timeout around a plugin call (every one goes through here): the call is
    cancelled after ``seconds`` and ``error()`` raised instead.  A ``TimeoutError`` the
    plugin raised itself, or an outer deadline's, passes through unchanged."""
    return Bounded(seconds, error)


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "[redacted]") if secret else text


def _not_a_coroutine(built: Any) -> Any:
    if hasattr(built, "close") and hasattr(built, "send") and hasattr(built, "throw"):  # an async def factory
        built.close()
        raise PluginError("the factory must be a plain function (or class), not async")
    return built


async def off_loop(registry: PluginRegistry, what: str, kind: str, call: Callable[[], Any], timeout: float) -> Any:
    """A factory call (``call`` builds a provider or sink of ``kind``) on a thread of its own,
    awaited for ``timeout`` seconds at most: a factory that blocks or hangs cannot stall the
    event loop, the start or a webhook's creation.

    A thread cannot be stopped: one that does not return in time is abandoned (a daemon
    thread, it does not hold the exit) and :class:`PluginError` raised; until it returns,
    calls of the same kind are refused at once, so a hung factory holds one thread, not
    one per attempt.  What ``call`` raises is raised here."""
    key = (what, kind)
    with registry._hung_lock:
        if registry._hung.get(key):
            raise PluginError(f"{what} kind {kind!r}: an earlier call of its factory has not returned yet "
                              f"(it took over {timeout:g} s)")
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    state = {"done": False, "hung": False}

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # timed out: nobody waits for it any more
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        result, error = None, None
        try:
            result = call()
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a plugin must not end the thread silently
            error = exc
        with registry._hung_lock:
            state["done"] = True
            if state["hung"]:
                registry._hung[key] -= 1
                logger.warning("%s kind %r: a factory call returned after its timeout; the kind is usable again",
                               what, kind)
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def timed_out() -> PluginError:
        with registry._hung_lock:
            if not state["done"]:
                state["hung"] = True
                registry._hung[key] = registry._hung.get(key, 0) + 1
        return PluginError(f"{what} kind {kind!r}: its factory did not return within {timeout:g} s "
                           "([plugins] call_timeout)")

    threading.Thread(target=run, name=f"j1msky-{what}-{kind}", daemon=True).start()
    async with bounded(timeout, timed_out):
        return await future
    raise AssertionError("unreachable: bounded() raises or the call returned")



# -- loading -----------------------------------------------------------------


def load_plugins(
    registry: PluginRegistry,
    builtin_dir: Path,
    dropin_dir: Path | None,
    *,
    disabled: Iterable[str] = (),
    timeout: float = 10.0,
    require_root: bool = True,
) -> None:
    """Load built-ins (trusted: no ownership checks), then the drop-in directory.

    Runs synchronously at startup; each plugin may take up to ``timeout`` seconds
    to import and register.  Nothing here raises for a bad plugin: see ``report()``.
    """
    seen: dict[str, str] = {}
    disabled = frozenset(disabled)
    _ensure_namespace()
    _load_dir(registry, Path(builtin_dir), "builtin", seen, disabled, timeout, require_root=False, trusted=True)
    if dropin_dir is None:
        return
    dropin = os.path.abspath(dropin_dir)  # abspath, not resolve(): a symlink must stay visible
    if not os.path.lexists(dropin):
        return
    problem = _untrusted_dir(dropin, require_root)
    if problem:
        logger.error("plugin directory %s refused: %s", dropin, problem)
        registry._records.append(_Record(os.path.basename(dropin), dropin, "dropin", "refused", problem))
        return
    _load_dir(registry, Path(dropin), "dropin", seen, disabled, timeout, require_root=require_root, trusted=False)


def _ensure_namespace() -> None:
    # An empty parent package with no search path: nothing can be imported from disk
    # under this name except through the loader.
    if NAMESPACE not in sys.modules:
        pkg = types.ModuleType(NAMESPACE)
        pkg.__path__ = []
        sys.modules[NAMESPACE] = pkg


def _untrusted_dir(path: str, require_root: bool) -> str | None:
    """Why ``path`` or a parent could let a non-root user swap plugin code, or None."""
    current = path
    while True:
        try:
            st = os.lstat(current)
        except OSError as exc:
            return f"cannot stat {current}: {exc.strerror}"
        if stat.S_ISLNK(st.st_mode):
            return f"{current} is a symlink"
        if not stat.S_ISDIR(st.st_mode):
            return f"{current} is not a directory"
        if require_root and st.st_uid != 0:
            return f"{current} is owned by uid {st.st_uid}, not root"
        if st.st_mode & 0o022:
            # A root-owned sticky parent (/tmp) lets others add entries but not
            # rename or replace ours, so it cannot be used to swap the path.
            sticky_ok = current != path and st.st_mode & stat.S_ISVTX and st.st_uid == 0
            if not sticky_ok:
                return f"{current} is group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o})"
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def _name_problem(filename: str) -> str | None:
    if _FILE_RE.match(filename):
        return None
    if filename.startswith("."):
        return "hidden file"
    if filename.endswith("~"):
        return "editor backup file"
    if ".dpkg-" in filename or filename.endswith((".ucf-old", ".ucf-new", ".ucf-dist")):
        return "package manager leftover"
    if filename.endswith((".swp", ".swo", ".tmp", ".bak", ".orig", ".rej")):
        return "editor or backup leftover"
    return f"name does not match {_FILE_RE.pattern}"


def _load_dir(
    registry: PluginRegistry,
    directory: Path,
    source: str,
    seen: dict[str, str],
    disabled: frozenset[str],
    timeout: float,
    *,
    require_root: bool,
    trusted: bool,
) -> None:
    try:
        names = sorted(os.listdir(directory))  # str sort == C-locale code point order
    except OSError as exc:
        reason = f"cannot list directory: {exc.strerror}"
        logger.error("plugin directory %s refused: %s", directory, reason)
        registry._records.append(_Record(directory.name, str(directory), source, "refused", reason))
        return
    for filename in names:
        if filename.startswith("__"):  # __pycache__, __init__.py: Python's, not a plugin
            continue
        path = str(directory / filename)
        name = filename[:-3] if filename.endswith(".py") else filename
        if ".py" not in filename.lower():
            # Not a plugin and not meant as one (the packaged README, notes): listed, not
            # refused, and no warning at every start.  Anything named like Python (x.py~,
            # My-Plugin.py, x.py.dpkg-new) still goes through the filter below and is refused loudly.
            registry._records.append(_Record(name, path, source, "ignored", NOT_A_PLUGIN))
            logger.debug("plugin directory %s: %s ignored: %s", directory, filename, NOT_A_PLUGIN)
            continue
        record = _Record(name, path, source, "refused")
        registry._records.append(record)
        problem = _name_problem(filename)
        if problem:
            record.reason = f"skipped: {problem}"
        elif name in disabled:
            record.reason = "disabled in config"
        elif name in seen:
            record.reason = f"duplicate plugin name: already loaded from {seen[name]}"
        else:
            seen[name] = path
            _load_file(registry, record, timeout, require_root=require_root, trusted=trusted)
        if record.status == "loaded":
            logger.info("plugin %s (%s) loaded: %s", name, path, record.providers + record.sinks)
        elif record.status == "refused":  # failures were logged, with traceback, where they happened
            logger.warning("plugin %s (%s) refused: %s", name, path, record.reason)


def _read_trusted(path: str, *, require_root: bool, trusted: bool) -> bytes:
    """Open without following symlinks, check the *open fd*, and read the bytes once."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a FIFO must not hang us
    if not trusted:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not trusted:
            raise PluginError("is a symlink (refused by O_NOFOLLOW)") from None
        raise PluginError(f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PluginError("not a regular file")
        if not trusted:
            if require_root and st.st_uid != 0:
                raise PluginError(f"owned by uid {st.st_uid}, not root")
            if st.st_mode & 0o022:
                raise PluginError(f"group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o})")
        if st.st_size > MAX_PLUGIN_BYTES:
            raise PluginError(f"larger than {MAX_PLUGIN_BYTES} bytes")
        chunks, total = [], 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_PLUGIN_BYTES:  # it grew after fstat
                raise PluginError(f"larger than {MAX_PLUGIN_BYTES} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _declared_api(tree: ast.Module) -> str | None:
    """Why the module's top-level ``J1MSKY_PLUGIN_API`` is unacceptable, or None."""
    value: ast.expr | None = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "J1MSKY_PLUGIN_API" for t in node.targets
        ):
            value = node.value
        elif (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "J1MSKY_PLUGIN_API"
        ):
            value = node.value
    if value is None:
        return "no top-level J1MSKY_PLUGIN_API = 1"
    if not isinstance(value, ast.Constant) or type(value.value) is not int:
        return "J1MSKY_PLUGIN_API must be a literal integer"
    if value.value != J1MSKY_PLUGIN_API:
        return f"J1MSKY_PLUGIN_API = {value.value} is not supported (this daemon speaks {J1MSKY_PLUGIN_API})"
    return None


def _load_file(registry: PluginRegistry, record: _Record, timeout: float, *, require_root: bool, trusted: bool) -> None:
    try:
        source = _read_trusted(record.path, require_root=require_root, trusted=trusted)
    except PluginError as exc:
        record.reason = str(exc)
        return
    try:
        with _AST_LOCK:
            tree = ast.parse(source, filename=record.path)
            problem = _declared_api(tree)
            if problem:
                record.reason = problem  # refused; no code from the file has run
                return
            code = compile(tree, record.path, "exec", dont_inherit=True)  # the same bytes we checked
    except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes in source
        record.status, record.reason = "failed", f"{type(exc).__name__}: {exc}"
        return

    modname = f"{NAMESPACE}.{record.name}"
    spec = importlib.util.spec_from_file_location(modname, record.path)
    assert spec is not None  # a path ending in .py always has a spec
    module = importlib.util.module_from_spec(spec)
    staging = _Staging(registry, record.name)
    outcome: dict[str, BaseException | None] = {}

    def run() -> None:
        try:
            exec(code, module.__dict__)
            register = getattr(module, "register", None)
            if not callable(register):
                raise PluginError("no register(registry) function")
            result = register(staging)
            if hasattr(result, "close") and hasattr(result, "send"):  # a coroutine: async def register
                result.close()
                raise PluginError("register() must be a plain function, not async")
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a plugin must not stop us
            outcome["error"] = exc
        if staging.closed:
            logger.warning("plugin %s finished after its timeout; its registrations were discarded", record.name)

    # Replaces a module of the same name from an earlier load_plugins() in this process
    # (tests, app restarts); duplicate names within one load are refused above.
    sys.modules[modname] = module
    worker = threading.Thread(target=run, name=f"j1msky-plugin-{record.name}", daemon=True)
    worker.start()
    # A thread cannot be killed: on timeout it keeps running in the background (daemon
    # thread, so it does not block exit) but its registrations are discarded.
    worker.join(timeout)
    if "error" not in outcome:
        staging.closed = True
        record.status, record.reason = "failed", f"timed out after {timeout:g}s"
        logger.error("plugin %s (%s) failed: %s", record.name, record.path, record.reason)
    elif staging.conflict:  # a kind clash is a refusal, whatever register() did with it
        record.reason = staging.conflict
    elif outcome["error"] is not None:
        error = outcome["error"]
        record.status, record.reason = "failed", f"{type(error).__name__}: {error}"
        logger.error("plugin %s (%s) failed", record.name, record.path, exc_info=error)
    else:
        registry._commit(staging, trusted=trusted)
        record.status, record.reason = "loaded", None
        record.providers, record.sinks = sorted(staging.providers), sorted(staging.sinks)
        return
    if sys.modules.get(modname) is module:
        del sys.modules[modname]
