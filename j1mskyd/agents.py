"""AgentService: what the API can ask of agents (spawn, team, batch, status, list, cancel).

It validates requests against the J1MSKY API reference's rules and the config, writes new agents
durably, hands them to the runtime, and reads finished ones back from the store.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import agent_cursor, agent_query, agent_record, ledger, worstcase
from .agent_record import ANONYMOUS, Agent, CANCELLED, KIND_AGENT, KIND_MEMBER, KIND_TEAM, SPAWNING, TERMINAL, money
from .config import Config
from .errors import Conflict, Forbidden, NotFound, ValidationFailed
from .budget import Budget
from .pricing import token_cost
from .runtime import AgentRuntime
from .spawn_request import SpawnRequest, TeamRequest
from .store import Statement, Store
from .tenancy import Viewer

# Asked at a spawn for a statement that commits with the new agent's insert (None: nothing): the
# caller's audit entry of who spawned it, on disk with the agent or not at all.
SpawnRecorder = Callable[[Agent], "Statement | None"]

if TYPE_CHECKING:
    from .keys import ApiKey
    from .webhooks import WebhookService

__all__ = ["AgentService", "SpawnRecorder"]

_ID_SPACE = 10_000  # the 4 digits of an id's counter
_SETTLE_WAIT = 5.0  # seconds to wait for an agent's final write before answering anyway
_EVENT_MARGIN = 60.0  # s around an agent's life in which its events are looked for


def _second_of(agent_id: str | None) -> int | None:
    """The second an id of the counter's shape carries (None: not of that shape)."""
    second, _, tail = (agent_id or "").partition("subagent_")[2].partition("_")
    ok = agent_id is not None and agent_id.startswith("subagent_") and second.isdigit() and len(tail) == 4
    return int(second) if ok and tail.isdigit() else None


class AgentService:
    def __init__(self, config: Config, store: Store, runtime: AgentRuntime, budget: Budget,
                 webhooks: WebhookService | None = None,
                 key_of: Callable[[str], ApiKey | None] = lambda key_id: None) -> None:
        """``key_of(key_id)``: the spawning key, for its own limits (models, live agents) and
        its project (KeyService.find; None: no limits of its own, as with authentication off)."""
        self.webhooks = webhooks  # a spawn's own webhook_url registers there
        self.key_of = key_of
        self.config = config
        self.store = store
        self.runtime = runtime
        self.budget = budget
        # The J1MSKY API reference's id shape, subagent_<unix seconds>_<4 digits>: a counter from a
        # random start, under a second that never goes back and carries at most 10,000 ids.
        self._ids = itertools.count(secrets.randbelow(_ID_SPACE))
        self._second = -1  # the second the ids drawn now carry
        self._left = 0  # how many more ids it may carry

    def apply_config(self, config: Config) -> None:
        """A reloaded configuration (reload.py): spawns from now on price and check against it."""
        self.config = config

    # -- validation --------------------------------------------------------------------
    def new_id(self, now: float) -> str:
        """A new agent id (spawns and chat calls alike); never one drawn before.

        Ids are drawn before a request's refusals (a batch refused whole has drawn one per
        entry), so a second may be asked for more than its 10,000: the ids after those carry the
        next second, and so on, until the clock passes the second they carry.  The second never
        goes back, not even when the clock does (a Pi's, stepped at boot)."""
        second = int(now)
        if second > self._second:
            self._second, self._left = second, _ID_SPACE
        elif not self._left:
            self._second, self._left = self._second + 1, _ID_SPACE
        self._left -= 1
        return f"subagent_{self._second}_{next(self._ids) % _ID_SPACE:04d}"

    def continue_ids(self, greatest: str | None) -> None:
        """Draw new ids under a later second than ``greatest`` (the greatest id stored) carries.
        A daemon restarted within the second of its last spawn, or whose clock was stepped back,
        cannot tell which of that second's ids its last run drew (some were refused and never
        stored): it starts on the next second instead, which a spawn or a task resumed at start
        would otherwise have failed on (the database's unique id)."""
        last = _second_of(greatest)
        if last is not None and last >= self._second:
            self._second, self._left = last, 0

    def estimate(self, model_alias: str, task: str, max_tokens: int | None = None) -> float:
        """Estimated cost at spawn: the task's tokens (~4 chars each) plus the model's typical output
        (or a chat call's own ``max_tokens`` when lower).  What is reserved is the worst case
        instead (:meth:`reservation`)."""
        model = self.config.models[model_alias]
        output = min(model.typical_output_tokens, worstcase.output_cap(model, max_tokens))
        return token_cost(model, max(1, math.ceil(len(task) / 4)), output)

    def reservation(self, agent: Agent) -> float:
        """The most ``agent`` may cost (its worst case over its fallback chain), remembered on it."""
        agent.reserved = worstcase.agent_bound(self.config.models, agent.model, agent.task or "",
                                               agent.asked_max_tokens)
        return agent.reserved

    def _build(self, req: SpawnRequest, now: float) -> Agent:
        return Agent(agent_id=self.new_id(now), kind=KIND_AGENT, model=req.model, task=req.task,
                     priority=req.priority, timeout=req.timeout, status=SPAWNING,
                     estimated_cost=self.estimate(req.model, req.task), created_at=now,
                     retention_days=req.retention_days)

    async def _check_targets(self, urls_by_prefix: list[tuple[str, str | None]]) -> None:
        """The webhook target policy on each ``webhook_url`` (after the cheap checks passed)."""
        urls = {prefix + "webhook_url": url for prefix, url in urls_by_prefix if url}
        if urls and self.webhooks is not None:
            errors = await self.webhooks.check_targets(urls)
            if errors:
                raise ValidationFailed(errors)

    # -- spawning ----------------------------------------------------------------------
    async def store_and_admit(self, agents: list[Agent], extra: Sequence[Agent] = (), *,
                               key_id: str = ANONYMOUS, webhook_urls: dict[str, str] | None = None,
                               webhook_secret: str | None = None, early: bool = False,
                               extra_statements: Sequence[Statement] = (),
                               recorder: SpawnRecorder | None = None) -> None:
        """Reserve the budget for the top-level ``agents`` (a team's members ride on their
        lead's reservation), then store and queue everything, with each spawn's own
        webhook in the same transaction; refused (BudgetExceeded, SpawnRefused) means
        nothing written.  The one way in for spawns and chat calls (chat_service.py);
        ``early``: dispatch on submit (AgentRuntime.admit; chat calls, which have no webhook).
        ``extra_statements``: written in the same transaction (a task's step and its new state,
        tasks.py), so that the agent and what it is for are on disk together or not at all;
        ``recorder``: asked for one more statement per top-level agent, in that transaction too
        (the spawn's audit entry: one commit fewer per spawn than an entry of its own).

        The key's own limits apply here, from memory: its models (a 403 naming those it may
        use, before anything is reserved), its limit of live agents; and the agents carry the
        project the key is in now (their spend counts there for good)."""
        key = self.key_of(key_id)
        project_id = max_live = None
        if key is not None:
            if key.models is not None:
                refused = [a.model for a in agents if not key.may_use(a.model)]
                if refused:
                    raise Forbidden(f"this key may use only: {', '.join(key.models)} (not {', '.join(refused)})",
                                    allowed_models=list(key.models))
            project_id, max_live = key.project_id, key.max_concurrency
        for a in [*agents, *extra]:
            a.api_key = key_id
            a.project_id = project_id
        hooks, statements = [], list(extra_statements)
        if recorder is not None:
            for a in agents:
                entry = recorder(a)
                if entry is not None:
                    statements.append(entry)
        webhooks = self.webhooks
        if webhook_urls and webhooks is None:  # a wiring mistake (app.py always gives one), not bad input
            raise RuntimeError("a spawn's webhook_url needs the AgentService to have a WebhookService")
        for agent_id, url in (webhook_urls or {}).items():
            assert webhooks is not None
            hook, insert = webhooks.for_agent_statement(url, agent_id, key_id, webhook_secret)
            hooks.append(hook)
            statements.append(insert)
        self.budget.reserve_all(key_id, [(a.agent_id, self._hold(a, extra)) for a in agents],
                                project_id=project_id, max_live=max_live)
        try:
            await self.runtime.admit([*agents, *extra], statements, early=early and not hooks)
        except BaseException:
            for a in agents:
                if a.agent_id not in self.runtime.live:  # one dispatched on submit settles when it ends
                    self.budget.settle(a.agent_id, None)
            raise
        for hook in hooks:  # before any of these agents can finish: nothing awaited since the commit
            assert webhooks is not None
            webhooks.adopt(hook)

    def _hold(self, agent: Agent, extra: Sequence[Agent], cut: Mapping[str, float] | None = None) -> float:
        """What ``agent`` holds: its own worst case, or a team lead's, the sum of its members';
        less what calls that failed were billed already (counted as spend when they were).
        ``cut`` (at start): what calls cut by earlier crashes were billed, per agent; that was
        billed on top of the reservation (runtime._bill_cut_call), which grows by it again."""
        if agent.kind == KIND_TEAM:
            return sum(self._hold(m, [], cut) for m in extra if m.parent_id == agent.agent_id)
        self.reservation(agent)
        if cut and agent.reserved is not None:
            agent.reserved += cut.get(agent.agent_id, 0.0)
        return max((agent.reserved or 0.0) - agent.billed, 0.0)

    async def spawn(self, req: SpawnRequest, key_id: str = ANONYMOUS,
                    webhook_secret: str | None = None, recorder: SpawnRecorder | None = None) -> dict[str, Any]:
        agent = self._build(req, self.runtime.clock())
        await self._check_targets([("", req.webhook_url)])
        await self.store_and_admit([agent], key_id=key_id, webhook_urls=_urls([(agent, req.webhook_url)]),
                                    webhook_secret=webhook_secret, recorder=recorder)
        return agent.spawn_view()

    async def spawn_batch(self, reqs: list[SpawnRequest], key_id: str = ANONYMOUS,
                          webhook_secret: str | None = None, recorder: SpawnRecorder | None = None) -> dict[str, Any]:
        key = self.key_of(key_id)
        most = self.budget.live_limit(None if key is None else key.max_concurrency)
        if len(reqs) > most:  # it could never start: not a 429 to wait out
            raise ValidationFailed([{"field": "agents", "message": f"{len(reqs)} agents are more than this key may "
                                                                   f"have in flight at once ({most}): send fewer"}])
        now = self.runtime.clock()
        agents = [self._build(req, now) for req in reqs]
        await self._check_targets([(f"agents[{i}].", req.webhook_url) for i, req in enumerate(reqs)])
        await self.store_and_admit(agents, key_id=key_id,
                                    webhook_urls=_urls((a, r.webhook_url) for a, r in zip(agents, reqs)),
                                    webhook_secret=webhook_secret, recorder=recorder)
        return {"success": True, "count": len(agents),
                "agents": [a.spawn_view() for a in agents]}

    async def spawn_team(self, req: TeamRequest, key_id: str = ANONYMOUS,
                         webhook_secret: str | None = None, recorder: SpawnRecorder | None = None) -> dict[str, Any]:
        await self._check_targets([("", req.webhook_url)])
        team, task, priority, timeout, retention = req.team, req.task, req.priority, req.timeout, req.retention_days
        now = self.runtime.clock()
        lead = Agent(agent_id=self.new_id(now), kind=KIND_TEAM, team=team.id, model=team.id, task=task,
                     priority=priority, timeout=timeout, status=SPAWNING, created_at=now,
                     estimated_cost=0.0, retention_days=retention)
        members = [Agent(agent_id=self.new_id(now), kind=KIND_MEMBER, parent_id=lead.agent_id, team=team.id,
                         model=alias, task=task, priority=priority, timeout=timeout, status=SPAWNING,
                         estimated_cost=self.estimate(alias, task), created_at=now, retention_days=retention)
                   for alias in team.members]
        lead.members = [m.agent_id for m in members]
        lead.estimated_cost = sum(m.estimated_cost for m in members)
        await self.store_and_admit([lead], members, key_id=key_id, webhook_urls=_urls([(lead, req.webhook_url)]),
                                    webhook_secret=webhook_secret, recorder=recorder)
        return {"success": True, "agent_id": lead.agent_id, "team": team.id,
                "models": self.member_labels(team.members), "status": SPAWNING,
                "estimated_cost": money(lead.estimated_cost), "team_status": team.status,
                "members": [m.agent_id for m in members]}

    def member_labels(self, aliases: Any) -> list[str]:
        """``<provider>/<upstream>`` per alias; the bare alias for one no longer in the config."""
        models = self.config.models
        return [f"{models[a].provider}/{models[a].upstream}" if a in models else a for a in aliases]

    # -- reading -------------------------------------------------------------------------
    async def _settled(self, agent: Agent) -> Agent:
        """A live agent, or, when its terminal state is being written, the agent once it is on disk.

        The runtime marks an agent finished before its final write commits; nobody may
        hear "completed" (or act on it) before the database says so.
        """
        if agent.status not in TERMINAL:
            return agent
        if self.store.full is not None:  # the write waits for disk space: what memory holds, at once
            return agent
        try:
            async with asyncio.timeout(_SETTLE_WAIT):
                return await asyncio.shield(self.runtime.wait(agent.agent_id))
        except TimeoutError:  # a stuck write: report what we know rather than hang
            return agent

    async def _load(self, agent_id: str, viewer: Viewer | None) -> Agent:
        """The agent, live or stored; 404 when unknown or another key's that ``viewer`` may
        not see (the same answer: an id is never confirmed to a key that does not own it)."""
        agent = self.runtime.live.get(agent_id)
        if agent is not None:
            _visible(agent, viewer)  # memory answers: no read for the check
            return await self._settled(agent)

        cipher = self.store.cipher
        found = await self.store.read(lambda conn: agent_record.load(conn, agent_id, cipher))
        if found is None:
            raise _not_found(agent_id)
        _visible(found, viewer)
        return found

    async def status(self, agent_id: str, viewer: Viewer | None) -> dict[str, Any]:
        agent = await self._load(agent_id, viewer)
        view = agent.status_view()
        view["fallbacks"] = self.fallbacks_taken(agent)
        if agent.kind == KIND_TEAM:
            rows = await self.store.read(lambda conn: agent_record.members(conn, agent_id))
            live = self.runtime.live

            def member_status(row: sqlite3.Row) -> str:
                # Memory is newer for a live member, except an end still being written: the row
                # (with its cost) says "completed" only once it is committed (see _settled).
                agent = live.get(row["agent_id"])
                return agent.status if agent is not None and agent.status not in TERMINAL else row["status"]

            view["models"] = self.member_labels(r["model"] for r in rows)
            view["members"] = [
                {"agent_id": r["agent_id"], "model": r["model"], "status": member_status(r),
                 "cost": money(r["cost"])}
                for r in rows
            ]
        return view

    async def deliveries(self, agent_id: str, viewer: Viewer | None) -> dict[str, Any]:
        """The webhook deliveries of the agent's events (to the webhooks ``viewer`` may see)."""
        agent = await self._load(agent_id, viewer)
        if self.webhooks is None:
            return {"agent_id": agent_id, "data": []}
        # Its events are written at spawn and at its end; the margin covers the write's delay.
        hi = (agent.completed_at if agent.completed_at is not None else self.runtime.clock()) + _EVENT_MARGIN
        data = await self.webhooks.for_agent(agent.agent_id, agent.api_key, agent.created_at - _EVENT_MARGIN, hi,
                                             viewer)
        return {"agent_id": agent_id, "data": data}

    def fallbacks_taken(self, agent: Agent) -> list[str] | None:
        """The models it fell back to, in order, to reach the one that answered ([]: the one
        asked for answered).  None when no model answered (failed, cancelled, still live):
        a failed agent's ``error`` names each model tried and why it gave up."""
        if agent.served_model is None:
            return None
        chain = worstcase.fallback_chain(self.config.models, agent.model)
        if agent.served_model not in chain:  # the config changed since (a model or fallback removed)
            return [agent.served_model] if agent.served_model != agent.model else []
        return chain[1:chain.index(agent.served_model) + 1]

    async def list(self, params: dict[str, str], viewer: Viewer | None) -> dict[str, Any]:
        q = agent_query.parse(params, viewer)

        cipher = self.store.cipher
        page = await self.store.read(lambda conn: agent_record.page(conn, q, cipher))
        live = self.runtime.live
        data = [(live.get(a.agent_id) or a).list_view() for a in page.agents]
        # The next page's cursor (agent_cursor.py): after this page's last agent, or where the
        # caller's cursor stood when nothing came after it.
        cursor = agent_cursor.encode(page.last, q.listing) if page.last is not None else params.get("cursor")
        return {"data": data, "total": page.total, "limit": q.limit, "offset": page.offset, "cursor": cursor,
                "meta": {"total_cost": round(page.total_cost, 6), "by_model": page.by_model}}

    async def active(self, viewer: Viewer | None) -> dict[str, Any]:
        """The live agents ``viewer`` may see; ``total_cost_today`` is the daemon's spend for
        a viewer that sees every key's work, else the viewer's key's own (from the ledger)."""
        agents = sorted((a for a in self.runtime.live.values() if viewer is None or viewer.sees(a.api_key)),
                        key=lambda a: a.created_at)
        if viewer is None or viewer.sees_all:
            today = self.budget.snapshot()["today_spend"]
        else:
            owners, midnight = viewer.owners, self.runtime.clock() // 86_400 * 86_400
            today = await self.store.read(lambda conn: ledger.key_spend_since(conn, owners, midnight))
        return {"agents": [a.active_view() for a in agents], "count": len(agents), "total_cost_today": today}

    def _changeable(self, agent: Agent, viewer: Viewer | None) -> None:
        """404 for an agent ``viewer`` may not see, 403 for one it sees but may not change
        (another key's, to a key with admin:read but not admin:write)."""
        _visible(agent, viewer)
        if viewer is not None and not viewer.changes(agent.api_key):
            raise Forbidden(f"Agent '{agent.agent_id}' belongs to another key; changing it needs admin:write")

    async def cancel(self, agent_id: str, viewer: Viewer | None) -> dict[str, Any]:
        agent = self.runtime.live.get(agent_id)
        if agent is None or agent.status in TERMINAL:
            # Unknown (404), finished, or finishing right now (its final write is in flight,
            # or a concurrent cancel got there first): nothing left to cancel.
            finished = await self._load(agent_id, viewer)
            self._changeable(finished, viewer)
            raise Conflict(f"Agent '{agent_id}' already {finished.status}; nothing to cancel",
                           status=finished.status)
        self._changeable(agent, viewer)
        refund = await self.runtime.cancel(agent)
        if agent.status != CANCELLED:  # it completed or failed while we were cancelling it
            raise Conflict(f"Agent '{agent_id}' already {agent.status}; nothing to cancel", status=agent.status)
        return {"success": True, "message": "Agent cancelled", "agent_id": agent_id, "refund": refund}

    # -- privacy -------------------------------------------------------------------------------
    async def delete_data(self, agent_id: str, viewer: Viewer | None) -> dict[str, Any]:
        """Erase a finished agent's task and result now (its cost record stays: money is never lost)."""
        live = self.runtime.live.get(agent_id)
        if live is not None:
            self._changeable(live, viewer)  # another key's live agent: 404 before any word of its state
            raise Conflict(f"Agent '{agent_id}' is still {live.status}; cancel it first")
        agent = await self._load(agent_id, viewer)  # 404 when unknown or not the viewer's
        self._changeable(agent, viewer)
        now = self.runtime.clock()
        await self.store.write(agent_record.erase_data(agent.agent_id, now), fail_fast=True)
        return {"success": True, "message": "Agent data deleted", "agent_id": agent_id}

    async def purge_expired(self) -> None:
        """Retention: erase task and result of agents finished longer ago than their retention."""
        now = self.runtime.clock()
        await self.store.write(agent_record.purge_expired(now, self.config.privacy.retention_days))

    async def run_times(self, alias: str, since: float) -> Sequence[tuple[str, float | None]]:
        """(status, run time in s) of each agent (not a team) that ``alias`` served and that
        completed or failed since ``since``: run start (else creation) to finish."""
        return await self.store.read(lambda conn: agent_record.run_times(conn, alias, since))

    # -- start-up ----------------------------------------------------------------------------
    async def recover(self) -> dict[str, int]:
        cipher = self.store.cipher

        def read(conn: sqlite3.Connection) -> tuple[list[Agent], dict[str, list[Agent]], str | None]:
            live = agent_record.live(conn, cipher)
            # A live agent's ledger rows are calls billed although they failed: what it has spent.
            billed = ledger.billed_by_agent(conn, [a.agent_id for a in live])
            for a in live:
                a.billed, cut[a.agent_id] = billed.get(a.agent_id, (0.0, 0.0))
            teams = {a.agent_id: a for a in live if a.kind == KIND_TEAM}
            done: dict[str, list[Agent]] = {t: [] for t in teams}
            for tid, team in teams.items():
                ids, ended = agent_record.team_on_disk(conn, tid, cipher)
                team.members.extend(ids)
                done[tid].extend(ended)
            return live, done, agent_record.greatest_id(conn)

        cut: dict[str, float] = {}  # agent_id -> what calls cut by earlier crashes were billed
        live, done, greatest = await self.store.read(read)
        self.continue_ids(greatest)
        now = self.runtime.clock()
        spent = await self.store.read(lambda conn: ledger.spend(conn, now))
        # Reservations first: agents failed during recovery settle against them.  They are the
        # worst cases under today's config, which is what the re-run calls will be sent; a team
        # holds for its members still live (those already ended are in the ledger).
        live_members = [a for a in live if a.kind == KIND_MEMBER]
        self.budget.restore(spent.today, spent.month, spent.hour_by_key,
                            live=[(a.agent_id, a.api_key, self._hold(a, live_members, cut), a.project_id)
                                  for a in live if a.kind != KIND_MEMBER])
        return await self.runtime.recover(live, done)


def _not_found(agent_id: str) -> NotFound:
    return NotFound(f"Agent '{agent_id}' not found")


def _visible(agent: Agent, viewer: Viewer | None) -> None:
    """404, worded as for an unknown id, when ``viewer`` may not see ``agent`` (None: the
    daemon itself, which sees everything)."""
    if viewer is not None and not viewer.sees(agent.api_key):
        raise _not_found(agent.agent_id)


def _urls(pairs: Iterable[tuple[Agent, str | None]]) -> dict[str, str]:
    """agent_id -> its own webhook_url, for the spawns that asked for one."""
    return {agent.agent_id: url for agent, url in pairs if url}
