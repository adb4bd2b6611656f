"""GET /api/openapi.json: an OpenAPI 3.1 document built from the route table itself.

routes.py hands the table over (openapi_route.describe; neither module imports routes.py),
so a route cannot be missing from the document.  The document spells out the request bodies
and query parameters from the validation rules, the security scheme and scope of each route,
the status codes each route answers with, and the one error envelope on every failure.  The
response schemas are strict enough to be checked: scripts/test-api-schema fuzzes a real daemon
against this document (schemathesis) and fails on any response it does not describe.  It is
built once, on the first request, and then served as it is (openapi_route.py), and this module
is imported only then: its schemas are ~0.2 MB resident that an idle daemon does not need.
"""

from __future__ import annotations

import re
from typing import Any

from .. import __version__
from ..audit import EVENTS as AUDIT_EVENTS, LOG_LEVELS
from ..keys import SCOPES
from ..ratelimit import ENDPOINT_CLASSES
from ..tenancy import DURATIONS
from ..security_request import MAX_BLOCK_HOURS

_PARAM = re.compile(r"{([^}]+)}")

ERROR = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {
        "success": {"const": False},
        "error": {
            "type": "object",
            "required": ["code", "type", "message", "request_id"],
            "properties": {
                "code": {"type": "integer"}, "type": {"type": "string"}, "message": {"type": "string"},
                "request_id": {"type": ["string", "null"]},
                "details": {"type": "array", "items": {"type": "object", "properties": {
                    "field": {"type": "string"}, "message": {"type": "string"}}}},
                "retry_after": {"type": "integer"}, "your_ip": {"type": "string"},
            },
        },
    },
}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


_STR, _INT, _NUM, _BOOL, _ARR, _OBJ = ({"type": t} for t in ("string", "integer", "number", "boolean", "array",
                                                                "object"))
_TIME = {"type": ["string", "null"]}  # ISO 8601 UTC, null when it has not happened
_OK = {"const": True}
_STATUS = {"type": "string", "enum": ["spawning", "queued", "running", "completed", "failed", "cancelled"]}
_PAGINATION = _obj(["total", "limit", "offset"], total=_INT, limit=_INT, offset=_INT)
_SPAWNED = _obj(["success", "agent_id", "model", "status", "estimated_cost"], success=_OK, agent_id=_STR,
                model=_STR, status=_STATUS, estimated_cost=_NUM)
_AGENT = _obj(["agent_id", "model", "status", "task", "created", "result", "cost", "estimated_cost", "priority",
               "error"], agent_id=_STR, model=_STR, status=_STATUS, task=_STR, created=_TIME,
              result={"type": ["string", "null"]}, cost={"type": ["number", "null"]}, estimated_cost=_NUM,
              priority=_STR, error={"type": ["string", "null"]}, api_key=_STR,
              project_id={"type": ["string", "null"]}, attempts=_INT,
              # estimated at spawn; charged and refunded (the unspent estimate) once it ended, else null
              charges=_obj(["estimated", "charged", "refunded"], estimated=_NUM,
                           charged={"type": ["number", "null"]}, refunded={"type": ["number", "null"]}),
              timeline=_obj(["created", "queued", "started", "completed"], created=_TIME, queued=_TIME,
                            started={"type": ["string", "null"]}, completed={"type": ["string", "null"]}),
              # the models fallen back to, to reach served_by ([]: the model asked for); null: none answered
              fallbacks={"type": ["array", "null"], "items": _STR})
_LISTED = _obj(["agent_id", "model", "status", "task", "created_at", "estimated_cost", "error"], agent_id=_STR,
               model=_STR, status=_STATUS, task=_STR, created_at=_TIME, estimated_cost=_NUM,
               actual_cost={"type": ["number", "null"]}, error={"type": ["string", "null"]}, api_key=_STR,
               project_id={"type": ["string", "null"]},
               charged_cost={"type": ["number", "null"], "description": "what it was charged once it ended "
                                                                          "(0: nothing billed); null while live"})
_NULL_NUM, _NULL_STR = {"type": ["number", "null"]}, {"type": ["string", "null"]}
# A key's own budget in its current period (null: it has none): GET /keys, /keys/{key_id}, /keys/me.
_KEY_BUDGET = {"type": ["object", "null"], "required": ["max_budget", "budget_duration", "spend", "reserved",
                                                        "budget_remaining", "period_start", "resets_at"],
               "properties": {"max_budget": _NUM, "budget_duration": {"type": "string", "enum": list(DURATIONS)},
                              "spend": _NUM, "reserved": _NUM, "budget_remaining": _NUM, "period_start": _TIME,
                              "resets_at": {"type": ["string", "null"], "format": "date-time"}}}
# The limit fields of POST /keys and PATCH /keys/{key_id} (null: none of its own / clear it).
_KEY_LIMITS = {
    "max_budget": {"type": ["number", "null"], "minimum": 0, "maximum": 1_000_000},
    "budget_duration": {"type": ["string", "null"], "enum": [*DURATIONS, None]},
    "models": {"type": ["array", "null"], "minItems": 1, "items": _STR},
    "max_concurrency": {"type": ["integer", "null"], "minimum": 1, "maximum": 100_000},
    "limits": {"type": ["object", "null"], "propertyNames": {"enum": list(ENDPOINT_CLASSES)},
               "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 1_000_000}},
    "expires_at": {"type": ["string", "null"], "format": "date-time"},
    "metadata": {"type": ["object", "null"], "description": "free-form labels, at most 4096 bytes as JSON"},
}
_KEY = _obj(["key_id", "name", "scopes", "status", "require_signature", "created_at"], key_id=_STR, name=_STR,
            scopes={"type": "array", "items": _STR}, status=_STR, require_signature=_BOOL, created_at=_TIME,
            max_budget=_NULL_NUM, budget_duration=_NULL_STR, models={"type": ["array", "null"], "items": _STR},
            max_concurrency={"type": ["integer", "null"]}, limits={"type": ["object", "null"]}, metadata=_OBJ,
            project_id=_NULL_STR, budget=_KEY_BUDGET)
_NEW_KEY = _obj(["success", "key_id", "name", "token", "secret", "scopes", "require_signature"], success=_OK,
                key_id=_STR, name=_STR, token=_STR, secret=_STR, webhook_secret=_STR,
                scopes={"type": "array", "items": _STR}, require_signature=_BOOL)
_WHITELIST = _obj(["allowed_ips", "enforce", "log_violations"], allowed_ips={"type": "array", "items": _STR},
                  enforce=_BOOL, log_violations=_BOOL)
_BLOCK = _obj(["ip", "reason", "blocked_at", "expires_at"], ip=_STR, reason=_STR, blocked_at=_TIME,
              expires_at=_TIME)
_AUDIT = _obj(["enabled", "log_level", "retention_days", "include_request_body", "include_response_body", "events"],
              enabled=_BOOL, log_level=_STR, retention_days=_INT, include_request_body=_BOOL,
              include_response_body=_BOOL, events={"type": "array", "items": _STR})
_WEBHOOK = _obj(["id", "webhook_id", "url", "sink", "events", "status", "created_at"], id=_STR, webhook_id=_STR,
                url=_STR, sink=_STR, events={"type": "array", "items": _STR}, status=_STR, created_at=_TIME)
_ONE_WEBHOOK = {**_WEBHOOK, "required": ["success", "data", *_WEBHOOK["required"]],
                "properties": {**_WEBHOOK["properties"], "success": _OK, "data": _WEBHOOK}}
_DONE = _obj(["success", "message"], success=_OK, message=_STR)
_HEALTH = _obj(["status", "reasons", "version", "uptime_seconds", "error_rate", "models_configured", "agents",
                "providers"],
               status={"type": "string", "enum": ["healthy", "degraded", "unhealthy"]},
               reasons={"type": "array", "items": _STR}, version=_STR,
               uptime_seconds=_INT, error_rate=_NUM, models_configured=_INT, agents=_OBJ,
               providers={"type": "object", "additionalProperties": _obj(
                   ["state", "available", "status"], state={"type": "string", "enum": ["closed", "open", "half_open"]},
                   available=_BOOL, status={"type": "string", "enum": ["available", "unconfigured", "unavailable"]})})

# The success body of each route this module knows; any other route answers a JSON object.
RESULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/spawn"): _SPAWNED,
    ("POST", "/spawn-team"): {**_SPAWNED, "required": ["success", "agent_id", "team", "models", "status",
                                                       "estimated_cost", "members"]},
    ("POST", "/spawn-batch"): _obj(["success", "count", "agents"], success=_OK, count=_INT,
                                   agents={"type": "array", "items": _SPAWNED}),
    ("GET", "/agents"): _obj(["data", "pagination", "links"], data={"type": "array", "items": _LISTED},
                             pagination=_PAGINATION, links=_obj(["self", "first", "last"])),
    ("GET", "/agents/active"): _obj(["agents", "count"], agents=_ARR, count=_INT),
    ("GET", "/agent/{agent_id}"): _AGENT,
    ("GET", "/agent/{agent_id}/deliveries"): _obj(["agent_id", "data"], agent_id=_STR, data={"type": "array", "items": _obj(
        ["webhook_id", "url", "delivery_id", "event", "status", "attempts"], webhook_id=_STR, url=_STR,
        delivery_id=_STR, event={"type": ["string", "null"]}, status=_STR, attempts=_INT)}),
    ("DELETE", "/agent/{agent_id}"): _obj(["success", "message", "agent_id", "refund"], success=_OK, message=_STR,
                                          agent_id=_STR, refund=_NUM),
    ("DELETE", "/agent/{agent_id}/data"): _obj(["success", "message", "agent_id"], success=_OK, message=_STR,
                                               agent_id=_STR),
    ("GET", "/health"): _HEALTH,
    ("GET", "/openapi.json"): _obj(["openapi", "info", "paths"], openapi=_STR, info=_OBJ, paths=_OBJ),
    ("GET", "/plugins"): _obj(["plugins", "providers"], plugins=_ARR, providers=_OBJ),
    ("GET", "/metrics/timeseries"): _obj(
        ["metric", "granularity", "period", "buckets", "series"], metric=_STR, period=_STR,
        granularity={"type": "string", "enum": ["hour", "day"]}, buckets={"type": "array", "items": _TIME},
        series={"type": "array", "items": _obj(
            ["label", "count", "sum"], label=_STR, count={"type": "array", "items": _INT},
            sum={"type": "array", "items": _NUM}, p50={"type": "array", "items": {"type": ["number", "null"]}},
            p95={"type": "array", "items": {"type": ["number", "null"]}})}),
    ("GET", "/rate-limits"): _obj(["limits", "requests", "budget"], limits=_OBJ, requests=_OBJ, budget=_OBJ),
    ("GET", "/metrics"): _obj(["agents", "budget"], agents=_OBJ, budget=_OBJ),
    ("POST", "/keys"): _NEW_KEY,
    ("GET", "/keys"): _obj(["keys", "count"], keys={"type": "array", "items": _KEY}, count=_INT),
    ("GET", "/keys/me"): _KEY,
    ("GET", "/keys/{key_id}"): _KEY,
    ("PATCH", "/keys/{key_id}"): _obj(["success", "changed", "key"], success=_OK,
                                      changed={"type": "array", "items": _STR}, key=_KEY),
    ("DELETE", "/keys/{key_id}"): _obj(["success", "message", "key"], success=_OK, message=_STR, key=_KEY),
    ("POST", "/keys/{key_id}/rotate"): {**_NEW_KEY, "required": [*_NEW_KEY["required"], "replaces",
                                                                   "old_key_expires_at"]},
    ("POST", "/keys/{key_id}/webhook-secret/rotate"): _obj(
        ["success", "key_id", "webhook_secret", "pending_webhooks_resigned"], success=_OK, key_id=_STR,
        webhook_secret=_STR, pending_webhooks_resigned=_INT),
    ("GET", "/security/ip-whitelist"): _WHITELIST,
    ("PUT", "/security/ip-whitelist"): {**_WHITELIST, "required": ["success", *_WHITELIST["required"]],
                                        "properties": {**_WHITELIST["properties"], "success": _OK}},
    ("POST", "/security/block-ip"): {**_BLOCK, "required": ["success", *_BLOCK["required"]],
                                     "properties": {**_BLOCK["properties"], "success": _OK}},
    ("GET", "/security/blocked-ips"): _obj(["blocked", "count"], blocked={"type": "array", "items": _BLOCK},
                                           count=_INT),
    ("DELETE", "/security/block-ip/{ip}"): _DONE,
    ("POST", "/security/audit"): {**_AUDIT, "required": ["success", *_AUDIT["required"]],
                                  "properties": {**_AUDIT["properties"], "success": _OK}},
    ("GET", "/security/audit"): _obj(["data", "pagination"], data=_ARR, pagination=_PAGINATION),
    ("POST", "/webhooks"): _ONE_WEBHOOK,
    ("GET", "/webhooks"): _obj(["success", "data", "webhooks", "count"], success=_OK,
                               data={"type": "array", "items": _WEBHOOK}, webhooks=_ARR, count=_INT),
    ("GET", "/webhooks/{webhook_id}"): _ONE_WEBHOOK,
    ("PUT", "/webhooks/{webhook_id}"): _ONE_WEBHOOK,
    ("DELETE", "/webhooks/{webhook_id}"): _obj(["success", "message", "webhook_id"], success=_OK, message=_STR,
                                               webhook_id=_STR),
    ("GET", "/webhooks/{webhook_id}/deliveries"): _obj(["data", "pagination"], data=_ARR, pagination=_PAGINATION),
    # A reload's answer (reload.py): what changed, what needs a restart, notes.
    ("POST", "/admin/reload"): _obj(["success", "reloaded", "source", "message"], success=_OK, reloaded=_BOOL,
                                    source=_STR, message=_STR, changed=_OBJ,
                                    needs_restart={"type": "array", "items": _obj(
                                        ["key", "running", "in_file", "why"], key=_STR, why=_STR)},
                                    notes={"type": "array", "items": _STR}),
    ("GET", "/events"): _obj(["data", "pagination"], data={"type": "array", "items": _obj(
        ["event", "timestamp", "data", "id"], event=_STR, timestamp=_STR, data=_OBJ, id=_INT)},
        pagination=_obj(["cursor", "has_more", "limit"], cursor=_STR, has_more=_BOOL, limit=_INT)),
}
# Projects (project_request.py, projects.py): budget scopes above keys.
_BUDGET_FIELDS = {"max_budget": _NULL_NUM, "budget_duration": _NULL_STR}
_PROJECT = _obj(["project_id", "name", "max_budget", "budget_duration", "metadata", "members", "created_at",
                 "updated_at", "budget"], project_id=_STR, name=_STR, **_BUDGET_FIELDS, metadata=_OBJ,
                members={"type": "array", "items": _STR}, created_at=_TIME, updated_at=_TIME,
                budget=_KEY_BUDGET)  # a project's budget has a key's shape
_MOVED = {"type": "array", "items": _obj(["key_id", "from_project_id"], key_id=_STR, from_project_id=_STR)}
_PROJECT_CHANGED = {**_PROJECT, "required": ["success", *_PROJECT["required"], "moved"],
                    "properties": {**_PROJECT["properties"], "success": _OK, "moved": _MOVED}}
RESULTS.update({
    ("POST", "/projects"): _PROJECT_CHANGED,
    ("GET", "/projects"): _obj(["projects", "count"], projects={"type": "array", "items": _PROJECT}, count=_INT),
    ("GET", "/projects/{project_id}"): _PROJECT,
    ("PATCH", "/projects/{project_id}"): {**_PROJECT_CHANGED, "required": [*_PROJECT_CHANGED["required"], "removed"],
                                          "properties": {**_PROJECT_CHANGED["properties"],
                                                         "removed": {"type": "array", "items": _STR}}},
    ("DELETE", "/projects/{project_id}"): _obj(["success", "message", "project_id", "released_keys"], success=_OK,
                                               message=_STR, project_id=_STR,
                                               released_keys={"type": "array", "items": _STR}),
})
_VARIANT = _obj(["count", "approval_rate", "avg_margin_pct"], count=_INT, approval_rate=_NUM, avg_margin_pct=_NUM)
RESULTS[("POST", "/orchestrator/experiment/results")] = _obj(
    ["success", "experiment_id", "status", "control", "test", "recommendation", "source", "period"], success=_OK,
    experiment_id=_STR, status={"type": "string", "enum": ["complete", "in_progress"]}, control=_VARIANT,
    test=_VARIANT, recommendation={"type": "string", "enum": ["roll_out", "discard", "inconclusive"]},
    source=_STR, period=_obj(["from", "to", "days"], to=_STR, days=_INT, **{"from": _STR}))
# Success statuses other than 200.
CREATED = {("POST", "/keys"), ("POST", "/keys/{key_id}/rotate"), ("POST", "/security/block-ip"),
           ("POST", "/webhooks"), ("POST", "/pricing/webhook"), ("POST", "/projects"), ("POST", "/tasks"),
           ("POST", "/escalations")}
ACCEPTED = {("POST", "/webhooks/{webhook_id}/test"),
            ("POST", "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver")}
# Refusals beyond the common ones (see _error_codes).
ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("POST", "/spawn"): (402,), ("POST", "/spawn-team"): (402,), ("POST", "/spawn-batch"): (402,),
    ("DELETE", "/agent/{agent_id}"): (409,), ("DELETE", "/agent/{agent_id}/data"): (409,),
    ("POST", "/pricing/exceptions/{exception_id}/close"): (409,),
    ("PATCH", "/projects/{project_id}"): (409,),  # a name another project has
    ("POST", "/orchestrator/experiment/results"): (404,),  # no decision recorded for the experiment
    # Tasks: starting a step reserves its budget (402); a task or escalation in the wrong state (409);
    # an escalation names its task (404).
    ("POST", "/tasks"): (402,), ("POST", "/tasks/{task_id}/submit"): (402,),
    ("PUT", "/tasks/{task_id}"): (409,), ("DELETE", "/tasks/{task_id}"): (409,),
    ("POST", "/escalations"): (404,), ("POST", "/escalations/{esc_id}/decision"): (409,),
    ("POST", "/admin/reload"): (422,),  # the config file has problems: each one in details, nothing changed
}
_LIMIT = {"type": "integer", "minimum": 1}
_OFFSET = {"type": "integer", "minimum": 0, "maximum": 10**18 - 1}  # SQLite's integers are 64-bit
_DAY = {"type": "string", "format": "date"}
_GROUP_BY = "^ *(key|project|model|day|hour) *(, *(key|project|model|day|hour) *)*$"  # billing.group_by


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _query_params() -> dict[tuple[str, str], list[dict[str, Any]]]:
    from ..agent_query import MAX_LIMIT, SORTABLE
    from ..audit import EVENTS
    from ..events import EVENT_TYPES
    from ..pricing_history import MAX_DAYS
    from ..timeseries import GRANULARITIES as TS_GRANULARITIES, METRICS as TS_METRICS
    sort = {"type": "string", "enum": [p + s for s in SORTABLE for p in ("", "-")]}
    history_days = {"type": "integer", "minimum": 1, "maximum": MAX_DAYS}
    return {
        ("GET", "/agents"): [_query("limit", {**_LIMIT, "maximum": MAX_LIMIT}), _query("offset", _OFFSET),
                             _query("per_page", {**_LIMIT, "maximum": MAX_LIMIT, "description": "limit's other name"}),
                             _query("page", {"type": "integer", "minimum": 1, "maximum": (10**18 - 1) // MAX_LIMIT,
                                             "description": "1, 2, ...: offset (page - 1) x limit; not with "
                                                            "offset or cursor"}),
                             _query("cursor", {"type": "string", "maxLength": 512, "description":
                                               "pagination.next_cursor of the page before (same key, sort and "
                                               "filters); not with offset or page"}),
                             _query("sort", sort), _query("status", _STATUS), _query("model", _STR),
                             _query("filter", {"type": "string", "description": "a JSON object of filters"}),
                             _query("include_members", _BOOL),
                             _query("api_key", {"type": "string", "description": "the spawning key's id: narrows "
                                                "a listing (a key without admin:read sees only its own)"})],
        ("GET", "/events"): [_query("limit", {**_LIMIT, "maximum": 500}), _query("cursor", _STR),
                             _query("types", {"type": "string", "enum": sorted(EVENT_TYPES)})],
        ("GET", "/events/stream"): [_query("types", {"type": "string", "enum": sorted(EVENT_TYPES)}),
                                    _query("last_event_id", _OFFSET)],
        ("GET", "/security/audit"): [_query("event", {"type": "string", "enum": list(EVENTS)}),
                                     _query("severity", _STR), _query("api_key_id", _STR),
                                     _query("from", {"type": "string", "format": "date-time"}),
                                     _query("to", {"type": "string", "format": "date-time"}),
                                     _query("limit", {**_LIMIT, "maximum": 500}), _query("offset", _OFFSET)],
        ("GET", "/models"): [_query("include", {"type": "string", "pattern": "^ *(pricing|performance) *(, *(pricing|"
                                                "performance) *)*$", "description": "each model's prices and its "
                                                "live performance (the last 24 h), comma-separated"})],
        ("GET", "/metrics/timeseries"): [
            {**_query("metric", {"type": "string", "enum": list(TS_METRICS)}), "required": True},
            _query("granularity", {"type": "string", "enum": list(TS_GRANULARITIES), "default": "hour"}),
            _query("period", {"type": "string", "pattern": "^[1-9][0-9]{0,4}[hd]$",
                              "description": "48h, 30d: at least one bucket, at most 7d hourly, 400d daily"})],
        ("GET", "/billing/usage"): [_query("from", _DAY), _query("to", _DAY), _query("by_key", _BOOL),
                                    _query("group_by", {"type": "string", "pattern": _GROUP_BY, "description":
                                           "rows per group instead of the totals: a comma-separated list of "
                                           "key, project, model, day, hour"})],
        **{("GET", f"/pricing/{name}"): [_query("days", history_days)]
           for name in ("weekly-metrics", "weekly-comparison")},
        ("GET", "/pricing/experiment-summary"): [_query("days", history_days),
                                                 _query("experiment", {"type": "string", "maxLength": 64})],
        ("GET", "/pricing/exceptions"): [_query("status", {"type": "string", "enum": ["open", "closed", "all"]}),
                                         _query("limit", {**_LIMIT, "maximum": 1000})],
        **_task_queries(),
        ("GET", "/webhooks/{webhook_id}/deliveries"): [
            _query("limit", {**_LIMIT, "maximum": 200}), _query("offset", _OFFSET),
            _query("status", {"type": "string", "enum": ["pending", "delivered", "failed"]})],
    }


def _task_queries() -> dict[tuple[str, str], list[dict[str, Any]]]:
    from ..task_record import ESC_STATUSES, PRIORITIES, STATUSES
    from ..task_request import COST_GROUPS, COST_PERIODS, MAX_LIMIT, SORTS
    page = [_query("limit", {**_LIMIT, "maximum": MAX_LIMIT}), _query("offset", {**_OFFSET, "maximum": 10**9})]
    return {
        ("GET", "/tasks"): [_query("status", {"type": "string", "enum": list(STATUSES)}),
                            _query("type", {"type": "string", "maxLength": 200}),
                            _query("priority", {"type": "string", "enum": list(PRIORITIES)}),
                            _query("assignee_role", {"type": "string", "maxLength": 200}),
                            _query("created_by", {"type": "string", "maxLength": 200}),
                            _query("tags", {"type": "string", "description": "comma-separated: tasks with all"}),
                            _query("sort_by", {"type": "string", "enum": list(SORTS)}),
                            _query("sort_order", {"type": "string", "enum": ["asc", "desc"]}), *page],
        ("GET", "/tasks/costs"): [_query("period", {"type": "string", "enum": list(COST_PERIODS)}),
                                  _query("group_by", {"type": "string", "enum": list(COST_GROUPS)})],
        ("GET", "/escalations"): [_query("status", {"type": "string", "enum": ["pending", *ESC_STATUSES]}),
                                  _query("task_id", {"type": "string", "maxLength": 100}),
                                  _query("from_date", {"type": "string", "format": "date-time"}),
                                  _query("to_date", {"type": "string", "format": "date-time"}), *page],
    }


def _task_bodies(config: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Request bodies of the task routes (task_request.py checks them)."""
    from ..task_record import PRIORITIES
    from ..task_request import MAX_ITEM, MAX_ITEMS, MAX_TEXT, MAX_TITLE
    text = {"type": "string", "maxLength": MAX_TEXT}
    strings = {"type": "array", "maxItems": MAX_ITEMS, "items": {"type": "string", "minLength": 1,
                                                                  "maxLength": MAX_ITEM}}
    when = {"type": "string", "format": "date-time"}
    priority = {"type": "string", "enum": list(PRIORITIES)}
    task = {"title": {"type": "string", "minLength": 1, "maxLength": MAX_TITLE, "pattern": "\\S"},
            "description": text, "type": {"type": "string", "enum": list(config.workflows)}, "priority": priority,
            "assignee_role": {"type": "string", "enum": list(config.roles)}, "files_to_modify": strings,
            "acceptance_criteria": strings, "dependencies": strings, "tags": strings, "deadline": when,
            "metadata": {"type": "object"}}
    preferences = {"type": "object", "properties": {
        "model": {"type": "string", "enum": list(config.models)}, "temperature": {"type": "number", "minimum": 0,
                                                                                  "maximum": 2},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        "timeout": {"type": "number", "minimum": 1, "maximum": config.runtime.max_timeout}}}
    return {
        ("POST", "/tasks"): {"type": "object", "required": ["title", "type"],
                             "properties": {**task, "start": {"type": "boolean", "default": True}}},
        ("PUT", "/tasks/{task_id}"): {"type": "object", "minProperties": 1, "properties": {
            **{k: task[k] for k in ("title", "description", "priority", "tags", "deadline", "metadata",
                                    "acceptance_criteria")},
            "results": {}, "feedback": text, "status": {"type": "string", "enum": ["completed", "cancelled"]},
            "reason": text}},
        ("DELETE", "/tasks/{task_id}"): {"type": "object", "properties": {"reason": text}},
        ("POST", "/tasks/{task_id}/submit"): {"type": "object", "required": ["role"], "properties": {
            "role": {"type": "string", "enum": list(config.roles)}, "context": {"type": "object"},
            "preferences": preferences}},
        ("PUT", "/roles/{role}"): {"type": "object", "minProperties": 1, "description": "[roles.<name>] keys "
                                   "(docs/configuration.md), or Kyros's available_models, preferences, "
                                   "escalation_rules", "properties": {
                                       "default_model": {"type": "string", "enum": list(config.models)},
                                       "models": {"type": "array", "items": {"type": "string"}},
                                       "available_models": {"type": "array", "items": {"type": "string"}},
                                       "capabilities": {"type": "array", "items": {"type": "string"}},
                                       "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                                       "max_tokens": {"type": "integer", "minimum": 1},
                                       "timeout": {"type": "number", "exclusiveMinimum": 0},
                                       "escalation": {"type": "object"}, "escalation_rules": {"type": "object"},
                                       "preferences": {"type": "object"}, "constraints": {"type": "object"},
                                       "enabled": {"type": "boolean"}, "review": {"type": "boolean"}}},
        ("POST", "/escalations"): {"type": "object", "required": ["task_id", "reason"], "properties": {
            "task_id": {"type": "string", "maxLength": 100}, "reason": {**text, "minLength": 1, "pattern": "\\S"},
            "original_model": {"type": "string", "enum": list(config.models)},
            "target_model": {"type": "string", "enum": list(config.models)}, "context": {"type": "object"},
            "estimated_cost": {"type": "number", "minimum": 0, "maximum": 1_000_000}, "priority": priority}},
        ("POST", "/escalations/{esc_id}/decision"): {"type": "object", "required": ["decision"], "properties": {
            "decision": {"type": "string", "enum": ["approved", "rejected"]}, "reason": text,
            "approver_comments": text}},
    }


def _error_codes(method: str, path: str, public: bool) -> list[int]:
    """The refusals a route can answer with, each in the error envelope."""
    if public:  # only the IP checks run
        codes = {403}
    else:  # 400 bad input, 401 no/bad key or signature, 403 scope or IP, 413 body too large, 429 rate limit
        codes = {400, 401, 403, 413, 429}
        if "{" in path:
            codes.add(404)
        if method in ("POST", "PUT"):
            codes.add(409)  # an Idempotency-Key reused with another body
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            codes.add(507)  # the state dir's disk is full: the change was not saved
    codes.update(ERRORS.get((method, path), ()))
    return sorted(codes)


def _responses(method: str, path: str, public: bool) -> dict[str, Any]:
    success = "201" if (method, path) in CREATED else "202" if (method, path) in ACCEPTED else "200"
    result = RESULTS.get((method, path), {"type": "object"})
    responses: dict[str, Any] = {success: {"description": "Success",
                                           "content": {"application/json": {"schema": result}}}}
    for code in _error_codes(method, path, public):
        responses[str(code)] = {"$ref": f"#/components/responses/Error{code}"}
    if path == "/health":  # nothing can serve: the same body, so monitors see why
        responses["503"] = {"description": "Unhealthy", "content": {"application/json": {"schema": _HEALTH}}}
    elif path == "/events/stream":
        responses["200"] = {"description": "Server-Sent Events, until the client leaves",
                            "content": {"text/event-stream": {"schema": _STR}}}
    elif path == "/ws":
        # The key may also come in the first message ({"type":"auth"}), checked the same way.
        responses = {"101": {"description": "WebSocket (Kyros messages)"},
                     **{code: responses[code] for code in ("400", "401", "403", "429") if code in responses}}
    return responses


_REASONS = {400: "Bad request or validation error", 401: "No, invalid or revoked key, or a bad signature",
            402: "Budget exceeded", 403: "Missing scope, or the IP is blocked or not allowed",
            404: "Not found", 409: "Conflict", 413: "Request body too large",
            422: "The config file has problems (each in details); the running configuration stays",
            429: "Rate limited",
            507: "Not enough disk space in the state dir: nothing was changed"}


def _spawn_schema(config: Any) -> dict[str, Any]:
    rt = config.runtime
    return {
        "type": "object",
        "required": ["model", "task"],
        "properties": {
            "model": {"type": "string", "enum": list(config.models)},
            "task": {"type": "string", "minLength": 1, "maxLength": rt.max_task_chars},
            "priority": {"type": "string", "enum": ["low", "normal", "high"], "default": "normal"},
            "timeout": {"type": "number", "minimum": 1, "maximum": rt.max_timeout, "default": rt.default_timeout},
            "webhook_url": {"type": "string", "format": "uri"},
            "privacy": {"type": "object", "properties": {"retention_days": {"type": "number", "exclusiveMinimum": 0,
                                                                            "maximum": 3650}}},
        },
    }


OPTIONAL_BODIES = {("DELETE", "/keys/{key_id}"), ("DELETE", "/tasks/{task_id}")}
# http(s) with a host, or file:///absolute/path for the file sink (webhook_request.check_url).
_WEBHOOK_URL = {"type": "string", "maxLength": 2000, "pattern": "^(https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/|file:///)"}


def _hook_events() -> dict[str, Any]:
    from ..events import EVENT_TYPES, LIVE_ONLY
    return {"type": "array", "minItems": 1, "items": {"type": "string", "enum": [
                "*", *(e for e in EVENT_TYPES if e not in LIVE_ONLY)]},
            "description": "event types, '*' for all"}


_HOOK_EVENTS = _hook_events()
_HOOK_HEADERS = {"type": "object", "maxProperties": 20, "additionalProperties": {"type": "string", "maxLength": 1024},
                 "description": "sent with each delivery; not Host, Content-Length, Content-Type, hop-by-hop or "
                                "X-J1MSKY-* headers"}


def _pricing_bodies(config: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """The fields api/pricing.py and api/orchestrator.py read (JSON; form fields are accepted too)."""
    from ..pricing import COMPLEXITIES
    from ..orchestrator import PRIORITIES
    from ..pricing_history import MAX_DAYS, RESOLUTIONS
    from .pricing import MAX_SCENARIOS, MAX_TOKENS, VARIANTS
    policy = config.pricing.policy
    task = {"task_type": {"type": "string", "minLength": 1, "maxLength": 64},
            "estimated_tokens": {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS}}
    tokens = {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS}
    quote = {"model": {"type": "string", "enum": list(config.models)},
             "complexity": {"type": "string", "enum": list(policy.complexity_markup)},
             "estimated_input": tokens, "estimated_output": tokens,
             "segment": {"type": "string", "enum": list(policy.segment_adjustments)}}
    delivery = {"delivery_type": {"type": "string", "enum": list(policy.margin_thresholds)}}
    required = ["model", "complexity", "estimated_input", "estimated_output"]
    one: dict[str, Any] = {"type": "object", "required": required, "properties": {**quote, **delivery}}
    return {
        ("POST", "/pricing/quote"): one,
        ("POST", "/pricing/decision"): {**one, "properties": {
            **one["properties"], "approver": {"type": "string", "minLength": 1, "maxLength": 100},
            "variant": {"type": "string", "enum": list(VARIANTS)},
            "experiment": {"type": "string", "minLength": 1, "maxLength": 64}}},
        ("POST", "/pricing/batch-quotes"): {"type": "object", "required": required, "properties": {
            **{k: v for k, v in quote.items() if k != "segment"}, **delivery}},
        ("POST", "/pricing/scenario"): {"type": "object", "required": ["scenarios"], "properties": {
            **delivery, "scenarios": {"type": "array", "minItems": 1, "maxItems": MAX_SCENARIOS,
                                      "items": {"type": "object", "required": required, "properties": quote}}}},
        ("POST", "/orchestrator/recommend-model"): {"type": "object", "properties": {
            **task, "complexity": {"type": "string", "enum": list(COMPLEXITIES)},
            "priority": {"type": "string", "enum": list(PRIORITIES)}}},
        ("POST", "/models/select"): {"type": "object", "properties": task},
        ("POST", "/orchestrator/experiment/results"): {"type": "object", "required": ["experiment_id"], "properties": {
            "experiment_id": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "\\S",
                              "description": "the experiment label given to POST /pricing/decision"},
            "days": {"type": "integer", "minimum": 1, "maximum": MAX_DAYS, "default": MAX_DAYS}}},
        ("POST", "/pricing/exceptions/{exception_id}/close"): {"type": "object", "required": ["resolution"],
                                                               "properties": {
            "resolution": {"type": "string", "enum": list(RESOLUTIONS)},
            "closed_by": {"type": "string", "minLength": 1, "maxLength": 100}}},
    }


def _project_bodies() -> dict[tuple[str, str], dict[str, Any]]:
    """The fields project_request.py reads; any other is refused (additionalProperties false)."""
    from ..project_request import MAX_MEMBERS
    from ..tenancy import DURATIONS
    keys: dict[str, Any] = {"type": "array", "maxItems": MAX_MEMBERS, "items": {"type": "string", "minLength": 1},
                            "description": "API key ids; a key in another project moves to this one"}
    fields: dict[str, Any] = {
        "name": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "\\S"},
        "max_budget": {"type": ["number", "null"], "minimum": 0, "maximum": 1_000_000,
                       "description": "USD per budget_duration; null: none"},
        "budget_duration": {"type": ["string", "null"], "enum": [*DURATIONS, None], "default": "1d"},
        "metadata": {"type": ["object", "null"], "description": "labels, at most 4096 bytes as JSON"},
        "members": {**keys, "type": ["array", "null"]}}
    return {
        ("POST", "/projects"): _closed(["name"], **fields),
        ("PATCH", "/projects/{project_id}"): {**_closed([], **fields, add_members=keys, remove_members=keys),
                                              "minProperties": 1},
    }


def _bodies(config: Any) -> dict[tuple[str, str], dict[str, Any]]:
    spawn = _spawn_schema(config)
    team = {**spawn, "required": ["team", "task"], "properties": {
        **{k: v for k, v in spawn["properties"].items() if k != "model"},
        "team": {"type": "string", "enum": list(config.teams)}}}
    return {
        **_pricing_bodies(config),
        **_task_bodies(config),
        ("POST", "/spawn"): spawn,
        ("POST", "/spawn-team"): team,
        ("POST", "/spawn-batch"): {"type": "object", "required": ["agents"], "properties": {
            "agents": {"type": "array", "minItems": 1, "maxItems": config.runtime.max_batch, "items": spawn}}},
        ("POST", "/keys"): {"type": "object", "required": ["name", "scopes"], "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "scopes": {"type": "array", "items": {"type": "string", "enum": list(SCOPES)}},
            "require_signature": {"type": "boolean"}, **_KEY_LIMITS}},
        ("PATCH", "/keys/{key_id}"): {"type": "object", "minProperties": 1, "additionalProperties": False,
                                      "properties": _KEY_LIMITS},
        ("POST", "/webhooks"): {"type": "object", "required": ["url"], "properties": {
            "url": _WEBHOOK_URL, "events": _HOOK_EVENTS,
            "event": {**_HOOK_EVENTS["items"], "description": "one event name: events [event] (not with events)"},
            "active": {"type": "boolean", "default": True, "description": "false: registered paused"},
            "status": {"type": "string", "enum": ["active", "paused"], "default": "active",
                       "description": "paused: registered paused (agrees with active when both are sent)"},
            "headers": _HOOK_HEADERS,
            "secret": {"type": "string", "minLength": 8, "maxLength": 256}, "sink": {"type": "string"},
            "description": {"type": "string", "maxLength": 500}}},
        ("PUT", "/webhooks/{webhook_id}"): {"type": "object", "properties": {
            "url": _WEBHOOK_URL, "events": _HOOK_EVENTS,
            "status": {"type": "string", "enum": ["active", "paused"]}, "active": {"type": "boolean"},
            "headers": _HOOK_HEADERS,
            "secret": {"type": "string", "minLength": 8, "maxLength": 256},
            "description": {"type": "string", "maxLength": 500}}},
        **_project_bodies(),
        ("DELETE", "/keys/{key_id}"): {"type": "object", "properties": {
            "reason": {"type": "string", "maxLength": 200}}},
        ("PUT", "/security/ip-whitelist"): {"type": "object", "required": ["allowed_ips"], "properties": {
            "allowed_ips": {"type": "array", "items": {"type": "string"}},
            "enforce": {"type": "boolean"}, "log_violations": {"type": "boolean"}}},
        ("POST", "/security/block-ip"): {"type": "object", "required": ["ip"], "properties": {
            "ip": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
            "reason": {"type": "string", "minLength": 1, "maxLength": 200},
            "duration_hours": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_BLOCK_HOURS}}},
        ("POST", "/security/audit"): {"type": "object", "additionalProperties": False, "properties": {
            "enabled": {"type": "boolean"}, "include_request_body": {"type": "boolean"},
            "include_response_body": {"type": "boolean"}, "log_level": {"type": "string", "enum": list(LOG_LEVELS)},
            "retention_days": {"type": "integer", "minimum": 1, "maximum": 3650},
            "events": {"type": "array", "items": {"type": "string", "enum": list(AUDIT_EVENTS)}}}},
    }


# -- the front door (/v1): OpenAI's shapes, its error body on every refusal ----------------------------
_OPENAI_ERROR = _obj(["error"], error=_obj(["message", "type", "param", "code"], message=_STR, type=_STR,
                                          param={"type": ["string", "null"]}, code={"type": ["string", "null"]}))
_OPENAI_MODEL = _obj(["id", "object", "created", "owned_by"], id=_STR, object={"const": "model"}, created=_INT,
                     owned_by=_STR)
_TOOL_CALL = _obj(["id", "type", "function"], id=_STR, type={"const": "function"},
                  function=_obj(["name", "arguments"], name=_STR, arguments=_STR))
_COMPLETION = _obj(
    ["id", "object", "created", "model", "choices", "usage"], id=_STR, object={"const": "chat.completion"},
    created=_INT, model=_STR, system_fingerprint=_STR,
    choices={"type": "array", "minItems": 1, "maxItems": 1, "items": _obj(
        ["index", "message", "finish_reason"], index=_INT, finish_reason=_STR,
        message=_obj(["role", "content"], role={"const": "assistant"}, content={"type": ["string", "null"]},
                     tool_calls={"type": "array", "items": _TOOL_CALL}))},
    usage=_obj(["prompt_tokens", "completion_tokens", "total_tokens"], prompt_tokens=_INT,
               completion_tokens=_INT, total_tokens=_INT))
_FRONT_DOOR_RESULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/chat/completions"): _COMPLETION,
    ("GET", "/v1/models"): _obj(["object", "data"], object={"const": "list"},
                                data={"type": "array", "items": _OPENAI_MODEL}),
    ("GET", "/v1/models/{name}"): _OPENAI_MODEL,
}
# Anthropic's Messages (/v1/messages): its shapes and error body.
_ANTHROPIC_ERROR = _obj(["type", "error"], type={"const": "error"}, error=_obj(
    ["type", "message"], type=_STR, message=_STR, details=_obj(["error_code"], error_code=_STR)))
_TEXT_BLOCK = _obj(["type", "text"], type={"const": "text"}, text=_STR)
_TOOL_USE = _obj(["type", "id", "name", "input"], type={"const": "tool_use"}, id=_STR, name=_STR, input=_OBJ)
_MESSAGE_USAGE = _obj(["input_tokens", "output_tokens"], input_tokens=_INT, output_tokens=_INT,
                      cache_creation_input_tokens=_INT, cache_read_input_tokens=_INT)
_FRONT_DOOR_RESULTS[("POST", "/v1/messages")] = _obj(
    ["id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"], id=_STR,
    type={"const": "message"}, role={"const": "assistant"}, model=_STR,
    content={"type": "array", "items": {"anyOf": [_TEXT_BLOCK, _TOOL_USE]}},
    stop_reason={"type": "string", "enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn",
                                            "refusal", "model_context_window_exceeded"]},
    stop_sequence={"type": ["string", "null"]}, usage=_MESSAGE_USAGE)
_FRONT_DOOR_RESULTS[("POST", "/v1/messages/count_tokens")] = _obj(
    ["input_tokens", "estimated"], input_tokens=_INT, estimated={"const": True})
# A call's refusals beyond a read's: an Idempotency-Key reused (409), a full disk (507), and the
# call's own ends (ChatFailed: every provider failed 502, the daemon stopped 503, timeout 504).
_CALL_ERRORS = (409, 502, 503, 504, 507)


def _chat_body(config: Any) -> dict[str, Any]:
    """The fields of a Chat Completions body this daemon reads (dialects/openai_chat.py checks
    them; any other field is refused, hence additionalProperties false)."""
    from ..dialects.openai_chat import DEFAULT_ONLY, IGNORED, MAX_STOP, MAX_TOOLS, MAX_USER

    def closed(required: list[str], **properties: Any) -> dict[str, Any]:
        return {**_obj(required, **properties), "additionalProperties": False}

    text_parts = {"type": "array", "items": closed(["type", "text"], type={"const": "text"}, text=_STR)}
    content = {"anyOf": [_STR, text_parts]}
    role = {r: {"const": r} for r in ("system", "developer", "user", "assistant", "tool")}
    message = {"oneOf": [
        *(closed(["role", "content"], role=role[r], content=content) for r in ("system", "developer", "user")),
        closed(["role"], role=role["assistant"], content={"anyOf": [_STR, text_parts, {"type": "null"}]},
               tool_calls={"type": "array", "items": _TOOL_CALL},
               # What the SDK sends back with an assistant message it was given: empty only.
               refusal={"type": "null"}, annotations={"type": "array", "maxItems": 0},
               audio={"type": "null"}, function_call={"type": "null"}),
        closed(["role", "tool_call_id", "content"], role=role["tool"], content=content,
               tool_call_id={"type": "string", "description": "the id of a tool call of an earlier message"})]}
    tool = closed(["type", "function"], type={"const": "function"}, function=closed(
        ["name"], name={"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, description=_STR,
        parameters=_OBJ, strict=_BOOL))
    kinds = {"a boolean": _BOOL, "a string": _STR, "an object": _OBJ}
    accepted = {name: {**kinds[kind], "description": f"accepted and ignored: {why}"}
                for name, (_, kind, why) in IGNORED.items()}
    refused = {name: {"description": f"refused unless null or its default: {why}"}
               for name, (_, why) in DEFAULT_ONLY.items()}
    return closed(["model", "messages"], **refused, **accepted,
                  model={"type": "string", "enum": list(config.models)},
                  messages={"type": "array", "minItems": 1, "items": message},
                  temperature={"type": "number", "minimum": 0, "maximum": 2},
                  top_p={"type": "number", "minimum": 0, "maximum": 1},
                  max_tokens={"type": "integer", "minimum": 1},
                  max_completion_tokens={"type": "integer", "minimum": 1},
                  stop={"anyOf": [{"type": "string", "minLength": 1},
                                  {"type": "array", "maxItems": MAX_STOP, "items": {"type": "string", "minLength": 1}}]},
                  n={"const": 1}, tools={"type": "array", "maxItems": MAX_TOOLS, "items": tool},
                  tool_choice={"anyOf": [{"type": "string", "enum": ["none", "auto", "required"]}, _OBJ]},
                  response_format=_obj(["type"], type={"type": "string",
                                                       "enum": ["text", "json_object", "json_schema"]},
                                       json_schema=_OBJ),
                  user={"type": "string", "maxLength": MAX_USER},
                  metadata={"type": "object", "maxProperties": 16, "additionalProperties": _STR},
                  stream=_BOOL, stream_options=closed([], include_usage=_BOOL, include_obfuscation=_BOOL))


def _closed(required: list[str], **properties: Any) -> dict[str, Any]:
    return {**_obj(required, **properties), "additionalProperties": False}


def _messages_body(config: Any, *, count: bool = False) -> dict[str, Any]:
    """The fields of a Messages body this daemon reads (dialects/anthropic_messages.py checks
    them; any other field is refused, hence additionalProperties false); ``count``:
    count_tokens', without max_tokens and the sampling fields.  Beyond the schema: a
    tool_result answers a tool_use of the turn before, only the final assistant turn may be
    empty, tool_choice any/tool needs tools."""
    text = {"type": "string", "minLength": 1}
    text_block = _closed(["type", "text"], type={"const": "text"}, text=text, cache_control=_OBJ)
    text_blocks = {"type": "array", "items": text_block}
    tool_use = _closed(["type", "id", "name", "input"], type={"const": "tool_use"}, id=text, name=text, input=_OBJ,
                       cache_control=_OBJ)
    result = _closed(["type", "tool_use_id"], type={"const": "tool_result"}, tool_use_id=text,
                     content={"anyOf": [_STR, text_blocks]}, is_error=_BOOL, cache_control=_OBJ)
    message = {"oneOf": [
        _closed(["role", "content"], role={"const": "user"}, content={"anyOf": [
            text, {"type": "array", "minItems": 1, "items": {"anyOf": [text_block, result]}}]}),
        _closed(["role", "content"], role={"const": "assistant"}, content={"anyOf": [
            _STR, {"type": "array", "items": {"anyOf": [text_block, tool_use]}}]})]}
    tool = _closed(["name", "input_schema"], name={"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                   description=_STR, input_schema=_obj(["type"], type={"const": "object"}), type={"const": "custom"},
                   cache_control=_OBJ)
    tool_choice = {"oneOf": [
        _closed(["type"], type={"type": "string", "enum": ["auto", "any", "none"]},
                disable_parallel_tool_use={"const": False}),
        _closed(["type", "name"], type={"const": "tool"}, name=text, disable_parallel_tool_use={"const": False})]}
    properties: dict[str, Any] = {
        "model": {"type": "string", "enum": list(config.models)},
        "messages": {"type": "array", "minItems": 1, "items": message},
        "system": {"anyOf": [_STR, text_blocks]}, "tools": {"type": "array", "items": tool},
        "tool_choice": tool_choice, "thinking": _closed(["type"], type={"const": "disabled"}),
        "cache_control": _OBJ}
    if not count:
        properties.update({
            "max_tokens": {"type": "integer", "minimum": 1},
            "stop_sequences": {"type": "array", "items": {"type": "string", "pattern": "\\S"}},
            "temperature": {"type": "number", "minimum": 0, "maximum": 1},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "metadata": _closed([], user_id={"type": ["string", "null"], "maxLength": 256}), "stream": _BOOL,
            "service_tier": {"type": "string", "enum": ["auto", "standard_only"]},
            "top_k": {"type": "null", "description": "refused unless null: no provider takes a top-k"}})
    return _closed(["model", "messages"] + ([] if count else ["max_tokens"]), **properties)


_FRONT_DOOR_BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/chat/completions"): _chat_body,
    ("POST", "/v1/messages"): _messages_body,
    ("POST", "/v1/messages/count_tokens"): lambda config: _messages_body(config, count=True),
}
_FRONT_DOOR_ERRORS = {"openai": _OPENAI_ERROR, "anthropic": _ANTHROPIC_ERROR}
# One server-sent event of a streamed call (stream: true), as contract testers read an event:
# its name (Anthropic's only) and its data, a JSON text.
_EVENT_DATA = {"type": "string", "contentMediaType": "application/json"}
_FRONT_DOOR_EVENTS = {
    "openai": _obj(["data"], data=_EVENT_DATA),
    "anthropic": _obj(["event", "data"], data=_EVENT_DATA, event={"type": "string", "enum": [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
        "message_stop", "ping", "error"]}),
}


def _front_door_operation(method: str, path: str, handler: Any, scope: str, limit_class: str,
                          config: Any, dialect: str = "openai") -> dict[str, Any]:
    error: dict[str, Any] = {"content": {"application/json": {"schema": _FRONT_DOOR_ERRORS[dialect]}}}
    success: dict[str, Any] = {"application/json": {"schema": _FRONT_DOOR_RESULTS[(method, path)]}}
    codes = [400, 401, 403, 404, 413, 429]
    operation: dict[str, Any] = {
        "operationId": f"front_door_{handler.__name__}_{method.lower()}", "tags": ["front door"],
        "summary": (handler.__doc__ or handler.__name__).strip().splitlines()[0],
        "x-rate-limit-class": limit_class, "x-scope": scope,
        "security": [{"bearer": [scope]}, {"apiKey": [scope]}],
    }
    if method == "POST":
        if limit_class == "spawn":  # a call (count_tokens is none: only the Idempotency-Key's refusals)
            success["text/event-stream"] = {"schema": _FRONT_DOOR_EVENTS[dialect]}  # stream: true
        codes += _CALL_ERRORS if limit_class == "spawn" else (409, 507)
        operation["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": _FRONT_DOOR_BODIES[(method, path)](config)}}}
    if "{" in path:
        operation["parameters"] = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                                   for n in _PARAM.findall(path)]
    operation["responses"] = {"200": {"description": "Success", "content": success},
                              **{str(c): {"description": _REASONS.get(c, "The call failed upstream"), **error}
                                 for c in codes}}
    return operation


def _root_operation(method: str, path: str, handler: Any, scope: str, content_type: str) -> dict[str, Any]:
    """A route at the root that answers in a format of its own (the Prometheus text format):
    a key with ``scope``, not rate-limited (docs/operations.md), the pipeline's refusals."""
    return {
        "operationId": f"{handler.__name__}_{method.lower()}",
        "summary": (handler.__doc__ or handler.__name__).strip().splitlines()[0],
        "x-scope": scope, "security": [{"bearer": [scope]}, {"apiKey": [scope]}],
        "responses": {"200": {"description": "Success", "content": {content_type: {"schema": _STR}}},
                      **{str(c): {"$ref": f"#/components/responses/Error{c}"} for c in (400, 401, 403, 413)}},
    }


def build(routes: Any, prefixes: tuple[str, ...], public: str, config: Any,
          front_door: Any = (), root: Any = (), mounted: Any = ()) -> dict[str, Any]:
    """``mounted``: (prefix, routes, paths function) of a dialect under its own prefix
    (Kyros: api/kyros/openapi.py), given the native bodies for the routes both have."""
    bodies = _bodies(config)
    query = _query_params()
    paths: dict[str, dict[str, Any]] = {}
    for prefix in prefixes:
        for method, path, handler, scope, limit_class in routes:
            operation: dict[str, Any] = {
                "operationId": f"{handler.__name__}{'_v1' if prefix.endswith('/v1') else ''}_{method.lower()}",
                "summary": (handler.__doc__ or handler.__name__.replace("_", " ")).strip().splitlines()[0],
                "x-rate-limit-class": limit_class,
                "responses": _responses(method, path, scope == public),
            }
            if scope == public:
                operation["security"] = []
            else:
                operation["security"] = [{"bearer": [scope]}, {"apiKey": [scope]}]
                operation["x-scope"] = scope
            parameters = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                          for n in _PARAM.findall(path)] + query.get((method, path), [])
            if parameters:
                operation["parameters"] = parameters
            body = bodies.get((method, path))
            if body is not None:
                operation["requestBody"] = {"required": (method, path) not in OPTIONAL_BODIES,
                                            "content": {"application/json": {"schema": body}}}
            paths.setdefault(prefix + path, {})[method.lower()] = operation
    for method, path, handler, scope, limit_class, dialect in front_door:
        paths.setdefault(path, {})[method.lower()] = _front_door_operation(method, path, handler, scope, limit_class,
                                                                             config, dialect.name)
    for method, path, handler, scope, content_type in root:
        paths.setdefault(path, {})[method.lower()] = _root_operation(method, path, handler, scope, content_type)
    for prefix, dialect_routes, describe_paths in mounted:
        paths.update(describe_paths(prefix, dialect_routes, bodies))
    return {
        "openapi": "3.1.0",
        "info": {"title": "J1MSKY API (j1mskyd)", "version": __version__,
                 "description": "Spawn and manage LLM agents on a Raspberry Pi."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "responses": {f"Error{code}": {"description": reason, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                for code, reason in _REASONS.items()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }
