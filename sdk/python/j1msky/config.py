"""The client's settings: ``Config``, and where each comes from.

Precedence: an argument of ``J1MSKYClient(...)``, then the ``Config`` given, then the
environment the API reference's quick start sets (``J1MSKY_API``, ``J1MSKY_KEY``; and
``J1MSKY_SECRET`` to sign requests), then the defaults (``http://localhost:8080``, no key).
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from .errors import J1MSKYError

__all__ = ["Config", "DEFAULT_BASE_URL", "TaskPriority", "api_base"]

DEFAULT_BASE_URL = "http://localhost:8080"


class TaskPriority(str, Enum):
    """An agent's priority; a str, so it is sent (and compares) as "low", "normal" or "high"."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Config:
    """The API reference's ``Config``.

    ``timeout``: seconds per HTTP request.  ``max_retries``: retries of a 429, a 5xx or a
    connection failure (each write keeps one Idempotency-Key over them).  ``retry_delay``:
    the first retry's backoff ceiling in seconds, doubling (full jitter, capped at
    ``retry_max_delay``; a Retry-After is a floor).  ``cache_enabled``/``cache_ttl``: keep
    quotes and model listings that long (seconds), per client.  ``use_events``:
    ``wait_for_completion`` listens on the event stream (else it only polls).
    """

    base_url: str | None = None
    api_key: str | None = None
    timeout: float = 30.0
    max_retries: int = 3
    retry_delay: float = 0.5
    cache_enabled: bool = False
    cache_ttl: float = 60.0
    api_secret: str | None = None
    retry_max_delay: float = 30.0
    use_events: bool = True

    def __post_init__(self) -> None:
        for name in ("timeout", "retry_delay", "retry_max_delay", "cache_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"Config.{name} must be a number >= 0, not {value!r}")
        if not self.timeout > 0:
            raise ValueError("Config.timeout must be > 0")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"Config.max_retries must be an integer >= 0, not {self.max_retries!r}")

    def resolved(self, environ: Mapping[str, str] | None = None, **given: object) -> Config:
        """This config with the arguments given (None: not given) laid over it, and what is
        still unset taken from the environment and the defaults."""
        env = os.environ if environ is None else environ
        changes = {k: v for k, v in given.items() if v is not None}
        out = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        return dataclasses.replace(
            out,
            base_url=_base_url(out.base_url or env.get("J1MSKY_API") or DEFAULT_BASE_URL),
            api_key=_credential("api_key", out.api_key or env.get("J1MSKY_KEY")),
            api_secret=_credential("api_secret", out.api_secret or env.get("J1MSKY_SECRET")))


def _credential(name: str, value: str | None) -> str | None:
    """A key or secret as a header carries it: surrounding whitespace (the newline of
    ``$(cat key.txt)``) dropped; anything but printable ASCII refused, without echoing the value
    (the HTTP layer's own error quoted the whole header, the key in it, in a traceback)."""
    if value is None:
        return None
    value = value.strip()
    if any(not "!" <= c <= "~" for c in value):
        raise J1MSKYError(f"{name} holds characters other than printable ASCII (keys and secrets the daemon "
                          "gives out have none; check for a stray space or a pasted character)")
    return value or None


def _base_url(url: str) -> str:
    """An http(s) URL with a host and a valid port, or a J1MSKYError saying so."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = url.rsplit("@", 1)[-1] if "@" in url else url  # never a password written in it
        raise J1MSKYError(f"base_url must be an http:// or https:// URL with a host, such as "
                          f"http://localhost:8080/api, not {shown!r}")
    return url


def api_base(base_url: str) -> str:
    """The API's root: the URL as given when it ends in /api or /api/v1, else with /api added
    (the reference's SDK examples give the server, its quick start's J1MSKY_API the API)."""
    base = base_url.rstrip("/")
    return base if base.endswith(("/api", "/api/v1")) else base + "/api"
