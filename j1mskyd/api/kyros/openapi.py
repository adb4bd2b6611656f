"""The Kyros routes in GET /api/openapi.json (api/openapi.py asks :func:`paths`): each
operation with its scope, rate-limit class, parameters, body, the success envelope and every
refusal in the Kyros error envelope (envelope.py), so that scripts/test-api-schema fuzzes
them like the native routes."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ...task_record import ESC_STATUSES, PRIORITIES, STATUSES
from ...task_request import COST_GROUPS, COST_PERIODS, SORTS
from .configuration import WRITABLE
from .envelope import CODES
from .monitoring import ALERT_STATUSES, DOCUMENT_GRANULARITIES, METRICS, PERIODS, SEVERITIES

__all__ = ["ERROR", "paths"]

_PARAM = re.compile(r"{([^}]+)}")
_STR, _INT, _OBJ = {"type": "string"}, {"type": "integer"}, {"type": "object"}
ERROR = {"type": "object", "required": ["success", "error", "timestamp", "request_id"], "properties": {
    "success": {"const": False}, "timestamp": _STR, "request_id": {"type": ["string", "null"]},
    "error": {"type": "object", "required": ["code", "message", "details"], "properties": {
        "code": {"type": "string", "enum": list(CODES)}, "message": _STR, "details": _OBJ}}}}
_REASONS = {401: "No, invalid or revoked key (UNAUTHORIZED)", 402: "Budget exceeded (FORBIDDEN)",
            403: "Missing scope, or the IP is not allowed (FORBIDDEN)", 404: "Not found (NOT_FOUND, TASK_NOT_FOUND)",
            409: "Conflict with the current state (VALIDATION_ERROR)", 413: "Body too large (VALIDATION_ERROR)",
            422: "Validation failed (VALIDATION_ERROR: details.field, details.issue, details.errors)",
            429: "Rate limited (RATE_LIMITED)", 400: "Escalation rejected (ESCALATION_REJECTED)",
            503: "Unavailable (SERVICE_UNAVAILABLE, AGENT_UNAVAILABLE, MODEL_UNAVAILABLE)",
            507: "The state dir's disk is full: nothing changed (SERVICE_UNAVAILABLE)"}
_CREATED = {("POST", "/webhooks"), ("POST", "/tasks")}
_ACCEPTED = {("POST", "/webhooks/{webhook_id}/test")}
# Refusals beyond the common ones (_codes).
_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("POST", "/tasks"): (402,), ("POST", "/agents/{role}/submit"): (402,),  # a step's budget reservation
    ("POST", "/escalation/submit"): (400, 404), ("POST", "/escalation/{escalation_id}/approve"): (400, 402),
    ("PUT", "/configuration"): (404,),
}
# data schemas of the success envelope (absent: any object)
_DATA: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/models"): {"type": "object", "required": ["models", "default_model", "escalation_model"]},
    ("GET", "/models/{model_name}"): {"type": "object", "required": ["name", "provider", "limits", "pricing"]},
    ("GET", "/monitoring/health"): {"type": "object", "required": ["overall_status", "services", "database",
                                                                   "models"]},
    ("GET", "/monitoring/metrics"): {"type": "object", "required": ["period", "granularity", "metrics"]},
    ("GET", "/monitoring/alerts"): {"type": "object", "required": ["alerts"]},
    ("GET", "/webhooks"): {"type": "object", "required": ["webhooks", "total"]},
    ("POST", "/tasks"): {"type": "object", "required": ["id", "title", "status", "created_at", "created_by"]},
    ("GET", "/tasks"): {"type": "object", "required": ["tasks", "pagination"]},
    ("GET", "/tasks/{task_id}"): {"type": "object", "required": ["id", "status", "progress", "metadata"]},
    ("POST", "/agents/{role}/submit"): {"type": "object", "required": ["submission_id", "task_id", "role",
                                                                       "agent_id", "status"]},
    ("GET", "/agents/{role}/status"): {"type": "object", "required": ["role", "active_tasks", "queue_length"]},
    ("GET", "/agents/{role}/configuration"): {"type": "object", "required": ["role", "default_model"]},
    ("POST", "/models/select"): {"type": "object", "required": ["selected_model", "reasoning"]},
    ("POST", "/escalation/submit"): {"type": "object", "required": ["escalation_id", "task_id", "status"]},
    ("GET", "/escalations"): {"type": "object", "required": ["escalations", "pagination"]},
    ("GET", "/monitoring/costs"): {"type": "object", "required": ["period", "total_cost", "cost_breakdown"]},
    ("GET", "/configuration"): {"type": "object", "required": ["system", "models", "escalation", "writable"]},
}


_LIST = {"type": "array", "items": {"type": "string", "minLength": 1}}
_NUMBER = {"type": "number"}
_TASK_FIELDS = {"title": {"type": "string", "minLength": 1, "maxLength": 200}, "description": _STR,
                "priority": {"type": "string", "enum": list(PRIORITIES)}, "tags": _LIST,
                "acceptance_criteria": _LIST, "deadline": {"type": "string", "format": "date-time"},
                "metadata": _OBJ}
_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/tasks"): {"type": "object", "required": ["title", "type"], "properties": {
        **_TASK_FIELDS, "type": _STR, "assignee_role": _STR, "files_to_modify": _LIST, "dependencies": _LIST,
        "start": {"type": "boolean"}}},
    ("PUT", "/tasks/{task_id}"): {"type": "object", "minProperties": 1, "properties": {
        **_TASK_FIELDS, "results": {}, "feedback": _STR, "status": {"type": "string", "enum": ["completed",
                                                                                           "cancelled"]},
        "reason": _STR}},
    ("DELETE", "/tasks/{task_id}"): {"type": "object", "properties": {"reason": _STR}},
    ("POST", "/agents/{role}/submit"): {"type": "object", "required": ["task_id"], "properties": {
        "task_id": _STR, "context": _OBJ, "preferences": {"type": "object", "properties": {
            "model": _STR, "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "max_tokens": {"type": "integer", "minimum": 1}, "timeout": {"type": "number", "minimum": 1}}}}},
    ("PUT", "/agents/{role}/configuration"): {"type": "object", "minProperties": 1, "properties": {
        "default_model": _STR, "available_models": _LIST, "capabilities": _LIST, "preferences": _OBJ,
        "constraints": _OBJ, "escalation_rules": _OBJ}},
    ("POST", "/models/select"): {"type": "object", "required": ["task_description"], "properties": {
        "task_description": {"type": "string", "minLength": 1}, "task_type": _STR, "files_to_modify": _LIST,
        "complexity_indicators": _OBJ, "context": _OBJ, "preferences": _OBJ}},
    ("POST", "/escalation/submit"): {"type": "object", "required": ["task_id", "reason"], "properties": {
        "task_id": _STR, "reason": {"type": "string", "minLength": 1}, "original_model": _STR,
        "target_model": _STR, "context": _OBJ, "estimated_cost": {"type": "number", "minimum": 0},
        "priority": {"type": "string", "enum": list(PRIORITIES)}}},
    ("POST", "/escalation/{escalation_id}/approve"): {"type": "object", "required": ["decision"], "properties": {
        "decision": {"type": "string", "enum": ["approved", "rejected"]}, "reason": _STR,
        "approver_comments": _STR}},
    ("PUT", "/configuration"): {"type": "object", "minProperties": 1, "properties": {
        "escalation": {"type": "object", "properties": {name.split(".", 1)[1]: _NUMBER for name in WRITABLE
                                                        if name.startswith("escalation.")}},
        "models": {"type": "object", "properties": {"timeout": _NUMBER}}}},
}
_NATIVE_BODIES = (("POST", "/webhooks"), ("PUT", "/webhooks/{webhook_id}"))  # the same service's


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


_PAGE_PARAMS = [_query("limit", {"type": "integer", "minimum": 1, "maximum": 200}),
                _query("offset", {"type": "integer", "minimum": 0})]
_TEXT = {"type": "string"}
_QUERY: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/tasks"): [_query("status", {"type": "string", "enum": list(STATUSES)}), _query("type", _TEXT),
                        _query("priority", {"type": "string", "enum": list(PRIORITIES)}),
                        _query("assignee_role", _TEXT), _query("created_by", _TEXT),
                        _query("tags", {"type": "string", "description": "comma-separated"}), *_PAGE_PARAMS,
                        _query("sort_by", {"type": "string", "enum": list(SORTS)}),
                        _query("sort_order", {"type": "string", "enum": ["asc", "desc"]})],
    ("GET", "/escalations"): [_query("status", {"type": "string", "enum": ["pending", *ESC_STATUSES]}),
                              _query("task_id", _TEXT), _query("from_date", {"type": "string", "format": "date-time"}),
                              _query("to_date", {"type": "string", "format": "date-time"}), *_PAGE_PARAMS],
    ("GET", "/monitoring/costs"): [_query("period", {"type": "string", "enum": list(COST_PERIODS)}),
                                   _query("group_by", {"type": "string", "enum": list(COST_GROUPS)})],
    ("GET", "/monitoring/metrics"): [_query("period", {"type": "string", "enum": list(PERIODS)}),
                                     _query("granularity", {"type": "string", "enum": list(DOCUMENT_GRANULARITIES),
                                                            "description": "1m and 5m are not kept: 422"}),
                                     _query("metrics", {"type": "string", "description": "comma-separated: "
                                                        + ", ".join(METRICS)})],
    ("GET", "/monitoring/alerts"): [_query("status", {"type": "string", "enum": list(ALERT_STATUSES)}),
                                    _query("severity", {"type": "string", "enum": list(SEVERITIES)}), *_PAGE_PARAMS],
}


def _codes(method: str, path: str) -> list[int]:
    codes = {401, 403, 422, 429}
    if "{" in path:
        codes.add(404)
    if method in ("POST", "PUT", "DELETE"):
        codes.update((409, 413, 507))  # 409: an Idempotency-Key reused with another body, or the state
    codes.update(_ERRORS.get((method, path), ()))
    return sorted(codes)


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["success", "data", "message", "timestamp", "request_id"],
            "properties": {"success": {"const": True}, "data": data, "message": _STR, "timestamp": _STR,
                           "request_id": {"type": ["string", "null"]}}}


def _operation(method: str, path: str, handler: Any, scope: str, limit_class: str,
               bodies: Mapping[tuple[str, str], Any]) -> dict[str, Any]:
    key = (method, path)
    success = "201" if key in _CREATED else "202" if key in _ACCEPTED else "200"
    error: dict[str, Any] = {"content": {"application/json": {"schema": ERROR}}}
    op: dict[str, Any] = {
        # From the path: one handler serves two paths (a role's configuration).
        "operationId": f"kyros_{method.lower()}_{re.sub('[^a-z0-9]+', '_', path.lower()).strip('_')}",
        "tags": ["kyros"],
        "summary": (handler.__doc__ or handler.__name__).strip().splitlines()[0],
        "x-rate-limit-class": limit_class, "x-scope": scope, "security": [{"bearer": [scope]}, {"apiKey": [scope]}],
        "responses": {success: {"description": "Success", "content": {"application/json": {
            "schema": _envelope(_DATA.get(key, _OBJ))}}},
            **{str(c): {"description": _REASONS[c], **error} for c in _codes(method, path)}},
    }
    if path == "/ws":
        op["responses"] = {"101": {"description": "WebSocket (auth, subscribe; task_progress, escalation_status, "
                                                  "system_alerts)"},
                           **{c: op["responses"][c] for c in ("401", "403", "422", "429")}}  # 422: not an upgrade
    parameters = [{"name": n, "in": "path", "required": True, "schema": _STR} for n in _PARAM.findall(path)]
    parameters += _QUERY.get(key, [])
    if parameters:
        op["parameters"] = parameters
    body = _BODIES.get(key) or (bodies.get(key) if key in _NATIVE_BODIES else None)
    if body is not None:
        op["requestBody"] = {"required": method != "DELETE", "content": {"application/json": {"schema": body}}}
    return op


def paths(prefix: str, routes: Iterable[tuple[Any, ...]], native_bodies: Mapping[tuple[str, str], Any]
          ) -> dict[str, dict[str, Any]]:
    """The OpenAPI paths of the Kyros ``routes`` under ``prefix``; a route the native API has
    too (webhooks) takes the native request body's schema."""
    out: dict[str, dict[str, Any]] = {}
    for method, path, handler, scope, limit_class in routes:
        out.setdefault(prefix + path, {})[method.lower()] = _operation(method, path, handler, scope, limit_class,
                                                                       native_bodies)
    return out
