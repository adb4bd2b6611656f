"""Projects over HTTP: create, list, read, change, delete (docs/api.md, "Projects").

Writes need admin:write, reads admin:read; a member key may read its own project (the route
takes any key, ProjectService.visible answers 404 for another's).  Every change is audited.
"""

from __future__ import annotations

from aiohttp import web

from ..project_request import parse_change, parse_new
from ..projects import Project, ProjectService
from .common import SERVICES, actor, json_response, key_of, read_json


def _projects(request: web.Request) -> ProjectService:
    return request.app[SERVICES].projects


def _audit(request: web.Request, action: str, project_id: str, details: dict) -> None:
    request.app[SERVICES].audit.record("config.change", actor(request), severity="warning" if action == "delete"
                                       else "info", resource_type="project", resource_id=project_id,
                                       details={"action": action, **details})


def _view(request: web.Request, project: Project) -> dict:
    """The project with its members and its budget's standing (None: it has no budget)."""
    allowance = project.allowance()
    budget = request.app[SERVICES].budget
    return {**_projects(request).view(project),
            "budget": None if allowance is None else budget.standing(allowance)}


async def create_project(request: web.Request) -> web.Response:
    req = parse_new(await read_json(request))
    project, moves = await _projects(request).create(req)
    _audit(request, "create", project.project_id, {"name": project.name, "max_budget": project.max_budget,
                                                   "budget_duration": project.budget_duration,
                                                   "members": list(req.members),
                                                   "moved": [m.public() for m in moves]})
    return json_response({"success": True, **_view(request, project), "moved": [m.public() for m in moves]},
                         status=201)


async def list_projects(request: web.Request) -> web.Response:
    projects = [_view(request, p) for p in sorted(_projects(request).projects.values(), key=lambda p: p.name)]
    return json_response({"projects": projects, "count": len(projects)})


async def get_project(request: web.Request) -> web.Response:
    project = _projects(request).visible(request.match_info["project_id"], key_of(request))
    return json_response(_view(request, project))


async def update_project(request: web.Request) -> web.Response:
    body = await read_json(request)
    service = _projects(request)
    old = service.get(request.match_info["project_id"])  # a 404 before the body is judged
    project, moves, removed = await service.update(old.project_id, parse_change(
        body, (old.max_budget, old.budget_duration)))
    moved = [m.public() for m in moves]
    _audit(request, "update", project.project_id, {"fields": sorted(body), "moved": moved, "removed": removed})
    return json_response({"success": True, **_view(request, project), "moved": moved, "removed": removed})


async def delete_project(request: web.Request) -> web.Response:
    project, released = await _projects(request).delete(request.match_info["project_id"])
    _audit(request, "delete", project.project_id, {"name": project.name, "released_keys": released})
    return json_response({"success": True, "message": "Project deleted", "project_id": project.project_id,
                          "released_keys": released})
