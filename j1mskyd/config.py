"""Typed configuration: one TOML file -> frozen dataclasses.

Load order: the TOML file (or the embedded default), then ``J1MSKY_*`` environment
overrides, then provider API keys from the environment or the secrets file.  Every
problem is collected as a :class:`ConfigIssue` (file, dotted key, reason) and raised
once as :class:`ConfigError`, so an operator fixes the whole file in one go instead of
one error per restart (fail fast, all at once, as Radicale does).

The embedded default goes through the same parser and validator as a real file, so
there is one code path to trust.

Secrets never appear in messages: reasons name types and constraints, never values.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import stat
import sys
import tomllib
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple
from urllib.parse import urlsplit

from . import local_access, pricing
from .task_config import (SHIPPED_WORKFLOWS, RoleConfig, RoleEscalation, TasksConfig,
                          derived_roles)
from .netguard import PRIVATE_NETWORKS, parse_networks
from .plain_text import shown
from .providers import ProviderSettings

__all__ = [
    "EMBEDDED",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "BudgetConfig",
    "LimitsConfig",
    "ModelConfig",
    "PluginsConfig",
    "PrivacyConfig",
    "RuntimeConfig",
    "SecurityConfig",
    "ServerConfig",
    "StoreConfig",
    "TeamConfig",
    "default_state_dir",
    "embedded_default",
    "load_config",
    "missing_key_warnings",
    "role_issues",
    "validate_role",
]

log = logging.getLogger(__name__)

EMBEDDED = "<embedded>"
DEFAULT_SECRETS_FILE = "/etc/j1msky/secrets.env"
ENV = "<env>"


# --------------------------------------------------------------------------- errors

class ConfigIssue(NamedTuple):
    file: str
    key: str      # dotted, e.g. "models.k2p5.fallback"; "" for whole-file problems
    reason: str


class ConfigError(Exception):
    """Every problem found in one load.  ``str()`` gives one "file: key: reason" per line."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        # A key is echoed as the file spells it: escaped, it stays on its one line (plain_text).
        return "\n".join(
            f"{i.file}: {shown(i.key)}: {shown(i.reason)}" if i.key else f"{i.file}: {shown(i.reason)}"
            for i in self.issues
        )


# ----------------------------------------------------------------------- dataclasses

def default_state_dir(env: Mapping[str, str] | None = None) -> str:
    """``$XDG_STATE_HOME/j1msky``, else ``./.j1msky``; always absolute."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_STATE_HOME", "")
    # The XDG spec says to ignore an empty or relative value.
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "j1msky")
    return os.path.abspath(".j1msky")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080                       # 0 = any free port (tests)
    state_dir: str = field(default_factory=default_state_dir)
    max_body_bytes: int = 1_048_576
    secrets_file: str = DEFAULT_SECRETS_FILE
    log_level: str = "info"
    log_format: str = "text"               # text | json (logsetup.py); under systemd, text gets <N> priorities
    header_timeout: float = 10.0           # seconds for a request line + headers (slowloris)
    body_timeout: float = 60.0             # seconds for a request body, from its headers' end
    max_connections: int = 512             # open client connections (listener.py; LimitNOFILE)


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    max_concurrency: int = 64
    default_timeout: float = 300.0
    max_timeout: float = 3600.0
    max_attempts: int = 3                  # provider calls per model before falling back
    retry_base_delay: float = 0.5
    retry_max_delay: float = 30.0
    restart_attempts: int = 2              # re-runs of an agent interrupted by a crash
    breaker_threshold: int = 5
    breaker_reset_seconds: float = 60.0
    max_task_chars: int = 2000
    max_batch: int = 100                   # agents per spawn-batch


@dataclass(frozen=True, slots=True)
class StoreConfig:
    synchronous: str = "full"              # sqlite PRAGMA synchronous (WAL): full | normal (docs/operations.md)


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    daily_budget: float = 50.0
    monthly_ceiling: float = 1500.0        # default: daily_budget x 30
    spike_per_hour: float = 100.0          # spend per key per clock hour that blocks new spawns
    max_agents_per_key: int = 50           # live agents per key


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Requests per window, per API key and separately per client IP (the API reference's "Rate Limits")."""
    window_seconds: float = 3600.0
    spawn: int = 100                       # POST /spawn, /spawn-team, /spawn-batch
    agent_read: int = 1000                 # GET /agent/*
    agents_list: int = 100                 # GET /agents, /agents/active
    system: int = 60                       # GET /system
    other: int = 1000                      # every other /api endpoint
    per_ip: bool = True                    # also count each client IP on its own
    persist_interval: float = 5.0          # seconds between saves of the counters (when changed)


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    allowed_ips: tuple[str, ...] = PRIVATE_NETWORKS  # loopback and private LAN ranges
    enforce_allowlist: bool = True         # refuse (403) clients outside allowed_ips
    log_violations: bool = True
    trusted_proxies: tuple[str, ...] = ()  # peers whose X-Forwarded-For is believed
    auth: bool = True                      # require an API key on /api (all but /api/health)
    require_signatures: bool = False       # every request must be HMAC-signed (else per key)
    signature_max_skew: float = 300.0      # seconds a signed request's X-Timestamp may be off
    key_rotation_grace_hours: float = 24.0 # a rotated key keeps working this long
    # What a caller on loopback may do without a key (local_access.py).  () here: a config
    # file that does not say requires keys everywhere; the embedded default grants the
    # agents and billing scopes, as the API reference's keyless quick starts expect.
    local_scopes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WebhooksConfig:
    """Where outgoing webhooks may go besides public addresses (see webhook_targets.py)."""
    allowed_networks: tuple[str, ...] = ()  # e.g. ("192.168.1.0/24",) for a LAN receiver
    file_sink_dirs: tuple[str, ...] = ()    # where file:// webhooks may write (sink_files.py); none: no file sink


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    retention_days: float = 30.0           # task and result text of finished agents, then purged
    mask_pii_in_logs: bool = True          # emails, phone and card numbers never reach the log


@dataclass(frozen=True, slots=True)
class PricingConfig:
    """The ``[pricing]`` table: the pricing policy (business rules' defaults) and how long the
    recorded quotes and decisions are kept."""
    policy: pricing.PricingPolicy = pricing.DEFAULT_POLICY
    history_days: float = 365.0            # recorded quotes and decisions (open exceptions stay)


def _pricing_config(values: dict[str, Any], issues: "_Issues") -> PricingConfig:
    """Merge the table over the defaults and check what relates two keys."""
    history_days = values.pop("history_days", PricingConfig().history_days)
    base = pricing.DEFAULT_POLICY
    for name in ("complexity_markup", "segment_adjustments", "margin_thresholds"):
        if name in values:
            values[name] = types.MappingProxyType({**getattr(base, name), **values[name]})
    policy = dataclasses.replace(base, **values)
    if not policy.min_markup <= policy.target_markup <= policy.max_markup:
        issues.add("pricing.target_markup", "must satisfy min_markup <= target_markup <= max_markup")
    if policy.healthy_margin_pct > policy.strong_margin_pct:
        issues.add("pricing.healthy_margin_pct", "must not exceed pricing.strong_margin_pct")
    if policy.health_warning_pct > policy.health_critical_pct:
        issues.add("pricing.health_warning_pct", "must not exceed pricing.health_critical_pct")
    return PricingConfig(policy, history_days)


@dataclass(frozen=True, slots=True)
class PluginsConfig:
    dropin_dir: str = "/etc/j1msky/plugins.d"
    disabled: tuple[str, ...] = ()
    load_timeout: float = 10.0
    require_root: bool = True
    call_timeout: float = 30.0     # a sink delivery, a close(), a factory (provider calls: request.timeout)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    alias: str
    provider: str
    upstream: str
    input_per_1k: float
    output_per_1k: float
    blended_per_1k: float
    fallback: str | None = None
    typical_output_tokens: int = 800
    max_tokens: int = 4096


@dataclass(frozen=True, slots=True)
class TeamConfig:
    id: str
    name: str
    members: tuple[str, ...]               # model aliases
    specialty: tuple[str, ...] = ()
    status: str = "active"                 # active | standby


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    runtime: RuntimeConfig
    store: StoreConfig
    plugins: PluginsConfig
    providers: Mapping[str, ProviderSettings]
    models: Mapping[str, ModelConfig]
    teams: Mapping[str, TeamConfig]
    source: str                            # "<embedded>" or the file path
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    pricing: PricingConfig = field(default_factory=PricingConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    # Tasks (task_config.py): [tasks], [roles.<name>], [workflows.<type>] (type -> its roles in order).
    tasks: TasksConfig = field(default_factory=TasksConfig)
    roles: Mapping[str, RoleConfig] = field(default_factory=lambda: types.MappingProxyType({}))
    workflows: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: SHIPPED_WORKFLOWS)
    # Providers whose api_key_env names a variable set neither in the environment nor in the
    # secrets file: provider -> that variable.  They are "unconfigured" (a warning at start and
    # in check-config, that status in /health) instead of looking healthy until the first call.
    missing_api_keys: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))


def missing_key_warnings(config: Config) -> list[str]:
    """One line per provider whose API key is missing (``Config.missing_api_keys``), for the log
    at start and for ``check-config``."""
    return [f"provider {name}: no API key: {var} is set neither in the environment nor in "
            f"{config.server.secrets_file}; it is unconfigured and its calls will fail"
            for name, var in sorted(config.missing_api_keys.items())]


# ------------------------------------------------------------------------- checkers
# A checker takes a parsed TOML value and returns the typed value or raises _Bad.

class _Bad(Exception):
    pass


Checker = Callable[[Any], Any]

_TOML_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string",
               list: "array", dict: "table"}


def _tname(value: Any) -> str:
    return _TOML_TYPES.get(type(value), type(value).__name__)


def _in_range(v: float, lo: float | None, hi: float | None, lo_open: bool) -> None:
    if lo is None:
        return
    if lo_open and not v > lo:
        raise _Bad(f"must be > {lo:g}")
    if hi is not None and not lo <= v <= hi:
        raise _Bad(f"must be between {lo:g} and {hi:g}")
    if v < lo:
        raise _Bad(f"must be >= {lo:g}")


def _int(lo: int | None = None, hi: int | None = None) -> Checker:
    def check(v: Any) -> int:
        # type() not isinstance(): bool is an int subclass and `true` is not a count.
        if type(v) is not int:
            raise _Bad(f"must be an integer, not {_tname(v)}")
        _in_range(v, lo, hi, False)
        return v
    return check


def _num(lo: float | None = None, hi: float | None = None, *, positive: bool = False) -> Checker:
    """A float; TOML integers are accepted (``timeout = 30``)."""
    def check(v: Any) -> float:
        if type(v) not in (int, float):
            raise _Bad(f"must be a number, not {_tname(v)}")
        # A JSON integer (a role changed over the API) may be too large for a float.
        if type(v) is int and abs(v) > sys.float_info.max or not math.isfinite(v):
            raise _Bad("must be a finite number")
        _in_range(v, 0 if positive else lo, hi, positive)
        return float(v)
    return check


def _num_table(keys: Iterable[str], number: Checker) -> Checker:
    """A table of numbers under known keys (``{low = 3.0, high = 5.5}``); keys left out keep
    their defaults, so an operator changes one markup without restating the others."""
    known = tuple(keys)

    def check(v: Any) -> dict[str, float]:
        if type(v) is not dict:
            raise _Bad(f"must be a table, not {_tname(v)}")
        out = {}
        for key, value in v.items():
            if key not in known:
                raise _Bad(f"unknown key {key!r} (known: {', '.join(known)})")
            try:
                out[key] = number(value)
            except _Bad as e:
                raise _Bad(f"{key} {e}") from None
        return out
    return check


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _Bad(f"must be true or false, not {_tname(v)}")
    return v


def _str(*, empty: bool = False, pattern: re.Pattern[str] | None = None,
         what: str = "") -> Checker:
    def check(v: Any) -> str:
        if type(v) is not str:
            raise _Bad(f"must be a string, not {_tname(v)}")
        if not v and not empty:
            raise _Bad("must not be empty")
        if v and pattern is not None and not pattern.fullmatch(v):
            raise _Bad(f"must be {what}")
        return v
    return check


def _enum(*choices: str, fold: bool = False) -> Checker:
    def check(v: Any) -> str:
        if type(v) is not str:
            raise _Bad(f"must be a string, not {_tname(v)}")
        value = v.lower() if fold else v
        if value not in choices:
            raise _Bad("must be one of " + ", ".join(repr(c) for c in choices))
        return value
    return check


def _strings(*, nonempty: bool = False) -> Checker:
    def check(v: Any) -> tuple[str, ...]:
        if type(v) is not list or not all(type(s) is str and s for s in v):
            raise _Bad("must be an array of non-empty strings")
        if nonempty and not v:
            raise _Bad("must not be empty")
        if len(set(v)) != len(v):
            raise _Bad("must not repeat an entry")
        return tuple(v)
    return check


def _url(v: Any) -> str:
    v = _str(empty=True)(v)
    if v:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _Bad("must be an http:// or https:// URL")
        if "@" in parts.netloc:  # the HTTP client refuses them beside the key's header: every call failed
            raise _Bad("must not hold user:password@ (the API key goes in api_key_env or the secrets file)")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is no number or out of range
        except ValueError:
            raise _Bad("has a port that is not a number from 0 to 65535") from None
    return v


def _table(v: Any) -> dict[str, Any]:
    if type(v) is not dict:
        raise _Bad(f"must be a table, not {_tname(v)}")
    return dict(v)


# Names used as table keys ([providers.kimi-coding], [models."minimax-m2.5"]).
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_NAME_WHAT = "lowercase letters, digits, '.', '_' or '-'"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# The plugin registry's kind names (plugins.py _KIND_RE); anything else could never
# match a registered kind.  Whether the kind exists is the registry's call, at start.
_KIND = re.compile(r"[a-z][a-z0-9_]*")


# ----------------------------------------------------------------------- the schema
# section/table -> {key: checker}.  Keys not listed are unknown and refused.

_SERVER: dict[str, Checker] = {
    "host": _str(),
    "port": _int(0, 65535),
    "state_dir": _str(),
    "max_body_bytes": _int(1),
    "secrets_file": _str(),
    "log_level": _enum("debug", "info", "warning", "error", "critical", fold=True),
    "log_format": _enum("text", "json"),
    "header_timeout": _num(hi=3600, positive=True),
    "body_timeout": _num(hi=3600, positive=True),
    "max_connections": _int(1),
}
# At most 100,000 agents at once (each an upstream connection and a file descriptor): a number
# past that is a typo, which asked the open-files limit for 10^20 descriptors.
_MAX_RUNNING = _int(1, 100_000)
_RUNTIME: dict[str, Checker] = {
    "max_concurrency": _MAX_RUNNING,
    "default_timeout": _num(positive=True),
    "max_timeout": _num(positive=True),
    "max_attempts": _int(1),
    "retry_base_delay": _num(0),
    "retry_max_delay": _num(0),
    "restart_attempts": _int(0),
    "breaker_threshold": _int(1),
    "breaker_reset_seconds": _num(positive=True),
    "max_task_chars": _int(1),
    "max_batch": _int(1),
}
_STORE: dict[str, Checker] = {"synchronous": _enum("normal", "full")}
_PLUGINS: dict[str, Checker] = {
    "dropin_dir": _str(),
    "disabled": _strings(),
    "load_timeout": _num(positive=True),
    "require_root": _bool,
    "call_timeout": _num(positive=True),
}
_PROVIDER: dict[str, Checker] = {
    "plugin": _str(pattern=_KIND, what="a plugin kind: lowercase letters, digits, '_'"),
    "base_url": _url,
    "api_key_env": _str(pattern=_ENV_NAME, what="an environment variable name"),
    "timeout": _num(positive=True),
    "max_concurrency": _MAX_RUNNING,
    "hourly_limit": _int(1),
    "options": _table,           # free-form: its contents belong to the plugin
}
_MODEL: dict[str, Checker] = {
    "provider": _str(),
    "upstream": _str(),
    "input_per_1k": _num(0),
    "output_per_1k": _num(0),
    "blended_per_1k": _num(0),
    "fallback": _str(),
    "typical_output_tokens": _int(1),
    "max_tokens": _int(1),
}
_TEAM: dict[str, Checker] = {
    "name": _str(),
    "members": _strings(nonempty=True),
    "specialty": _strings(),
    "status": _enum("active", "standby"),
}
_BUDGET: dict[str, Checker] = {
    "daily_budget": _num(0),
    "monthly_ceiling": _num(0),
    "spike_per_hour": _num(positive=True),
    "max_agents_per_key": _int(1),
}
_LIMITS: dict[str, Checker] = {
    "window_seconds": _num(1),  # 1e-300 refilled every bucket at once: no limit at all
    "spawn": _int(1),
    "agent_read": _int(1),
    "agents_list": _int(1),
    "system": _int(1),
    "other": _int(1),
    "per_ip": _bool,
    "persist_interval": _num(positive=True),
}
def _networks(v: Any) -> tuple[str, ...]:
    items = _strings()(v)
    try:
        parse_networks(items)
    except ValueError as e:
        raise _Bad(str(e)) from None
    return items


def _local_scopes(v: Any) -> tuple[str, ...]:
    items = _strings()(v)
    problem = local_access.refusal(items)
    if problem is not None:
        raise _Bad(problem)
    return items


_SECURITY: dict[str, Checker] = {
    "allowed_ips": _networks,
    "enforce_allowlist": _bool,
    "log_violations": _bool,
    "trusted_proxies": _networks,
    "auth": _bool,
    "require_signatures": _bool,
    "signature_max_skew": _num(positive=True),
    "key_rotation_grace_hours": _num(0),
    "local_scopes": _local_scopes,
}
def _webhook_networks(v: Any) -> tuple[str, ...]:
    """Networks opened to webhooks: each one a deliberate choice, so nothing wider than a /8
    (IPv4) or a /7 (IPv6, the ULA range): ``0.0.0.0/0`` would open the whole inside."""
    items = _networks(v)
    for text, net in zip(items, parse_networks(items)):
        if net.prefixlen < (8 if net.version == 4 else 7):
            raise _Bad(f"{text!r} is too broad (at most a /8 for IPv4, a /7 for IPv6)")
    return items


def _sink_dirs(v: Any) -> tuple[str, ...]:
    """Directories opened to the file sink: absolute, and never the whole disk."""
    items = _strings()(v)
    for d in items:
        if not d.startswith("/") or "\0" in d:
            raise _Bad(f"{d!r} is not an absolute path")
        if not os.path.normpath(d).strip("/"):  # "/", "//.", "/a/..": the whole disk
            raise _Bad("'/' would let the file sink write anywhere the daemon may: list the directories it needs")
    return items


_WEBHOOKS: dict[str, Checker] = {"allowed_networks": _webhook_networks, "file_sink_dirs": _sink_dirs}
_PRIVACY: dict[str, Checker] = {"retention_days": _num(positive=True), "mask_pii_in_logs": _bool}
_PERCENT = _num(0, 100)
_PRICING: dict[str, Checker] = {
    "complexity_markup": _num_table(pricing.COMPLEXITIES, _num(positive=True)),
    "min_markup": _num(positive=True),
    "target_markup": _num(positive=True),
    "max_markup": _num(positive=True),
    "minimum_price": _num(0),
    "segment_adjustments": _num_table(pricing.SEGMENTS, _num(-100, 100)),
    "margin_thresholds": _num_table(pricing.DELIVERY_TYPES, _PERCENT),
    "default_delivery_type": _enum(*pricing.DELIVERY_TYPES),
    "default_segment": _enum(*pricing.SEGMENTS),
    "strong_margin_pct": _PERCENT,
    "healthy_margin_pct": _PERCENT,
    "executive_review_ratio": _num(0, 1),
    "elevated_cost_per_task": _num(0),
    "health_warning_pct": _num(positive=True),
    "health_critical_pct": _num(positive=True),
    "history_days": _num(positive=True),
}
_TASKS: dict[str, Checker] = {
    "max_revisions": _int(0, 100),
    "approval_threshold": _num(0),
    "max_steps": _int(1, 1000),
}
_SECTIONS = {"server": _SERVER, "runtime": _RUNTIME, "store": _STORE, "plugins": _PLUGINS,
             "budget": _BUDGET, "limits": _LIMITS, "security": _SECURITY,
             "privacy": _PRIVACY, "pricing": _PRICING, "webhooks": _WEBHOOKS, "tasks": _TASKS}
_NAMED = ("providers", "models", "teams", "roles", "workflows")
_REQUIRED = {
    "providers": ("plugin",),
    "models": ("provider", "upstream", "input_per_1k", "output_per_1k", "blended_per_1k"),
    "teams": ("name", "members"),
}
_HINTS = {  # reasons for unknown keys people are likely to try
    "api_key": "unknown key; never put a key in this file: name its environment "
               "variable with api_key_env (value from the environment or the secrets file)",
}


def _parse_int(s: str) -> int:
    """Plain ASCII digits (int() also takes "1_000", "+5" and other scripts' digits)."""
    text = s.strip()
    if not re.fullmatch(r"-?[0-9]{1,18}", text):
        raise _Bad("must be an integer")
    return int(text)


# (variable, section, key, str -> TOML-like value); then the section's checker runs.
_ENV_OVERRIDES: tuple[tuple[str, str, str, Callable[[str], Any]], ...] = (
    ("J1MSKY_HOST", "server", "host", str),
    ("J1MSKY_PORT", "server", "port", _parse_int),
    ("J1MSKY_STATE_DIR", "server", "state_dir", str),
    ("J1MSKY_LOG_LEVEL", "server", "log_level", str),
    ("J1MSKY_LOG_FORMAT", "server", "log_format", str),
    ("J1MSKY_SECRETS_FILE", "server", "secrets_file", str),
    ("J1MSKY_PLUGINS_DIR", "plugins", "dropin_dir", str),
    ("J1MSKY_MAX_CONCURRENCY", "runtime", "max_concurrency", _parse_int),
    ("J1MSKY_DAILY_BUDGET", "budget", "daily_budget", float),
)


# -------------------------------------------------------------------------- loading

class _Issues(list[ConfigIssue]):
    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def add(self, key: str, reason: str, file: str | None = None) -> None:
        self.append(ConfigIssue(file or self.file, key, reason))


def _check_table(raw: Mapping[str, Any], schema: Mapping[str, Checker], prefix: str,
                 issues: _Issues, required: Iterable[str] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        check = schema.get(key)
        if check is None:
            import difflib  # only for a mistake: not loaded by a daemon whose config is right
            near = difflib.get_close_matches(key, schema, n=1)
            reason = _HINTS.get(key) or (
                f"unknown key (did you mean {near[0]!r}?)" if near else "unknown key")
            issues.add(f"{prefix}.{key}", reason)
            continue
        try:
            out[key] = check(value)
        except _Bad as e:
            issues.add(f"{prefix}.{key}", str(e))
    for key in required:
        if key not in raw:
            issues.add(f"{prefix}.{key}", "required")
    return out


def _named_tables(doc: Mapping[str, Any], section: str,
                  issues: _Issues) -> dict[str, dict[str, Any]]:
    """Validate ``[<section>.<name>]`` tables; returns name -> checked values."""
    raw = doc.get(section, {})
    if type(raw) is not dict:
        issues.add(section, f"must be a table, not {_tname(raw)}")
        return {}
    schema = {"providers": _PROVIDER, "models": _MODEL, "teams": _TEAM}[section]
    out = {}
    for name, table in raw.items():
        key = f"{section}.{name}"
        if not _NAME.fullmatch(name):
            issues.add(key, f"name must be {_NAME_WHAT}, starting with a letter or digit")
        if type(table) is not dict:
            issues.add(key, f"must be a table, not {_tname(table)}")
            continue
        out[name] = _check_table(table, schema, key, issues, _REQUIRED[section])
    return out


def _check_refs(providers: Mapping[str, Any], models: dict[str, dict[str, Any]],
                teams: dict[str, dict[str, Any]], issues: _Issues) -> None:
    if not models:
        issues.add("models", "at least one model is required")
    for alias, m in models.items():
        if "provider" in m and m["provider"] not in providers:
            issues.add(f"models.{alias}.provider", f"no provider named {m['provider']!r}")
        fb = m.get("fallback")
        if fb is not None and fb == alias:
            issues.add(f"models.{alias}.fallback", "a model cannot fall back to itself")
        elif fb is not None and fb not in models:
            issues.add(f"models.{alias}.fallback", f"no model named {fb!r}")
        # Fallback cycles are legal (k2p5 <-> minimax-m2.5 in the catalogue); the
        # runtime stops at the first model it has already tried.
    for tid, t in teams.items():
        for member in t.get("members", ()):
            if member not in models:
                issues.add(f"teams.{tid}.members", f"no model named {member!r}")


# -- tasks: [roles.<name>] and [workflows.<type>] (task_config.py) --------------------------------
_ROLE: dict[str, Checker] = {
    "default_model": _str(),
    "models": _strings(nonempty=True),
    "capabilities": _strings(),
    "temperature": _num(0, 2),
    "max_tokens": _int(1, 1_000_000),
    "timeout": _num(hi=86_400, positive=True),
    "escalation": _table,
    "constraints": _table,       # free-form: shown to clients as the role's constraints
    "enabled": _bool,
    "review": _bool,             # its steps end with a verdict; default: true for a role named critic
}
_ROLE_ESCALATION: dict[str, Checker] = {
    "cost_threshold": _num(0),
    "max_revisions": _int(0, 100),
    "security_threshold": _num(0, 1),
    "complexity_threshold": _num(0, 1),
    "business_impact_threshold": _num(0, 1),
}
_WORKFLOW: dict[str, Checker] = {"steps": _strings(nonempty=True)}


def _role(name: str, raw: Any, models: Mapping[str, Any], issues: _Issues, prefix: str = "roles") -> RoleConfig | None:
    """One ``[roles.<name>]`` table checked (by the file's load and by a change at run time)."""
    key = f"{prefix}.{name}"
    if not _NAME.fullmatch(name):
        issues.add(key, f"name must be {_NAME_WHAT}, starting with a letter or digit")
    if type(raw) is not dict:
        issues.add(key, f"must be a table, not {_tname(raw)}")
        return None
    before = len(issues)
    values = _check_table(raw, _ROLE, key, issues, ("default_model",))
    escalation = _check_table(values.pop("escalation", {}), _ROLE_ESCALATION, f"{key}.escalation", issues)
    default = values.get("default_model")
    allowed = values.get("models") or ((default,) if default is not None else ())
    for alias in allowed:
        if alias not in models:
            issues.add(f"{key}.models" if "models" in values else f"{key}.default_model",
                       f"no model named {alias!r}")
    if default is not None and "models" in values and default not in allowed:
        issues.add(f"{key}.default_model", f"must be one of {key}.models ({', '.join(allowed)})")
    if len(set(allowed)) != len(allowed):
        issues.add(f"{key}.models", "names a model twice")
    if len(issues) > before or default is None:
        return None
    values["models"] = tuple(allowed)
    values.setdefault("review", name == "critic")
    if "constraints" in values:
        values["constraints"] = types.MappingProxyType(values["constraints"])
    return RoleConfig(name=name, escalation=RoleEscalation(**escalation), **values)


def _task_tables(doc: Mapping[str, Any], models: Mapping[str, Any],
                 issues: _Issues) -> tuple[Mapping[str, RoleConfig], Mapping[str, tuple[str, ...]]]:
    """``[roles.*]`` (none: task_config.derived_roles) and ``[workflows.*]`` (none: the shipped
    four), every workflow step a defined role."""
    roles: dict[str, RoleConfig] = {}
    raw_roles = doc.get("roles", {})
    if type(raw_roles) is not dict:
        issues.add("roles", f"must be a table, not {_tname(raw_roles)}")
        raw_roles = {}
    for name, table in raw_roles.items():
        role = _role(name, table, models, issues)
        if role is not None:
            roles[name] = role
    if not raw_roles:
        roles = dict(derived_roles(models))
    workflows: dict[str, tuple[str, ...]] = {}
    raw_flows = doc.get("workflows", {})
    if type(raw_flows) is not dict:
        issues.add("workflows", f"must be a table, not {_tname(raw_flows)}")
        raw_flows = {}
    for kind, table in raw_flows.items():
        key = f"workflows.{kind}"
        if not _NAME.fullmatch(kind):
            issues.add(key, f"name must be {_NAME_WHAT}, starting with a letter or digit")
        if type(table) is not dict:
            issues.add(key, f"must be a table, not {_tname(table)}")
            continue
        steps = _check_table(table, _WORKFLOW, key, issues, ("steps",)).get("steps")
        if steps is None:
            continue
        unknown = [s for s in steps if s not in raw_roles and s not in roles]
        if unknown:
            issues.add(f"{key}.steps", f"no role named {', '.join(map(repr, unknown))}")
        else:
            workflows[kind] = steps
    if not raw_flows:
        workflows = dict(SHIPPED_WORKFLOWS)
        missing = sorted({r for steps in workflows.values() for r in steps} - set(roles))
        if missing and raw_roles:
            issues.add("workflows", f"the shipped workflows need the roles {', '.join(missing)}: define them "
                       "or define [workflows.<type>] tables of your own")
    return types.MappingProxyType(roles), types.MappingProxyType(workflows)


def role_issues(name: str, table: Any, models: Mapping[str, Any]) -> tuple[RoleConfig | None, list[ConfigIssue]]:
    """A role changed at run time, checked exactly as the file's ``[roles.<name>]``: the role,
    or None and what is wrong (keys relative to the role: ``roles.<name>.<key>``)."""
    issues = _Issues("<api>")
    role = _role(name, table, models, issues)
    return (None if issues else role), list(issues)


def validate_role(name: str, table: Any, models: Mapping[str, Any]) -> RoleConfig:
    """:func:`role_issues`, raising :class:`ConfigError` when the role is not valid."""
    role, issues = role_issues(name, table, models)
    if role is None:
        raise ConfigError(issues)
    return role


def _apply_env(sections: dict[str, dict[str, Any]], env: Mapping[str, str],
               issues: _Issues) -> None:
    for var, section, key, convert in _ENV_OVERRIDES:
        text = env.get(var, "")
        if not text:               # unset and empty both mean "no override"
            continue
        try:
            sections[section][key] = _SECTIONS[section][key](convert(text))
        except _Bad as e:
            issues.add(f"env {var}", str(e), file=ENV)


def _read_secrets(path: str, issues: _Issues) -> dict[str, str]:
    """Parse a KEY=VALUE file (``#`` comments, optional ``export``, optional quotes).

    Absent is fine (keys may all come from the environment).  Line contents are
    never echoed into issues: a malformed line may well hold a key.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        issues.add("server.secrets_file", f"cannot read secrets file: {e.strerror}", file=path)
        return {}
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("secrets file %s is readable by group or others (mode %03o); "
                    "chmod 600 it", path, stat.S_IMODE(mode))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        issues.add("server.secrets_file", "secrets file is not UTF-8", file=path)
        return {}
    secrets: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not _ENV_NAME.fullmatch(name):
            issues.add(f"line {n}", "expected NAME=VALUE", file=path)
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        secrets[name] = value
    return secrets


def _build(doc: Mapping[str, Any], source: str, env: Mapping[str, str]) -> Config:
    issues = _Issues(source)
    for key in doc:
        if key not in _SECTIONS and key not in _NAMED:
            issues.add(key, "unknown section")

    sections: dict[str, dict[str, Any]] = {}
    for name, schema in _SECTIONS.items():
        raw = doc.get(name, {})
        if type(raw) is not dict:
            issues.add(name, f"must be a table, not {_tname(raw)}")
            raw = {}
        sections[name] = _check_table(raw, schema, name, issues)
    providers = _named_tables(doc, "providers", issues)
    models = _named_tables(doc, "models", issues)
    teams = _named_tables(doc, "teams", issues)
    _check_refs(providers, models, teams, issues)
    roles, workflows = _task_tables(doc, models, issues)
    _apply_env(sections, env, issues)

    rt = sections["runtime"]
    if rt.get("default_timeout", 300.0) > rt.get("max_timeout", 3600.0):
        issues.add("runtime.default_timeout", "must not exceed runtime.max_timeout")
    if rt.get("retry_base_delay", 0.5) > rt.get("retry_max_delay", 30.0):
        issues.add("runtime.retry_base_delay", "must not exceed runtime.retry_max_delay")

    security = sections["security"]
    if security.get("require_signatures") and security.get("local_scopes"):
        # A keyless request cannot be signed: the two together would leave loopback unsigned.
        issues.add("security.local_scopes", "must be [] when security.require_signatures is true "
                   "(a request without a key cannot be signed)")

    budget = sections["budget"]
    if "monthly_ceiling" not in budget:
        budget["monthly_ceiling"] = budget.get("daily_budget", BudgetConfig().daily_budget) * 30

    pricing_config = _pricing_config(sections["pricing"], issues)

    server = sections["server"]
    server["state_dir"] = os.path.abspath(server.get("state_dir") or default_state_dir(env))

    # Keys last, and the secrets file only if some key is not in the environment:
    # the embedded default and fully env-configured hosts never touch it.
    keys: dict[str, str | None] = {}
    missing: dict[str, str] = {}
    secrets: dict[str, str] | None = None
    for name, p in providers.items():
        var = p.pop("api_key_env", None)
        keys[name] = (env.get(var) or None) if var else None
        if var and keys[name] is None:
            if secrets is None:
                secrets = _read_secrets(server.get("secrets_file", DEFAULT_SECRETS_FILE),
                                        issues)
            keys[name] = secrets.get(var) or None
            if keys[name] is None:
                missing[name] = var

    if issues:
        raise ConfigError(issues)
    return Config(
        server=ServerConfig(**server),
        runtime=RuntimeConfig(**rt),
        store=StoreConfig(**sections["store"]),
        plugins=PluginsConfig(**sections["plugins"]),
        providers=types.MappingProxyType({
            name: ProviderSettings(name=name, api_key=keys[name], **p)
            for name, p in providers.items()}),
        models=types.MappingProxyType({
            alias: ModelConfig(alias=alias, **m) for alias, m in models.items()}),
        teams=types.MappingProxyType({
            tid: TeamConfig(id=tid, **t) for tid, t in teams.items()}),
        source=source,
        budget=BudgetConfig(**budget),
        limits=LimitsConfig(**sections["limits"]),
        security=SecurityConfig(**sections["security"]),
        privacy=PrivacyConfig(**sections["privacy"]),
        pricing=pricing_config,
        webhooks=WebhooksConfig(**sections["webhooks"]),
        tasks=TasksConfig(**sections["tasks"]),
        roles=roles,
        workflows=workflows,
        missing_api_keys=types.MappingProxyType(missing),
    )


def _parse(text: str, source: str, env: Mapping[str, str]) -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([ConfigIssue(source, "", f"invalid TOML: {e}")]) from None
    return _build(doc, source, env)


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (else ``$J1MSKY_CONFIG``, else the embedded default).

    ``env`` (default ``os.environ``) supplies the overrides, ``XDG_STATE_HOME``,
    ``J1MSKY_CONFIG`` and the provider keys.  Raises :class:`ConfigError`.
    """
    env = os.environ if env is None else env
    if path is None:
        path = env.get("J1MSKY_CONFIG") or None
    if path is None:
        return _parse(_EMBEDDED_TOML, EMBEDDED, env)
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            text = f.read().decode("utf-8")   # TOML is UTF-8 by definition
    except OSError as e:
        raise ConfigError([ConfigIssue(source, "", f"cannot read: {e.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(source, "", "invalid TOML: not UTF-8")]) from None
    return _parse(text, source, env)


def embedded_default() -> Config:
    """The embedded default, ignoring the environment (hermetic, for tests and tools).

    State dir is ``./.j1msky`` made absolute.  ``load_config()`` with no file gives
    the same configuration plus environment overrides.
    """
    return _parse(_EMBEDDED_TOML, EMBEDDED, {})


# What serves when there is no config file: loopback only, every model answered by the
# built-in deterministic "offline" provider, so a fresh install works with no keys and
# never spends money.  Upstream ids stay the real ones so output and usage look right.
_EMBEDDED_TOML = """
[server]
host = "127.0.0.1"
port = 8080

[security]
local_scopes = ["agents:read", "agents:write", "billing:read"]

[providers.offline]
plugin = "offline"
max_concurrency = 16
hourly_limit = 10000

[models.opus]
provider = "offline"
upstream = "claude-opus-4-6"
input_per_1k = 0.015
output_per_1k = 0.075
blended_per_1k = 0.015
fallback = "sonnet"

[models.sonnet]
provider = "offline"
upstream = "claude-sonnet-4-6"
input_per_1k = 0.003
output_per_1k = 0.015
blended_per_1k = 0.003
fallback = "k2p5"

[models.k2p5]
provider = "offline"
upstream = "k2p5"
input_per_1k = 0.0005
output_per_1k = 0.0015
blended_per_1k = 0.001
fallback = "minimax-m2.5"

[models."minimax-m2.5"]
provider = "offline"
upstream = "MiniMax-M2.5"
input_per_1k = 0.0001
output_per_1k = 0.0001
blended_per_1k = 0.001
fallback = "k2p5"

[models.codex]
provider = "offline"
upstream = "codex"
input_per_1k = 0.002
output_per_1k = 0.002
blended_per_1k = 0.002
fallback = "minimax-m2.5"

[teams.team_coding]
name = "Code Team"
members = ["k2p5", "sonnet"]
specialty = ["programming", "debugging", "architecture"]

[teams.team_creative]
name = "Creative Team"
members = ["opus", "k2p5"]
specialty = ["content", "design", "documentation"]

[teams.team_research]
name = "Research Team"
members = ["sonnet", "k2p5"]
specialty = ["search", "analysis", "data gathering"]

[teams.team_business]
name = "Business Team"
members = ["opus", "sonnet"]
specialty = ["strategy", "planning", "revenue"]
status = "standby"

[tasks]
max_revisions = 2
approval_threshold = 0.05
max_steps = 20

[roles.architect]
default_model = "sonnet"
models = ["sonnet", "opus"]
capabilities = ["system_design", "interface_design", "planning"]
temperature = 0.5
max_tokens = 2000
timeout = 300

[roles.implementer]
default_model = "k2p5"
models = ["k2p5", "sonnet", "opus"]
capabilities = ["code_implementation", "test_creation", "bug_fixes", "documentation_updates"]
temperature = 0.7
max_tokens = 2000
timeout = 300
[roles.implementer.constraints]
max_files_per_task = 10

[roles.critic]
default_model = "sonnet"
models = ["sonnet", "opus"]
capabilities = ["code_review", "security_review", "acceptance_check"]
temperature = 0.2
max_tokens = 1500
timeout = 300

[roles.integrator]
default_model = "k2p5"
models = ["k2p5", "sonnet"]
capabilities = ["integration", "release_notes", "merge_preparation"]
temperature = 0.3
max_tokens = 1500
timeout = 300

[workflows.implementation]
steps = ["architect", "implementer", "critic", "integrator"]

[workflows.review]
steps = ["critic", "integrator"]

[workflows.design]
steps = ["architect", "critic", "integrator"]

[workflows.testing]
steps = ["implementer", "critic"]
"""
