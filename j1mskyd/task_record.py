"""The task records: a task, its steps, its escalations, and their public views.

The views use Kyros's field names (its API document), so that both the native API and the Kyros
dialect serve them as they are (the dialect only wraps them in its envelope).  The tables
behind these records are task_store.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .agent_record import iso, money

__all__ = [
    "AUTO_APPROVER", "AWAITING", "CANCELLED", "COMPLETED", "ESC_APPROVED", "ESC_COMPLETED", "ESC_PENDING",
    "ESC_REJECTED",
    "ESC_STATUSES", "Escalation", "FAILED", "IN_PROGRESS", "KIND_ESCALATED", "KIND_REVISE", "KIND_RUN", "PENDING",
    "PRIORITIES", "STATUSES", "Step", "Task", "TERMINAL", "TaskPriority", "TaskStatus", "escalation_view",
    "step_view", "submission_view", "task_summary", "task_view",
]

TaskStatus = Literal["pending", "in_progress", "awaiting_approval", "completed", "failed", "cancelled"]
TaskPriority = Literal["low", "medium", "high", "critical"]

PENDING: Final = "pending"
IN_PROGRESS: Final = "in_progress"
AWAITING: Final = "awaiting_approval"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
STATUSES: tuple[str, ...] = (PENDING, IN_PROGRESS, AWAITING, COMPLETED, FAILED, CANCELLED)
TERMINAL: frozenset[str] = frozenset({COMPLETED, FAILED, CANCELLED})

# Task priority -> the priority of its step agents (agent_record.PRIORITIES).
PRIORITIES: dict[str, str] = {"low": "low", "medium": "normal", "high": "high", "critical": "high"}

# Step kinds: a role's run, a re-run the critic asked for, a re-run on a stronger model.
KIND_RUN: Final = "run"
KIND_REVISE: Final = "revise"
KIND_ESCALATED: Final = "escalated"

# Escalation statuses ("auto-approved" is `approved` with approved_by "auto").
ESC_PENDING: Final = "pending_approval"
ESC_APPROVED: Final = "approved"
ESC_REJECTED: Final = "rejected"
ESC_COMPLETED: Final = "completed"
ESC_STATUSES: tuple[str, ...] = (ESC_PENDING, ESC_APPROVED, ESC_REJECTED, ESC_COMPLETED)
AUTO_APPROVER: Final = "auto"


@dataclass(slots=True, kw_only=True, eq=False)
class Step:
    """One step: a role's agent.  ``status`` is the step's own (running until the engine has
    processed its agent's end, then completed, failed or cancelled)."""

    step_id: str
    task_id: str
    seq: int                       # 1, 2, ... in the order the task ran them
    position: int                  # index of its role in the task's workflow
    role: str
    kind: str                      # run | revise | escalated
    agent_id: str
    model: str                     # the alias asked for
    status: str = "running"
    served_model: str | None = None
    esc_id: str | None = None
    selection: dict[str, Any] | None = None
    verdict: str | None = None     # approve | revise (a reviewing role's steps)
    reasons: str | None = None
    output: str | None = field(default=None, repr=False)
    cost: float | None = None
    estimated_cost: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None


@dataclass(slots=True, kw_only=True, eq=False)
class Escalation:
    esc_id: str
    task_id: str
    api_key: str                   # the task's owner (tenancy)
    target_model: str
    reason: str
    status: str
    submitted_by: str
    submitted_at: float
    role: str | None = None
    position: int | None = None    # the workflow step it re-runs
    original_model: str | None = None
    context: dict[str, Any] | None = None
    estimated_cost: float | None = None
    actual_cost: float | None = None
    priority: str | None = None
    decided_by: str | None = None
    decided_at: float | None = None
    decision_reason: str | None = None
    comments: str | None = None
    result: str | None = None
    auto: bool = False             # decided by the threshold, not a person
    manual: bool = False           # submitted by hand (POST /escalations)


@dataclass(slots=True, kw_only=True, eq=False)
class Task:
    task_id: str
    api_key: str
    title: str
    type: str
    status: str
    priority: str
    workflow: tuple[str, ...]      # the roles of its type's workflow when it was created
    created_at: float
    updated_at: float
    project_id: str | None = None
    description: str | None = field(default=None, repr=False)
    assignee_role: str | None = None
    files_to_modify: list[str] = field(default_factory=list)
    acceptance_criteria: list[str] = field(default_factory=list)
    dependencies: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    deadline: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    context: dict[str, Any] = field(default_factory=dict, repr=False)     # the submission's context
    preferences: dict[str, Any] = field(default_factory=dict)             # the submission's preferences
    results: Any = field(default=None, repr=False)
    feedback: str | None = field(default=None, repr=False)
    error: str | None = None
    position: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    # Read with the task, not columns of its row.
    steps: list[Step] = field(default_factory=list)
    escalations: list[Escalation] = field(default_factory=list)

    @property
    def current(self) -> Step | None:
        """The step running now (None: none is)."""
        last = self.steps[-1] if self.steps else None
        return last if last is not None and last.status == "running" else None


# -- views ---------------------------------------------------------------------------------
def progress(task: Task) -> dict[str, Any]:
    """completed_steps of the workflow's total, percentage, and the role at work (or null)."""
    total = len(task.workflow)
    done = total if task.status == COMPLETED else min(task.position, total)
    current = task.workflow[task.position] if task.status in (IN_PROGRESS, AWAITING) and task.position < total \
        else None
    return {"completed_steps": done, "total_steps": total,
            "percentage": round(done * 100 / total) if total else 0, "current_step": current}


def _cost(task: Task) -> dict[str, float]:
    estimated = sum(s.estimated_cost for s in task.steps)
    charged = sum(s.cost or 0.0 for s in task.steps if s.status != "running")
    refunded = sum(max(s.estimated_cost - (s.cost or 0.0), 0.0) for s in task.steps if s.status == "cancelled")
    return {"estimated": money(estimated), "charged": money(charged), "refunded": money(refunded)}


def task_summary(task: Task) -> dict[str, Any]:
    """A task in a listing, and the data of task.* events."""
    return {"id": task.task_id, "title": task.title, "status": task.status, "type": task.type,
            "priority": task.priority, "assignee_role": task.assignee_role, "created_at": iso(task.created_at),
            "updated_at": iso(task.updated_at), "deadline": iso(task.deadline), "progress": progress(task)}


def step_view(step: Step, live: Any = None) -> dict[str, Any]:
    """``live``: the step's agent while it runs (its status), else None."""
    ended = step.ended_at
    started = step.started_at if step.started_at is not None else getattr(live, "started_at", None)
    return {"id": step.step_id, "seq": step.seq, "role": step.role, "kind": step.kind, "agent_id": step.agent_id,
            "status": getattr(live, "status", None) or step.status, "model": step.model,
            "served_model": step.served_model, "selection": step.selection, "verdict": step.verdict,
            "reasons": step.reasons, "cost": money(step.cost), "estimated_cost": money(step.estimated_cost),
            "input_tokens": step.input_tokens, "output_tokens": step.output_tokens,
            "started_at": iso(started), "ended_at": iso(ended),
            "duration_s": round(ended - started, 3) if ended is not None and started is not None else None,
            "output": step.output, "error": step.error, "escalation_id": step.esc_id}


def task_view(task: Task, live: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole task; ``live``: agent id -> the live agent, for the running step's status."""
    live = live or {}
    current = task.current
    ended = [s for s in task.steps if s.status != "running"]
    served = next((s.served_model for s in reversed(ended) if s.served_model), None)
    cost = _cost(task)
    hours = ((task.ended_at or task.updated_at) - task.started_at) / 3600 if task.started_at is not None else 0.0
    metadata = {**task.metadata, "actual_hours": round(hours, 4), "model_used": served, "cost": cost["charged"]}
    return {
        "id": task.task_id, "title": task.title, "description": task.description, "type": task.type,
        "status": task.status, "priority": task.priority, "assignee_role": task.assignee_role,
        "created_at": iso(task.created_at), "updated_at": iso(task.updated_at), "created_by": task.api_key,
        "assigned_to": current.agent_id if current is not None else None,
        "files_to_modify": task.files_to_modify, "acceptance_criteria": task.acceptance_criteria,
        "dependencies": task.dependencies, "tags": task.tags, "deadline": iso(task.deadline),
        "progress": progress(task), "results": task.results, "feedback": task.feedback, "error": task.error,
        "metadata": metadata, "cost": cost, "workflow": list(task.workflow),
        "steps": [step_view(s, live.get(s.agent_id)) for s in task.steps],
        "escalations": [escalation_view(e) for e in task.escalations],
    }


def escalation_view(esc: Escalation) -> dict[str, Any]:
    decided = esc.status in (ESC_APPROVED, ESC_COMPLETED)
    return {
        "escalation_id": esc.esc_id, "task_id": esc.task_id, "status": esc.status, "role": esc.role,
        "original_model": esc.original_model, "target_model": esc.target_model, "reason": esc.reason,
        "context": esc.context, "priority": esc.priority, "submitted_at": iso(esc.submitted_at),
        "submitted_by": esc.submitted_by, "approval_required": not esc.auto,
        "approved_at": iso(esc.decided_at) if decided else None,
        "approved_by": esc.decided_by if decided else None,
        "decided_at": iso(esc.decided_at), "decided_by": esc.decided_by,
        "decision_reason": esc.decision_reason, "approver_comments": esc.comments,
        "estimated_cost": money(esc.estimated_cost), "actual_cost": money(esc.actual_cost), "result": esc.result,
        "workflow_id": esc.task_id,
    }


def submission_view(task: Task, step: Step, estimated_duration: float) -> dict[str, Any]:
    """The answer to a submission (POST /tasks/{id}/submit, Kyros /agents/{role}/submit)."""
    return {"submission_id": "sub_" + step.step_id.removeprefix("step_"), "task_id": task.task_id,
            "role": step.role, "agent_id": step.agent_id, "status": "accepted",
            "estimated_duration": round(estimated_duration), "model_assigned": step.model,
            "submitted_at": iso(step.created_at)}
