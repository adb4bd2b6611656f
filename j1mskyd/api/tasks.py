"""Task endpoints (native, /api and /api/v1): parse (task_request.py) -> TaskService -> serialise.

The Kyros dialect (/kyros/v1) calls the same service with the same parsers; see docs/tasks.md.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import task_request as parse
from ..tasks import TaskService
from .common import CONFIG, SERVICES, json_response, query_params, read_json, read_json_object, viewer


def _tasks(request: web.Request) -> TaskService:
    return request.app[SERVICES].tasks


def _page(name: str, items: list[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    return {name: items, "pagination": {"total": total, "limit": limit, "offset": offset,
                                        "has_more": offset + len(items) < total}}


async def create_task(request: web.Request) -> web.Response:
    req, start = parse.parse_create(await read_json(request), request.app[CONFIG])
    return json_response(await _tasks(request).create(req, viewer(request), start=start), status=201)


async def list_tasks(request: web.Request) -> web.Response:
    query = parse.parse_query(query_params(request))
    items, total = await _tasks(request).list(query, viewer(request))
    return json_response(_page("tasks", items, total, query.limit, query.offset))


async def get_task(request: web.Request) -> web.Response:
    return json_response(await _tasks(request).get(request.match_info["task_id"], viewer(request)))


async def update_task(request: web.Request) -> web.Response:
    req = parse.parse_update(await read_json(request), request.app[CONFIG])
    return json_response(await _tasks(request).update(request.match_info["task_id"], req, viewer(request)))


async def cancel_task(request: web.Request) -> web.Response:
    reason = parse.parse_cancel(await read_json_object(request, optional=True))
    return json_response(await _tasks(request).cancel(request.match_info["task_id"], viewer(request), reason))


async def submit_task(request: web.Request) -> web.Response:
    sub = parse.parse_submission(await read_json(request), request.app[CONFIG])
    return json_response(await _tasks(request).submit(request.match_info["task_id"], sub.role, dict(sub.context),
                                                      sub.preferences, viewer(request)))


async def task_costs(request: web.Request) -> web.Response:
    query = parse.parse_costs(query_params(request))
    costs = await _tasks(request).costs(query.period_seconds, query.group_by, viewer(request))
    return json_response({"period": query.period, **costs})


async def list_roles(request: web.Request) -> web.Response:
    return json_response({"roles": await _tasks(request).roles()})


async def get_role(request: web.Request) -> web.Response:
    return json_response(await _tasks(request).role(request.match_info["role"]))


async def update_role(request: web.Request) -> web.Response:
    patch = parse.parse_role_patch(await read_json(request))
    return json_response(await _tasks(request).update_role(request.match_info["role"], patch,
                                                           viewer(request).key_id))


async def role_status(request: web.Request) -> web.Response:
    return json_response(await _tasks(request).role_status(request.match_info["role"], viewer(request)))


async def list_workflows(request: web.Request) -> web.Response:
    return json_response({"workflows": await _tasks(request).workflows()})


async def submit_escalation(request: web.Request) -> web.Response:
    req = parse.parse_escalation(await read_json(request), request.app[CONFIG])
    return json_response(await _tasks(request).submit_escalation(req, viewer(request)), status=201)


async def list_escalations(request: web.Request) -> web.Response:
    query = parse.parse_escalation_query(query_params(request))
    items, total = await _tasks(request).escalations(query, viewer(request))
    return json_response(_page("escalations", items, total, query.limit, query.offset))


async def get_escalation(request: web.Request) -> web.Response:
    return json_response(await _tasks(request).escalation(request.match_info["esc_id"], viewer(request)))


async def decide_escalation(request: web.Request) -> web.Response:
    d = parse.parse_decision(await read_json(request))
    return json_response(await _tasks(request).decide(request.match_info["esc_id"], d.decision, d.reason, d.comments,
                                                      viewer(request)))
