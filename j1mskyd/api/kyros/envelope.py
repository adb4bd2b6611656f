"""The Kyros document's response envelope and error codes (its "Response Format" and
"Error Handling"), for every answer under /kyros, the pipeline's refusals included.

Success: ``{"success": true, "data", "message", "timestamp", "request_id"}``.  Failure:
``{"success": false, "error": {"code", "message", "details"}, "timestamp", "request_id"}``
where ``code`` is always one of the document's eleven codes (:data:`CODES`).  The HTTP status
is the daemon's, with one change: a request the daemon refuses as malformed (400) is the
document's ``VALIDATION_ERROR`` 422.  Statuses the document has no code for take the nearest
one (:data:`_BY_STATUS`); ``details.type`` keeps the daemon's own error type, so nothing is lost.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from ...errors import ApiError
from ..common import json_response, request_id_of

__all__ = ["CODES", "ENVELOPE", "KyrosEnvelope", "now_iso", "ok"]

# The document's table: code -> HTTP status.
CODES = {"UNAUTHORIZED": 401, "FORBIDDEN": 403, "NOT_FOUND": 404, "VALIDATION_ERROR": 422, "RATE_LIMITED": 429,
         "INTERNAL_ERROR": 500, "SERVICE_UNAVAILABLE": 503, "TASK_NOT_FOUND": 404, "AGENT_UNAVAILABLE": 503,
         "MODEL_UNAVAILABLE": 503, "ESCALATION_REJECTED": 400}
# The daemon's statuses -> the document's code for them (a status missing here: INTERNAL_ERROR).
_BY_STATUS = {400: "VALIDATION_ERROR", 401: "UNAUTHORIZED", 402: "FORBIDDEN", 403: "FORBIDDEN", 404: "NOT_FOUND",
              405: "NOT_FOUND", 409: "VALIDATION_ERROR", 410: "NOT_FOUND", 413: "VALIDATION_ERROR",
              415: "VALIDATION_ERROR", 422: "VALIDATION_ERROR", 429: "RATE_LIMITED", 502: "SERVICE_UNAVAILABLE",
              503: "SERVICE_UNAVAILABLE", 504: "SERVICE_UNAVAILABLE", 507: "SERVICE_UNAVAILABLE"}


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ok(request: web.Request, data: Any, message: str | None = None, status: int = 200,
       headers: dict[str, str] | None = None) -> web.Response:
    """A success in the envelope."""
    return json_response({"success": True, "data": data, "message": message or "Success", "timestamp": now_iso(),
                          "request_id": request_id_of(request)}, status, headers)


class KyrosEnvelope:
    """The route table's Envelope for /kyros (route_table.Envelope)."""

    def error(self, error: ApiError, request_id: str | None) -> tuple[int, dict[str, Any]]:
        code = error.type if error.type in CODES else _BY_STATUS.get(error.status, "INTERNAL_ERROR")
        status = 422 if error.status == 400 and code == "VALIDATION_ERROR" else error.status
        details: dict[str, Any] = {"type": error.type}
        fields = error.extra.get("details")
        if isinstance(fields, list) and fields:
            # The document's shape for the first broken rule; every one of them in ``errors``.
            issues = [{"field": f.get("field"), "issue": f.get("message")} for f in fields if isinstance(f, dict)]
            if issues:
                details.update(issues[0])
                details["errors"] = issues
        for name, value in error.extra.items():
            if name != "details":
                details[name] = value  # retry_after (429), your_ip (403), required_scope...
        return status, {"success": False, "error": {"code": code, "message": error.message, "details": details},
                        "timestamp": now_iso(), "request_id": request_id}


ENVELOPE = KyrosEnvelope()
