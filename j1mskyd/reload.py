"""Reload without restart: re-read the config file, check it, say what changed, and hand the
new configuration to every service that holds a part of it, all in one step.

``systemctl reload j1msky`` (SIGHUP, listener.py) and ``POST /api/admin/reload`` both call
:meth:`Reloader.reload`.  What it does, in order (docs/operations.md, "Reloading the config"):

1. Re-reads the file the daemon started from (``--config``, ``$J1MSKY_CONFIG``) through the
   same loader and validator as a start.  An invalid file changes nothing: every problem is
   logged and raised at once (:class:`ConfigInvalid`, a 422 listing them).
2. Keeps the running value of each setting that only a restart can change
   (:data:`RESTART_ONLY`), and reports each one that differs as needing a restart.
3. Makes the slots of added or rebuilt providers (their plugin factories run off the loop);
   then, with no ``await`` in between, swaps the slots and calls every registered applier
   with the new :class:`~j1mskyd.config.Config`.  A request or an agent sees the old
   configuration or the new one, never half of each.
4. Retires removed and rebuilt providers' old slots: the calls under way on them finish
   there, then their clients are closed.
5. Audits (``config.change``) and logs what changed.

Reloads are serialized by a lock.  A daemon serving the embedded default (no config file)
has nothing to re-read: its reload is a no-op that says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .audit import SYSTEM, Actor, AuditLog
from .config import EMBEDDED, Config, ConfigError, ConfigIssue
from .errors import ApiError
from .plugin_api import ProviderSettings
from .provider_pool import ProviderSlot, SlotMaker

__all__ = ["Applier", "ConfigInvalid", "ConfigRef", "RESTART_ONLY", "Reloader", "apply_restart_only", "diff"]

log = logging.getLogger(__name__)

# The settings a running daemon cannot take without a restart: (section, names, why).
RESTART_ONLY: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("server", ("host", "port", "max_body_bytes", "header_timeout", "body_timeout", "max_connections"),
     "the listening socket and its connection guard are set up at start"),
    ("server", ("state_dir",), "the database and the encryption key (data.key) are opened at start"),
    ("server", ("log_level", "log_format"), "logging is set up at start"),
    ("store", ("synchronous",), "the database is opened at start"),
    ("plugins", ("dropin_dir", "disabled", "load_timeout", "require_root"), "plugins are loaded once, at start"),
    ("plugins", ("call_timeout",), "the webhook service and the provider clients take it at start"),
    ("runtime", ("max_concurrency",), "the upstream connection pool is sized from it at start"),
    ("limits", ("persist_interval",), "the counters' save job starts with it"),
    ("privacy", ("mask_pii_in_logs",), "logging is set up at start"),
    ("security", ("auth",), "the first admin key is made at start"),
    ("webhooks", ("allowed_networks", "file_sink_dirs"), "the webhooks' target policy is made at start"),
)

# Provider settings a slot takes in place; any other change makes a new client (a new slot).
_IN_PLACE = ("max_concurrency", "hourly_limit")

# Called with the new configuration during the swap (no await: they are plain functions);
# what they return (a note, several, or None) goes into the answer and the log.
Applier = Callable[[Config], "Iterable[str] | str | None"]


class ConfigRef:
    """The configuration in force, as the request handlers read it (``app[CONFIG].current``,
    api.common.config_of): a reload replaces ``current``; read it per request, never keep it."""

    def __init__(self, config: Config) -> None:
        self.current = config


class ConfigInvalid(ApiError):
    """422: the config file has problems; the running configuration stays.  ``details`` lists
    every one as ``{"field": dotted key, "message": reason, "file": where}``."""

    status = 422
    type = "INVALID_CONFIG"

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__(f"the configuration was not reloaded: {len(issues)} problem(s) in {issues[0].file}; "
                         "the running configuration stays in force",
                         details=[{"field": i.key, "message": i.reason, "file": i.file} for i in issues])


def _plain(value: Any) -> Any:
    """A setting's value as JSON (tuples as lists, read-only mappings as objects)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def apply_restart_only(running: Config, loaded: Config) -> tuple[Config, list[dict[str, Any]]]:
    """``loaded`` with the running value of every restart-only setting, and one entry per such
    setting that differs: ``{"key", "running", "in_file", "why"}``."""
    needs: list[dict[str, Any]] = []
    kept: dict[str, dict[str, Any]] = {}
    for section, names, why in RESTART_ONLY:
        old, new = getattr(running, section), getattr(loaded, section)
        for name in names:
            if getattr(old, name) != getattr(new, name):
                kept.setdefault(section, {})[name] = getattr(old, name)
                needs.append({"key": f"{section}.{name}", "running": _plain(getattr(old, name)),
                              "in_file": _plain(getattr(new, name)), "why": why})
    sections = {section: dataclasses.replace(getattr(loaded, section), **values) for section, values in kept.items()}
    return dataclasses.replace(loaded, **sections), needs


def _field_changes(old: Any, new: Any, prefix: str, hidden: Iterable[str] = ()) -> list[dict[str, Any]]:
    """``{"key", "old", "new"}`` per field of two dataclasses that differs, nested ones walked;
    a ``hidden`` field says only that it changed (a secret, a plugin's free-form options)."""
    out: list[dict[str, Any]] = []
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if a == b:
            continue
        if f.name in _URLS:
            a, b = _url_shown(a), _url_shown(b)
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            out += _field_changes(a, b, prefix)
        elif f.name in hidden or a == b:  # a == b here: only a URL's hidden parts changed
            out.append({"key": key, "changed": True})
        else:
            out.append({"key": key, "old": _plain(a), "new": _plain(b)})
    return out


_URLS = ("base_url",)  # fields holding a URL, shown without what may carry a credential


def _url_shown(url: Any) -> Any:
    """``url`` without its user-info (``user:token@``), query (``?key=...``, as some providers
    take their key) and fragment, each replaced by ``***``: the reload's answer, the audit log and
    the log show which host a provider moved to, never a credential written into its URL."""
    if not isinstance(url, str) or not url:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "",
                       "***" if parts.fragment else ""))


def _named_changes(old: Mapping[str, Any], new: Mapping[str, Any], hidden: Iterable[str] = ()) -> dict[str, Any]:
    """Added, removed and changed entries of a table of named tables (``[models.*]``,
    ``[providers.*]``, ``[teams.*]``...)."""
    out: dict[str, Any] = {}
    added, removed = [n for n in new if n not in old], [n for n in old if n not in new]
    changed = {n: _field_changes(old[n], new[n], "", hidden) if dataclasses.is_dataclass(old[n])
               else [{"key": "", "old": _plain(old[n]), "new": _plain(new[n])}]
               for n in new if n in old and old[n] != new[n]}
    for name, value in (("added", added), ("removed", removed), ("changed", changed)):
        if value:
            out[name] = value
    return out


_NOT_SETTINGS = ("source", "missing_api_keys")  # Config fields that are not the file's settings
_HIDDEN = {"providers": ("api_key", "options")}  # said to change, never shown


def diff(old: Config, new: Config) -> dict[str, Any]:
    """What differs between two configurations, for the answer and the log.  Each table of
    named tables (``models``, ``providers``, ``teams``, and any a later section adds) by its
    name: added, removed, changed with each field's old and new value (a provider's API key
    and options only as changed); ``settings``: one entry per changed setting of every other
    section, named as in the file.  Empty when nothing differs."""
    out: dict[str, Any] = {}
    settings: list[dict[str, Any]] = []
    for f in dataclasses.fields(old):
        if f.name in _NOT_SETTINGS:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if isinstance(a, Mapping):
            changes = _named_changes(a, b, _HIDDEN.get(f.name, ()))
            if changes:
                out[f.name] = changes
        elif dataclasses.is_dataclass(a):
            settings += _field_changes(a, b, f.name)
    if settings:
        out["settings"] = settings
    return out


def _summary(changes: dict[str, Any]) -> str:
    """One line for the log: ``models +a -b ~c; providers ...; settings x, y``."""
    parts = []
    for name, c in changes.items():
        if name != "settings":
            parts.append(name + " " + " ".join([f"+{n}" for n in c.get("added", ())] + [
                f"-{n}" for n in c.get("removed", ())] + [f"~{n}" for n in c.get("changed", {})]))
    if "settings" in changes:
        parts.append("settings " + ", ".join(c["key"] for c in changes["settings"]))
    return "; ".join(parts) or "no change"


def _notes(result: Iterable[str] | str | None) -> list[str]:
    if result is None:
        return []
    return [result] if isinstance(result, str) else list(result)


class Reloader:
    """The one way a running daemon takes a new configuration (see the module's docstring).

    ``load``: re-reads the configuration as the start did (None: the embedded default, which
    has nothing to re-read).  ``slots``: the providers' slots, shared with the runtime and
    changed in place.  ``appliers``: called in this order with the new configuration during
    the swap; register a service that holds configuration with :meth:`register`.
    ``announce``: awaited after the swap (the pricing policy's event)."""

    def __init__(self, ref: ConfigRef, load: Callable[[], Config] | None, *, slots: dict[str, ProviderSlot],
                 maker: SlotMaker, audit: AuditLog,
                 announce: Callable[[Config], Awaitable[None]] | None = None) -> None:
        self.ref, self.load, self.slots, self.maker, self.audit = ref, load, slots, maker, audit
        self.announce = announce
        self.appliers: list[Applier] = []
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Future[None]] = set()
        # For /metrics (Prometheus's own names for its reloads): applied and refused so far, the
        # wall time of the last configuration taken (the start's, until a reload), the last outcome.
        self.reloads = 0
        self.refused = 0
        self.last_success = time.time()
        self.last_ok = True

    def register(self, *appliers: Applier) -> None:
        self.appliers.extend(appliers)

    async def reload(self, actor: Actor = SYSTEM) -> dict[str, Any]:
        """Re-read, check and apply the config file; the answer of POST /admin/reload.
        Raises :class:`ConfigInvalid` (nothing changed) when the file has problems."""
        async with self._lock:
            running = self.ref.current
            if self.load is None:
                message = ("no config file: the daemon serves the embedded default, which a reload does not "
                           "change (start it with --config to reload one)")
                log.info("config reload: %s", message)
                return {"success": True, "reloaded": False, "source": EMBEDDED, "message": message}
            try:
                loaded = await asyncio.get_running_loop().run_in_executor(None, self.load)
            except ConfigError as exc:
                raise self._refused(actor, running.source, exc.issues) from None
            problems = self._unknown_plugins(running, loaded)
            if problems:
                raise self._refused(actor, loaded.source, problems)
            config, needs_restart = apply_restart_only(running, loaded)
            changes = diff(running, config)
            notes = await self._swap(running, config)
            for entry in needs_restart:
                log.warning("config reload: %s changed in the file (%s -> %s) but needs a restart (%s); the "
                            "running value stays until then", entry["key"], entry["running"], entry["in_file"],
                            entry["why"])
            for note in notes:
                log.info("config reload: %s", note)
            summary = _summary(changes)
            log.info("config reloaded from %s: %s", config.source, summary)
            self.audit.record("config.change", actor, resource_type="config", resource_id=config.source,
                              details={"result": "applied", "changed": changes,
                                       "needs_restart": [e["key"] for e in needs_restart]})
            if self.announce is not None:
                await self.announce(config)
            return {"success": True, "reloaded": True, "source": config.source,
                    "message": f"configuration reloaded: {summary}", "changed": changes,
                    "needs_restart": needs_restart, "notes": notes}

    def _refused(self, actor: Actor, source: str, issues: list[ConfigIssue]) -> ConfigInvalid:
        """Every problem logged and audited; the error to raise (nothing was changed)."""
        for issue in issues:
            log.error("config reload refused: %s", ConfigError([issue]))
        log.error("config reload refused: %d problem(s) in %s; the running configuration stays", len(issues), source)
        self.refused += 1
        self.last_ok = False
        self.audit.record("config.change", actor, severity="warning", resource_type="config", resource_id=source,
                          details={"result": "refused", "problems": [f"{i.key}: {i.reason}" if i.key else i.reason
                                                                     for i in issues]})
        return ConfigInvalid(issues)

    def _unknown_plugins(self, running: Config, loaded: Config) -> list[ConfigIssue]:
        """A new or changed provider of a kind no loaded plugin provides: plugins load at start
        only, so it could never work until a restart; refused rather than left unavailable."""
        return [ConfigIssue(loaded.source, f"providers.{name}.plugin",
                            f"no loaded plugin provides {p.plugin!r} (plugins are loaded at start: add the plugin, "
                            "then restart)")
                for name, p in loaded.providers.items()
                if running.providers.get(name) != p and not self.maker.known(p.plugin)]

    async def _swap(self, running: Config, config: Config) -> list[str]:
        old, new = running.providers, config.providers
        rebuilt = [n for n in new if n not in old or not _in_place(old[n], new[n])]
        rt = config.runtime
        made = await self.maker.make([new[n] for n in rebuilt], rt.breaker_threshold, rt.breaker_reset_seconds)
        notes = [f"provider {name} unavailable: {slot.error}" for name, slot in made.items() if not slot.usable]
        # The swap: from here to its end no await, so nothing sees half of it.
        retired = [self.slots.pop(n) for n in list(self.slots) if n not in new or n in made]
        self.slots.update(made)
        for name, slot in self.slots.items():
            if slot.settings != new[name]:
                slot.resize(new[name])
            slot.breaker.retune(rt.breaker_threshold, rt.breaker_reset_seconds)
        self.ref.current = config
        for apply in self.appliers:
            try:
                notes += _notes(apply(config))
            except Exception as exc:  # noqa: BLE001 - one service's bug must not leave the others behind
                log.exception("config reload: %r could not take the new configuration", apply)
                notes.append(f"a service could not take the new configuration ({type(exc).__name__}); "
                             "see the log, and restart to be sure")
        self.reloads += 1
        self.last_success, self.last_ok = time.time(), True
        # The swap's end.  The old slots finish their calls, then close.
        for slot in retired:
            task = asyncio.ensure_future(slot.retire(config.plugins.call_timeout))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        if retired:
            notes.append(f"{len(retired)} provider client(s) retired: " + ", ".join(s.name for s in retired)
                         + " (calls under way finish on them, then they are closed)")
        return notes

    async def close(self) -> None:
        """At the stop, after the runtime's: the retired slots' last calls have ended, so
        their clients close now."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


def _in_place(old: ProviderSettings, new: ProviderSettings) -> bool:
    """Can a provider's slot take ``new`` without a new client (only its limits changed)?"""
    return dataclasses.replace(old, **{f: getattr(new, f) for f in _IN_PLACE}) == new
