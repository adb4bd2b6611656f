"""ChatService: a call through the OpenAI/Anthropic front door, run as an agent of kind ``chat``.

A chat call is an agent like a spawn: a new id, a cost estimate, the worst case reserved
against the budget before anything is written (refused: BudgetExceeded 402 / SpawnRefused
429, nothing written), then stored and queued through ``AgentService.store_and_admit``
(priority ``normal``, the runtime's ``default_timeout``), so the queue, the concurrency
limits, the hourly quotas, retries, fallback and breakers all apply.  Its ``task`` is the
request as canonical JSON (sealed at rest like any task), its ``result`` the answer's text
and its ``tool_calls`` the calls the answer asks for.

What the caller gets back is a :class:`chat_request.ChatCall`: the text as it streams (a
streamed request only; the runtime hands each delta to the call's queue, the agent's
memory-only ``sink``), the outcome, and ``cancel``.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from .agent_record import ANONYMOUS, CANCELLED, COMPLETED, KIND_CHAT, SPAWNING, Agent
from .agents import AgentService, SpawnRecorder
from .chat_request import WATCH, ChatFailed, ChatOutcome, ChatRequest, ClientGone, FailureKind
from .config import Config
from .errors import NotFound
from .plugin_api import Block, TextBlock, ToolCall
from .runtime import AgentRuntime
from .sampling_fields import put_sampling_fields
from .worstcase import output_cap

__all__ = ["ChatService", "LiveChatCall", "canonical_json"]

_FAILURES: dict[str, FailureKind] = {"bad_request": "bad_request", "upstream": "upstream", "timeout": "timeout",
                                     "interrupted": "interrupted"}


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _block(b: Block) -> dict[str, Any]:
    if isinstance(b, TextBlock):
        return {"type": "text", "text": b.text}
    if isinstance(b, ToolCall):
        return {"type": "tool_call", "id": b.id, "name": b.name, "arguments": b.arguments}
    return {"type": "tool_result", "tool_call_id": b.tool_call_id, "content": b.content, "is_error": b.is_error}


def canonical_json(request: ChatRequest) -> str:
    """The request as a chat agent's ``task``: one JSON object, keys sorted, no spaces, fields
    the caller did not set left out.  Every character sent upstream is in it (system,
    messages, tools), so its input bound (worstcase.py) bounds the call's input tokens.

    ``{"max_tokens", "messages": [{"role", "content": [{"type": "text", "text"} |
    {"type": "tool_call", "id", "name", "arguments"} | {"type": "tool_result", "tool_call_id",
    "content", "is_error"}]}], "metadata", "model", "response_format", "stop", "system",
    "temperature", "tool_choice": {"mode", "name"}, "tools": [{"name", "description",
    "parameters"}], "top_p", "user", "dialect", "stream"}``
    """
    body: dict[str, Any] = {
        "model": request.model, "dialect": request.dialect, "stream": request.stream,
        "messages": [{"role": m.role, "content": [_block(b) for b in m.content]} for m in request.messages],
    }
    # The optional fields one by one, only when set (a dict of them all, then filtered, cost
    # twice as much: canonical_json is on every call's way to its insert).
    if request.system is not None:
        body["system"] = request.system
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    put_sampling_fields(body, request)  # the keys are sorted below: the order they come in does not matter
    if request.tools:
        body["tools"] = [{"name": t.name, "description": t.description, "parameters": t.parameters}
                         for t in request.tools]
    if request.tool_choice is not None:
        body["tool_choice"] = {"mode": request.tool_choice.mode, "name": request.tool_choice.name}
    if request.metadata:
        body["metadata"] = request.metadata
    return _CANONICAL(body)


# The stdlib, not jsonx: orjson cannot sort keys the same way on every stack without options.
# Built once: json.dumps with arguments makes a new encoder per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


class LiveChatCall:
    """A chat call under way: the :class:`chat_request.ChatCall` that ``ChatService.start``
    returns.  One reader of :meth:`deltas` at most.

    Its text and its end reach a reader through one plain future per wait, resolved by the
    agent's sink (each delta) and by a callback on the runtime's end future: the answer reaches
    its reader two loop steps after the runtime's ``_written``, and a delta already there none.
    The earlier shape (an ``asyncio.Queue``, ``asyncio.shield`` around the end, and the front
    door's task with ``asyncio.wait`` to watch the connection) took four and three, and a task
    per wait (with the stream's frames and canonical_json: -47k instructions a non-streamed
    call: bench/frontdoor_ab.py --instructions)."""

    def __init__(self, agent: Agent, runtime: AgentRuntime, config: Config) -> None:
        self.agent_id = agent.agent_id
        self.created_at = agent.created_at
        self._runtime = runtime
        self._config = config
        self._streamed = bool(agent.chat is not None and agent.chat.stream)
        self._texts: deque[str] = deque()
        self._ending: asyncio.Future[Agent] | None = None  # the runtime's end of the agent (_watch)
        self._waiters: list[asyncio.Future[None]] = []
        if self._streamed:
            agent.sink = self._push

    def _watch(self) -> None:
        """Called before the agent is admitted: the runtime only resolves waiters registered
        before the agent's end."""
        self._ending = self._runtime.wait(self.agent_id)
        self._ending.add_done_callback(self._ended)

    def _push(self, text: str) -> None:
        """The agent's sink: a delta of a streamed call."""
        self._texts.append(text)
        self._wake()

    def _ended(self, done: asyncio.Future[Agent]) -> None:
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _until(self, ready: Callable[[], bool], gone: Callable[[], bool] | None) -> None:
        """Return once ``ready()``; with ``gone``, look at it every :data:`WATCH` seconds
        meanwhile and raise :class:`ClientGone` once it says the caller left."""
        loop = asyncio.get_running_loop()
        while not ready():
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            timer = None if gone is None else loop.call_later(WATCH, _resolve, waiter)
            try:
                await waiter  # a cancelled reader cancels only its own waiter
            finally:
                if timer is not None:
                    timer.cancel()
            if gone is not None and not ready() and gone():
                raise ClientGone("the client went away")

    def _over(self) -> bool:
        """Has the call ended?  Its end future itself, not its callback (_ended, which wakes the
        readers already waiting): a reader that comes after it resolved, before the callback ran
        (a call whose insert commits with its end resolves it in the step that wakes its caller),
        goes on without waiting a loop step and a timer."""
        return self._ending is not None and self._ending.done()

    async def _agent(self, gone: Callable[[], bool] | None = None) -> Agent:
        await self._until(self._over, gone)
        assert self._ending is not None
        return self._ending.result()

    async def deltas(self, gone: Callable[[], bool] | None = None) -> AsyncIterator[str]:
        """The answer's text as it comes; ends when the call ends, well or not.  A request that
        is not streamed (or a provider that cannot stream) gives the whole text as one delta
        at the end.  ``gone``: see :meth:`outcome`; until the first delta only (after it, a
        write to the caller tells whether it is still there)."""
        if not self._streamed:
            agent = await self._agent(gone)
            if agent.status == COMPLETED and agent.result:
                yield agent.result
            return
        texts = self._texts
        while True:
            await self._until(lambda: bool(texts) or self._over(), gone)
            if not texts:
                return
            gone = None
            yield texts.popleft()

    async def outcome(self, gone: Callable[[], bool] | None = None) -> ChatOutcome:
        """The completed call; raises :class:`ChatFailed` with its kind otherwise.  ``gone``:
        looked at every :data:`WATCH` seconds while waiting; once true, :class:`ClientGone`."""
        agent = await self._agent(gone)
        if agent.status == COMPLETED:
            return self._outcome(agent)
        kind: FailureKind = "cancelled" if agent.status == CANCELLED else _FAILURES.get(agent.failure or "",
                                                                                       "upstream")
        raise ChatFailed(kind, agent.error or kind, agent_id=agent.agent_id)

    def _outcome(self, agent: Agent) -> ChatOutcome:
        answer = agent.answer
        served = agent.served_model or agent.model
        model = self._config.models.get(served)
        upstream = (answer.model if answer is not None else "") or (model.upstream if model else served)
        return ChatOutcome(
            agent_id=agent.agent_id, model=agent.model, served_model=served, provider=agent.provider or "",
            upstream_model=upstream, text=agent.result or "",
            tool_calls=answer.tool_calls if answer is not None else (),
            finish_reason=answer.finish_reason if answer is not None else "stop",
            input_tokens=agent.input_tokens or 0, output_tokens=agent.output_tokens or 0,
            cost=agent.cost or 0.0, created_at=agent.created_at)

    async def cancel(self) -> None:
        """The caller went away: cancel the agent (its upstream call is cancelled; what it used
        is billed, the rest of the reservation released).  Nothing when it has ended."""
        agent = self._runtime.live.get(self.agent_id)
        if agent is not None:
            await self._runtime.cancel(agent)


class ChatService:
    """Starts chat calls (``start``); everything else about them is the agents' API."""

    def __init__(self, config: Config, agents: AgentService, runtime: AgentRuntime) -> None:
        self.config = config
        self.agents = agents
        self.runtime = runtime

    def apply_config(self, config: Config) -> None:
        """A reloaded configuration (reload.py): calls from now on check their model against it."""
        self.config = config

    def _stored_max_tokens(self, request: ChatRequest) -> int | None:
        """The call's output cap as the agent's row keeps it (after a restart ``chat`` is gone and
        the cut call is billed at it, docs/runtime.md): what it asked for, within the model's own
        cap, which also keeps any integer the client sent inside sqlite's range."""
        if request.max_tokens is None:
            return None
        return output_cap(self.config.models[request.model], request.max_tokens)

    async def start(self, request: ChatRequest, key_id: str = ANONYMOUS,
                    recorder: SpawnRecorder | None = None) -> LiveChatCall:
        """Reserve, store and queue the call as a chat agent; the call under way.  ``recorder``:
        as for a spawn (AgentService.store_and_admit), its statement commits with the insert.

        Raises NotFound for a model that is not configured (the dialects check first),
        BudgetExceeded (402) or SpawnRefused (429) when the budget or the key's limits refuse
        its worst case; nothing is written then."""
        if request.model not in self.config.models:
            raise NotFound(f"model '{request.model}' is not configured")
        now = self.runtime.clock()
        task = canonical_json(request)
        agent = Agent(agent_id=self.agents.new_id(now), kind=KIND_CHAT, model=request.model, task=task,
                      priority="normal", timeout=self.config.runtime.default_timeout, status=SPAWNING,
                      estimated_cost=self.agents.estimate(request.model, task, request.max_tokens), created_at=now,
                      chat=request, max_tokens=self._stored_max_tokens(request))
        call = LiveChatCall(agent, self.runtime, self.config)
        # Watched before admission: a call that is not streamed may end in the very step its
        # insert commits (they commit together, AgentRuntime._admit_early).
        call._watch()
        # Dispatched on submit: the upstream call overlaps the insert's commit; this returns once
        # the insert is on disk, so nothing reaches the caller before the call is recorded.
        try:
            await self.agents.store_and_admit([agent], key_id=key_id, early=True, recorder=recorder)
        except BaseException:
            self.runtime.unwait(agent.agent_id)
            raise
        return call
