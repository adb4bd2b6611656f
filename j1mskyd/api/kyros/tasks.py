"""Kyros tasks, agents (roles) and escalations (the Kyros document's "Task Management", "Agent
Coordination", "Escalation API"): each handler parses with task_request.py's parsers (the
native API's), calls one TaskService method and answers in the Kyros envelope.

Two Kyros-only renderings: a task id that is not the caller's (or does not exist) is
``TASK_NOT_FOUND`` (the service says so), and an escalation that cannot be submitted or decided
in its state (the service's 409) is the document's ``ESCALATION_REJECTED`` 400.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from aiohttp import web

from ... import task_request as parse
from ...errors import ApiError, Conflict, ValidationFailed
from ...tasks import TaskService
from ..common import CONFIG, SERVICES, query_params, read_json, read_json_object, viewer
from .envelope import ok

__all__ = ["EscalationRejected", "agent_configuration", "agent_status", "approve_escalation", "cancel_task", "costs",
           "create_task", "escalation_status", "get_task", "list_escalations", "list_tasks", "select_model",
           "submit_escalation", "submit_to_agent", "update_agent_configuration", "update_task"]

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _tasks(request: web.Request) -> TaskService:
    return request.app[SERVICES].tasks  # type: ignore[no-any-return]


class EscalationRejected(ApiError):
    status = 400
    type = "ESCALATION_REJECTED"


def _escalation_route(handler: Handler) -> Handler:
    """The service's 409 (a terminal task, an escalation already decided) as ESCALATION_REJECTED."""
    @wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except Conflict as exc:
            raise EscalationRejected(exc.message, **exc.extra) from None
    return wrapped


def _page(items: list[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    return {"total": total, "limit": limit, "offset": offset, "has_more": offset + len(items) < total}


# -- tasks --------------------------------------------------------------------------------------
async def create_task(request: web.Request) -> web.Response:
    """Create a task (pending until submitted to a role; "start": true runs its workflow now)"""
    body = await read_json(request)
    req = parse.parse_task(body, request.app[CONFIG])
    start = body.get("start", False)  # the document creates pending tasks and submits them to a role
    if not isinstance(start, bool):
        raise ValidationFailed([{"field": "start", "message": "start must be true or false"}])
    view = await _tasks(request).create(req, viewer(request), start=start)
    return ok(request, {**view, "estimated_hours": view["metadata"].get("estimated_hours")}, "Task created", 201)


async def list_tasks(request: web.Request) -> web.Response:
    """The key's tasks: filters, sorting and pagination as the document's"""
    query = parse.parse_query(query_params(request))
    tasks, total = await _tasks(request).list(query, viewer(request))
    return ok(request, {"tasks": tasks, "pagination": _page(tasks, total, query.limit, query.offset)})


async def get_task(request: web.Request) -> web.Response:
    """One task: progress, steps, costs, results, escalations"""
    return ok(request, await _tasks(request).get(request.match_info["task_id"], viewer(request)))


async def update_task(request: web.Request) -> web.Response:
    """Change a task's fields; status completed or cancelled ends it"""
    req = parse.parse_update(await read_json(request), request.app[CONFIG])
    return ok(request, await _tasks(request).update(request.match_info["task_id"], req, viewer(request)),
              "Task updated")


async def cancel_task(request: web.Request) -> web.Response:
    """Cancel a task (its running step is cancelled and refunded)"""
    reason = parse.parse_cancel(await read_json_object(request, optional=True))
    return ok(request, await _tasks(request).cancel(request.match_info["task_id"], viewer(request), reason),
              "Task cancelled")


# -- agents (roles) -----------------------------------------------------------------------------
async def submit_to_agent(request: web.Request) -> web.Response:
    """Submit a pending task to a role: its workflow starts at that role"""
    sub = parse.parse_submission(await read_json(request), request.app[CONFIG], request.match_info["role"])
    if sub.task_id is None:
        raise ValidationFailed([{"field": "task_id", "message": "task_id is required"}])
    data = await _tasks(request).submit(sub.task_id, sub.role, dict(sub.context), sub.preferences, viewer(request))
    return ok(request, data, "Task submitted")


async def agent_status(request: web.Request) -> web.Response:
    """A role's live and today's figures"""
    return ok(request, await _tasks(request).role_status(request.match_info["role"], viewer(request)))


async def agent_configuration(request: web.Request) -> web.Response:
    """A role's configuration"""
    return ok(request, await _tasks(request).role(request.match_info["role"]))


# A role's keys in the config file -> Kyros's names for them (the role's view), for the fields
# the config's validator names.
_ROLE_FIELDS = {"models": "available_models", "escalation": "escalation_rules",
                "temperature": "preferences.temperature", "max_tokens": "preferences.max_tokens",
                "timeout": "preferences.timeout"}


def _kyros_field(name: str) -> str:
    head, dot, rest = name.partition(".")
    renamed = _ROLE_FIELDS.get(head)
    return name if renamed is None else renamed + dot + rest


async def update_agent_configuration(request: web.Request) -> web.Response:
    """Change a role's configuration at run time (persisted, audited)"""
    patch = parse.parse_role_patch(await read_json(request))
    try:
        view = await _tasks(request).update_role(request.match_info["role"], patch, viewer(request).key_id)
    except ValidationFailed as exc:
        raise ValidationFailed([{**d, "field": _kyros_field(d["field"])} for d in exc.extra["details"]]) from None
    return ok(request, view, "Configuration updated")


# -- escalations --------------------------------------------------------------------------------
@_escalation_route
async def submit_escalation(request: web.Request) -> web.Response:
    """Ask for a task's step to be re-run on a stronger model (waits for approval)"""
    req = parse.parse_escalation(await read_json(request), request.app[CONFIG])
    return ok(request, await _tasks(request).submit_escalation(req, viewer(request)), "Escalation submitted")


@_escalation_route
async def approve_escalation(request: web.Request) -> web.Response:
    """Approve or reject a pending escalation"""
    d = parse.parse_decision(await read_json(request))
    data = await _tasks(request).decide(request.match_info["escalation_id"], d.decision, d.reason, d.comments,
                                        viewer(request))
    return ok(request, data, f"Escalation {d.decision}")


async def escalation_status(request: web.Request) -> web.Response:
    """One escalation"""
    return ok(request, await _tasks(request).escalation(request.match_info["escalation_id"], viewer(request)))


async def list_escalations(request: web.Request) -> web.Response:
    """The key's escalations (status pending means pending_approval)"""
    query = parse.parse_escalation_query(query_params(request))
    found, total = await _tasks(request).escalations(query, viewer(request))
    return ok(request, {"escalations": found, "pagination": _page(found, total, query.limit, query.offset)})


# -- models and costs ---------------------------------------------------------------------------
async def select_model(request: web.Request) -> web.Response:
    """A model for a task, with the reasons"""
    req = parse.parse_model_selection(await read_json(request), request.app[CONFIG])
    return ok(request, await _tasks(request).select_model(req))


async def costs(request: web.Request) -> web.Response:
    """What task steps cost in a period, by model, role, task type or user"""
    q = parse.parse_costs(query_params(request))
    data = await _tasks(request).costs(q.period_seconds, q.group_by, viewer(request))
    return ok(request, {"period": q.period, **data})
