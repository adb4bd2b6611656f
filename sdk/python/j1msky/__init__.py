"""j1msky: the Python SDK of the J1MSKY API (the j1mskyd daemon).

    from j1msky import J1MSKYClient
    client = J1MSKYClient()              # J1MSKY_API and J1MSKY_KEY, or base_url=..., api_key=...
    agent = client.spawn(model="k2p5", task="Write a haiku", priority="normal")
    result = agent.wait_for_completion(timeout=300)
    print(result.output, result.cost, result.status)

``J1MSKYClient`` (also ``Agency``) needs only the standard library; ``AsyncJ1MSKYClient``
needs aiohttp (``pip install "j1msky[async]"``).  Both retry 429 (honouring Retry-After),
5xx and connection failures with exponential backoff and full jitter; every write keeps
one Idempotency-Key over its retries; with ``api_secret`` every request is HMAC-signed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .aio import AsyncAgent, AsyncJ1MSKYClient
    from .client import Agency, Agent, J1MSKYClient
    from .config import Config, TaskPriority
    from .errors import J1MSKYError, RateLimitError, WaitTimeout
    from .models import AgentResult, AgentStatus, Quote, Record

__version__ = "4.1.0"  # the API reference's Python SDK version (its "Official SDKs" table)

# Each public name is imported from its module on first use (PEP 562), and so is each module
# reached as an attribute (``j1msky.errors``): ``from j1msky import J1MSKYClient`` works as
# before, and a program that needs only a helper module (the daemon takes ``j1msky.backoff``,
# ``j1msky.signing`` and ``j1msky.ttlcache``) does not load both clients (~0.25 MB resident).
_HOMES = {
    "AsyncAgent": "aio", "AsyncJ1MSKYClient": "aio",
    "Agency": "client", "Agent": "client", "J1MSKYClient": "client",
    "Config": "config", "TaskPriority": "config",
    "J1MSKYError": "errors", "RateLimitError": "errors", "WaitTimeout": "errors",
    "AgentResult": "models", "AgentStatus": "models", "Quote": "models", "Record": "models",
}
_MODULES = ("_core", "aio", "backoff", "client", "config", "connection", "errors", "models", "signing", "sse",
            "ttlcache")

if not TYPE_CHECKING:  # type checkers read the imports above: a misspelt name stays an error there
    def __getattr__(name: str) -> Any:
        if name in _MODULES:
            return importlib.import_module(f".{name}", __name__)  # the import sets it on this module
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{home}", __name__), name)
        globals()[name] = value  # once: later lookups find it without this function
        return value


def __dir__() -> list[str]:
    return sorted({*__all__, *_MODULES})


__all__ = ["Agency", "Agent", "AgentResult", "AgentStatus", "AsyncAgent", "AsyncJ1MSKYClient", "Config",
           "J1MSKYClient", "J1MSKYError", "Quote", "RateLimitError", "Record", "TaskPriority", "WaitTimeout",
           "__version__"]
