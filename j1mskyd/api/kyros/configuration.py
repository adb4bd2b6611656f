"""Kyros configuration (the Kyros document's "Configuration API") over the roles' configuration
(TaskService.role / roles / update_role): what the document calls system-wide task settings
are the roles' escalation rules and step timeout, so a PUT of one of them changes it for every
role, through the same validated, persisted and audited change a role's PUT makes.

Writable (:data:`WRITABLE`): escalation.cost_threshold, escalation.max_revisions, the three
escalation thresholds, models.timeout.  Everything else is the daemon's config file's (or not a
setting here): a PUT naming it is a VALIDATION_ERROR naming it, and changes nothing.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ... import __version__
from ...errors import ValidationFailed
from ..common import CONFIG, SERVICES, read_json_object, viewer
from ..orchestrator import models_catalogue
from .envelope import ok

__all__ = ["WRITABLE", "get_configuration", "put_configuration"]

# Kyros section.field -> the role's key ("escalation.x": the role's [escalation] x)
WRITABLE = {"escalation.cost_threshold": "escalation.cost_threshold",
            "escalation.max_revisions": "escalation.max_revisions",
            "escalation.security_threshold": "escalation.security_threshold",
            "escalation.complexity_threshold": "escalation.complexity_threshold",
            "escalation.business_impact_threshold": "escalation.business_impact_threshold",
            "models.timeout": "timeout"}
_RULES = ("cost_threshold", "max_revisions", "security_threshold", "complexity_threshold", "business_impact_threshold")


def _common(values: list[Any]) -> Any:
    """The value every role has (None when they differ)."""
    return values[0] if values and all(v == values[0] for v in values) else None


async def get_configuration(request: web.Request) -> web.Response:
    """System, models and escalation settings (the roles' common values) and each role's"""
    config = request.app[CONFIG]
    roles = await request.app[SERVICES].tasks.roles()
    catalogue = await models_catalogue(request)
    default = catalogue["default_model"]
    fallback = config.models[default].fallback if default in config.models else None
    rules = {name: _common([r["escalation_rules"][name] for r in roles]) for name in _RULES}
    return ok(request, {
        "system": {"version": __version__, "environment": "j1mskyd", "timezone": "UTC", "maintenance_mode": False},
        "models": {"default_model": default, "escalation_model": catalogue["escalation_model"],
                   "fallback_model": fallback, "timeout": _common([r["preferences"]["timeout"] for r in roles])},
        "escalation": {**rules, "approval_required": True,
                       "default_cost_threshold": config.tasks.approval_threshold},
        "tasks": {"max_revisions": config.tasks.max_revisions, "approval_threshold": config.tasks.approval_threshold,
                  "max_steps": config.tasks.max_steps},
        "roles": {r["role"]: r for r in roles},
        "workflows": {kind: list(steps) for kind, steps in config.workflows.items()},
        "writable": list(WRITABLE)})


def _patch(body: dict[str, Any]) -> dict[str, Any]:
    """The body as one role patch (``{"timeout": 600, "escalation": {...}}``); a field that is
    not writable, or a section that is not an object, is refused (all of them named at once)."""
    errors: list[dict[str, str]] = []
    patch: dict[str, Any] = {}
    for section, fields in body.items():
        if not isinstance(fields, dict):
            errors.append({"field": section, "message": f"{section} must be an object of settings"})
            continue
        for name, value in fields.items():
            target = WRITABLE.get(f"{section}.{name}")
            if target is None:
                errors.append({"field": f"{section}.{name}", "message": "not writable here (writable: "
                                                                        f"{', '.join(WRITABLE)})"})
            elif target.startswith("escalation."):
                patch.setdefault("escalation", {})[target.split(".", 1)[1]] = value
            else:
                patch[target] = value
    if not patch and not errors:
        errors.append({"field": "body", "message": f"nothing to change (writable: {', '.join(WRITABLE)})"})
    if errors:
        raise ValidationFailed(errors)
    return patch


async def put_configuration(request: web.Request) -> web.Response:
    """Change the writable settings for every role (persisted, audited)"""
    patch = _patch(await read_json_object(request))
    tasks = request.app[SERVICES].tasks
    names = [r["role"] for r in await tasks.roles()]
    back = {role_key: kyros for kyros, role_key in WRITABLE.items()}
    try:
        # Every role takes the same values and the same validator: a value it refuses is refused
        # by the first role, before anything is written.
        for name in names:
            await tasks.update_role(name, patch, viewer(request).key_id)
    except ValidationFailed as exc:
        raise ValidationFailed([{**d, "field": back.get(d["field"], d["field"])}
                                for d in exc.extra["details"]]) from None
    return await get_configuration(request)
