"""The blocking client, on the standard library alone (http.client, with kept-alive connections)."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterable
from typing import Any

from ._core import (BATCH_INPUT_TOKENS, BATCH_OUTPUT_TOKENS, RETRY_STATUSES, STREAM_CHECK, TERMINAL, Call, Core,
                    StreamWatch)
from .config import Config, TaskPriority
from .connection import Connections, connect, target
from .errors import J1MSKYError, WaitTimeout, error_from_response
from .models import AgentStatus, Quote, Record, _AgentFields
from .sse import SSEDecoder

__all__ = ["Agency", "Agent", "J1MSKYClient"]


class Agent(_AgentFields):
    """A spawned agent (or team): the spawn's answer (``agent_id``/``id``, ``status``,
    ``estimated_cost``, ...), and what can be done with it."""

    def __init__(self, client: J1MSKYClient, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.client = client

    @property
    def data(self) -> dict[str, Any]:
        return dict(self)

    def status(self) -> AgentStatus:
        return self.client.get_agent_status(self.agent_id)

    def wait_for_completion(self, timeout: float = 300.0, poll_interval: float = 1.0) -> AgentStatus:
        return self.client.wait_for_completion(self.agent_id, timeout, poll_interval)

    def cancel(self) -> Record:
        return self.client.cancel(self.agent_id)


class J1MSKYClient(Core):
    """The blocking client.  ``J1MSKYClient()`` reads ``J1MSKY_API`` and ``J1MSKY_KEY``;
    ``J1MSKYClient(base_url=..., api_key=...)`` or ``J1MSKYClient(config=Config(...))``."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None, api_secret: str | None = None,
                 timeout: float | None = None, max_retries: int | None = None, config: Config | None = None,
                 **settings: Any) -> None:
        super().__init__(api_key, base_url, api_secret, timeout, max_retries, config, **settings)
        self._connections = Connections(self.timeout)

    def __enter__(self) -> J1MSKYClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the kept-alive connections (the next request opens a new one); also done when the
        client is collected, or by ``with J1MSKYClient(...) as client:``."""
        self._connections.close()

    def request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
                idempotency_key: str | None = None) -> Any:
        """One API call, retried on 429 (after Retry-After), 5xx and connection failures."""
        idempotency_key = self._idempotency_key(method, idempotency_key)
        attempt = 0
        while True:
            url, data, headers = self._prepare(method, path, body, params, idempotency_key)
            err: J1MSKYError
            try:
                status, answer_headers, raw = self._connections.send(method, url, data, headers)
            except (http.client.HTTPException, OSError) as exc:
                err = self._unreachable(exc)
            else:
                if status < 400:
                    return self._decode(raw, status, answer_headers.get("X-Request-Id"))
                err = error_from_response(status, raw, answer_headers)
                if status not in RETRY_STATUSES:
                    raise err
            attempt += 1
            delay = self._delay(attempt, err) if attempt <= self.max_retries else None
            if delay is None:
                raise err
            time.sleep(delay)

    def _call(self, call: Call) -> Any:
        found = self._cached(call)
        if found is not None:
            return found
        return self._keep(call, self.request(call.method, call.path, call.body, call.params, call.idempotency_key))

    # -- agents -----------------------------------------------------------------------------------
    def spawn(self, model: str, task: str, priority: str | TaskPriority = "normal", timeout: float | None = None,
              webhook_url: str | None = None, **extra: Any) -> Agent:
        """Spawn an agent; ``webhook_url`` gets its agent.completed/failed/cancelled events."""
        return Agent(self, self._call(self._spawn_call(model, task, priority, timeout, webhook_url, extra)))

    def spawn_team(self, team: str, task: str, priority: str | TaskPriority = "normal", **extra: Any) -> Agent:
        return Agent(self, self._call(self._team_call(team, task, priority, extra)))

    def get_agent_status(self, agent_id: str) -> AgentStatus:
        return self._status(self._call(self._agent_call("GET", agent_id)))

    def wait_for_completion(self, agent_id: str, timeout: float = 300.0, poll_interval: float = 1.0) -> AgentStatus:
        """The agent's final status (completed, failed or cancelled).  Listens on the event
        stream when the daemon offers it (no polling), else polls every ``poll_interval``
        seconds; WaitTimeout (a TimeoutError) after ``timeout`` seconds."""
        end = time.monotonic() + timeout
        if self.config.use_events:
            found = self._wait_on_stream(agent_id, end, timeout)
            if found is not None:
                return found
        while True:
            status = self.get_agent_status(agent_id)
            if status.state in TERMINAL:
                return status
            if time.monotonic() >= end:
                raise WaitTimeout(agent_id, status.state, timeout)
            time.sleep(min(poll_interval, max(end - time.monotonic(), 0.01)))

    def _wait_on_stream(self, agent_id: str, end: float, timeout: float) -> AgentStatus | None:
        """The final status as the stream announces it; None: no stream (polling then)."""
        watch = StreamWatch(self, agent_id)
        while True:
            conn = self._open_stream()
            if conn is None:
                return None
            try:
                # Subscribed before this look, so an end after it comes on the stream.
                status = self.get_agent_status(agent_id)
                if status.state in TERMINAL:
                    return status
                decoder = SSEDecoder()
                while True:
                    left = end - time.monotonic()
                    if left <= 0:
                        raise WaitTimeout(agent_id, self.get_agent_status(agent_id).state, timeout)
                    assert conn.sock is not None
                    conn.sock.settimeout(min(left, STREAM_CHECK))
                    try:
                        line = conn.response.readline()  # type: ignore[attr-defined]
                    except TimeoutError:
                        break  # silence longer than the keep-alive: look, then reopen (a timed-out socket is spent)
                    if not line:
                        return None  # the stream ended (the daemon stops, or cut a slow reader): poll the rest
                    event = decoder.feed(line.decode("utf-8", "replace"))
                    if event is not None and watch.ended(event):
                        return self.get_agent_status(agent_id)
            except WaitTimeout:
                raise
            except (LookupError, OSError, http.client.HTTPException):
                return None  # too long a history to read, or the connection failed: poll the rest
            finally:
                conn.close()

    def _open_stream(self) -> http.client.HTTPConnection | None:
        """A connection whose ``response`` is the open event stream; None when the daemon
        does not offer one to this key (404, 401/403, another content type) or cannot be reached."""
        call = self._stream_call()
        url, _, headers = self._prepare(call.method, call.path, None, call.params, None)
        conn = connect(url, self.timeout)
        try:
            conn.request("GET", target(url), headers=self._stream_headers(headers))
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException):
            conn.close()
            return None
        if resp.status != 200 or not (resp.getheader("Content-Type") or "").startswith("text/event-stream"):
            conn.close()
            return None
        conn.response = resp  # type: ignore[attr-defined]
        return conn

    def list_agents(self, **params: Any) -> Record:
        return self._record(self._call(Call("GET", "/agents", params=params)))

    def cancel(self, agent_id: str) -> Record:
        return self._record(self._call(self._agent_call("DELETE", agent_id)))

    def list_models(self) -> Record:
        return self._record(self._call(Call("GET", "/models", cacheable=True)))

    # -- pricing ----------------------------------------------------------------------------------
    def get_quote(self, model: str, estimated_input_tokens: int | None = None,
                  estimated_output_tokens: int | None = None, complexity: str | None = None,
                  segment: str | None = None, **extra: Any) -> Quote:
        """``POST /pricing/quote``: ``quote.internal_cost``, ``.recommended_price``,
        ``.gross_margin_pct``, ``.guardrail_check.is_compliant`` (cached with cache_enabled)."""
        return Quote(self._call(self._quote_call(model, estimated_input_tokens, estimated_output_tokens, complexity,
                                                 segment, extra)))

    def get_batch_quotes(self, model: str, complexities: Iterable[str] = ("low", "medium", "high"),
                         segments: Iterable[str] | None = None,
                         estimated_input_tokens: int = BATCH_INPUT_TOKENS,
                         estimated_output_tokens: int = BATCH_OUTPUT_TOKENS, **extra: Any) -> list[Quote]:
        """A Quote for each complexity and segment (complexity by complexity, segments in the
        order given; every segment the daemon prices when None): one ``POST /pricing/batch-quotes``
        per complexity.  The token estimates default to the reference's batch-quotes example's."""
        segments = None if segments is None else list(segments)
        quotes: list[Quote] = []
        for complexity in complexities:
            answer = self._call(self._batch_call(model, complexity, estimated_input_tokens, estimated_output_tokens,
                                                 extra))
            found, missing = self._batch_pick(answer, segments)
            for segment in missing:  # the daemon's own refusal, in its words
                self.get_quote(model, estimated_input_tokens, estimated_output_tokens, complexity, segment)
            quotes.extend(found)
        return quotes

    # -- webhooks ---------------------------------------------------------------------------------
    def register_webhook(self, url: str, events: Iterable[str] | None = None, secret: str | None = None,
                         **extra: Any) -> Record:
        """``POST /webhooks`` (events default to agent.completed, agent.failed, agent.cancelled;
        a secret is generated and shown once in the answer when none is given)."""
        return self._record(self._call(self._webhook_create_call(url, events, secret, extra)))

    create_webhook = register_webhook

    def list_webhooks(self) -> Record:
        return self._record(self._call(Call("GET", "/webhooks")))

    def delete_webhook(self, webhook_id: str) -> Record:
        return self._record(self._call(self._webhook_delete_call(webhook_id)))


Agency = J1MSKYClient  # the API reference's "SDK Usage" name
