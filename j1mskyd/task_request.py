"""Task bodies and queries read into typed requests, for both dialects (native /api/tasks...,
Kyros /kyros/v1/...).

Each parser takes the decoded JSON body (or the query's mapping) and returns a frozen
dataclass, or raises ValidationFailed naming every broken field at once (``details``: one
``{"field", "message"}`` each; the Kyros dialect maps it to its VALIDATION_ERROR).  Unknown
fields of a body are ignored, as the Kyros clients send some of their own.  What needs the
task or the role (is this model allowed for that role?) is the service's to check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import jsonx
from .config import Config
from .errors import ValidationFailed
from .request_fields import KEEP, Keep, query_int, utc_time
from .task_record import ESC_STATUSES, PRIORITIES, STATUSES

__all__ = ["COST_GROUPS", "COST_PERIODS", "CostQuery", "Decision", "EscalationQuery", "EscalationRequest",
           "MAX_ITEM", "MAX_ITEMS", "MAX_LIMIT", "MAX_TEXT", "MAX_TITLE", "ModelSelection", "RolePatch", "SORTS",
           "StepPreferences", "Submission", "TaskQuery", "TaskRequest", "TaskUpdate", "parse_cancel",
           "parse_costs", "parse_create", "parse_decision", "parse_escalation", "parse_escalation_query",
           "parse_model_selection", "parse_query", "parse_role_patch", "parse_submission", "parse_task",
           "parse_update"]

Errors = list[dict[str, str]]

MAX_TITLE = 200
MAX_TEXT = 20_000          # description, feedback, reason, comments (characters)
MAX_ITEMS = 100            # files_to_modify, acceptance_criteria, dependencies, tags
MAX_ITEM = 500             # characters of one item
MAX_OBJECT = 16_384        # metadata, context, results: bytes of their compact JSON
MAX_LIMIT = 200
SORTS = ("created_at", "updated_at", "priority", "deadline")
COST_PERIODS = {"1h": 3600.0, "24h": 86_400.0, "1d": 86_400.0, "7d": 7 * 86_400.0, "30d": 30 * 86_400.0,
                "90d": 90 * 86_400.0}
COST_GROUPS = ("model", "role", "task_type", "user")


# -- the requests ---------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TaskRequest:
    title: str
    type: str
    description: str | None = None
    priority: str = "medium"
    assignee_role: str | None = None
    files_to_modify: tuple[str, ...] = ()
    acceptance_criteria: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    deadline: float | None = None          # epoch seconds (ISO 8601 in the body)
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TaskQuery:
    status: str | None = None
    type: str | None = None
    priority: str | None = None
    assignee_role: str | None = None
    created_by: str | None = None
    tags: tuple[str, ...] = ()
    limit: int = 50
    offset: int = 0
    sort_by: str = "created_at"
    sort_order: str = "desc"


@dataclass(frozen=True, kw_only=True)
class TaskUpdate:
    """A partial change: fields left ``KEEP`` stay as they are."""

    title: str | Keep = KEEP
    description: str | None | Keep = KEEP
    priority: str | Keep = KEEP
    tags: tuple[str, ...] | Keep = KEEP
    deadline: float | None | Keep = KEEP
    metadata: Mapping[str, Any] | Keep = KEEP
    acceptance_criteria: tuple[str, ...] | Keep = KEEP
    results: Any = KEEP
    feedback: str | None | Keep = KEEP
    status: str | Keep = KEEP              # "completed" | "cancelled"
    reason: str | None = None              # why (a cancellation's)


@dataclass(frozen=True, kw_only=True)
class StepPreferences:
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float | None = None


@dataclass(frozen=True, kw_only=True)
class Submission:
    """A task handed to a role (native POST /tasks/{id}/submit, Kyros POST /agents/{role}/submit)."""

    task_id: str | None
    role: str
    context: Mapping[str, Any] = field(default_factory=dict)
    preferences: StepPreferences = field(default_factory=StepPreferences)


@dataclass(frozen=True, kw_only=True)
class EscalationRequest:
    task_id: str
    reason: str
    original_model: str | None = None
    target_model: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    estimated_cost: float | None = None
    priority: str | None = None


@dataclass(frozen=True, kw_only=True)
class EscalationQuery:
    status: str | None = None
    task_id: str | None = None
    from_date: float | None = None
    to_date: float | None = None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True, kw_only=True)
class Decision:
    decision: str                           # approved | rejected
    reason: str | None = None
    comments: str | None = None


@dataclass(frozen=True, kw_only=True)
class ModelSelection:
    task_description: str
    task_type: str | None = None
    files_to_modify: tuple[str, ...] = ()
    complexity_indicators: Mapping[str, Any] = field(default_factory=dict)  # the ones read checked (_INDICATORS)
    context: Mapping[str, Any] = field(default_factory=dict)
    preferences: Mapping[str, Any] = field(default_factory=dict)
    budget_remaining: float | None = None   # context.budget_remaining (USD); None: the daemon's budget left


@dataclass(frozen=True, kw_only=True)
class CostQuery:
    period: str = "7d"
    period_seconds: float = COST_PERIODS["7d"]
    group_by: str = "model"


# -- field readers: append to ``errors``, return the value (None when absent or bad) ----------
def _object(body: Any, what: str = "Request body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed([{"field": "body", "message": f"{what} must be a JSON object"}])
    return body


def _text(body: Mapping[str, Any], name: str, errors: Errors, *, required: bool = False, limit: int = MAX_TEXT,
          prefix: str = "") -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            errors.append({"field": prefix + name, "message": f"{name} is required"})
        return None
    if not isinstance(value, str):
        errors.append({"field": prefix + name, "message": f"{name} must be a string"})
        return None
    if required and not value.strip():
        errors.append({"field": prefix + name, "message": f"{name} cannot be empty"})
        return None
    if len(value) > limit:
        errors.append({"field": prefix + name, "message": f"{name} exceeds {limit} characters"})
        return None
    if jsonx.lone_surrogates(value):
        errors.append({"field": prefix + name, "message": f"{name} must be valid Unicode text"})
        return None
    return value


def _choice(body: Mapping[str, Any], name: str, choices: Any, errors: Errors, default: str | None = None,
            prefix: str = "") -> str | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        errors.append({"field": prefix + name, "message": f"{name} must be one of: {', '.join(choices)}"})
        return None
    return value


def _strings(body: Mapping[str, Any], name: str, errors: Errors) -> tuple[str, ...] | None:
    value = body.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_ITEMS or \
            not all(isinstance(v, str) and 0 < len(v) <= MAX_ITEM and not jsonx.lone_surrogates(v) for v in value):
        errors.append({"field": name, "message": f"{name} must be a list of at most {MAX_ITEMS} non-empty strings "
                                                 f"of at most {MAX_ITEM} characters"})
        return None
    if name == "tags" and any("," in v or v != v.strip() for v in value):
        # The list's tags filter is comma-separated and trimmed: such a tag could never be found.
        errors.append({"field": name, "message": "a tag may not hold a comma nor start or end with a space "
                                                 "(GET /tasks?tags= is a comma-separated list)"})
        return None
    return tuple(value)


def _json_object(body: Mapping[str, Any], name: str, errors: Errors, prefix: str = "") -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append({"field": prefix + name, "message": f"{name} must be a JSON object"})
        return None
    if len(jsonx.compact(value)) > MAX_OBJECT or jsonx.lone_surrogates(value):
        errors.append({"field": prefix + name, "message": f"{name} must be valid text of at most {MAX_OBJECT} bytes "
                                                          "as JSON"})
        return None
    return value


def _time(body: Mapping[str, Any], name: str, errors: Errors) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    ts = utc_time(value)
    if ts is None:
        errors.append({"field": name, "message": f"{name} must be an ISO 8601 date-time such as 2024-01-20T23:59:59Z"})
    return ts


def _number(body: Mapping[str, Any], name: str, lo: float, hi: float, errors: Errors, prefix: str = "",
            integer: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    # bool is an int, and a huge JSON int overflows float(): compare, never convert first.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)) \
            or (isinstance(value, float) and not math.isfinite(value)) or not lo <= value <= hi:
        what = "an integer" if integer else "a number"
        errors.append({"field": prefix + name, "message": f"{name} must be {what} from {lo:g} to {hi:g}"})
        return None
    return value


def _fail(errors: Errors) -> None:
    if errors:
        raise ValidationFailed(errors)


# -- bodies -------------------------------------------------------------------------------------
def parse_task(body: Any, config: Config) -> TaskRequest:
    """A new task: ``type`` names a workflow; ``assignee_role`` (optional) a role."""
    body = _object(body)
    errors: Errors = []
    title = _text(body, "title", errors, required=True, limit=MAX_TITLE)
    description = _text(body, "description", errors)
    kind = _choice(body, "type", tuple(config.workflows), errors)
    if body.get("type") is None:
        errors.append({"field": "type", "message": f"type is required: one of {', '.join(config.workflows)}"})
    priority = _choice(body, "priority", tuple(PRIORITIES), errors, "medium")
    role = _choice(body, "assignee_role", tuple(config.roles), errors)
    lists = {name: _strings(body, name, errors)
             for name in ("files_to_modify", "acceptance_criteria", "dependencies", "tags")}
    deadline = _time(body, "deadline", errors)
    metadata = _json_object(body, "metadata", errors)
    _fail(errors)
    assert title is not None and kind is not None and priority is not None and metadata is not None
    return TaskRequest(title=title, type=kind, description=description, priority=priority, assignee_role=role,
                       deadline=deadline, metadata=metadata,
                       **{name: value or () for name, value in lists.items()})


def parse_create(body: Any, config: Config) -> tuple[TaskRequest, bool]:
    """The native POST /tasks: the task, and ``start`` (default true: run its workflow now)."""
    req = parse_task(body, config)
    start = body.get("start")
    if start is None:
        start = True
    if not isinstance(start, bool):
        raise ValidationFailed([{"field": "start", "message": "start must be true or false"}])
    return req, start


def parse_update(body: Any, config: Config) -> TaskUpdate:
    body = _object(body)
    errors: Errors = []
    changes: dict[str, Any] = {}
    if "title" in body:
        changes["title"] = _text(body, "title", errors, required=True, limit=MAX_TITLE)
    if "description" in body:
        changes["description"] = _text(body, "description", errors)
    if "priority" in body:
        changes["priority"] = _choice(body, "priority", tuple(PRIORITIES), errors)
        if body["priority"] is None:
            errors.append({"field": "priority", "message": f"priority must be one of: {', '.join(PRIORITIES)}"})
    for name in ("tags", "acceptance_criteria"):
        if name in body:
            changes[name] = _strings(body, name, errors)
    if "deadline" in body:
        changes["deadline"] = _time(body, "deadline", errors)
    if "metadata" in body:
        changes["metadata"] = _json_object(body, "metadata", errors)
    if "results" in body:
        results = body["results"]
        if len(jsonx.compact(results)) > MAX_OBJECT or jsonx.lone_surrogates(results):
            errors.append({"field": "results", "message": f"results must be valid text of at most {MAX_OBJECT} "
                                                          "bytes as JSON"})
        changes["results"] = results
    if "feedback" in body:
        changes["feedback"] = _text(body, "feedback", errors)
    if "status" in body:
        status = body["status"]
        if not isinstance(status, str) or status not in ("completed", "cancelled"):
            errors.append({"field": "status", "message": "status may be set to completed or cancelled only "
                                                         f"(the engine sets the others: {', '.join(STATUSES)})"})
        changes["status"] = status
    reason = _text(body, "reason", errors)
    if not changes and not errors:
        errors.append({"field": "body", "message": "nothing to change: name at least one of title, description, "
                                                   "priority, tags, deadline, metadata, acceptance_criteria, "
                                                   "results, feedback, status"})
    _fail(errors)
    return TaskUpdate(reason=reason, **changes)


def _preferences(body: Mapping[str, Any], config: Config, errors: Errors) -> StepPreferences:
    prefs = body.get("preferences")
    if prefs is None:
        return StepPreferences()
    if not isinstance(prefs, dict):
        errors.append({"field": "preferences", "message": "preferences must be a JSON object"})
        return StepPreferences()
    p = "preferences."
    model = _choice(prefs, "model", tuple(config.models), errors, prefix=p)
    temperature = _number(prefs, "temperature", 0, 2, errors, p)
    max_tokens = _number(prefs, "max_tokens", 1, 1_000_000, errors, p, integer=True)
    timeout = _number(prefs, "timeout", 1, config.runtime.max_timeout, errors, p)
    return StepPreferences(model=model, temperature=temperature, timeout=timeout,
                           max_tokens=None if max_tokens is None else int(max_tokens))


def parse_submission(body: Any, config: Config, role: str | None = None) -> Submission:
    """A submission: ``role`` from the path (Kyros) or the body (native); the task id from the
    body (Kyros; the native route has it in its path)."""
    body = _object(body)
    errors: Errors = []
    if role is None:
        role = _choice(body, "role", tuple(config.roles), errors)
        if body.get("role") is None:
            errors.append({"field": "role", "message": f"role is required: one of {', '.join(config.roles)}"})
    elif role not in config.roles:
        errors.append({"field": "role", "message": f"role must be one of: {', '.join(config.roles)}"})
    task_id = _text(body, "task_id", errors, limit=100)
    context = _json_object(body, "context", errors)
    preferences = _preferences(body, config, errors)
    _fail(errors)
    assert role is not None and context is not None
    return Submission(task_id=task_id, role=role, context=context, preferences=preferences)


def parse_escalation(body: Any, config: Config) -> EscalationRequest:
    body = _object(body)
    errors: Errors = []
    task_id = _text(body, "task_id", errors, required=True, limit=100)
    reason = _text(body, "reason", errors, required=True)
    original = _choice(body, "original_model", tuple(config.models), errors)
    target = _choice(body, "target_model", tuple(config.models), errors)
    context = _json_object(body, "context", errors)
    cost = _number(body, "estimated_cost", 0, 1_000_000, errors)
    priority = _choice(body, "priority", tuple(PRIORITIES), errors)
    _fail(errors)
    assert task_id is not None and reason is not None and context is not None
    return EscalationRequest(task_id=task_id, reason=reason, original_model=original, target_model=target,
                             context=context, estimated_cost=None if cost is None else float(cost), priority=priority)


def parse_decision(body: Any) -> Decision:
    body = _object(body)
    errors: Errors = []
    decision = _choice(body, "decision", ("approved", "rejected"), errors)
    if body.get("decision") is None:
        errors.append({"field": "decision", "message": "decision is required: approved or rejected"})
    reason = _text(body, "reason", errors)
    comments = _text(body, "approver_comments", errors)
    _fail(errors)
    assert decision is not None
    return Decision(decision=decision, reason=reason, comments=comments)


# The complexity indicators the model choice reads (TaskService._signals): each of the type it
# is read as, so that "true" or "3" is refused rather than silently read as false or nothing.
_INDICATOR_FLAGS = ("security_sensitive", "business_critical")
_INDICATOR_COUNTS = ("file_count", "service_count")
_COMPLEXITIES = ("low", "medium", "high")
_MAX_BUDGET = 1_000_000     # USD: a budget_remaining the daemon takes (the bound of an estimated_cost)


def _flag(body: Mapping[str, Any], name: str, errors: Errors, prefix: str = "") -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        errors.append({"field": prefix + name, "message": f"{name} must be true or false"})
        return None
    return value


def _count(body: Mapping[str, Any], name: str, errors: Errors, prefix: str = "") -> None:
    """A count of any size: the model choice caps what it reads (a huge one is as many as 5)."""
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        errors.append({"field": prefix + name, "message": f"{name} must be a non-negative integer"})


def _indicators(body: Mapping[str, Any], errors: Errors) -> dict[str, Any] | None:
    indicators = _json_object(body, "complexity_indicators", errors)
    if indicators:
        p = "complexity_indicators."
        for name in _INDICATOR_FLAGS:
            _flag(indicators, name, errors, p)
        for name in _INDICATOR_COUNTS:
            _count(indicators, name, errors, p)
        _choice(indicators, "complexity", _COMPLEXITIES, errors, prefix=p)
    return indicators


def parse_model_selection(body: Any, config: Config) -> ModelSelection:
    body = _object(body)
    errors: Errors = []
    description = _text(body, "task_description", errors, required=True)
    kind = _choice(body, "task_type", tuple(config.workflows), errors)
    files = _strings(body, "files_to_modify", errors)
    indicators = _indicators(body, errors)
    context = _json_object(body, "context", errors)
    budget = _number(context, "budget_remaining", 0, _MAX_BUDGET, errors, "context.") if context else None
    preferences = _json_object(body, "preferences", errors)
    _fail(errors)
    assert description is not None
    return ModelSelection(task_description=description, task_type=kind, files_to_modify=files or (),
                          complexity_indicators=indicators or {}, context=context or {},
                          preferences=preferences or {}, budget_remaining=None if budget is None else float(budget))


# Kyros's role configuration shape -> the [roles.<name>] table's keys.
_ROLE_PREFERENCES = ("temperature", "max_tokens", "timeout")
_ROLE_KEYS = ("default_model", "models", "capabilities", "temperature", "max_tokens", "timeout", "escalation",
              "constraints", "enabled", "review")


class RolePatch(dict[str, Any]):
    """A role change as ``[roles.<name>]`` keys; ``spelled``: the request's own name of each key
    it spelled Kyros's way (``models``: ``available_models``), so that an error names the field
    the caller sent."""

    def __init__(self) -> None:
        super().__init__()
        self.spelled: dict[str, str] = {}


def parse_role_patch(body: Any) -> RolePatch:
    """A role change, in the config file's shape (``[roles.<name>]`` keys) or Kyros's
    (``available_models``, ``preferences``, ``escalation_rules``), as ``[roles.<name>]`` keys;
    the values are checked by the config's own validator (TaskService.update_role)."""
    body = _object(body)
    errors: Errors = []
    patch = RolePatch()

    def put(name: str, value: Any, sent: str) -> None:
        """One [roles.<name>] key, as the request ``sent`` it; a key sent under both spellings is refused."""
        if name in patch:
            first = patch.spelled.get(name, name)
            errors.extend({"field": f, "message": f"{first} and {sent} are the same setting: send one"}
                          for f in (first, sent))
            return
        patch[name] = value
        if sent != name:
            patch.spelled[name] = sent

    for key, value in body.items():
        if key == "role":  # Kyros echoes the role's name in its view: harmless when it is sent back
            continue
        if key == "available_models":
            put("models", value, key)
        elif key == "preferences":
            if not isinstance(value, dict):
                errors.append({"field": key, "message": "preferences must be a JSON object"})
                continue
            for name, item in value.items():
                if name not in _ROLE_PREFERENCES:
                    errors.append({"field": f"preferences.{name}",
                                   "message": f"unknown preference (one of {', '.join(_ROLE_PREFERENCES)})"})
                else:
                    put(name, item, f"preferences.{name}")
        elif key == "escalation_rules":
            put("escalation", value, key)
        elif key in _ROLE_KEYS:
            put(key, value, key)
        else:
            errors.append({"field": key, "message": "unknown field: a role has " + ", ".join(
                (*_ROLE_KEYS, "available_models", "preferences", "escalation_rules"))})
    if not patch and not errors:
        errors.append({"field": "body", "message": "nothing to change"})
    _fail(errors)
    return patch


# -- queries ------------------------------------------------------------------------------------
def _int_param(params: Mapping[str, str], name: str, default: int, lo: int, hi: int, errors: Errors) -> int:
    text = params.get(name)
    if text is None:
        return default
    value = query_int(text.strip())
    if value is None or not lo <= value <= hi:
        errors.append({"field": name, "message": f"{name} must be an integer from {lo} to {hi}"})
        return default
    return value


def parse_query(params: Mapping[str, str]) -> TaskQuery:
    errors: Errors = []
    status = _choice(params, "status", STATUSES, errors)
    priority = _choice(params, "priority", tuple(PRIORITIES), errors)
    sort_by = _choice(params, "sort_by", SORTS, errors, "created_at")
    order = _choice(params, "sort_order", ("asc", "desc"), errors, "desc")
    texts = {name: _text(params, name, errors, limit=200) for name in ("type", "assignee_role", "created_by")}
    tags = tuple(t.strip() for t in (params.get("tags") or "").split(",") if t.strip())
    if len(tags) > MAX_ITEMS:  # no task holds more: such a filter matches nothing
        errors.append({"field": "tags", "message": f"tags names at most {MAX_ITEMS} tags, as many as a task holds"})
    limit = _int_param(params, "limit", 50, 1, MAX_LIMIT, errors)
    offset = _int_param(params, "offset", 0, 0, 10**9, errors)
    _fail(errors)
    assert sort_by is not None and order is not None
    return TaskQuery(status=status, priority=priority, sort_by=sort_by, sort_order=order, tags=tags, limit=limit,
                     offset=offset, **texts)


def parse_escalation_query(params: Mapping[str, str]) -> EscalationQuery:
    """``status``: pending (Kyros's word for pending_approval) or an escalation status;
    ``from_date``/``to_date``: ISO 8601."""
    errors: Errors = []
    status = params.get("status")
    if status == "pending":
        status = "pending_approval"
    if status is not None and status not in ESC_STATUSES:
        errors.append({"field": "status", "message": f"status must be one of: pending, {', '.join(ESC_STATUSES)}"})
    task_id = _text(params, "task_id", errors, limit=100)
    since = _time(params, "from_date", errors)
    until = _time(params, "to_date", errors)
    limit = _int_param(params, "limit", 50, 1, MAX_LIMIT, errors)
    offset = _int_param(params, "offset", 0, 0, 10**9, errors)
    _fail(errors)
    return EscalationQuery(status=status, task_id=task_id, from_date=since, to_date=until, limit=limit, offset=offset)


def parse_costs(params: Mapping[str, str]) -> CostQuery:
    errors: Errors = []
    period = _choice(params, "period", tuple(COST_PERIODS), errors, "7d")
    group_by = _choice(params, "group_by", COST_GROUPS, errors, "model")
    _fail(errors)
    assert period is not None and group_by is not None
    return CostQuery(period=period, period_seconds=COST_PERIODS[period], group_by=group_by)


def parse_cancel(body: Any) -> str | None:
    """A cancellation's optional body: ``{"reason": "..."}``."""
    body = _object(body)
    errors: Errors = []
    reason = _text(body, "reason", errors)
    _fail(errors)
    return reason
