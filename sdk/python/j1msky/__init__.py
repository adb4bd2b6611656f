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

from .aio import AsyncAgent, AsyncJ1MSKYClient
from .client import Agency, Agent, J1MSKYClient
from .config import Config, TaskPriority
from .errors import J1MSKYError, RateLimitError, WaitTimeout
from .models import AgentResult, AgentStatus, Quote, Record

__version__ = "4.1.0"  # the API reference's Python SDK version (its "Official SDKs" table)

__all__ = ["Agency", "Agent", "AgentResult", "AgentStatus", "AsyncAgent", "AsyncJ1MSKYClient", "Config",
           "J1MSKYClient", "J1MSKYError", "Quote", "RateLimitError", "Record", "TaskPriority", "WaitTimeout",
           "__version__"]
