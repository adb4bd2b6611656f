"""The asyncio client, on aiohttp (the ``async`` extra: ``pip install "j1msky[async]"``).
aiohttp is imported at the first request, so ``import j1msky`` never needs it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from ._core import (BATCH_INPUT_TOKENS, BATCH_OUTPUT_TOKENS, RETRY_STATUSES, STREAM_CHECK, TERMINAL, Call, Core,
                    StreamWatch)
from .config import Config, TaskPriority
from .errors import J1MSKYError, WaitTimeout, error_from_response
from .models import AgentStatus, Quote, Record, _AgentFields
from .sse import SSEDecoder

__all__ = ["AsyncAgent", "AsyncJ1MSKYClient"]


class AsyncAgent(_AgentFields):
    def __init__(self, client: AsyncJ1MSKYClient, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.client = client

    @property
    def data(self) -> dict[str, Any]:
        return dict(self)

    async def status(self) -> AgentStatus:
        return await self.client.get_agent_status(self.agent_id)

    async def wait_for_completion(self, timeout: float = 300.0, poll_interval: float = 1.0) -> AgentStatus:
        return await self.client.wait_for_completion(self.agent_id, timeout, poll_interval)

    async def cancel(self) -> Record:
        return await self.client.cancel(self.agent_id)


class AsyncJ1MSKYClient(Core):
    """The asyncio client: ``async with AsyncJ1MSKYClient(...) as client:`` (same settings as J1MSKYClient)."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None, api_secret: str | None = None,
                 timeout: float | None = None, max_retries: int | None = None, config: Config | None = None,
                 **settings: Any) -> None:
        super().__init__(api_key, base_url, api_secret, timeout, max_retries, config, **settings)
        self._session: Any = None

    async def __aenter__(self) -> AsyncJ1MSKYClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> Any:
        import aiohttp
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
                      idempotency_key: str | None = None) -> Any:
        """One API call, retried on 429 (after Retry-After), 5xx and connection failures."""
        import aiohttp
        session = self._http()
        idempotency_key = self._idempotency_key(method, idempotency_key)
        attempt = 0
        while True:
            url, data, headers = self._prepare(method, path, body, params, idempotency_key)
            try:
                async with session.request(method, url, data=data, headers=headers) as resp:
                    raw = await resp.read()
                    if resp.status < 400:
                        return self._decode(raw, resp.status, resp.headers.get("X-Request-Id"))
                    err = error_from_response(resp.status, raw, resp.headers)
                    if resp.status not in RETRY_STATUSES:
                        raise err
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                err = self._unreachable(exc)
            attempt += 1
            delay = self._delay(attempt, err) if attempt <= self.max_retries else None
            if delay is None:
                raise err
            await asyncio.sleep(delay)

    async def _call(self, call: Call) -> Any:
        found = self._cached(call)
        if found is not None:
            return found
        return self._keep(call, await self.request(call.method, call.path, call.body, call.params,
                                                   call.idempotency_key))

    # -- agents -----------------------------------------------------------------------------------
    async def spawn(self, model: str, task: str, priority: str | TaskPriority = "normal",
                    timeout: float | None = None, webhook_url: str | None = None, **extra: Any) -> AsyncAgent:
        return AsyncAgent(self, await self._call(self._spawn_call(model, task, priority, timeout, webhook_url,
                                                                  extra)))

    async def spawn_team(self, team: str, task: str, priority: str | TaskPriority = "normal",
                         **extra: Any) -> AsyncAgent:
        return AsyncAgent(self, await self._call(self._team_call(team, task, priority, extra)))

    async def get_agent_status(self, agent_id: str) -> AgentStatus:
        return self._status(await self._call(self._agent_call("GET", agent_id)))

    async def wait_for_completion(self, agent_id: str, timeout: float = 300.0,
                                  poll_interval: float = 1.0) -> AgentStatus:
        """As J1MSKYClient.wait_for_completion: the event stream when offered, else polling."""
        end = time.monotonic() + timeout
        if self.config.use_events:
            found = await self._wait_on_stream(agent_id, end, timeout)
            if found is not None:
                return found
        while True:
            status = await self.get_agent_status(agent_id)
            if status.state in TERMINAL:
                return status
            if time.monotonic() >= end:
                raise WaitTimeout(agent_id, status.state, timeout)
            await asyncio.sleep(min(poll_interval, max(end - time.monotonic(), 0.01)))

    async def _wait_on_stream(self, agent_id: str, end: float, timeout: float) -> AgentStatus | None:
        """The final status as the stream announces it; None: no stream (polling then)."""
        import aiohttp
        call = self._stream_call()
        url, _, headers = self._prepare(call.method, call.path, None, call.params, None)
        watch = StreamWatch(self, agent_id)
        try:
            async with self._http().get(url, headers=self._stream_headers(headers),
                                        timeout=aiohttp.ClientTimeout(total=None, connect=self.timeout)) as resp:
                if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
                    return None
                decoder = SSEDecoder()
                while True:
                    # Subscribed before this look, so an end after it comes on the stream.  Looked at again
                    # after a silence longer than the keep-alive.
                    status = await self.get_agent_status(agent_id)
                    if status.state in TERMINAL:
                        return status
                    try:
                        async with asyncio.timeout(min(end - time.monotonic(), STREAM_CHECK)):
                            while True:
                                line = await resp.content.readline()
                                if not line:
                                    return None  # the stream ended: poll the rest of the wait
                                event = decoder.feed(line.decode("utf-8", "replace"))
                                if event is not None and watch.ended(event):
                                    return await self.get_agent_status(agent_id)
                    except TimeoutError:
                        if time.monotonic() >= end:
                            raise WaitTimeout(agent_id, (await self.get_agent_status(agent_id)).state,
                                              timeout) from None
        except WaitTimeout:
            raise
        except (LookupError, aiohttp.ClientError, asyncio.TimeoutError):
            return None  # too long a history to read, or the connection failed: poll the rest

    async def list_agents(self, **params: Any) -> Record:
        return self._record(await self._call(Call("GET", "/agents", params=params)))

    async def cancel(self, agent_id: str) -> Record:
        return self._record(await self._call(self._agent_call("DELETE", agent_id)))

    async def list_models(self) -> Record:
        return self._record(await self._call(Call("GET", "/models", cacheable=True)))

    # -- pricing ----------------------------------------------------------------------------------
    async def get_quote(self, model: str, estimated_input_tokens: int | None = None,
                        estimated_output_tokens: int | None = None, complexity: str | None = None,
                        segment: str | None = None, **extra: Any) -> Quote:
        return Quote(await self._call(self._quote_call(model, estimated_input_tokens, estimated_output_tokens,
                                                       complexity, segment, extra)))

    async def get_batch_quotes(self, model: str, complexities: Iterable[str] = ("low", "medium", "high"),
                               segments: Iterable[str] | None = None,
                               estimated_input_tokens: int = BATCH_INPUT_TOKENS,
                               estimated_output_tokens: int = BATCH_OUTPUT_TOKENS, **extra: Any) -> list[Quote]:
        segments = None if segments is None else list(segments)
        quotes: list[Quote] = []
        for complexity in complexities:
            answer = await self._call(self._batch_call(model, complexity, estimated_input_tokens,
                                                       estimated_output_tokens, extra))
            found, missing = self._batch_pick(answer, segments)
            for segment in missing:
                await self.get_quote(model, estimated_input_tokens, estimated_output_tokens, complexity, segment)
            quotes.extend(found)
        return quotes

    # -- webhooks ---------------------------------------------------------------------------------
    async def register_webhook(self, url: str, events: Iterable[str] | None = None, secret: str | None = None,
                               **extra: Any) -> Record:
        return self._record(await self._call(self._webhook_create_call(url, events, secret, extra)))

    create_webhook = register_webhook

    async def list_webhooks(self) -> Record:
        return self._record(await self._call(Call("GET", "/webhooks")))

    async def delete_webhook(self, webhook_id: str) -> Record:
        return self._record(await self._call(self._webhook_delete_call(webhook_id)))
