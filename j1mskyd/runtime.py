"""The agent runtime: queue, dispatch, provider calls with retry/fallback, completion.

Life of an agent (every transition is queued to the store in order; the terminal one
is awaited before anyone is told):

    (accepted) --admit()--> queued --dispatch--> running --> completed | failed | cancelled

* Queues are per provider (the provider of the agent's own model) and ordered by
  priority then arrival, so a saturated provider never blocks agents bound elsewhere.
  Dispatch takes the best head among providers that have a free slot, while the
  global limit allows.
* A call that fails with a retryable error is retried with backoff and jitter up to
  ``max_attempts`` per model; when those run out, when the provider's breaker is
  open, or when the provider refuses our credentials, the model's fallback chain is
  walked.  A bad request fails the agent: another model would refuse it too.
* The timeout runs from creation, so time spent queued counts.
* Team agents do no provider work: they finish when their members have.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from j1msky.backoff import backoff_delay

from . import agent_record, jsonx, ledger
from .agent_record import (
    Agent, CANCELLED, COMPLETED, FAILED, KIND_CHAT, KIND_MEMBER, KIND_TEAM, PRIORITIES, QUEUED, RUNNING, SPAWNING,
    Status, TERMINAL, money)
from .budget import Budget, Level
from .config import Config, ModelConfig
from .events import Publisher, agent_event_data
from .pricing import token_cost
from .provider_pool import ProviderSlot
from .plugin_api import (
    TIMEOUT_GRACE, CompletionRequest, CompletionResult, Message, ProviderError, TextBlock, ToolCall, ToolResult)
from .deadline import retrieved, within
from .provider_http import estimate_tokens
from .ratelimit import Buckets, Decision, Limit
from .store import Queued, Statement, Store, StoreError
from .worstcase import fallback_chain, input_bound, output_allowance, output_cap

__all__ = ["AgentRuntime", "AgentFailure", "INTERRUPTED_CHAT", "flat_prompt"]

log = logging.getLogger(__name__)


_DEADLINE_MARGIN = 0.5
_OUT_OF_TOKENS = "hourly limit reached"
_LOOKAHEAD = 32  # queued agents examined behind a head that waits for hourly quota
# How long after its admission the insert of a chat call that is not streamed waits for the
# call's end, so that both commit in one transaction (one fsync, one trip to the store's
# thread, instead of two).  A call that takes longer has its insert committed without its end
# after this, as a streamed call's is at the call's first step.  It bounds how long an
# upstream call can be under way with no row on disk (_admit_early).
DEFER_INSERT = 0.01


class AgentFailure(Exception):
    """Ends an agent as failed with this message; ``kind`` says why in ChatFailed's words
    (``upstream``: every provider failed; ``bad_request``: the provider refused the request)."""

    def __init__(self, message: str, kind: str = "upstream") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class _Deferred:
    """An insert waiting for its call's end or start (AgentRuntime._admit_early): its statements,
    the agent.spawned to announce with them (data, owner) and the list its event goes to, the
    future standing for its commit in ``_unwritten`` (for _bill), the insert's own callback
    (``_inserted``), the timer that submits it alone; ``until_start``: a streamed call's, which
    waits for the call's start only (its first step, :meth:`AgentRuntime._run`)."""

    statements: list[Statement]
    spawned: list[tuple[dict[str, Any], str]]
    events: list[Any]
    written: asyncio.Future[None]
    inserted: Callable[[asyncio.Future[None]], None]
    timer: asyncio.TimerHandle | asyncio.Handle | None
    until_start: bool = False


class _Requeue(Exception):
    """Every provider of the chain ran out of hourly tokens between dispatch and call."""


INTERRUPTED_CHAT = "interrupted: the daemon stopped during this chat call"


def _abandoned_usage(agent: Agent, max_tokens: int) -> tuple[int, int]:
    """What a call sent and then abandoned before its answer may be billed: a provider goes on
    with a request whose caller hung up, and no usage comes back to say how much it wrote."""
    return input_bound(agent.task or ""), max_tokens


@dataclass(slots=True)
class _Attempt:
    """One provider call as it goes: whether it streams, and the text streamed so far."""

    streaming: bool = False
    parts: list[str] = field(default_factory=list)

    def used(self, agent: Agent, max_tokens: int) -> tuple[int, int]:
        """What an attempt that ended without an answer may be billed when the upstream said
        nothing.  A stream stops being written when its reader hangs up, so a streamed call is
        billed its input bound and the tokens of the text that came (about four characters a
        token); a call abandoned before its answer, at its worst case (_abandoned_usage)."""
        if not self.streaming:
            return _abandoned_usage(agent, max_tokens)
        text = "".join(self.parts)
        return input_bound(agent.task or ""), estimate_tokens(text) if text else 0


def flat_prompt(messages: Sequence[Message]) -> str:
    """A conversation as one text, for plugins written before ``messages`` existed: a lone
    user message is its text; otherwise one ``role: text`` paragraph per message, with tool
    calls and results written out."""
    if len(messages) == 1 and messages[0].role == "user" \
            and all(isinstance(b, TextBlock) for b in messages[0].content):
        return messages[0].text

    def block(b: TextBlock | ToolCall | ToolResult) -> str:
        if isinstance(b, TextBlock):
            return b.text
        if isinstance(b, ToolCall):
            return f"[tool call {b.id}: {b.name}({b.arguments})]"
        return f"[tool result {b.tool_call_id}{' (error)' if b.is_error else ''}: {b.content}]"

    return "\n\n".join(f"{m.role}: " + "\n".join(block(b) for b in m.content) for m in messages)


def _tool_calls_json(calls: Sequence[ToolCall]) -> str | None:
    """The tool calls of an answer as the agent record keeps them (None: there were none)."""
    if not calls:
        return None
    return jsonx.dumps([{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls])


def _swept(agent_id: str, done: asyncio.Future[None]) -> None:
    """The deadline sweep's finish of a queued agent, which nobody awaits: a store failure was
    logged where it happened (_written); anything else is a bug, said here."""
    if not done.cancelled() and (exc := done.exception()) is not None and not isinstance(exc, StoreError):
        log.error("failing queued agent %s at its deadline failed: %r", agent_id, exc)


def _failure_of(written: asyncio.Future[None]) -> BaseException | None:
    """Why a store write failed (None: it committed)."""
    return StoreError("the write was cancelled") if written.cancelled() else written.exception()


def _settle_into(done: asyncio.Future[None], task: asyncio.Future[None]) -> None:
    """Give ``done`` the outcome of ``task`` (unless someone stopped waiting for it)."""
    if done.done():
        if not task.cancelled():
            task.exception()  # retrieved: it has nobody else to be reported to
        return
    if task.cancelled():
        done.cancel()
    elif task.exception() is not None:
        done.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        done.set_result(None)


def _hold_id(agent: Agent) -> str:
    """Whose budget reservation pays for ``agent``: its own, or its team lead's."""
    if agent.kind == KIND_MEMBER:
        assert agent.parent_id is not None  # a member always belongs to a team (agents.py)
        return agent.parent_id
    return agent.agent_id


def _refund(agent: Agent, spent: float | None = None) -> float:
    """The unspent part of what was estimated at spawn."""
    if spent is None:
        spent = agent.cost or 0.0
    return money(max(agent.estimated_cost - spent, 0.0))


class AgentRuntime:
    def __init__(self, config: Config, store: Store, slots: dict[str, ProviderSlot],
                 clock: Callable[[], float] = time.time, *, buckets: Buckets | None = None,
                 budget: Budget | None = None, events: Publisher | None = None,
                 listeners: Iterable[Callable[[Agent], None]] = (),
                 recorders: Iterable[Callable[[Agent], Statement | None]] = ()) -> None:
        """``events``: where agent.* events go with each state change (None: nowhere);
        ``listeners``: told of every agent once its final state is on disk (the metrics);
        ``recorders``: asked for a statement of their own (or None) that commits with an agent's
        final state, in its unit (the audit log's entry of an agent's end)."""
        self.config = config
        self.buckets = buckets if buckets is not None else Buckets(clock)
        self.budget = budget
        self._provider_limits = {name: Limit(slot.settings.hourly_limit, 3600.0) for name, slot in slots.items()}
        self._wakeup: asyncio.TimerHandle | None = None
        self.listeners = tuple(listeners)
        self.recorders = tuple(recorders)
        self.events = events
        self.rt = config.runtime
        self.store = store
        self.slots = slots
        self.clock = clock
        self.live: dict[str, Agent] = {}
        self._queues: dict[str, list[tuple[int, int, str]]] = {name: [] for name in slots}
        self._seq = itertools.count()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._done: dict[str, asyncio.Future[Agent]] = {}
        # The `running` write of each running agent, while its final write may still replace it.
        self._started: dict[str, Queued] = {}
        # Dispatch on submit (_admit_early): agents whose insert is not yet on disk, the final
        # writes held back until it is, the `running` writes skipped until then, the dropped.
        self._unwritten: dict[str, asyncio.Future[None]] = {}
        self._held_finish: dict[str, Callable[[], None]] = {}
        self._late_start: set[str] = set()
        self._dropped: set[str] = set()
        # Inserts not yet submitted (a chat call's, until its end or its start: _admit_early): see _Deferred.
        self._deferred: dict[str, _Deferred] = {}
        self._abandoned: set[asyncio.Future[float]] = set()  # cancels of calls whose caller left during admit
        self._cancelling: set[str] = set()
        self._team_finished: dict[str, dict[str, Agent]] = {}
        # Agents whose model a config reload removed: what is left of the chain they had (_chain).
        self._chains: dict[str, tuple[str, ...]] = {}
        self._active = 0
        self._schedule_runs = 0  # times _schedule ran (a run's end asks for one only when no release ran it)
        self._stopping = False
        self._sweeper: asyncio.Task[None] | None = None
        self.completed_total = 0
        self.failed_total = 0
        for slot in slots.values():
            slot.released.subscribe(self._schedule)

    # -- public --------------------------------------------------------------------
    def start(self) -> None:
        self._sweeper = asyncio.ensure_future(self._sweep_expired())

    def queued_count(self) -> int:
        return sum(1 for a in self.live.values() if a.status in (QUEUED, SPAWNING))

    def running_count(self) -> int:
        return self._active

    async def admit(self, agents: list[Agent], extra_statements: Sequence[Statement] = (), *,
                    early: bool = False) -> None:
        """Store new agents in one atomic write, then queue them.

        They are written in their first live status (queued; running for a team lead,
        which only waits for its members), so a spawn costs one write.  The API still
        answers "spawning", the API reference's word for "accepted".  ``early`` (chat
        calls): queue them as soon as the write is submitted (:meth:`_admit_early`).
        """
        now = self.clock()
        for agent in agents:
            if agent.kind == KIND_TEAM:
                agent.status, agent.started_at, agent.runs = RUNNING, now, 1
            else:
                agent.status = QUEUED
        statements = [agent_record.insert(a, self.store.cipher) for a in agents] + list(extra_statements)
        # agent.spawned as each agent is now (its data), told once the insert commits.
        spawned = [] if self.events is None else [(agent_event_data(a), a.api_key) for a in agents
                                                  if a.kind != KIND_MEMBER]
        if early and self._may_dispatch_early(agents):
            await self._admit_early(agents, statements, spawned)
            return
        events = self._announce(spawned, statements)
        await self.store.write(*statements, fail_fast=True)  # a client waits: 507 on a full disk, no hang
        if events and self.events is not None:
            self.events.published(events)
        self._queue_admitted(agents)

    def _announce(self, spawned: list[tuple[dict[str, Any], str]], statements: list[Statement]) -> list[Any]:
        """The agent.spawned events of ``spawned`` (data, owner), their statements added to
        ``statements``.  Called right before that unit is submitted: an event takes its id here,
        and ids must commit in order (a reader resuming after id N is sent only ids above N)."""
        events = []
        if self.events is not None:
            for data, owner in spawned:
                event, stmts = self.events.statements("agent.spawned", data, owner)
                events.append(event)
                statements.extend(stmts)
        return events

    def _queue_admitted(self, agents: list[Agent]) -> None:
        for agent in agents:
            self.live[agent.agent_id] = agent
            if agent.kind == KIND_TEAM:
                self._team_finished.setdefault(agent.agent_id, {})
            else:
                self._enqueue(agent)
        self._schedule()

    # -- dispatch on submit (chat calls) ------------------------------------------------
    def _may_dispatch_early(self, agents: list[Agent]) -> bool:
        """Chat calls only (their caller waits for the first byte), and only while no live
        reader follows their text or starts: those would otherwise see them before
        ``agent.spawned``, which is told only once the insert is on disk."""
        if self.store.full is not None or any(a.kind != KIND_CHAT for a in agents):
            return False
        events = self.events
        return events is None or not (events.wants("agent.output") or events.wants("agent.started", named=True))

    async def _admit_early(self, agents: list[Agent], statements: list[Statement],
                           spawned: list[tuple[dict[str, Any], str]]) -> None:
        """admit, with the agents queued (and so dispatched) as soon as their insert is
        *submitted*: the provider call overlaps the insert's commit.  Returns, as admit does,
        once the insert is on disk (raises its failure: 507 on a full disk), so the caller's
        first byte still waits for it.  Until then nothing else about these agents is
        written (:meth:`_finish_soon` holds their final write back; :meth:`_run` puts their
        ``running`` state in the insert's own unit, or queues it right behind the insert),
        so no row, ledger entry or event can land without the agent's own row; if the insert
        fails they are dropped without a trace (:meth:`_drop`).

        The insert of one call that is not streamed waits up to :data:`DEFER_INSERT` for the
        call's end, to commit in the same transaction (:meth:`_submit_insert`): its caller waits
        for both anyway, and a call that quick then costs one commit, not two.  That of a
        streamed call waits for the call's start, a loop step (its first byte waits for the
        insert, not for the end), to commit with its ``running`` state: no commit leaves a call
        queued on disk while its request is out (a crash then bills the cut call), and a
        streamed call costs two commits, not three.

        The crash window this opens: a crash between the upstream request and the insert's
        commit leaves a call the provider may bill with no row here (docs/performance.md).
        Deferred, that window is at most DEFER_INSERT longer."""
        loop = asyncio.get_running_loop()
        events: list[Any] = []  # agent.spawned, once announced (_announce)
        committed: asyncio.Future[None] = loop.create_future()

        def inserted(stored: asyncio.Future[None]) -> None:
            self._inserted(agents, events, _failure_of(stored), committed)

        deferred: _Deferred | None = None
        if len(agents) == 1 and agents[0].chat is not None:
            agent_id = agents[0].agent_id
            written: asyncio.Future[None] = loop.create_future()
            written.add_done_callback(retrieved)  # its outcome is told through ``inserted``
            stream = agents[0].chat.stream
            deferred = self._deferred[agent_id] = _Deferred(
                statements, spawned, events, written, inserted,
                None if stream else loop.call_later(DEFER_INSERT, self._submit_insert, agent_id), until_start=stream)
        else:
            events += self._announce(spawned, statements)
            written = self.store.submit(statements, fail_fast=True)
            # On the store's own future, not an awaited one: a cancelled caller must not cancel it
            # (the unit commits regardless), and the bookkeeping below must run either way.
            written.add_done_callback(inserted)
        for agent in agents:
            self._unwritten[agent.agent_id] = written
        self._queue_admitted(agents)
        if deferred is not None and deferred.until_start and agents[0].agent_id in self._deferred:
            # After the call's first step, which _queue_admitted scheduled when a provider slot took
            # it (that step submits the insert with its start); alone, if no slot took it now.
            # (Under an eager task factory that step has run already, and submitted it.)
            deferred.timer = loop.call_soon(self._submit_insert, agents[0].agent_id)
        try:
            await committed
        except asyncio.CancelledError:
            # The caller went away (its client disconnected) while the insert commits: the call
            # is already under way, so it is cancelled as a call whose client leaves later is
            # (billed for what it used; its own end settles its reservation, or _forget does).
            for agent in agents:
                if agent.agent_id in self.live:
                    ending = asyncio.ensure_future(self.cancel(agent))
                    self._abandoned.add(ending)
                    ending.add_done_callback(self._abandoned.discard)
            raise

    def _inserted(self, agents: list[Agent], events: list[Any], failed: BaseException | None,
                  committed: asyncio.Future[None]) -> None:
        """The insert of early-dispatched agents committed (``failed`` None) or failed."""
        for agent in agents:
            self._unwritten.pop(agent.agent_id, None)
        if failed is not None:
            for agent in agents:
                self._drop(agent)
            if not committed.done():
                committed.set_exception(failed)
            return
        if events and self.events is not None:
            self.events.published(events)
        finals = []
        for agent in agents:
            held = self._held_finish.pop(agent.agent_id, None)
            if held is not None:  # it ended meanwhile: its final write, held back until now
                finals.append(held)
        if not committed.done():
            committed.set_result(None)
        for held in finals:
            # A loop step later, after the caller's wake-up: its first byte waits for the
            # insert alone, not for its final statements to be built and sealed too.
            asyncio.get_running_loop().call_soon(held)

    def _take_insert(self, agent_id: str) -> _Deferred:
        """A deferred insert (:meth:`_admit_early`), out of waiting, its agent.spawned announced
        now (its event id taken now: ids commit in order)."""
        deferred = self._deferred.pop(agent_id)
        if deferred.timer is not None:
            deferred.timer.cancel()
        deferred.events += self._announce(deferred.spawned, deferred.statements)
        return deferred

    def _insert_now(self, agent: Agent) -> None:
        """A live reader is about to be told of this agent (agent.started, agent.output), which
        came after its admission (a call with one then is not dispatched early): its deferred
        insert goes to the store at once, so agent.spawned is told a commit later, not a
        deferral later (the order such a reader sees is then what dispatch on submit gave)."""
        if agent.agent_id in self._deferred:
            self._submit_insert(agent.agent_id)

    def _submit_insert(self, agent_id: str) -> None:
        """A deferred insert to the store now, without the call's end (its time is up, a
        streamed call's start, a live reader, a stop); storing the call as started when it is
        under way already, so that no commit leaves it queued on disk while its request is
        out: a crash after this one finds it running, and the next start bills the call it cut
        (a queued row is not billed).  A call that outlasts DEFER_INSERT then costs two
        commits, its insert and its end, not three."""
        deferred = self._take_insert(agent_id)
        agent = self.live.get(agent_id)
        if agent is not None and agent_id in self._late_start and agent.status == RUNNING:
            self._late_start.discard(agent_id)
            # The unit's first statement is the agent's insert (admit builds it so).
            deferred.statements[0] = agent_record.as_started(deferred.statements[0], agent)
        self._store_unit(deferred, [])

    def _store_unit(self, deferred: _Deferred, final: list[Statement]) -> asyncio.Future[None]:
        """A deferred insert's unit to the store, with ``final`` (the call's end, when it ended
        first: both on disk or neither, so the end's rows never land without the agent's own).
        Returns the store's future, on which the insert's own callback already waits: the events
        of this unit are told in the step every other unit of its group tells its own, in the
        order of their ids (a live reader skips an id below one it was sent)."""
        try:
            stored = self.store.submit(deferred.statements + final, fail_fast=True)
        except StoreError as exc:  # the store is closed
            stored = asyncio.get_running_loop().create_future()
            stored.set_exception(exc)
        stored.add_done_callback(deferred.inserted)
        stored.add_done_callback(lambda f: _settle_into(deferred.written, f))  # for _bill's ledger rows
        return stored

    def _end_dropped(self, agent: Agent, done: asyncio.Future[None]) -> None:
        """The end of an agent whose insert failed: nothing written, nobody told."""
        self._forget(agent)
        if not done.done():
            done.set_result(None)

    def _drop(self, agent: Agent) -> None:
        """An early-dispatched agent whose insert failed: stop it, write nothing about it,
        tell nobody (its caller gets the insert's error); :meth:`_forget` releases its
        reservation once it has stopped."""
        agent_id = agent.agent_id
        self._dropped.add(agent_id)
        self._cancelling.add(agent_id)
        started = self._started.pop(agent_id, None)
        if started is not None:  # queued behind the insert: it would update no row (and wait out a full disk)
            self.store.discard(started)
        held = self._held_finish.pop(agent_id, None)
        task = self._tasks.get(agent_id)
        if held is not None:
            held()
        elif task is not None:
            if agent.status == RUNNING:
                task.cancel()  # not yet started: _run sees _cancelling at its first step
        else:  # still queued: its heap entry is stale once it is out of `live`
            self._forget(agent)

    def _forget(self, agent: Agent) -> None:
        """A dropped agent out of every table, its reservation released, its waiters told.  A
        call that completed before its insert was refused was billed by its provider: that is
        counted as spend (in memory only; nothing about the call could be written)."""
        agent_id = agent.agent_id
        hold = _hold_id(agent)
        # Not when released already (by store_and_admit, or an earlier _forget): counted once.
        if self.budget is not None and self.budget.holds(hold):
            billed = max((agent.cost or 0.0) - agent.billed, 0.0) if agent.status == COMPLETED else None
            self.budget.settle(hold, billed)
        self._dropped.discard(agent_id)
        self._late_start.discard(agent_id)
        self._cancelling.discard(agent_id)
        self._started.pop(agent_id, None)
        self._chains.pop(agent_id, None)
        self.live.pop(agent_id, None)
        fut = self._done.pop(agent_id, None)
        if fut is not None and not fut.done():
            fut.set_result(agent)

    def wait(self, agent_id: str) -> asyncio.Future[Agent]:
        """A future resolved with the agent once its terminal state is on disk."""
        fut = self._done.get(agent_id)
        if fut is None:
            fut = self._done[agent_id] = asyncio.get_running_loop().create_future()
        return fut

    def unwait(self, agent_id: str) -> None:
        """Forget :meth:`wait`'s future of an agent that was never admitted (asked for before
        its admission, which refused it); one admitted resolves it when it ends."""
        if agent_id not in self.live:
            self._done.pop(agent_id, None)

    async def cancel(self, agent: Agent) -> float:
        """Cancel a live agent; returns the refund (its unspent estimated cost)."""
        if agent.agent_id not in self.live:  # already out (its end written, or dropped): nothing to wait for
            return _refund(agent)
        if agent.status in TERMINAL:  # its final write is in flight: report that outcome
            return _refund(await self.wait(agent.agent_id))
        if agent.kind == KIND_TEAM:
            self._cancelling.add(agent.agent_id)
            for member_id in list(agent.members):
                member = self.live.get(member_id)
                if member is not None:
                    await self.cancel(member)
            spent = sum((m.cost or 0.0) for m in self._team_finished.get(agent.agent_id, {}).values())
            # Members finishing as cancelled finalise the team; wait for that.
            if agent.agent_id in self.live:
                await self._finish(agent, CANCELLED, error="cancelled by request", cost=spent)
            return _refund(agent, spent)
        done = self.wait(agent.agent_id)
        task = self._tasks.get(agent.agent_id)
        self._cancelling.add(agent.agent_id)
        if task is not None:
            if agent.status == RUNNING:
                task.cancel()
            # else dispatched but not yet started: a task cancelled before its first step never
            # runs its body (no finish, its slot never released); _run sees _cancelling instead.
        else:  # queued: its heap entry is skipped at dispatch
            await self._finish(agent, CANCELLED, error="cancelled by request")
        return _refund(await done)

    async def recover(self, agents: list[Agent], members_done: dict[str, list[Agent]]) -> dict[str, int]:
        """Re-adopt the live agents found in the database at start (after a crash or stop)."""
        counts = {"requeued": 0, "interrupted": 0, "teams": 0}
        teams = [a for a in agents if a.kind == KIND_TEAM]
        for team in teams:
            self.live[team.agent_id] = team
            self._team_finished[team.agent_id] = {m.agent_id: m for m in members_done.get(team.agent_id, [])}
            counts["teams"] += 1
        for agent in agents:
            if agent.kind == KIND_TEAM:
                continue
            self.live[agent.agent_id] = agent
            model = self.config.models.get(agent.model)
            # A call a crash cut is billed first; the announcement, if it passed a cap, waits
            # until the agent's next write is queued (see _bill_cut_call).  A model removed
            # from the config has no prices left to bill it at.
            billed_before = agent.billed
            exceeded = self._bill_cut_call(agent, model) if agent.status == RUNNING and model is not None else []
            done: asyncio.Future[None] | None = None
            if model is None or model.provider not in self.slots:
                # The config changed while the daemon was down; never refuse to start over it.
                counts["unroutable"] = counts.get("unroutable", 0) + 1
                what = f"model '{agent.model}'" if model is None else f"provider '{model.provider}'"
                done = self._finish_soon(agent, FAILED, "interrupted", {"error": f"{what} is no longer configured"})
            elif agent.kind == KIND_CHAT:
                # Its caller's connection died with the daemon: nobody would read an answer.
                counts["interrupted"] += 1
                done = self._finish_soon(agent, FAILED, "interrupted", {"error": INTERRUPTED_CHAT})
            elif agent.status == RUNNING and agent.runs > self.rt.restart_attempts:
                counts["interrupted"] += 1
                done = self._finish_soon(agent, FAILED, None, {
                    "error": f"interrupted: the daemon stopped while this agent was running ({agent.runs} runs)"})
            else:
                counts["requeued"] += 1
                agent.status = QUEUED
                self.store.submit([agent_record.update(agent, "status")])
                self._enqueue(agent)
            if exceeded:
                await self._announce_exceeded(agent, exceeded, agent.billed - billed_before)
            if done is not None:
                await done
        for team in teams:  # a team whose members all ended before the crash
            await self._maybe_finish_team(team.agent_id)
        self._schedule()
        return counts

    async def stop(self) -> None:
        """Graceful stop: running agents go back to queued on disk, to run again at start;
        chat agents, whose callers go with the daemon, fail as interrupted."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._wakeup is not None:
            self._wakeup.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)  # a running chat agent fails there (_run)
        # A queued chat call ends too: its caller's connection ends with the daemon, and a
        # later start would only fail it (recover).
        for agent in [a for a in self.live.values() if a.kind == KIND_CHAT and a.status == QUEUED]:
            await self._finish(agent, FAILED, error=INTERRUPTED_CHAT, failure="interrupted")
        for agent_id in list(self._deferred):  # none should be left: every call has ended
            self._submit_insert(agent_id)
        await self.store.flush()

    def member_label(self, alias: str) -> str:
        """``provider/upstream`` as the API reference lists team members (the alias if no longer configured)."""
        model = self.config.models.get(alias)
        return f"{model.provider}/{model.upstream}" if model else alias

    # -- a reloaded configuration -------------------------------------------------------
    def apply_config(self, config: Config) -> list[str]:
        """Take a reloaded configuration (reload.py), ``self.slots`` already holding the new
        providers' slots.  Queued agents move to the queue of their model's provider, or, when
        a reload removed their model, of the first model of their chain still configured; one
        with none left fails saying so.  Running agents go on with the models and slots they
        started with (_execute took them).  Synchronous: nothing runs in between."""
        old_models = self.config.models
        self.config, self.rt = config, config.runtime
        for name, slot in self.slots.items():  # a removed provider's limit stays for its last calls
            self._provider_limits[name] = Limit(slot.settings.hourly_limit, 3600.0)
        for agent in self.live.values():
            if agent.kind != KIND_TEAM and agent.model not in config.models and agent.agent_id not in self._chains:
                self._chains[agent.agent_id] = tuple(fallback_chain(old_models, agent.model))
        waiting = [(entry, queue) for queue, heap in self._queues.items()
                   for entry in heap if not self._stale(entry[2])]
        self._queues = {name: [] for name in self.slots}
        moved = failed = 0
        for entry, queue in waiting:
            agent = self.live[entry[2]]
            home = self._home(agent)
            if home is None:
                self._unroutable(agent)
                failed += 1
                continue
            moved += home != queue
            heapq.heappush(self._queues[home], entry)
        self._schedule()
        notes = [f"{moved} queued agents moved to another provider's queue"] if moved else []
        if failed:
            notes.append(f"{failed} queued agents failed: no model of their fallback chain is configured any more")
        return notes

    def _chain(self, agent: Agent, models: Mapping[str, ModelConfig]) -> list[str]:
        """The agent's fallback chain in ``models``; for one whose model a reload removed,
        what is left of the chain it had then."""
        kept = self._chains.get(agent.agent_id)
        if kept is None:
            return fallback_chain(models, agent.model)
        return [alias for alias in kept if alias in models]

    def _home(self, agent: Agent) -> str | None:
        """The provider whose queue the agent waits in: its first model's (None: no model left)."""
        models = self.config.models
        chain = self._chain(agent, models)
        return models[chain[0]].provider if chain else None

    @staticmethod
    def _gone(agent: Agent) -> str:
        return (f"model '{agent.model}' was removed from the configuration (config reload) and no model of its "
                "fallback chain is configured any more")

    def _unroutable(self, agent: Agent) -> None:
        """Fail a queued agent that no configured model can serve (stale from here on)."""
        self._cancelling.add(agent.agent_id)
        asyncio.ensure_future(self._finish(agent, FAILED, error=self._gone(agent), failure="upstream"))

    # -- queue ----------------------------------------------------------------------
    def _enqueue(self, agent: Agent) -> None:
        home = self._home(agent)
        if home is None:  # its model went in a reload while it was being admitted
            self._unroutable(agent)
            return
        heapq.heappush(self._queues[home], (PRIORITIES[agent.priority], next(self._seq), agent.agent_id))

    def limit_for(self, bucket_key: str) -> Limit | None:
        """The limit of a ``provider:<name>`` bucket (for pruning), None for other keys."""
        if bucket_key.startswith("provider:"):
            return self._provider_limits.get(bucket_key[len("provider:"):])
        return None

    def provider_tokens(self, name: str) -> Decision:
        """The provider's hourly token bucket, as a Decision (for /rate-limits and routing)."""
        return self.buckets.peek("provider:" + name, self._provider_limits[name])

    def provider_calls(self, name: str) -> int:
        """Calls made to the provider in the last hour (its hourly limit's window)."""
        return self.buckets.used("provider:" + name, self._provider_limits[name])

    def _route(self, agent: Agent) -> tuple[ProviderSlot | None, float | None]:
        """Where ``agent`` can start now.

        (slot, None): start there.  (None, None): wait for a free slot.  (None, s): every
        usable provider of its chain is out of hourly tokens; the first refills in s seconds.
        A provider that is merely busy is waited for, not fallen back from: fallback is for
        providers that fail or are out of quota, not for load spreading to dearer models.
        """
        token_wait: float | None = None
        models = self.config.models
        chain = self._chain(agent, models)
        for alias in chain:
            slot = self.slots[models[alias].provider]
            if not slot.usable or not slot.breaker.available():
                continue
            tokens = self.provider_tokens(slot.name)
            if not tokens.allowed:
                token_wait = tokens.retry_after if token_wait is None else min(token_wait, tokens.retry_after)
                continue
            return (slot, None) if slot.has_room() else (None, None)
        if token_wait is not None:
            return None, token_wait
        if not chain:  # failed by apply_config already
            return None, None
        primary = self.slots[models[chain[0]].provider]  # fails fast, with reasons
        return (primary, None) if primary.has_room() else (None, None)

    def _candidate(self, heap: list[tuple[int, int, str]]) -> tuple[tuple[int, int, str] | None,
                                                                  ProviderSlot | None, float | None]:
        """The first agent of one provider queue that can start now, with its slot.

        Normally that is the head.  When the head waits for hourly quota, a few more are
        looked at (in queue order), because one bound to the same provider may have a
        fallback with capacity; agents that would outlive their timeout waiting are
        failed on the way.  Returns (entry, slot, seconds until quota frees up).
        """
        wake: float | None = None
        while heap and self._stale(heap[0][2]):
            heapq.heappop(heap)
        entries = heap[:1]
        looked = 0
        while looked < len(entries):
            entry = entries[looked]
            looked += 1
            agent = self.live.get(entry[2])
            if agent is None or self._stale(entry[2]):
                continue
            slot, token_wait = self._route(agent)
            if slot is not None:
                return entry, slot, wake
            if token_wait is None:
                if entry is heap[0]:
                    return None, None, wake  # the head waits for a free slot: keep the order
                continue
            if self.clock() + token_wait > agent.deadline:
                # It would outlive its timeout waiting for quota: say so now.
                self._cancelling.add(agent.agent_id)  # stale from here on: looked at once
                asyncio.ensure_future(self._finish(
                    agent, FAILED, error=f"rate limited: no provider of its fallback chain has hourly "
                                           f"capacity within its {agent.timeout:g} s timeout", failure="upstream"))
            else:
                wake = token_wait if wake is None else min(wake, token_wait)
            if len(entries) == 1:
                entries = heapq.nsmallest(_LOOKAHEAD, heap)
        return None, None, wake

    def _schedule(self) -> None:
        self._schedule_runs += 1
        wake: float | None = None
        while not self._stopping and self._active < self.rt.max_concurrency:
            best: tuple[int, int, str] | None = None
            best_heap, best_slot = None, None
            for heap in self._queues.values():
                if not heap or (best is not None and heap[0] > best):
                    continue
                entry, slot, token_wait = self._candidate(heap)
                if token_wait is not None:
                    wake = token_wait if wake is None else min(wake, token_wait)
                if entry is not None and (best is None or entry < best):
                    best, best_heap, best_slot = entry, heap, slot
            if best is None or best_slot is None or best_heap is None:
                break
            if best_heap[0] is best:
                heapq.heappop(best_heap)
            else:  # taken from behind a head that waits for quota
                best_heap.remove(best)
                heapq.heapify(best_heap)
            best_slot.try_acquire()
            agent = self.live[best[2]]
            self._active += 1
            self._tasks[agent.agent_id] = asyncio.get_running_loop().create_task(self._run(agent, best_slot))
        if wake is not None and not self._stopping:
            if self._wakeup is not None:
                self._wakeup.cancel()
            self._wakeup = asyncio.get_running_loop().call_later(wake + 0.01, self._schedule)

    def _stale(self, agent_id: str) -> bool:
        agent = self.live.get(agent_id)
        return agent is None or agent.status != QUEUED or agent_id in self._cancelling

    async def _sweep_expired(self) -> None:
        """Fail queued agents whose deadline passed while they waited."""
        while True:
            await asyncio.sleep(1.0)
            now = self.clock()
            for agent in [a for a in self.live.values() if a.status == QUEUED and a.deadline <= now]:
                # Each at its deadline, not one after another's write: on a full disk the first
                # write waits, and the others were failed only when space returned.
                done = self._finish_soon(agent, FAILED, "timeout",
                                         {"error": f"timeout: still queued after {agent.timeout:g} s"})
                if done is not None:
                    done.add_done_callback(functools.partial(_swept, agent.agent_id))

    # -- running ----------------------------------------------------------------------
    async def _run(self, agent: Agent, slot: ProviderSlot) -> None:
        held: list[ProviderSlot] = [slot]
        try:
            if agent.status != QUEUED:
                # Ended between dispatch and this first step (the queue's deadline sweep failed
                # it): it was marked running over its end, and ended a second time (two events).
                return
            if agent.agent_id in self._cancelling:  # cancelled between dispatch and this first step
                await self._finish(agent, CANCELLED, error="cancelled by request")
                return
            agent.status = RUNNING
            agent.started_at = self.clock()
            agent.runs += 1
            # On disk before the call when the call takes longer than a group commit: a crash then
            # finds it running and counts this run (restart_attempts).  A call that ends sooner has
            # its final write take it back (_finish).
            if agent.agent_id in self._deferred:
                # Its insert, not yet sent to the store, will store it as started (_submit_insert)
                # or go with its end (_write_final); a streamed call's goes now, with this start.
                self._late_start.add(agent.agent_id)
                if self._deferred[agent.agent_id].until_start:
                    self._submit_insert(agent.agent_id)
            else:
                # Right behind its insert when that is still on its way (a call that waited for
                # a slot): in the same transaction if the writer has not taken the insert yet.
                self._started[agent.agent_id] = self.store.queue(
                    [agent_record.update(agent, "status", "started_at", "runs")])
            if self.events is not None and self.events.wants("agent.started", named=True):
                self._insert_now(agent)  # a reader of starts came after it was admitted
                # Live only, like agent.output: "running" is a moment, not a state change worth a
                # write per agent; a resuming reader sees the final event instead.  Only to
                # readers that name it, so a reader of "everything" keeps getting just the log.
                self.events.publish_live("agent.started", agent_event_data(agent), named=True,
                                         owner=agent.api_key)
            remaining = agent.deadline - self.clock()
            try:
                if remaining <= 0:
                    raise TimeoutError
                served, model, result = await within(remaining, self._execute(agent, held))
            except TimeoutError:
                await self._finish(agent, FAILED, failure="timeout",
                                   error=f"timeout: agent exceeded its {agent.timeout:g} s timeout")
                return
            except AgentFailure as exc:
                await self._finish(agent, FAILED, error=str(exc), failure=exc.kind)
                return
            except _Requeue:
                self._started.pop(agent.agent_id, None)
                self._late_start.discard(agent.agent_id)
                agent.status = QUEUED
                agent.runs -= 1
                if agent.agent_id not in self._deferred:  # a deferred insert stores it queued as it is
                    self.store.submit([agent_record.update(agent, "status", "runs", "attempts")])
                self._enqueue(agent)
                return
            extra: dict[str, Any] = {}
            if agent.kind == KIND_CHAT:
                if agent.first_token_at is None:  # not streamed: the whole text is the first
                    agent.first_token_at = self.clock()
                    if agent.sink is not None and result.text:
                        agent.sink(result.text)
                agent.answer = result
                extra["tool_calls"] = _tool_calls_json(result.tool_calls)
            # Once the outcome is known, a cancel or stop must not lose it: _finish goes on to its
            # end whatever happens to this task meanwhile.
            await self._finish(
                agent, COMPLETED, result=result.text, served_model=served, provider=model.provider,
                input_tokens=result.input_tokens, output_tokens=result.output_tokens,
                cost=token_cost(model, result.input_tokens, result.output_tokens) + agent.billed, **extra,
            )
        except asyncio.CancelledError:
            if agent.status in TERMINAL:
                return  # its _finish is writing the outcome, and goes on without this task
            if agent.agent_id in self._cancelling:
                await self._finish(agent, CANCELLED, error="cancelled by request")
            elif self._stopping and agent.kind == KIND_CHAT:
                # Its caller loses the connection with the stop: a re-run would answer nobody.
                await self._finish(agent, FAILED, error=INTERRUPTED_CHAT, failure="interrupted")
            elif self._stopping:
                self._started.pop(agent.agent_id, None)
                agent.status = QUEUED
                agent.runs -= 1  # a graceful stop is not a crash: do not count this run
                await self.store.write(agent_record.update(agent, "status", "runs", "attempts"))
            else:
                raise
        except Exception as exc:  # a bug must fail the agent, not lose it
            log.exception("agent %s crashed in the runtime", agent.agent_id)
            await self._finish(agent, FAILED, error=f"internal error: {type(exc).__name__}", failure="upstream")
        finally:
            self._started.pop(agent.agent_id, None)
            self._active -= 1
            self._tasks.pop(agent.agent_id, None)
            runs = self._schedule_runs
            for s in held:
                s.release()  # a slot that frees room runs the scheduler (Releases), with _active already down
            if self._schedule_runs == runs:  # none did (a slot passed straight to a waiter, or none was held)
                self._schedule()

    async def _execute(self, agent: Agent, held: list[ProviderSlot]) -> tuple[str, ModelConfig, CompletionResult]:
        """Walk the fallback chain; ``held`` lists the provider slots this agent holds.  The
        chain and its models (their prices) are those configured when the run starts: a reload
        meanwhile changes neither.  A call under way finishes on the slot it started on; a
        fallback after a reload goes to its provider's slot of the day, and a provider
        removed meanwhile is passed over."""
        reasons: list[str] = []
        out_of_tokens = 0
        models = self.config.models
        chain = self._chain(agent, models)
        if not chain:
            raise AgentFailure(self._gone(agent))
        for alias in chain:
            model = models[alias]
            slot = self.slots.get(model.provider)
            if slot is None:
                reasons.append(f"{alias}: provider {model.provider} was removed from the configuration")
                continue
            if not slot.usable:
                reasons.append(f"{alias}: provider {slot.name} unavailable ({slot.error})")
                continue
            if not slot.breaker.available():
                reasons.append(f"{alias}: circuit open for {slot.name}")
                continue
            max_tokens = self._max_tokens(agent, model)
            if max_tokens < 1:
                reasons.append(f"{alias}: its reservation of ${agent.reserved:.6f} does not pay for a call to it")
                continue
            if slot not in held:
                for s in held:
                    s.release()
                held.clear()
                await slot.acquire()
                held.append(slot)
            outcome = await self._call_with_retries(agent, alias, model, slot, max_tokens)
            if isinstance(outcome, CompletionResult):
                return alias, model, outcome
            out_of_tokens += outcome.startswith(_OUT_OF_TOKENS)
            reasons.append(f"{alias}: {outcome}")
        if out_of_tokens and out_of_tokens == len(reasons):
            raise _Requeue
        raise AgentFailure("all providers failed: " + "; ".join(reasons))

    async def _call_with_retries(self, agent: Agent, alias: str, model: ModelConfig, slot: ProviderSlot,
                                 max_tokens: int) -> CompletionResult | str:
        """The result, or why this model gave up (the caller then falls back)."""
        last = "no attempt made"
        for attempt in range(1, self.rt.max_attempts + 1):
            if attempt > 1:  # a billed failure leaves less of the reservation for the next call
                max_tokens = self._max_tokens(agent, model)
                if max_tokens < 1:
                    return f"{last}; then its reservation was spent"
            if not slot.breaker.allow():
                return f"circuit open for {slot.name}" if attempt == 1 else f"{last}; then circuit opened"
            if not self.buckets.take("provider:" + slot.name, self._provider_limits[slot.name]).allowed:
                slot.breaker.release_probe()  # no call went out: the probe is still to be made
                return f"{_OUT_OF_TOKENS} for {slot.name}" if attempt == 1 else f"{last}; then {_OUT_OF_TOKENS}"
            # The call may outlive the agent's deadline by a margin, so that when the
            # deadline is what binds, the agent's own timeout fires first and says so.
            call_timeout = min(slot.settings.timeout, max(agent.deadline - self.clock(), 0.0) + _DEADLINE_MARGIN)
            request = self._request(agent, model, max_tokens, call_timeout)
            agent.attempts += 1
            slot.calls += 1
            call = _Attempt()
            try:
                result = await self._complete(slot, request, agent, alias, call)
            except asyncio.CancelledError:
                slot.breaker.release_probe()
                # Abandoned in flight by a cancel or the agent's timeout: the provider may bill
                # it whole (else spawn-and-cancel calls past the cap).  Its worst case cannot
                # pass the reservation that paid for its max_tokens: nothing to announce.  A
                # graceful stop is the operator's, and the agent runs again on its reservation
                # (a chat agent does not: it fails, see _run).
                if agent.agent_id in self._cancelling or not self._stopping or agent.kind == KIND_CHAT:
                    self._bill(agent, alias, model, call.used(agent, max_tokens))
                raise
            except ProviderError as exc:
                last = f"{exc.kind}" + (f" (HTTP {exc.status})" if exc.status else "") + f": {exc.message}"
                usage = exc.usage if exc.usage is not None or (exc.kind != "timeout" and not call.parts) \
                    else call.used(agent, max_tokens)  # timed out waiting, or a stream that broke off
                if usage is not None:
                    await self._bill_failed_call(agent, alias, model, usage)
                self._no_retry_once_streamed(agent, alias, slot, call, last)
                if exc.kind == "bad_request":
                    slot.breaker.record_success()  # the provider answered; the request was wrong
                    raise AgentFailure(f"{alias}: {last}", kind="bad_request") from None
                slot.breaker.record_failure()
                if not exc.retryable:
                    return last
                if attempt < self.rt.max_attempts:
                    await asyncio.sleep(backoff_delay(attempt, self.rt.retry_base_delay, self.rt.retry_max_delay,
                                                      exc.retry_after))
                continue
            except Exception as exc:  # a plugin bug: count it against the provider, never crash
                log.exception("provider plugin %s raised", slot.name)
                last = f"plugin error: {type(exc).__name__}"
                if call.parts and agent.sink is not None:
                    await self._bill_failed_call(agent, alias, model, call.used(agent, max_tokens))
                    self._no_retry_once_streamed(agent, alias, slot, call, last)
            else:
                if isinstance(result, CompletionResult):
                    slot.breaker.record_success()
                    return result
                last = "plugin returned an invalid result"
            slot.breaker.record_failure()
            if attempt < self.rt.max_attempts:
                await asyncio.sleep(backoff_delay(attempt, self.rt.retry_base_delay, self.rt.retry_max_delay))
        return last

    @staticmethod
    def _no_retry_once_streamed(agent: Agent, alias: str, slot: ProviderSlot, call: _Attempt, last: str) -> None:
        """A chat call whose caller has part of the answer fails here: a retry or a fallback
        would send a second answer after the first one's beginning (no silent switch of model).
        A stream that broke off counts against the provider's breaker, whatever the error."""
        if call.parts and agent.sink is not None:
            slot.breaker.record_failure()
            raise AgentFailure(f"{alias}: the stream broke off after its first text, so no retry and no "
                               f"fallback: {last}", kind="upstream")

    @staticmethod
    def _max_tokens(agent: Agent, model: ModelConfig) -> int:
        """What this agent's calls to ``model`` may write: the model's cap (or the chat call's own
        ``max_tokens`` when lower), or less when the agent's reservation pays for less at this
        model's prices.  Every attempt gets the whole reservation, less what calls that failed
        were billed (an upstream that reported usage with an unusable answer): no other failed
        call is billed to the agent."""
        asked = agent.asked_max_tokens
        if agent.reserved is None:  # not budgeted (a runtime without a budget)
            return output_cap(model, asked)
        return output_allowance(model, agent.task or "", agent.reserved - agent.billed, asked)

    @staticmethod
    def _request(agent: Agent, model: ModelConfig, max_tokens: int, timeout: float) -> CompletionRequest:
        """The provider's request: an agent's task as the prompt, or a chat agent's conversation
        with its sampling fields and tools (and the conversation flattened as the prompt)."""
        chat = agent.chat
        if chat is None:
            return CompletionRequest(model=model.upstream, prompt=agent.task, max_tokens=max_tokens,
                                     timeout=timeout, agent_id=agent.agent_id, temperature=agent.temperature)
        return CompletionRequest(
            model=model.upstream, prompt=flat_prompt(chat.messages), max_tokens=max_tokens, system=chat.system,
            timeout=timeout, agent_id=agent.agent_id, messages=chat.messages, temperature=chat.temperature,
            top_p=chat.top_p, stop=chat.stop, tools=chat.tools, tool_choice=chat.tool_choice,
            response_format=chat.response_format, user=chat.user)

    async def _bill_failed_call(self, agent: Agent, alias: str, model: ModelConfig, usage: tuple[int, int]) -> None:
        """A call that failed although the upstream billed it (it reported usage, or may bill
        a call it was sent and never answered): the cost goes to the ledger and the budget now
        (out of the agent's reservation), and counts against what the agent's later calls may spend."""
        exceeded = self._bill(agent, alias, model, usage)
        if exceeded:
            await self._announce_exceeded(agent, exceeded, token_cost(model, *usage))

    def _bill_cut_call(self, agent: Agent, model: ModelConfig) -> list[Level]:
        """At start, for an agent a crash found ``running``: its provider call was cut with the
        daemon, and the provider may bill it whole, so it is billed at its worst case on the
        agent's model (its input bound and the ``max_tokens`` its run was allowed), in the ledger
        and the budget.  That is spend outside the reservation (whose own worst case is the
        re-run's): the reservation grows by it, so the re-run is sent what a first run would be.
        Its caller queues the agent's next write (re-queued or failed) before any await: both
        then commit in one group, so a second crash cannot bill the call twice.  Returns the
        levels it took past their cap, for the caller to announce after that write."""
        usage = _abandoned_usage(agent, self._max_tokens(agent, model))
        return self._bill(agent, agent.model, model, usage, outside_reservation=True)

    def _bill(self, agent: Agent, alias: str, model: ModelConfig, usage: tuple[int, int], *,
              outside_reservation: bool = False) -> list[Level]:
        """_bill_failed_call without the announcement: the levels it took past their cap.
        ``outside_reservation``: the cost is spend on top of the agent's reservation, which
        grows by it (a call a crash cut, _bill_cut_call), not taken out of it."""
        cost = token_cost(model, *usage)
        agent.billed += cost
        if outside_reservation and agent.reserved is not None:
            agent.reserved += cost
        unit = [ledger.record(self.clock(), agent.agent_id, agent.api_key, alias, model.provider, *usage,
                              cost, agent.project_id, cut=outside_reservation)]
        if agent.agent_id in self._deferred:  # a failed attempt is no quick call: its row goes now
            self._submit_insert(agent.agent_id)
        insert = self._unwritten.get(agent.agent_id)
        if insert is not None:  # dispatched on submit: after its insert, and not at all if that fails
            insert.add_done_callback(lambda f: None if _failure_of(f) is not None else self.store.submit(unit))
        elif agent.agent_id not in self._dropped:  # dropped: its insert failed (_admit_early)
            self.store.submit(unit)
        if self.budget is None:
            return []
        return self.budget.settle(_hold_id(agent), cost, part=0.0 if outside_reservation else cost)

    async def _complete(self, slot: ProviderSlot, request: CompletionRequest, agent: Agent,
                        alias: str, call: _Attempt) -> CompletionResult:
        """One provider call.  Streamed when the plugin can stream and someone wants the text as
        it comes: a chat call's sink (its caller), or a live reader of agent.output; the result
        is the same either way.  ``call`` keeps what came, for billing a stream that breaks off."""
        client = slot.client
        # The daemon's own bound, past the plugin's: a plugin that ignores request.timeout
        # is cancelled, and the attempt fails as a timeout like any other.
        def timed_out() -> ProviderError:
            return ProviderError(f"{slot.name}: no answer within {request.timeout:g} s (cancelled by the daemon)",
                                 kind="timeout")

        events = self.events
        readers = events is not None and events.wants("agent.output")
        bound = request.timeout + TIMEOUT_GRACE
        if not slot.streams or (agent.sink is None and not readers):
            return await within(bound, client.complete(request), timed_out)
        self._insert_now(agent)  # a reader of its text came after it was admitted
        return await within(bound, self._stream(slot, request, agent, alias, call, readers), timed_out)

    async def _stream(self, slot: ProviderSlot, request: CompletionRequest, agent: Agent, alias: str,
                      call: _Attempt, readers: bool) -> CompletionResult:
        """A streamed call (see _complete): each text delta goes to the chat call's sink and to
        the live readers of agent.output as it comes; then the result."""
        events = self.events
        call.streaming = True
        result: CompletionResult | None = None
        async for item in slot.client.stream(request):
            if isinstance(item, CompletionResult):
                result = item
            elif isinstance(item, str) and item:
                call.parts.append(item)
                if agent.sink is not None:
                    if agent.first_token_at is None:
                        agent.first_token_at = self.clock()
                    agent.sink(item)
                if readers and events is not None:
                    events.publish_live("agent.output", {"agent_id": agent.agent_id, "model": alias,
                                                         "index": len(call.parts) - 1, "delta": item},
                                        owner=agent.api_key)
        if result is None:
            raise ProviderError(f"{slot.name}: the stream ended without a result", kind="invalid_response")
        return result

    # -- finishing ----------------------------------------------------------------------
    async def _finish(self, agent: Agent, status: Status, *, failure: str | None = None, **fields: Any) -> None:
        """Write the terminal state (and the usage row) durably, then tell everyone.  ``failure``:
        why a failed agent failed, in ChatFailed's words (kept in memory for a waiting ChatCall).

        Shielded by construction: once called, the finish goes on to its end even when the
        caller is cancelled (a stop, a cancel) while it waits, since the steps after the write
        run from the write's own future (_written), not in the caller's task.  This replaced an
        ``asyncio.shield`` around it, whose extra task was ~2.4 % of an agent's instructions."""
        done = self._finish_soon(agent, status, failure, fields)
        if done is not None:
            await done

    def _finish_soon(self, agent: Agent, status: Status, failure: str | None,
                     fields: dict[str, Any]) -> asyncio.Future[None] | None:
        """_finish up to the queued write; the future resolves when the whole finish is done
        (None: the agent had already ended)."""
        if agent.status in TERMINAL or agent.agent_id not in self.live:  # ended, or dropped (_forget)
            return None
        agent.failure = failure
        fields.setdefault("completed_at", self.clock())
        if agent.kind == KIND_CHAT:  # set as the text came, whatever the end
            fields.setdefault("first_token_at", agent.first_token_at)
        if agent.billed and status != COMPLETED:  # calls billed although they failed
            fields.setdefault("cost", agent.billed)
        for name, value in fields.items():
            setattr(agent, name, value)
        agent.status = status
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if agent.agent_id in self._unwritten and agent.agent_id not in self._deferred:
            # Dispatched on submit, its insert committing: nothing before it (a deferred insert,
            # not yet submitted, goes in the end's own unit instead: _write_final).
            self._held_finish[agent.agent_id] = lambda: self._write_final(agent, fields, done)
        else:
            self._write_final(agent, fields, done)
        return done

    def _write_final(self, agent: Agent, fields: dict[str, Any], done: asyncio.Future[None]) -> None:
        """The rest of _finish_soon: the final statements queued, _written once they commit;
        with the agent's insert in the same unit while that is deferred (:meth:`_store_unit`)."""
        if agent.agent_id in self._dropped:  # its insert failed: nothing to write, nobody to tell
            self._end_dropped(agent, done)
            return
        # A deferred insert first: its agent.spawned takes its event id before the end's does.
        insert = self._take_insert(agent.agent_id) if agent.agent_id in self._deferred else None
        status = agent.status
        columns = ("status", "attempts", *fields)
        started = self._started.pop(agent.agent_id, None)
        # Started while its insert was deferred (_run): no `running` write was made, and this
        # unit holds the insert too (so a failure of it leaves nothing to count a run for).
        late = agent.agent_id in self._late_start
        self._late_start.discard(agent.agent_id)
        if started is not None and self.store.withdraw(started):
            # Its `running` write was still queued, so it would have committed with this one:
            # this write carries its columns instead (one statement fewer per quick agent).
            columns += ("started_at", "runs")
        else:
            started = None
            if late:
                columns += ("started_at", "runs")
        statements = [agent_record.update(agent, *columns, cipher=self.store.cipher)]
        if status == COMPLETED and agent.kind != KIND_TEAM:
            statements.append(ledger.record(fields["completed_at"], agent.agent_id, agent.api_key, agent.served_model,
                                            agent.provider, agent.input_tokens, agent.output_tokens,
                                            fields["cost"] - agent.billed, agent.project_id))
        event = None
        if self.events is not None and agent.kind != KIND_MEMBER:
            # The announcement goes in the same transaction as the state it announces.
            event, stmts = self.events.statements(f"agent.{status}", agent_event_data(agent), agent.api_key)
            statements.extend(stmts)
        for recorder in self.recorders:
            # In this unit rather than a unit of their own once it committed (a unit is ~6,800
            # instructions in the store besides its statement): the entry commits with the end it records.
            try:
                entry = recorder(agent)
            except Exception:  # a recorder's bug must not stop the runtime
                log.exception("agent recorder failed for %s", agent.agent_id)
            else:
                if entry is not None:
                    statements.append(entry)
        if insert is not None:
            # After the insert's own callback (_inserted), which drops the agent when the unit
            # failed: then it ends here without a trace (_forget, as many times as it comes).
            self._store_unit(insert, statements).add_done_callback(
                lambda f: self._written(agent, event, None, done, None) if _failure_of(f) is None
                else self._end_dropped(agent, done))
            return
        try:
            written = self.store.submit(statements)
        except StoreError as exc:  # the store is closed
            self._written(agent, event, started, done, exc)
        else:
            written.add_done_callback(lambda f: self._written(agent, event, started, done, _failure_of(f)))

    def _written(self, agent: Agent, event: Any, started: Queued | None, done: asyncio.Future[None],
                 failed: BaseException | None) -> None:
        """The rest of _finish, once its write committed (``failed`` None) or failed: tell the
        event readers, release the budget, wake whoever waits, the listeners; then, when needed,
        the budget announcement and the team (awaited in a task of their own)."""
        try:
            if failed is None:
                if event is not None and self.events is not None:
                    self.events.published([event])
            elif isinstance(failed, StoreError):
                # Disk full or I/O error: the row on disk keeps its last live status, so the
                # agent runs again after a restart.  Nothing may wait on it forever meanwhile.
                log.error("could not save the %s state of agent %s: %s", agent.status, agent.agent_id, failed)
                if started is not None and not self.store.closed:  # the run is counted on disk all the same
                    self.store.submit(started.statements).add_done_callback(retrieved)
            else:
                raise failed
            exceeded = self._settle(agent) if self.budget is not None else []
            self.live.pop(agent.agent_id, None)
            self._chains.pop(agent.agent_id, None)
            self._cancelling.discard(agent.agent_id)
            if agent.status == COMPLETED:
                self.completed_total += 1
            elif agent.status == FAILED:
                self.failed_total += 1
            fut = self._done.pop(agent.agent_id, None)
            if fut is not None and not fut.done():
                fut.set_result(agent)
            for listener in self.listeners:
                try:
                    listener(agent)
                except Exception:  # a listener's bug must not stop the runtime
                    log.exception("agent listener failed for %s", agent.agent_id)
            team = agent.parent_id is not None and agent.parent_id in self._team_finished
        except BaseException as exc:  # as from the awaited finish it was: to whoever waits for it
            if not done.done():
                done.set_exception(exc)
            else:
                log.error("finishing agent %s failed: %s", agent.agent_id, exc)
            return
        if not exceeded and not team:
            if not done.done():
                done.set_result(None)
            return
        tail = asyncio.ensure_future(self._finish_tail(agent, exceeded))
        tail.add_done_callback(lambda t: _settle_into(done, t))

    async def _finish_tail(self, agent: Agent, exceeded: list[Level]) -> None:
        if exceeded:
            await self._announce_exceeded(agent, exceeded, agent.cost)
        if agent.parent_id is not None and agent.parent_id in self._team_finished:
            self._team_finished[agent.parent_id][agent.agent_id] = agent
            await self._maybe_finish_team(agent.parent_id)

    def _settle(self, agent: Agent) -> list[Level]:
        """Release the agent's reservation and count its cost (a member: its share of its
        lead's; a team: nothing more, its members counted theirs as they ended)."""
        assert self.budget is not None  # _finish calls this only with a budget
        if agent.kind == KIND_TEAM:
            return self.budget.settle(agent.agent_id, None)
        # Calls billed although they failed were counted as they happened (_bill_failed_call).
        part = max((agent.reserved or 0.0) - agent.billed, 0.0) if agent.kind == KIND_MEMBER else None
        exceeded = self.budget.settle(_hold_id(agent), max((agent.cost or 0.0) - agent.billed, 0.0), part=part)
        if agent.cost and agent.reserved is not None and agent.cost > agent.reserved + 1e-9:
            log.warning("provider %s billed agent %s $%.6f, more than the $%.6f reserved for it "
                        "(%s input, %s output tokens: did it ignore max_tokens?)", agent.provider, agent.agent_id,
                        agent.cost, agent.reserved, agent.input_tokens, agent.output_tokens)
        return exceeded

    async def _announce_exceeded(self, agent: Agent, levels: list[Level], cost: float | None) -> None:
        """budget.exceeded: a provider billed past what it was allowed and a cap is passed;
        spawns are refused at that level until its period ends."""
        for level in levels:
            log.error("budget: %s cap of $%g passed (spent %.6f) after agent %s cost $%.6f; spawns are "
                      "refused until the %s ends", level.name, level.cap, level.settled, agent.agent_id,
                      cost or 0.0, {"daily": "day", "monthly": "month", "hourly": "hour"}.get(level.name, "budget period"))
        if self.events is None:
            return
        data = {"agent_id": agent.agent_id, "model": agent.served_model or agent.model, "provider": agent.provider,
                "cost": cost, "reserved": agent.reserved,
                "input_tokens": agent.input_tokens, "output_tokens": agent.output_tokens,
                "levels": [{"level": lv.name, "cap": lv.cap, "spent": round(lv.settled, 8)} for lv in levels]}
        try:
            # About this agent's overshoot (its id, its cost): its key's event, not daemon-wide.
            await self.events.emit("budget.exceeded", data, agent.api_key)
        except StoreError as exc:
            log.error("could not record budget.exceeded for agent %s: %s", agent.agent_id, exc)

    async def _maybe_finish_team(self, team_id: str) -> None:
        team = self.live.get(team_id)
        finished = self._team_finished.get(team_id, {})
        if team is None or len(finished) < len(team.members):
            return
        del self._team_finished[team_id]
        members = [finished[m] for m in team.members]
        cost = sum(m.cost or 0.0 for m in members)
        if team_id in self._cancelling:
            await self._finish(team, CANCELLED, cost=cost, error="cancelled by request")
            return
        ok = [m for m in members if m.status == COMPLETED]
        tokens_in = sum(m.input_tokens or 0 for m in ok)
        tokens_out = sum(m.output_tokens or 0 for m in ok)
        if team.status in TERMINAL:
            return
        if ok:
            sections = []
            for m in members:
                label = self.member_label(m.model)
                body = m.result if m.status == COMPLETED else f"({m.status}: {m.error})"
                sections.append(f"## {label}\n{body}")
            failed = [f"{m.model}: {m.error}" for m in members if m.status != COMPLETED]
            await self._finish(team, COMPLETED, result="\n\n".join(sections), cost=cost,
                               input_tokens=tokens_in, output_tokens=tokens_out,
                               error=("some members did not complete: " + "; ".join(failed)) if failed else None)
        elif all(m.status == CANCELLED for m in members):
            await self._finish(team, CANCELLED, cost=cost, error="cancelled by request")
        else:
            await self._finish(team, FAILED, cost=cost,
                               error="all members failed: " + "; ".join(f"{m.model}: {m.error}" for m in members))
