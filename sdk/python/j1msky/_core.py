"""What the blocking and the asyncio client share: settings, how a request is prepared
(headers, key, signature, Idempotency-Key), each call's method, path and body, the quote
cache, the backoff, and how a wait reads the event stream.  The two clients only send."""

from __future__ import annotations

import copy
import json
import time
import urllib.parse
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

from .backoff import backoff_delay
from .config import Config, api_base
from .errors import J1MSKYError, RateLimitError
from .models import AgentStatus, Quote, Record
from .signing import sign
from .sse import ServerEvent
from .ttlcache import TTLCache

__all__ = ["Call", "Core", "RETRY_STATUSES", "StreamWatch", "TERMINAL", "TERMINAL_EVENTS"]

TERMINAL = ("completed", "failed", "cancelled")
TERMINAL_EVENTS = ("agent.completed", "agent.failed", "agent.cancelled")
RETRY_STATUSES = (429, 500, 502, 503, 504)
USER_AGENT = "j1msky-sdk-python"
STREAM_CHECK = 20.0    # seconds of silence on the stream (the daemon sends a keep-alive every 15 s) before a look
# get_batch_quotes' token estimates when none are given: the API reference's batch-quotes example
# (its SDK example names none, and the daemon requires them).
BATCH_INPUT_TOKENS, BATCH_OUTPUT_TOKENS = 3000, 1200
REPLAY_LIMIT = 1000    # older events a first wait may read from the stream before it polls instead


class Call(NamedTuple):
    """One API request: what ``request()`` takes.  ``cacheable``: an answer that depends only
    on the request (a quote, the model list), kept by a client with ``cache_enabled``."""

    method: str
    path: str
    body: Any = None
    params: dict[str, Any] | None = None
    idempotency_key: str | None = None
    cacheable: bool = False


class Core:
    def __init__(self, api_key: str | None = None, base_url: str | None = None, api_secret: str | None = None,
                 timeout: float | None = None, max_retries: int | None = None, config: Config | None = None,
                 **settings: Any) -> None:
        self.config = (config or Config()).resolved(api_key=api_key, base_url=base_url, api_secret=api_secret,
                                                    timeout=timeout, max_retries=max_retries, **settings)
        self.api_key = self.config.api_key
        self.api_secret = self.config.api_secret
        self.timeout = self.config.timeout
        self.max_retries = self.config.max_retries
        self.base_url = api_base(self.config.base_url or "")
        self._path_prefix = urllib.parse.urlsplit(self.base_url).path
        self._cache = TTLCache(self.config.cache_ttl) if self.config.cache_enabled else None
        self._last_event_id = 0  # the newest event this client has read: later waits resume there

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(base_url={self.base_url!r}, key={'set' if self.api_key else 'none'})"

    # -- a request ------------------------------------------------------------------------------
    def _prepare(self, method: str, path: str, body: Any, params: dict[str, Any] | None,
                 idempotency_key: str | None) -> tuple[str, bytes | None, dict[str, str]]:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        qs = ("?" + urllib.parse.urlencode(query)) if query else ""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if self.api_secret:
            # Microseconds: the daemon refuses a signature it has seen (replay guard), and
            # whole seconds made a repeated request within a second (a poll) sign the same.
            timestamp = f"{time.time():.6f}"
            headers["X-Timestamp"] = timestamp
            headers["X-Signature"] = sign(self.api_secret, timestamp, method, self._path_prefix + path + qs,
                                          (data or b"").decode())
        return self.base_url + path + qs, data, headers

    @staticmethod
    def _idempotency_key(method: str, given: str | None) -> str | None:
        """One key per logical POST or PUT, kept by every retry: a retried spawn, quote or
        webhook creation never happens twice (the daemon honours the key on every write)."""
        if given is None and method in ("POST", "PUT"):
            return str(uuid.uuid4())
        return given

    def _delay(self, attempt: int, err: J1MSKYError) -> float | None:
        """Seconds before retry ``attempt`` of ``err``; None: do not retry.  A 429 whose
        Retry-After is longer than ``retry_max_delay`` is not retried (a sooner retry only
        earns another 429): the caller gets the RateLimitError and its ``retry_after`` at once,
        as the JS SDK does."""
        retry_after = err.retry_after if isinstance(err, RateLimitError) else None
        if retry_after is not None and retry_after > self.config.retry_max_delay:
            return None
        return backoff_delay(attempt, self.config.retry_delay, self.config.retry_max_delay, retry_after)

    def _unreachable(self, exc: BaseException) -> J1MSKYError:
        if isinstance(exc, TimeoutError):
            return J1MSKYError(f"no answer from {self.base_url} within {self.timeout:g} s")
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return J1MSKYError(f"cannot reach {self.base_url}: {reason}")

    @staticmethod
    def _decode(raw: bytes, status: int, request_id: str | None) -> Any:
        """A success's JSON body; an answer that is not JSON is an error, not a crash."""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise J1MSKYError(f"the answer is not JSON: {raw[:80]!r}", status=status, request_id=request_id) from None

    # -- the cache of answers that depend only on their request ----------------------------------
    def _cache_key(self, call: Call) -> str:
        return json.dumps([call.method, call.path, call.body, call.params], sort_keys=True, default=str)

    def _cached(self, call: Call) -> Any:
        """A copy of the kept answer, or None."""
        if self._cache is None or not call.cacheable:
            return None
        found = self._cache.get(self._cache_key(call))
        return copy.deepcopy(found)

    def _keep(self, call: Call, data: Any) -> Any:
        if self._cache is not None and call.cacheable and data is not None:
            self._cache.put(self._cache_key(call), copy.deepcopy(data))
        return data

    def clear_cache(self) -> int:
        """Forget the kept answers; returns how many there were."""
        return self._cache.clear() if self._cache is not None else 0

    # -- each call's method, path and body, once: the sync and async clients both send these -----
    @staticmethod
    def _spawn_call(model: str, task: str, priority: str, timeout: float | None, webhook_url: str | None,
                    extra: dict[str, Any]) -> Call:
        body: dict[str, Any] = {"model": model, "task": task, "priority": str(priority), **extra}
        if timeout is not None:
            body["timeout"] = timeout
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        return Call("POST", "/spawn", body)

    @staticmethod
    def _team_call(team: str, task: str, priority: str, extra: dict[str, Any]) -> Call:
        return Call("POST", "/spawn-team", {"team": team, "task": task, "priority": str(priority), **extra})

    @staticmethod
    def _agent_call(method: str, agent_id: str) -> Call:
        return Call(method, f"/agent/{urllib.parse.quote(agent_id, safe='')}")

    @staticmethod
    def _webhook_create_call(url: str, events: Iterable[str] | None, secret: str | None,
                             extra: dict[str, Any]) -> Call:
        body: dict[str, Any] = {"url": url, **extra}
        if events is not None:  # none: the daemon's default, the agent.completed/failed/cancelled events
            body["events"] = list(events)
        if secret is not None:
            body["secret"] = secret
        return Call("POST", "/webhooks", body)

    @staticmethod
    def _webhook_delete_call(webhook_id: str) -> Call:
        return Call("DELETE", f"/webhooks/{urllib.parse.quote(webhook_id, safe='')}")

    @staticmethod
    def _quote_call(model: str, estimated_input_tokens: int | None, estimated_output_tokens: int | None,
                    complexity: str | None, segment: str | None, extra: dict[str, Any]) -> Call:
        """The reference's SDK names (estimated_input_tokens) as the API's (estimated_input)."""
        body: dict[str, Any] = {"model": model}
        for name, value in (("estimated_input", estimated_input_tokens), ("estimated_output", estimated_output_tokens),
                            ("complexity", complexity), ("segment", segment)):
            if value is not None:
                body[name] = value
        body.update(extra)
        return Call("POST", "/pricing/quote", body, cacheable=True)

    @staticmethod
    def _batch_call(model: str, complexity: str, estimated_input_tokens: int, estimated_output_tokens: int,
                    extra: dict[str, Any]) -> Call:
        return Call("POST", "/pricing/batch-quotes",
                    {"model": model, "complexity": complexity, "estimated_input": estimated_input_tokens,
                     "estimated_output": estimated_output_tokens, **extra}, cacheable=True)

    @staticmethod
    def _batch_pick(answer: dict[str, Any], segments: Iterable[str] | None) -> tuple[list[Quote], list[str]]:
        """The segments asked for, from one batch-quotes answer (all of them when None), and
        those it lacks (quoted on their own: the daemon's 400 then says what is wrong)."""
        by_segment = answer.get("quotes_by_segment") or {}
        wanted = list(by_segment) if segments is None else list(segments)
        return [Quote(by_segment[s]) for s in wanted if s in by_segment], [s for s in wanted if s not in by_segment]

    def _stream_call(self) -> Call:
        return Call("GET", "/events/stream", params={"types": ",".join(TERMINAL_EVENTS)})

    def _stream_headers(self, headers: dict[str, str]) -> dict[str, str]:
        return {**headers, "Accept": "text/event-stream", "Last-Event-ID": str(self._last_event_id)}

    @staticmethod
    def _status(data: Any) -> AgentStatus:
        return AgentStatus(data if isinstance(data, dict) else {})

    @staticmethod
    def _record(data: Any) -> Record:
        return Record(data if isinstance(data, dict) else {})


class StreamWatch:
    """One wait's reading of the event stream: is this event the agent's end?"""

    def __init__(self, core: Core, agent_id: str) -> None:
        self.core = core
        self.agent_id = agent_id
        self.others = 0

    def ended(self, event: ServerEvent) -> bool:
        """True when ``event`` says the agent has ended.  Raises LookupError when the stream
        has sent REPLAY_LIMIT events of other agents (a first wait on a long history):
        the wait polls instead, and the next one resumes the stream after them."""
        if event.id and event.id.isdigit():
            self.core._last_event_id = max(self.core._last_event_id, int(event.id))
        if event.event in TERMINAL_EVENTS:
            try:
                data = event.json().get("data") or {}
            except (ValueError, AttributeError):
                data = {}
            if isinstance(data, dict) and data.get("agent_id") == self.agent_id:
                return True
        self.others += 1
        if self.others > REPLAY_LIMIT:
            raise LookupError("too many events of other agents on the stream")
        return False
