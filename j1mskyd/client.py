"""Python SDK for the J1MSKY API: ``J1MSKYClient`` (blocking) and ``AsyncJ1MSKYClient``.

    from j1mskyd.client import Agency            # the API reference's SDK name
    agency = Agency(api_key="jsk_...", base_url="http://raspberrypi.local:8080")
    agent = agency.spawn(model="k2p5", task="Write a blog post about AI", priority="normal")
    result = agent.wait_for_completion()
    print(result.output, result.cost, result.state)

Both clients retry 429 (honouring Retry-After), 5xx and connection errors with
exponential backoff and full jitter, up to ``max_retries`` times; a spawn carries an
``Idempotency-Key`` so a retried spawn never runs twice.  With ``api_secret`` every
request is HMAC-signed the way the daemon checks it (X-Timestamp, X-Signature).
The blocking client needs only the standard library.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .backoff import backoff_delay
from .signing import sign

__all__ = ["Agent", "AgentResult", "AsyncAgent", "AsyncJ1MSKYClient", "Call", "J1MSKYClient", "J1MSKYError",
           "RETRY_STATUSES", "RateLimitError", "TERMINAL"]

TERMINAL = ("completed", "failed", "cancelled")
RETRY_STATUSES = (429, 500, 502, 503, 504)


class J1MSKYError(Exception):
    """An API error: ``status`` (HTTP), ``type`` (e.g. VALIDATION_ERROR), ``request_id``."""

    def __init__(self, message: str, *, status: int | None = None, request_id: str | None = None,
                 type: str | None = None, details: Any = None) -> None:  # noqa: A002 - the API's field name
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id
        self.type = type
        self.details = details

    def __str__(self) -> str:
        where = f" (HTTP {self.status}, request {self.request_id})" if self.status else ""
        return f"{self.message}{where}"


class RateLimitError(J1MSKYError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


@dataclass
class AgentResult:
    agent_id: str
    state: str
    output: str | None
    cost: float | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def result(self) -> str | None:  # the API's own field name
        return self.output


# -- shared between the two clients ----------------------------------------------------------
def _base(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith(("/api", "/api/v1")) else base + "/api"


def _error(status: int, body: bytes, headers: Any) -> J1MSKYError:
    try:
        data = json.loads(body or b"null")
    except ValueError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message, request_id, type_, details = (err.get("message") or "error", err.get("request_id"),
                                               err.get("type"), err.get("details"))
        retry_after = err.get("retry_after")
    else:
        message = err if isinstance(err, str) else f"HTTP {status}"
        request_id, type_, details, retry_after = headers.get("X-Request-Id"), None, None, None
    if status == 429:
        header = headers.get("Retry-After")
        retry = float(header) if header and header.replace(".", "", 1).isdigit() else retry_after
        return RateLimitError(message, retry_after=retry, status=status, request_id=request_id, type=type_,
                              details=details)
    return J1MSKYError(message, status=status, request_id=request_id, type=type_, details=details)


class Call(NamedTuple):
    """One API request: what ``request()`` takes."""

    method: str
    path: str
    body: Any = None
    params: dict[str, Any] | None = None
    idempotency_key: str | None = None


class _Core:
    def __init__(self, api_key: str | None, base_url: str, api_secret: str | None, timeout: float,
                 max_retries: int) -> None:
        self.api_key = api_key
        self.base_url = _base(base_url)
        self.api_secret = api_secret
        self.timeout = timeout
        self.max_retries = max_retries
        self._path_prefix = urllib.parse.urlsplit(self.base_url).path

    def _prepare(self, method: str, path: str, body: Any, params: dict[str, Any] | None,
                 idempotency_key: str | None) -> tuple[str, bytes | None, dict[str, str]]:
        query = ("?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})) if params else ""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Accept": "application/json", "User-Agent": "j1msky-sdk-python"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if self.api_secret:
            timestamp = str(int(time.time()))
            headers["X-Timestamp"] = timestamp
            headers["X-Signature"] = sign(self.api_secret, timestamp, method, self._path_prefix + path + query,
                                          (data or b"").decode())
        return self.base_url + path + query, data, headers

    def _delay(self, attempt: int, err: J1MSKYError | None) -> float:
        retry_after = err.retry_after if isinstance(err, RateLimitError) else None
        return backoff_delay(attempt, 0.5, 30.0, retry_after)

    @staticmethod
    def _result(data: dict[str, Any]) -> AgentResult:
        return AgentResult(agent_id=data.get("agent_id", ""), state=data.get("status", ""),
                           output=data.get("result"), cost=data.get("cost"), raw=data)

    # -- each call's method, path and body, once: the sync and async clients both send these --
    @staticmethod
    def _spawn_call(model: str, task: str, priority: str, timeout: float | None, extra: dict[str, Any]) -> Call:
        body: dict[str, Any] = {"model": model, "task": task, "priority": priority, **extra}
        if timeout is not None:
            body["timeout"] = timeout
        return Call("POST", "/spawn", body)

    @staticmethod
    def _team_call(team: str, task: str, priority: str, extra: dict[str, Any]) -> Call:
        return Call("POST", "/spawn-team", {"team": team, "task": task, "priority": priority, **extra})

    @staticmethod
    def _agent_call(method: str, agent_id: str) -> Call:
        return Call(method, f"/agent/{urllib.parse.quote(agent_id)}")

    @staticmethod
    def _webhook_create_call(url: str, events: list[str], secret: str | None, extra: dict[str, Any]) -> Call:
        body = {"url": url, "events": events, **extra}
        if secret is not None:
            body["secret"] = secret
        return Call("POST", "/webhooks", body)

    @staticmethod
    def _webhook_delete_call(webhook_id: str) -> Call:
        return Call("DELETE", f"/webhooks/{urllib.parse.quote(webhook_id)}")

    @staticmethod
    def _idempotency_key(method: str, given: str | None) -> str | None:
        """One key per logical POST or PUT, kept by every retry: a retried spawn, quote or
        webhook creation never happens twice (the daemon honours the key on every write)."""
        if given is None and method in ("POST", "PUT"):
            return str(uuid.uuid4())
        return given

    @staticmethod
    def _still_running(agent_id: str, data: dict[str, Any], timeout: float) -> TimeoutError:
        return TimeoutError(f"agent {agent_id} still {data.get('status')} after {timeout:g} s")


class Agent:
    """A spawned agent (blocking client)."""

    def __init__(self, client: J1MSKYClient, data: dict[str, Any]) -> None:
        self.client = client
        self.agent_id = data["agent_id"]
        self.data = data

    def status(self) -> dict[str, Any]:
        return self.client.get_agent_status(self.agent_id)

    def wait_for_completion(self, timeout: float = 300.0, poll_interval: float = 1.0) -> AgentResult:
        return self.client.wait_for_completion(self.agent_id, timeout, poll_interval)

    def cancel(self) -> dict[str, Any]:
        return self.client.cancel(self.agent_id)


class J1MSKYClient(_Core):
    """The blocking client (standard library only)."""

    def __init__(self, api_key: str | None = None, base_url: str = "http://localhost:8080",
                 api_secret: str | None = None, timeout: float = 30.0, max_retries: int = 3) -> None:
        super().__init__(api_key, base_url, api_secret, timeout, max_retries)

    def request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
                idempotency_key: str | None = None) -> Any:
        idempotency_key = self._idempotency_key(method, idempotency_key)
        attempt = 0
        while True:
            url, data, headers = self._prepare(method, path, body, params, idempotency_key)
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
            err: J1MSKYError
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                    return json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:
                with exc:
                    err = _error(exc.code, exc.read(), exc.headers)
                if exc.code not in RETRY_STATUSES:
                    raise err from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                err = J1MSKYError(f"cannot reach {self.base_url}: {getattr(exc, 'reason', exc)}")
            attempt += 1
            if attempt > self.max_retries:
                raise err
            time.sleep(self._delay(attempt, err))

    # -- the API reference's SDK---------------------------------------------------------------------
    def spawn(self, model: str, task: str, priority: str = "normal", timeout: float | None = None,
              **extra: Any) -> Agent:
        return Agent(self, self.request(*self._spawn_call(model, task, priority, timeout, extra)))

    def spawn_team(self, team: str, task: str, priority: str = "normal", **extra: Any) -> Agent:
        return Agent(self, self.request(*self._team_call(team, task, priority, extra)))

    def get_agent_status(self, agent_id: str) -> dict[str, Any]:
        return self.request(*self._agent_call("GET", agent_id))

    def wait_for_completion(self, agent_id: str, timeout: float = 300.0, poll_interval: float = 1.0) -> AgentResult:
        end = time.monotonic() + timeout
        while True:
            data = self.get_agent_status(agent_id)
            if data.get("status") in TERMINAL:
                return self._result(data)
            if time.monotonic() >= end:
                raise self._still_running(agent_id, data, timeout)
            time.sleep(min(poll_interval, max(end - time.monotonic(), 0.01)))

    def list_agents(self, **params: Any) -> dict[str, Any]:
        return self.request("GET", "/agents", params=params)

    def cancel(self, agent_id: str) -> dict[str, Any]:
        return self.request(*self._agent_call("DELETE", agent_id))

    def get_quote(self, **request: Any) -> dict[str, Any]:
        return self.request("POST", "/pricing/quote", request)

    def create_webhook(self, url: str, events: list[str], secret: str | None = None, **extra: Any) -> dict[str, Any]:
        return self.request(*self._webhook_create_call(url, events, secret, extra))

    def list_webhooks(self) -> dict[str, Any]:
        return self.request("GET", "/webhooks")

    def delete_webhook(self, webhook_id: str) -> dict[str, Any]:
        return self.request(*self._webhook_delete_call(webhook_id))


Agency = J1MSKYClient  # the J1MSKY API reference's SDK name


class AsyncAgent:
    def __init__(self, client: AsyncJ1MSKYClient, data: dict[str, Any]) -> None:
        self.client = client
        self.agent_id = data["agent_id"]
        self.data = data

    async def status(self) -> dict[str, Any]:
        return await self.client.get_agent_status(self.agent_id)

    async def wait_for_completion(self, timeout: float = 300.0, poll_interval: float = 1.0) -> AgentResult:
        return await self.client.wait_for_completion(self.agent_id, timeout, poll_interval)


class AsyncJ1MSKYClient(_Core):
    """The asyncio client (aiohttp).  Use as ``async with AsyncJ1MSKYClient(...) as c:``."""

    def __init__(self, api_key: str | None = None, base_url: str = "http://localhost:8080",
                 api_secret: str | None = None, timeout: float = 30.0, max_retries: int = 3) -> None:
        super().__init__(api_key, base_url, api_secret, timeout, max_retries)
        self._session: Any = None

    async def __aenter__(self) -> AsyncJ1MSKYClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
                      idempotency_key: str | None = None) -> Any:
        import asyncio

        import aiohttp
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        idempotency_key = self._idempotency_key(method, idempotency_key)
        attempt = 0
        while True:
            url, data, headers = self._prepare(method, path, body, params, idempotency_key)
            try:
                async with self._session.request(method, url, data=data, headers=headers) as resp:
                    raw = await resp.read()
                    if resp.status < 400:
                        return json.loads(raw) if raw else None
                    err = _error(resp.status, raw, resp.headers)
                    if resp.status not in RETRY_STATUSES:
                        raise err
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                err = J1MSKYError(f"cannot reach {self.base_url}: {type(exc).__name__}")
            attempt += 1
            if attempt > self.max_retries:
                raise err
            await asyncio.sleep(self._delay(attempt, err))

    async def spawn(self, model: str, task: str, priority: str = "normal", timeout: float | None = None,
                    **extra: Any) -> AsyncAgent:
        return AsyncAgent(self, await self.request(*self._spawn_call(model, task, priority, timeout, extra)))

    async def spawn_team(self, team: str, task: str, priority: str = "normal", **extra: Any) -> AsyncAgent:
        return AsyncAgent(self, await self.request(*self._team_call(team, task, priority, extra)))

    async def get_agent_status(self, agent_id: str) -> dict[str, Any]:
        return await self.request(*self._agent_call("GET", agent_id))

    async def wait_for_completion(self, agent_id: str, timeout: float = 300.0,
                                  poll_interval: float = 1.0) -> AgentResult:
        import asyncio
        end = time.monotonic() + timeout
        while True:
            data = await self.get_agent_status(agent_id)
            if data.get("status") in TERMINAL:
                return self._result(data)
            if time.monotonic() >= end:
                raise self._still_running(agent_id, data, timeout)
            await asyncio.sleep(min(poll_interval, max(end - time.monotonic(), 0.01)))

    async def list_agents(self, **params: Any) -> dict[str, Any]:
        return await self.request("GET", "/agents", params=params)

    async def cancel(self, agent_id: str) -> dict[str, Any]:
        return await self.request(*self._agent_call("DELETE", agent_id))

    async def get_quote(self, **request: Any) -> dict[str, Any]:
        return await self.request("POST", "/pricing/quote", request)

    async def create_webhook(self, url: str, events: list[str], secret: str | None = None,
                             **extra: Any) -> dict[str, Any]:
        return await self.request(*self._webhook_create_call(url, events, secret, extra))

    async def list_webhooks(self) -> dict[str, Any]:
        return await self.request("GET", "/webhooks")

    async def delete_webhook(self, webhook_id: str) -> dict[str, Any]:
        return await self.request(*self._webhook_delete_call(webhook_id))
