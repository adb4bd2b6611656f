"""TaskService: tasks that pass through roles, one step agent at a time (docs/tasks.md).

A task's type names a workflow (``[workflows.<type>]``): its roles in order.  Each step is an
ordinary agent (kind ``agent``: listed, billed, reserved, retried, recovered like any other),
spawned through ``AgentService.store_and_admit`` with the step's row, the task's new state and
the event announcing it in the SAME transaction, so a crash never loses nor doubles a step.
When a step's agent ends (``runtime.wait``), the engine, under the task's lock, writes the
step's end together with what follows in one unit: the next step, a revision the reviewing
role asked for, an escalation to a stronger model, or the task's end.

Durability: the only state is the database's.  A step stays ``running`` until its agent's
end has been processed, so at start (:meth:`recover`, after the agents were recovered) a step
whose agent ended while the daemon was down is processed then, a step whose agent was re-queued
is awaited, and an escalation decided meanwhile (by another process) is carried out.

Configuration is read through the ``config`` callable at each use, never copied, so that a
reload swaps roles, workflows and ``[tasks]`` for the next step; role changes made over the
API (``settings`` ``role.<name>``) stay on top of the file's values.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
import re
import secrets
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import agent_record, jsonx, settings, task_store
from .agent_record import Agent, KIND_AGENT, SPAWNING, money
from .agents import AgentService
from .audit import Actor, AuditLog
from .budget import Budget
from .config import Config, role_issues
from .errors import ApiError, Conflict, Forbidden, NotFound, ValidationFailed
from .events import Event, EventLog
from .request_fields import changed
from .runtime import AgentRuntime
from .store import Statement, Store
from .task_config import RoleConfig, by_price, price
from .task_record import (
    AUTO_APPROVER, AWAITING, CANCELLED, COMPLETED, ESC_APPROVED, ESC_COMPLETED, ESC_PENDING, ESC_REJECTED, FAILED,
    IN_PROGRESS, KIND_ESCALATED, KIND_REVISE, KIND_RUN, PENDING, PRIORITIES, TERMINAL, Escalation, Step, Task,
    escalation_view, step_view, submission_view, task_summary, task_view)
from .task_request import (EscalationQuery, EscalationRequest, ModelSelection, StepPreferences, TaskQuery,
                           TaskRequest, TaskUpdate)
from .task_store import ESCALATIONS, STEPS, TASKS
from .tenancy import Viewer

__all__ = ["ROLE_SETTING", "TaskService", "VERDICT_REQUEST", "parse_verdict"]

log = logging.getLogger(__name__)
Statements = list[Statement]   # a unit's statements, gathered as the engine decides
Events = list[Event]           # the events those statements store, told once they commit

ROLE_SETTING = "role."   # settings name prefix of a role changed over the API: role.<name> -> JSON
_VERDICT = re.compile(r"^\s*VERDICT:\s*(APPROVE|REVISE)\b(.*)$", re.IGNORECASE)
NO_VERDICT = "the critic gave no verdict"
# The last lines of a reviewing step's prompt (builtin_plugins/offline.py answers them).
VERDICT_REQUEST = ("End your answer with one last line: \"VERDICT: APPROVE\" when the work meets the task and its "
                   "acceptance criteria, or \"VERDICT: REVISE: <reasons>\" when it must be redone.")
_OUTPUT_CHARS = 4000     # of each earlier step's output quoted in a step's prompt
_SECURITY_WORDS = frozenset({"security", "auth", "authentication", "authorization", "crypto", "secrets", "oauth",
                             "saml", "jwt", "encryption", "pii", "payments"})


def parse_verdict(output: str | None) -> tuple[str, str | None]:
    """("approve", None) or ("revise", reasons) from a reviewing step's answer: its last line
    matching ``VERDICT: APPROVE`` or ``VERDICT: REVISE[: reasons]`` (any case); none: revise,
    "the critic gave no verdict"."""
    for line in reversed((output or "").splitlines()):
        m = _VERDICT.match(line)
        if m is None:
            continue
        if m.group(1).upper() == "APPROVE":
            return "approve", None
        reasons = m.group(2).strip().lstrip(":").strip()
        return "revise", reasons or "the critic asked for a revision without reasons"
    return "revise", NO_VERDICT


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``patch`` over ``base``; the nested tables (escalation, constraints) key by key."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _role_table(role: RoleConfig) -> dict[str, Any]:
    """A role as its ``[roles.<name>]`` table (the base a change at run time is merged over)."""
    esc = role.escalation
    return {"default_model": role.default_model, "models": list(role.models), "capabilities": list(role.capabilities),
            "temperature": role.temperature, "max_tokens": role.max_tokens, "timeout": role.timeout,
            "escalation": {k: v for k, v in dataclasses.asdict(esc).items() if v is not None},
            "constraints": dict(role.constraints), "enabled": role.enabled, "review": role.review}


class TaskService:
    def __init__(self, config: Callable[[], Config], store: Store, agents: AgentService, runtime: AgentRuntime,
                 events: EventLog, audit: AuditLog, budget: Budget,
                 clock: Callable[[], float] | None = None) -> None:
        """``config``: the current configuration, asked at each use (a reload replaces it)."""
        self._config = config
        self.store = store
        self.agents = agents
        self.runtime = runtime
        self.events = events
        self.audit = audit
        self.budget = budget
        self.clock = clock if clock is not None else runtime.clock
        self.live: dict[str, Task] = {}            # tasks not yet ended, as last committed
        self._locks: dict[str, asyncio.Lock] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}  # step agent id -> its watcher
        self._overrides: dict[str, dict[str, Any]] = {}     # role -> its change over the API
        self._roles_cache: tuple[Any, ...] | None = None

    # -- configuration -----------------------------------------------------------------------
    @property
    def config(self) -> Config:
        return self._config()

    def _roles(self) -> Mapping[str, RoleConfig]:
        """The roles in effect: the config's, each with its change over the API on top."""
        config = self.config
        key = (id(config.roles), id(config.models), tuple(sorted((k, id(v)) for k, v in self._overrides.items())))
        if self._roles_cache is not None and self._roles_cache[0] == key:
            return self._roles_cache[1]  # type: ignore[no-any-return]
        roles = dict(config.roles)
        for name, patch in self._overrides.items():
            if name not in roles:
                continue
            role, issues = role_issues(name, _merge(_role_table(roles[name]), patch), config.models)
            if role is None:  # the file changed under the override (a model removed): the file wins
                log.warning("role %s: its change over the API no longer fits the config (%s); using the file's",
                            name, "; ".join(f"{i.key}: {i.reason}" for i in issues))
                continue
            roles[name] = role
        frozen = types.MappingProxyType(roles)
        self._roles_cache = (key, frozen)
        return frozen

    def _role(self, name: str) -> RoleConfig:
        role = self._roles().get(name)
        if role is None:
            raise NotFound(f"Role '{name}' not found; roles: {', '.join(self._roles())}")
        return role

    def _max_revisions(self, role: RoleConfig) -> int:
        value = role.escalation.max_revisions
        return self.config.tasks.max_revisions if value is None else value

    def _threshold(self, role: RoleConfig) -> float:
        value = role.escalation.cost_threshold
        return self.config.tasks.approval_threshold if value is None else value

    async def load(self) -> None:
        """The role changes made over the API (start-up)."""
        stored = await self.store.read(lambda conn: settings.with_prefix(conn, ROLE_SETTING))
        for name, text in stored.items():
            try:
                patch = jsonx.loads(text)
            except ValueError:
                log.error("setting %s is not JSON; ignored", name)
                continue
            if isinstance(patch, dict):
                self._overrides[name[len(ROLE_SETTING):]] = patch

    # -- roles ----------------------------------------------------------------------------------
    def _role_view(self, role: RoleConfig) -> dict[str, Any]:
        esc = role.escalation
        return {"role": role.name, "enabled": role.enabled, "default_model": role.default_model,
                "available_models": list(role.models), "capabilities": list(role.capabilities),
                "preferences": {"temperature": role.temperature, "max_tokens": role.max_tokens,
                                "timeout": role.timeout},
                "constraints": dict(role.constraints),
                "escalation_rules": {"security_threshold": esc.security_threshold,
                                     "complexity_threshold": esc.complexity_threshold,
                                     "business_impact_threshold": esc.business_impact_threshold,
                                     "cost_threshold": self._threshold(role),
                                     "max_revisions": self._max_revisions(role)},
                "review": role.review, "changed_at_runtime": role.name in self._overrides,
                "workflows": [t for t, steps in self.config.workflows.items() if role.name in steps]}

    async def roles(self) -> builtins.list[dict[str, Any]]:
        return [self._role_view(r) for r in self._roles().values()]

    async def role(self, name: str) -> dict[str, Any]:
        return self._role_view(self._role(name))

    async def update_role(self, name: str, patch: dict[str, Any], actor_key_id: str) -> dict[str, Any]:
        """Change a role at run time: ``patch`` holds ``[roles.<name>]`` keys (task_request.
        parse_role_patch), merged over the earlier changes and checked with the config file's
        own validator; stored in ``settings`` (``role.<name>``), audited, in effect for the
        next step."""
        config = self.config
        if name not in config.roles:
            raise NotFound(f"Role '{name}' not found; roles: {', '.join(config.roles)}")
        merged = _merge(self._overrides.get(name, {}), patch)
        role, issues = role_issues(name, _merge(_role_table(config.roles[name]), merged), config.models)
        if role is None:
            raise ValidationFailed([{"field": _as_sent(i.key.removeprefix(f"roles.{name}."), patch),
                                     "message": i.reason} for i in issues])
        await self.store.write(settings.put(ROLE_SETTING + name, jsonx.compact(merged), self.clock()),
                               fail_fast=True)
        self._overrides[name] = merged
        self.audit.record("config.change", Actor(api_key_id=actor_key_id), resource_type="role", resource_id=name,
                          details={"change": patch})
        return self._role_view(self._role(name))

    async def workflows(self) -> dict[str, builtins.list[str]]:
        return {kind: list(steps) for kind, steps in self.config.workflows.items()}

    async def role_status(self, name: str, viewer: Viewer) -> dict[str, Any]:
        """The role's live steps and today's figures (UTC day): of the steps ``viewer`` may see."""
        role = self._role(name)
        now = self.clock()
        midnight = now // 86_400 * 86_400
        owners = None if viewer.sees_all else viewer.owners
        cipher = self.store.cipher
        steps = await self.store.read(lambda conn: task_store.role_steps(conn, name, midnight, owners, cipher))
        active = queued = 0
        for task in self.live.values():
            cur = task.current
            if cur is None or cur.role != name or not viewer.sees(task.api_key):
                continue
            agent = self.runtime.live.get(cur.agent_id)
            if agent is not None and agent.status == "running":
                active += 1
            else:
                queued += 1
        ended = [s for s in steps if s.status in (COMPLETED, FAILED)]
        done = [s for s in ended if s.status == COMPLETED]
        times = [s.ended_at - s.started_at for s in done if s.ended_at is not None and s.started_at is not None]
        models: dict[str, int] = {}
        for s in steps:
            label = s.served_model or s.model
            models[label] = models.get(label, 0) + 1
        cost = sum(s.cost or 0.0 for s in steps)
        tasks = {s.task_id for s in steps}
        return {"role": name, "available_agents": len(role.models), "active_tasks": active, "queue_length": queued,
                "average_response_time": round(sum(times) / len(times), 3) if times else None,
                "success_rate": round(len(done) * 100 / len(ended), 2) if ended else None,
                "current_models": {m: round(n * 100 / len(steps), 2) for m, n in models.items()},
                "performance": {"tasks_completed_today": len({s.task_id for s in done}),
                                "average_task_duration": round(sum(times) / len(times), 3) if times else None,
                                "cost_per_task": money(cost / len(tasks)) if tasks else None}}

    # -- model choice -------------------------------------------------------------------------------
    def _signals(self, text: str, files: Sequence[str], criteria: Sequence[str], tags: Sequence[str],
                 metadata: Mapping[str, Any], priority: str | None) -> dict[str, Any]:
        """Kyros's selection reasons from what a task says about itself."""
        words = {w.lower() for w in tags} | {w.lower() for w in re.findall(r"[A-Za-z]+", text)}
        sensitive = metadata.get("security_sensitive")
        security = sensitive if isinstance(sensitive, bool) else bool(words & _SECURITY_WORDS)
        declared = metadata.get("complexity")
        score = 0.1 + min(0.3, 0.03 * len(files)) + min(0.2, 0.04 * len(criteria)) + min(0.2, len(text) / 10_000)
        score += {"high": 0.3, "medium": 0.1}.get(declared, 0.0) if isinstance(declared, str) else 0.0
        for key in ("service_count", "file_count"):
            n = metadata.get(key)
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                score += 0.03 * min(n, 5)  # capped before the product: a huge JSON int overflows a float
        critical = metadata.get("business_critical") is True or priority == "critical"
        impact = "high" if critical else "medium" if priority == "high" else "low"
        return {"security_sensitive": security, "complexity_score": round(min(score, 1.0), 2),
                "business_impact": impact}

    def _choose(self, role: RoleConfig, signals: dict[str, Any], text: str, budget_remaining: float | None
                ) -> tuple[str, dict[str, Any]]:
        """The role's default model, or the next stronger allowed one when a signal passes the
        role's threshold and the budget left pays for it."""
        esc = role.escalation
        impact = {"high": 0.9, "medium": 0.5, "low": 0.2}[signals["business_impact"]]
        why = [name for name, hit in (("security_sensitive", signals["security_sensitive"]
                                       and esc.security_threshold <= 1.0),
                                      ("complexity", signals["complexity_score"] >= esc.complexity_threshold),
                                      ("business_impact", impact >= esc.business_impact_threshold)) if hit]
        model = role.default_model
        because = "the role's default model"
        if why:
            stronger = self._stronger(role, model)
            if stronger is not None:
                cost = self.agents.estimate(stronger, text)
                if budget_remaining is None or cost <= budget_remaining:
                    model, because = stronger, f"stronger than the default for {', '.join(why)}"
                else:
                    because = f"the role's default model: the budget left cannot pay for {stronger}"
        reasons = {**signals, "budget_remaining": budget_remaining, "chosen_because": because}
        return model, reasons

    def _stronger(self, role: RoleConfig, model: str) -> str | None:
        """The next model among the role's allowed ones, ordered by price, above ``model``."""
        models = self.config.models
        if model not in models:
            return None
        floor = price(models[model])
        for alias in by_price(list(role.models), models):
            if alias != model and alias in models and price(models[alias]) > floor:
                return alias
        return None

    def _budget_remaining(self) -> float | None:
        remaining = self.budget.snapshot().get("budget_remaining")
        return float(remaining) if isinstance(remaining, (int, float)) else None

    def select_step_model(self, task: Task, role: RoleConfig, budget_remaining: float | None
                          ) -> tuple[str, dict[str, Any]]:
        """(alias, reasons) for a step of ``task`` in ``role``."""
        signals = self._signals(f"{task.title}\n{task.description or ''}", task.files_to_modify,
                                task.acceptance_criteria, task.tags, task.metadata, task.priority)
        return self._choose(role, signals, f"{task.title}\n{task.description or ''}", budget_remaining)

    async def select_model(self, req: ModelSelection) -> dict[str, Any]:
        """Kyros's POST /models/select: the model the first role of ``task_type``'s workflow (or
        the implementer) would start on, why, and what it would cost."""
        roles = self._roles()
        steps = self.config.workflows.get(req.task_type or "", ())
        names: builtins.list[str | None] = [*steps[:1], *(["implementer"] if "implementer" in roles else []), *roles]
        name = next(iter(names), None)
        if name is None:
            raise ValidationFailed([{"field": "task_type", "message": "no role is configured"}])
        role = roles[name]
        indicators = {**req.complexity_indicators}
        priority = "critical" if indicators.get("business_critical") is True else None
        signals = self._signals(req.task_description, req.files_to_modify, (), (), indicators, priority)
        remaining = req.budget_remaining if req.budget_remaining is not None else self._budget_remaining()
        model, reasons = self._choose(role, signals, req.task_description, remaining)
        cost = self.agents.estimate(model, req.task_description)
        fallback = self.config.models[model].fallback if model in self.config.models else None
        better = self._stronger(role, model)
        return {"selected_model": model, "role": name,
                "confidence_score": round(0.6 + 0.3 * abs(signals["complexity_score"] - 0.5), 2),
                "reasoning": {**reasons, "cost_benefit_ratio": "favorable" if model == role.default_model
                              or better is None else "acceptable"},
                "estimated_cost": money(cost), "estimated_duration": self._duration(model),
                "fallback_model": fallback or (role.default_model if model != role.default_model else None)}

    def _duration(self, model: str) -> int:
        """A rough step duration (s): the model's typical answer at ~40 tokens a second."""
        m = self.config.models.get(model)
        return round(m.typical_output_tokens / 40) if m is not None else 60

    # -- reading ----------------------------------------------------------------------------------
    async def _task(self, task_id: str, viewer: Viewer | None) -> Task:
        """The task (live from memory, else stored); 404 when unknown or not ``viewer``'s."""
        task = self.live.get(task_id)
        if task is None:
            cipher = self.store.cipher
            task = await self.store.read(lambda conn: task_store.load_task(conn, task_id, cipher))
        if task is None or (viewer is not None and not viewer.sees(task.api_key)):
            raise NotFound(f"Task '{task_id}' not found", type_="TASK_NOT_FOUND")
        return task

    def _changeable(self, task: Task, viewer: Viewer | None) -> None:
        if viewer is not None and not viewer.changes(task.api_key):
            raise Forbidden(f"Task '{task.task_id}' belongs to another key; changing it needs admin:write")

    def _view(self, task: Task) -> dict[str, Any]:
        return task_view(task, self.runtime.live)

    async def get(self, task_id: str, viewer: Viewer) -> dict[str, Any]:
        return self._view(await self._task(task_id, viewer))

    async def list(self, query: TaskQuery, viewer: Viewer) -> tuple[builtins.list[dict[str, Any]], int]:
        filters = {column: value for column, value in (
            ("status", query.status), ("type", query.type), ("priority", query.priority),
            ("assignee_role", query.assignee_role), ("api_key", query.created_by)) if value is not None}
        owners = None if viewer.sees_all else viewer.owners
        cipher = self.store.cipher
        found, total = await self.store.read(lambda conn: task_store.task_page(
            conn, filters, query.tags, query.sort_by, query.sort_order == "desc", query.limit, query.offset, owners,
            cipher))
        return [task_summary(self.live.get(t.task_id) or t) for t in found], total

    async def escalation(self, esc_id: str, viewer: Viewer) -> dict[str, Any]:
        return escalation_view(await self._escalation(esc_id, viewer))

    async def _escalation(self, esc_id: str, viewer: Viewer | None) -> Escalation:
        cipher = self.store.cipher
        esc = await self.store.read(lambda conn: task_store.load_escalation(conn, esc_id, cipher))
        if esc is None or (viewer is not None and not viewer.sees(esc.api_key)):
            raise NotFound(f"Escalation '{esc_id}' not found")
        return esc

    async def escalations(self, query: EscalationQuery, viewer: Viewer) -> tuple[builtins.list[dict[str, Any]], int]:
        owners = None if viewer.sees_all else viewer.owners
        cipher = self.store.cipher
        found, total = await self.store.read(lambda conn: task_store.escalation_page(
            conn, query.status, query.task_id, query.from_date, query.to_date, query.limit, query.offset, owners,
            cipher))
        return [escalation_view(e) for e in found], total

    async def costs(self, period_seconds: float, group_by: str, viewer: Viewer) -> dict[str, Any]:
        """What task steps cost since ``period_seconds`` ago, by model, role, task_type or user
        (the key that created the task): cost, percentage of the total, tasks."""
        since = self.clock() - period_seconds
        owners = None if viewer.sees_all else viewer.owners
        rows = await self.store.read(lambda conn: task_store.cost_rows(conn, group_by, since, owners))
        total = sum(cost for _, cost, _ in rows)
        return {"period_seconds": period_seconds, "group_by": group_by, "total_cost": money(total),
                "cost_breakdown": {f"by_{group_by}": {
                    name: {"cost": money(cost), "percentage": round(cost * 100 / total, 2) if total else 0.0,
                           "tasks": n} for name, cost, n in rows}}}

    # -- writing helpers ----------------------------------------------------------------------------
    def _lock(self, task_id: str) -> asyncio.Lock:
        lock = self._locks.get(task_id)
        if lock is None:
            lock = self._locks[task_id] = asyncio.Lock()
        return lock

    def _event(self, type_: str, task: Task, data: dict[str, Any] | None = None
               ) -> tuple[Event, Statements]:
        return self.events.statements(type_, data if data is not None else task_summary(task), task.api_key)

    def _progress(self, task: Task, step: Step) -> tuple[Event, Statements]:
        summary = task_summary(task)
        # The step without its output: events stay small (GET /tasks/{id} has the outputs).
        data = {**summary, "task_id": task.task_id, "current_step": summary["progress"]["current_step"],
                "step": {k: v for k, v in step_view(step).items() if k != "output"}}
        return self._event("task.progress", task, data)

    async def _commit(self, task: Task, statements: Statements, events: Events, *, fail_fast: bool = False
                      ) -> Task:
        """Write a unit; once committed, ``task`` is the task's state and the events are told.
        ``fail_fast``: a client's own change, which must not hang on a full disk (507 at once);
        the engine's own steps wait for space, like an agent's result."""
        await self.store.write(*statements, fail_fast=fail_fast)
        self._committed(task, events)
        return task

    def _committed(self, task: Task, events: Sequence[Event]) -> None:
        if task.status in TERMINAL:
            self.live.pop(task.task_id, None)
        else:
            self.live[task.task_id] = task
        self.events.published(events)

    # -- the prompt ------------------------------------------------------------------------------------
    def _prompt(self, task: Task, role: RoleConfig, position: int, revise: str | None) -> str:
        """A step's prompt: the task, what the earlier roles answered, and what is asked of this one."""
        lines = [f"You are the {role.name} of a team working on a task"
                 + (f" (your capabilities: {', '.join(role.capabilities)})." if role.capabilities else "."),
                 f"Task type: {task.type}.  Priority: {task.priority}.", f"Title: {task.title}"]
        if task.description:
            lines.append(f"Description:\n{task.description}")
        if task.files_to_modify:
            lines.append("Files to modify:\n" + "\n".join(f"- {f}" for f in task.files_to_modify))
        if task.acceptance_criteria:
            lines.append("Acceptance criteria:\n" + "\n".join(f"- {c}" for c in task.acceptance_criteria))
        if task.context:
            lines.append("Submission context:\n" + jsonx.compact(task.context))
        latest: dict[int, Step] = {}
        for s in task.steps:
            if s.status == COMPLETED and s.position < position:
                latest[s.position] = s
        for pos in sorted(latest):
            s = latest[pos]
            lines.append(f"Output of the {s.role} (step {s.seq}):\n{(s.output or '')[:_OUTPUT_CHARS]}")
        if revise is not None:
            lines.append(f"A reviewer asked for a revision of your earlier work: {revise}\nRedo it accordingly.")
        lines.append(f"Do the {role.name}'s part of this task now.")
        if role.review and position > 0:
            lines.append(VERDICT_REQUEST)
        return "\n\n".join(lines)

    # -- the engine: starting steps ------------------------------------------------------------------
    def _unused_approval(self, task: Task, position: int) -> Escalation | None:
        """An approved manual escalation of ``position`` that no step carried out yet."""
        used = {s.esc_id for s in task.steps if s.esc_id}
        for esc in task.escalations:
            # position None: asked for while the task was pending, for whichever step it starts at
            if esc.manual and esc.status == ESC_APPROVED and esc.position in (position, None) \
                    and esc.esc_id not in used:
                return esc
        return None

    def _last_at(self, task: Task, position: int) -> Step | None:
        return next((s for s in reversed(task.steps) if s.position == position), None)

    async def _start_step(self, task: Task, position: int, kind: str, *, before: Statements | None = None,
                          events: Events | None = None, esc: Escalation | None = None,
                          reasons: str | None = None, changes: dict[str, Any] | None = None) -> tuple[Task, Step]:
        """Spawn the step at ``position`` with ``before`` (the statements of what led here) in one
        transaction; raises what the spawn raised (budget, key limits: nothing written)."""
        config = self.config
        if len(task.steps) >= config.tasks.max_steps:
            raise _StepRefused(f"the task reached [tasks] max_steps ({config.tasks.max_steps} steps)")
        role = self._roles().get(task.workflow[position])
        if role is None:
            raise _StepRefused(f"role '{task.workflow[position]}' is no longer configured")
        if not role.enabled:
            raise _StepRefused(f"role '{role.name}' is disabled (enabled = false)")
        now = self.clock()
        previous = self._last_at(task, position)
        selection: dict[str, Any] | None = None
        if esc is None and kind == KIND_RUN:
            esc = self._unused_approval(task, position)
            if esc is not None:
                kind = KIND_ESCALATED
        base = dataclasses.replace(task, **(changes or {}))
        prefs = base.preferences
        if esc is not None:
            model = esc.target_model
            selection = {"chosen_because": f"escalation {esc.esc_id}", "escalation_id": esc.esc_id}
        elif kind == KIND_REVISE and previous is not None:
            model = previous.model
            selection = {"chosen_because": "a revision runs on the model of the step it revises"}
        elif prefs.get("model") and prefs.get("role") == role.name and prefs["model"] in role.models:
            model = prefs["model"]
            selection = {"chosen_because": "the submission's preferences"}
        else:
            model, selection = self.select_step_model(task, role, self._budget_remaining())
        if model not in config.models:
            raise _StepRefused(f"model '{model}' is no longer configured")
        prompt = self._prompt(base, role, position, reasons)
        # The submission's preferences for this role, else the role's own: the step agent's
        # timeout, output cap and temperature.
        own = prefs if prefs.get("role") == role.name else {}
        asked = own.get("timeout")
        timeout = float(asked) if isinstance(asked, (int, float)) else role.timeout
        max_tokens = own.get("max_tokens") if isinstance(own.get("max_tokens"), int) else role.max_tokens
        temperature = own.get("temperature") if isinstance(own.get("temperature"), (int, float)) else role.temperature
        agent = Agent(agent_id=self.agents.new_id(now), kind=KIND_AGENT, model=model, task=prompt,
                      priority=PRIORITIES.get(task.priority, "normal"),  # type: ignore[arg-type]
                      timeout=float(min(timeout, config.runtime.max_timeout)), status=SPAWNING,
                      estimated_cost=self.agents.estimate(model, prompt, max_tokens), created_at=now,
                      max_tokens=max_tokens, temperature=float(temperature) if temperature is not None else None)
        step = Step(step_id=_new_id("step"), task_id=task.task_id, seq=len(task.steps) + 1, position=position,
                    role=role.name, kind=kind, agent_id=agent.agent_id, model=model, selection=selection,
                    esc_id=esc.esc_id if esc is not None else None, estimated_cost=agent.estimated_cost,
                    created_at=now)
        new = dataclasses.replace(base, status=IN_PROGRESS, position=position, steps=[*task.steps, step],
                                  updated_at=now, started_at=task.started_at or now, error=None)
        cipher = self.store.cipher
        statements = list(before or [])
        statements += [STEPS.insert(step, cipher),
                       TASKS.update(new, ("status", "position", "updated_at", "started_at", "error",
                                          *(changes or {})), cipher)]
        told = list(events or [])
        event, stmts = self._progress(new, step)
        statements += stmts
        told.append(event)
        await self.agents.store_and_admit([agent], key_id=task.api_key, extra_statements=statements)
        self._committed(new, told)
        self._watch(new.task_id, agent.agent_id)
        return new, step

    def _watch(self, task_id: str, agent_id: str) -> None:
        """Process the step's end once its agent's final state is on disk."""
        ended = self.runtime.wait(agent_id)
        watcher = asyncio.ensure_future(self._on_end(task_id, ended))
        self._watchers[agent_id] = watcher
        watcher.add_done_callback(lambda _: self._watchers.pop(agent_id, None))

    async def _on_end(self, task_id: str, ended: asyncio.Future[Agent]) -> None:
        agent = await ended
        async with self._lock(task_id):
            try:
                await self._step_ended(task_id, agent)
            except Exception as exc:  # noqa: BLE001 - a bug must not leave the task in progress for ever
                log.exception("task %s: processing the end of step agent %s failed", task_id, agent.agent_id)
                await self._fail_unprocessed(task_id, agent, exc)

    async def _fail_unprocessed(self, task_id: str, agent: Agent, exc: Exception) -> None:
        """The task whose step end could not be processed fails saying so, instead of waiting,
        in progress, for a restart that would hit the same error again."""
        task = self.live.get(task_id)
        step = next((s for s in task.steps if s.agent_id == agent.agent_id), None) if task is not None else None
        if task is None or step is None or step.status != "running":
            return  # it was processed (the error came after the commit)
        step = self._ended_step(step, agent)
        try:
            await self._finish(self._with_step(task, step), FAILED, [STEPS.update(step, self._STEP_END,
                                                                                  self.store.cipher)], [],
                               error=f"the engine could not continue after the {step.role} step "
                                     f"({type(exc).__name__}); see the daemon's log")
        except Exception:  # noqa: BLE001 - logged; the task then waits for a restart
            log.exception("task %s: failing it after that error failed too", task_id)

    # -- the engine: a step ended ------------------------------------------------------------------------
    def _ended_step(self, step: Step, agent: Agent) -> Step:
        """The step with its agent's outcome."""
        return dataclasses.replace(
            step, status=agent.status if agent.status in (COMPLETED, FAILED, CANCELLED) else FAILED,
            served_model=agent.served_model, cost=agent.cost or 0.0, input_tokens=agent.input_tokens,
            output_tokens=agent.output_tokens, started_at=agent.started_at, output=agent.result,
            error=agent.error, ended_at=agent.completed_at if agent.completed_at is not None else self.clock())

    def _with_step(self, task: Task, step: Step) -> Task:
        return dataclasses.replace(task, steps=[step if s.step_id == step.step_id else s for s in task.steps])

    _STEP_END = ("status", "served_model", "cost", "input_tokens", "output_tokens", "started_at", "output", "error",
                 "ended_at", "verdict", "reasons")

    async def _step_ended(self, task_id: str, agent: Agent) -> None:
        """The engine's one decision: what follows the end of a step's agent."""
        task = self.live.get(task_id)
        if task is None:
            return
        step = next((s for s in task.steps if s.agent_id == agent.agent_id), None)
        if step is None or step.status != "running":
            return  # processed already
        step = self._ended_step(step, agent)
        role = self._roles().get(step.role)
        if step.status == COMPLETED and role is not None and role.review and step.position > 0:
            verdict, reasons = parse_verdict(step.output)
            step = dataclasses.replace(step, verdict=verdict, reasons=reasons)
        task = self._with_step(task, step)
        cipher = self.store.cipher
        before = [STEPS.update(step, self._STEP_END, cipher)]
        event, stmts = self._progress(task, step)
        before += stmts
        events = [event]
        if step.status != COMPLETED:
            why = step.error or f"the step's agent was {step.status}"
            await self._escalate(task, step.position, f"the {step.role} step {step.status}: {why}", before, events)
        elif step.verdict == "revise":
            await self._revise(task, step, before, events)
        else:
            await self._advance(task, step.position + 1, before, events)

    async def _advance(self, task: Task, position: int, before: Statements, events: Events) -> None:
        if position >= len(task.workflow):
            await self._finish(task, COMPLETED, before, events)
            return
        await self._start_or_fail(task, position, KIND_RUN, before, events)

    async def _start_or_fail(self, task: Task, position: int, kind: str, before: Statements,
                             events: Events, **kwargs: Any) -> None:
        """A step the engine starts; refused (budget, limits, max_steps): the task fails saying why."""
        try:
            await self._start_step(task, position, kind, before=before, events=events, **kwargs)
        except ApiError as exc:
            await self._finish(task, FAILED, before, events, error=_reason(exc))

    async def _revise(self, task: Task, critic: Step, before: Statements, events: Events) -> None:
        """The reviewer asked for a revision of the step before it: again on the same model, up
        to the revised role's max_revisions since that step last escalated; then escalate."""
        position = critic.position - 1
        role = self._roles().get(task.workflow[position])
        limit = self._max_revisions(role) if role is not None else self.config.tasks.max_revisions
        done = 0
        for s in reversed(task.steps):
            if s.position != position:
                continue
            if s.kind != KIND_REVISE:
                break
            done += 1
        if done < limit:
            await self._start_or_fail(task, position, KIND_REVISE, before, events, reasons=critic.reasons)
            return
        await self._escalate(task, position, f"the reviewer asked for a revision {done + 1} times: {critic.reasons}",
                             before, events, reasons=critic.reasons)

    async def _escalate(self, task: Task, position: int, reason: str, before: Statements, events: Events,
                        *, reasons: str | None = None) -> None:
        """Re-run the step at ``position`` on the next stronger allowed model: at once when its
        estimate is within the role's cost threshold, else after a person approves."""
        name = task.workflow[position]
        role = self._roles().get(name)
        last = self._last_at(task, position)
        current = last.model if last is not None else None
        target = self._stronger(role, current) if role is not None and current is not None else None
        if role is None or target is None:
            tried = f" (the last was {current})" if current else ""
            await self._finish(task, FAILED, before, events,
                               error=f"{reason}; no stronger model is left for the {name} role{tried}")
            return
        now = self.clock()
        estimate = self.agents.estimate(target, self._prompt(task, role, position, reasons))
        auto = estimate <= self._threshold(role)
        esc = Escalation(esc_id=_new_id("esc"), task_id=task.task_id, api_key=task.api_key, role=name,
                         position=position, original_model=current, target_model=target, reason=reason,
                         context={"trigger": "engine", "threshold": self._threshold(role)},
                         estimated_cost=money(estimate), status=ESC_APPROVED if auto else ESC_PENDING,
                         priority=task.priority, submitted_by=AUTO_APPROVER, submitted_at=now,
                         decided_by=AUTO_APPROVER if auto else None, decided_at=now if auto else None,
                         decision_reason="estimated cost within the cost threshold" if auto else None, auto=auto)
        task = dataclasses.replace(task, escalations=[*task.escalations, esc])
        statements = [*before, ESCALATIONS.insert(esc, self.store.cipher)]
        if auto:
            event, stmts = self._event("escalation.approved", task, escalation_view(esc))
            await self._start_or_fail(task, position, KIND_ESCALATED, [*statements, *stmts], [*events, event],
                                      esc=esc, reasons=reasons)
            return
        task = dataclasses.replace(task, status=AWAITING, position=position, updated_at=now)
        statements.append(TASKS.update(task, ("status", "position", "updated_at"), self.store.cipher))
        event, stmts = self._event("escalation.submitted", task, escalation_view(esc))
        await self._commit(task, [*statements, *stmts], [*events, event])

    async def _finish(self, task: Task, status: str, before: Statements, events: Events, *,
                      error: str | None = None, cancel_reason: str | None = None) -> Task:
        """End the task (one unit): its escalations settled (approved ones completed, pending ones
        rejected), its event."""
        now = self.clock()
        cipher = self.store.cipher
        changes: dict[str, Any] = {"status": status, "updated_at": now, "ended_at": now, "error": error}
        if status == COMPLETED and task.results is None:
            last = next((s for s in reversed(task.steps) if s.status == COMPLETED), None)
            changes["results"] = {"output": last.output if last is not None else None,
                                  "steps": len(task.steps)}
        statements = list(before)
        told = list(events)
        settled = []
        for esc in task.escalations:
            if esc.status == ESC_APPROVED:
                cost = sum(s.cost or 0.0 for s in task.steps if s.esc_id == esc.esc_id)
                esc = dataclasses.replace(esc, status=ESC_COMPLETED, actual_cost=money(cost),
                                          result=f"task {status}" + (f": {error}" if error else ""))
                statements.append(ESCALATIONS.update(esc, ("status", "actual_cost", "result"), cipher))
            elif esc.status == ESC_PENDING:
                why = cancel_reason and "task cancelled" or f"task {status} before a decision"
                esc = dataclasses.replace(esc, status=ESC_REJECTED, decided_at=now, decision_reason=why,
                                          result=f"task {status}")
                statements.append(ESCALATIONS.update(esc, ("status", "decided_at", "decision_reason", "result"),
                                                     cipher))
                event, stmts = self._event("escalation.rejected", task, escalation_view(esc))
                statements += stmts
                told.append(event)
            settled.append(esc)
        new = dataclasses.replace(task, escalations=settled, **changes)
        statements.append(TASKS.update(new, tuple(changes), cipher))
        data = task_summary(new) | {"error": error}
        if cancel_reason is not None:
            data["reason"] = cancel_reason
        event, stmts = self._event(f"task.{status}", new, data)
        statements += stmts
        told.append(event)
        return await self._commit(new, statements, told)

    # -- public: creating, submitting, changing --------------------------------------------------------
    async def create(self, req: TaskRequest, viewer: Viewer, *, start: bool) -> dict[str, Any]:
        """A new task (``pending``); ``start``: its workflow's first step is spawned in the same
        transaction (a budget refusal then refuses the whole request: nothing is written)."""
        workflow = self.config.workflows.get(req.type)
        if workflow is None:
            raise ValidationFailed([{"field": "type", "message": f"type must be one of: "
                                                                 f"{', '.join(self.config.workflows)}"}])
        now = self.clock()
        task = Task(task_id=_new_id("task"), api_key=viewer.key_id, title=req.title, type=req.type, status=PENDING,
                    priority=req.priority, workflow=tuple(workflow), created_at=now, updated_at=now,
                    description=req.description, assignee_role=req.assignee_role,
                    files_to_modify=list(req.files_to_modify), acceptance_criteria=list(req.acceptance_criteria),
                    dependencies=list(req.dependencies), tags=list(req.tags), deadline=req.deadline,
                    metadata=dict(req.metadata))
        statements = [TASKS.insert(task, self.store.cipher)]
        event, stmts = self._event("task.created", task)
        statements += stmts
        if not start:
            await self._commit(task, statements, [event], fail_fast=True)
            return self._view(task)
        async with self._lock(task.task_id):
            new, _ = await self._start_step(task, 0, KIND_RUN, before=statements, events=[event])
        return self._view(new)

    async def submit(self, task_id: str, role: str, context: dict[str, Any], preferences: StepPreferences,
                     viewer: Viewer) -> dict[str, Any]:
        """Hand a pending task to ``role``: its workflow starts at that role's first step."""
        async with self._lock(task_id):
            task = await self._task(task_id, viewer)
            self._changeable(task, viewer)
            if role not in task.workflow:
                raise ValidationFailed([{"field": "role", "message": f"role '{role}' is not in the {task.type} "
                                                                     f"workflow: {', '.join(task.workflow)}"}])
            conf = self._role(role)
            if preferences.model is not None and preferences.model not in conf.models:
                raise ValidationFailed([{"field": "preferences.model", "message": f"the {role} role may use only: "
                                                                                  f"{', '.join(conf.models)}"}])
            if task.status != PENDING:
                at = f" (at the {task.workflow[task.position]} step)" if task.status == IN_PROGRESS else ""
                raise Conflict(f"Task '{task_id}' is {task.status}{at}; only a pending task can be submitted",
                               status=task.status)
            prefs = {k: v for k, v in dataclasses.asdict(preferences).items() if v is not None}
            changes = {"context": dict(context), "preferences": {**prefs, "role": role} if prefs else {},
                       "assignee_role": task.assignee_role or role}
            new, step = await self._start_step(task, task.workflow.index(role), KIND_RUN, changes=changes)
        return submission_view(new, step, self._duration(step.model))

    async def update(self, task_id: str, req: TaskUpdate, viewer: Viewer) -> dict[str, Any]:
        """Change the task's own fields; ``status`` cancelled cancels it, completed ends it now
        (its running step cancelled, the results and feedback given recorded)."""
        fields = changed(req)
        fields.pop("reason", None)
        status = fields.pop("status", None)
        async with self._lock(task_id):
            task = await self._task(task_id, viewer)
            self._changeable(task, viewer)
            if status is not None and task.status in TERMINAL and status != task.status:
                raise Conflict(f"Task '{task_id}' already {task.status}", status=task.status)
            _outcome_only(task, fields)
            if status is not None and task.status not in TERMINAL:
                return self._view(await self._end_now(task, status, req.reason, fields))
            if not fields:
                return self._view(task)
            now = self.clock()
            values = {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v)
                      for k, v in fields.items()}
            new = dataclasses.replace(task, updated_at=now, **values)
            await self._commit(new, [TASKS.update(new, (*values, "updated_at"), self.store.cipher)], [],
                               fail_fast=True)
            return self._view(new)

    async def cancel(self, task_id: str, viewer: Viewer, reason: str | None) -> dict[str, Any]:
        async with self._lock(task_id):
            task = await self._task(task_id, viewer)
            self._changeable(task, viewer)
            if task.status in TERMINAL:
                raise Conflict(f"Task '{task_id}' already {task.status}; nothing to cancel", status=task.status)
            return self._view(await self._end_now(task, CANCELLED, reason, {}))

    async def _end_now(self, task: Task, status: str, reason: str | None, fields: dict[str, Any]) -> Task:
        """Cancel (or complete by hand) a live task: its running step's agent cancelled (the
        unspent reservation refunded, as for any agent), the step, escalations and task in one unit."""
        before: Statements = []
        events: Events = []
        current = task.current
        if current is not None:
            cipher, agent_id = self.store.cipher, current.agent_id
            ended = self.runtime.live.get(agent_id)
            if ended is not None:
                await self.runtime.cancel(ended)  # returns once its end is on disk
            else:  # it ended and waits for this lock to be processed
                ended = await self.store.read(lambda conn: agent_record.load(conn, agent_id, cipher))
            if ended is not None and ended.status in agent_record.TERMINAL:
                step = self._ended_step(current, ended)
                task = self._with_step(task, step)
                before.append(STEPS.update(step, self._STEP_END, cipher))
        if fields:
            values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()}
            task = dataclasses.replace(task, **values)
            before.append(TASKS.update(task, tuple(values), self.store.cipher))
        return await self._finish(task, status, before, events,
                                  cancel_reason=(reason or "cancelled by request") if status == CANCELLED else None)

    # -- escalations by hand ---------------------------------------------------------------------------
    async def submit_escalation(self, req: EscalationRequest, viewer: Viewer) -> dict[str, Any]:
        """An escalation asked for by a person: always waits for approval; once approved, the
        next run of the task's current step (or its first, for a pending task) uses the target."""
        async with self._lock(req.task_id):
            task = await self._task(req.task_id, viewer)
            self._changeable(task, viewer)
            if task.status in TERMINAL:
                raise Conflict(f"Task '{task.task_id}' already {task.status}; it cannot be escalated",
                               status=task.status)
            _none_waiting(task)
            pending = task.status == PENDING
            position = None if pending else task.position
            first = task.assignee_role if task.assignee_role in task.workflow else task.workflow[0]
            name = first if pending else task.workflow[task.position]
            role = self._roles().get(name)
            last = self._last_at(task, position) if position is not None else None
            original = req.original_model or (last.model if last is not None else
                                              role.default_model if role is not None else None)
            target = req.target_model or (self._stronger(role, original) if role is not None and original else None)
            if target is None:
                raise ValidationFailed([{"field": "target_model", "message": f"no stronger model than {original} "
                                                                             f"is allowed for the {name} role"}])
            estimate = req.estimated_cost
            if estimate is None and role is not None:
                estimate = self.agents.estimate(target, self._prompt(task, role, position or 0, None))
            now = self.clock()
            esc = Escalation(esc_id=_new_id("esc"), task_id=task.task_id, api_key=task.api_key, role=name,
                             position=position, original_model=original, target_model=target, reason=req.reason,
                             context=dict(req.context), estimated_cost=money(estimate), status=ESC_PENDING,
                             priority=req.priority or task.priority, submitted_by=viewer.key_id, submitted_at=now,
                             manual=True)
            new = dataclasses.replace(task, escalations=[*task.escalations, esc], updated_at=now)
            event, stmts = self._event("escalation.submitted", new, escalation_view(esc))
            await self._commit(new, [ESCALATIONS.insert(esc, self.store.cipher),
                                     TASKS.update(new, ("updated_at",), self.store.cipher), *stmts], [event],
                               fail_fast=True)
        return escalation_view(esc)

    async def decide(self, esc_id: str, decision: str, reason: str | None, comments: str | None,
                     viewer: Viewer) -> dict[str, Any]:
        """Approve or reject a pending escalation (the approver: ``viewer.key_id``).  The task
        waiting on it re-runs its step on the target model, or fails; in one unit."""
        found = await self._escalation(esc_id, viewer)
        async with self._lock(found.task_id):
            task = await self._task(found.task_id, None)
            esc = next((e for e in task.escalations if e.esc_id == esc_id), found)
            if esc.status != ESC_PENDING:
                raise Conflict(f"Escalation '{esc_id}' is {esc.status}; only a pending escalation can be decided",
                               status=esc.status, type_="ESCALATION_NOT_PENDING")
            now = self.clock()
            esc = dataclasses.replace(esc, status=ESC_APPROVED if decision == "approved" else ESC_REJECTED,
                                      decided_by=viewer.key_id, decided_at=now, decision_reason=reason,
                                      comments=comments)
            task = dataclasses.replace(task, escalations=[esc if e.esc_id == esc_id else e for e in task.escalations],
                                       updated_at=now)
            cipher = self.store.cipher
            before = [ESCALATIONS.update(esc, ("status", "decided_by", "decided_at", "decision_reason", "comments"),
                                         cipher)]
            event, stmts = self._event(f"escalation.{esc.status}", task, escalation_view(esc))
            before += stmts
            events = [event]
            if task.status in TERMINAL:  # stored, not live: a decision on it changes nothing else
                await self._commit(task, before, events, fail_fast=True)
            elif not esc.manual and task.status == AWAITING:
                await self._carry_out(task, esc, before, events)
            else:  # by hand: applies to the next run of its step (or was rejected)
                await self._commit(task, [*before, TASKS.update(task, ("updated_at",), cipher)], events,
                                   fail_fast=True)
            return escalation_view(esc)

    async def _carry_out(self, task: Task, esc: Escalation, before: Statements, events: Events) -> None:
        """What a decided engine escalation leads to: the step again on the target, or the end."""
        if esc.status == ESC_APPROVED:
            assert esc.position is not None
            # Escalated because the reviewer kept asking for a revision: the re-run is told what
            # it asked, as a revision and an escalation within the threshold are.
            last = task.steps[-1] if task.steps else None
            reasons = last.reasons if last is not None and last.verdict == "revise" and \
                last.position == esc.position + 1 else None
            await self._start_or_fail(task, esc.position, KIND_ESCALATED, before, events, esc=esc, reasons=reasons)
        else:
            why = f"escalation {esc.esc_id} to {esc.target_model} was rejected" + (
                f": {esc.decision_reason}" if esc.decision_reason else "")
            await self._finish(task, FAILED, before, events, error=why)

    # -- start-up and stop ---------------------------------------------------------------------------
    async def recover(self) -> dict[str, int]:
        """Continue every task not ended (after the agents were recovered): a step whose agent
        ended while the daemon was down is processed now, one re-queued is awaited, an escalation
        decided meanwhile is carried out."""
        cipher = self.store.cipher
        tasks = await self.store.read(lambda conn: task_store.live_tasks(conn, cipher))
        counts = {"tasks": len(tasks), "awaited": 0, "processed": 0, "continued": 0}
        for task in tasks:
            self.live[task.task_id] = task
        for task in tasks:
            async with self._lock(task.task_id):
                cur = task.current
                # Checked on the loop, right before waiting: a re-queued agent may have run and
                # ended since start-up (its end is then on disk, read below).
                if cur is not None and cur.agent_id in self.runtime.live:
                    self._watch(task.task_id, cur.agent_id)
                    counts["awaited"] += 1
                elif cur is not None:
                    agent_id = cur.agent_id
                    agent = await self.store.read(lambda conn: agent_record.load(conn, agent_id, cipher))
                    if agent is None:  # cannot happen (one transaction): never hang on it
                        agent = Agent(agent_id=agent_id, kind=KIND_AGENT, model=cur.model, task="",
                                      priority="normal", timeout=0, status=FAILED, estimated_cost=0.0,
                                      error="the step's agent was lost")
                    await self._step_ended(task.task_id, agent)
                    counts["processed"] += 1
                elif task.status == AWAITING:
                    esc = next((e for e in reversed(task.escalations) if not e.manual), None)
                    if esc is not None and esc.status in (ESC_APPROVED, ESC_REJECTED) and \
                            not any(s.esc_id == esc.esc_id for s in task.steps):
                        await self._carry_out(task, esc, [], [])
                        counts["continued"] += 1
        return counts

    async def stop(self) -> None:
        """Stop waiting for step agents (before the runtime stops: they are re-run at the next start)."""
        watchers = list(self._watchers.values())
        for w in watchers:
            w.cancel()
        if watchers:
            await asyncio.gather(*watchers, return_exceptions=True)


def _none_waiting(task: Task) -> None:
    """One escalation of a task waits for a person at a time: a second would ask the approver
    the same question twice (which target wins?), and approving a manual one while the engine's
    waits would change nothing the task does."""
    waiting = next((e for e in task.escalations if e.status == ESC_PENDING), None)
    if waiting is not None:
        raise Conflict(f"Task '{task.task_id}' already has escalation '{waiting.esc_id}' pending approval; "
                       "decide it first", status=task.status, escalation_id=waiting.esc_id,
                       type_="ESCALATION_PENDING")


# What a finished task still takes: its outcome.  The Kyros PUT that completes a task carries
# results and feedback, and a review's feedback may come after the end; what the task was asked to
# be (title, description, priority, tags, deadline, metadata, criteria) is history by then.
_OUTCOME = frozenset({"results", "feedback"})


def _outcome_only(task: Task, fields: Mapping[str, Any]) -> None:
    """409 naming each field other than the outcome that a change of a finished task holds."""
    if task.status not in TERMINAL:
        return
    frozen = [name for name in fields if name not in _OUTCOME]
    if frozen:
        raise Conflict(f"Task '{task.task_id}' is {task.status}: only results and feedback can change now",
                       status=task.status, details=[{"field": name, "message": f"{name} cannot change once the "
                                                                               f"task is {task.status}"}
                                                   for name in frozen])


class _StepRefused(Conflict):
    """The engine cannot start a step (max_steps, a role disabled or no longer configured, a model
    no longer configured): the task fails saying why, or a client's start is a 409."""


def _as_sent(key: str, patch: Mapping[str, Any]) -> str:
    """A role's config key as the request spelled it (task_request.RolePatch.spelled)."""
    head, dot, rest = key.partition(".")
    spelled = getattr(patch, "spelled", {})
    return spelled.get(head, head) + dot + rest


def _reason(exc: ApiError) -> str:
    return exc.message if isinstance(exc, _StepRefused) else f"a step was refused: {exc.message}"
