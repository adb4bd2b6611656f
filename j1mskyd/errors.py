"""Domain errors that carry the HTTP meaning of a refusal.

The domain raises these without knowing about aiohttp; the error middleware turns
each into the one JSON error envelope.  ``type`` is the UPPER_SNAKE name clients
match on; ``extra`` holds envelope fields such as ``details`` or ``retry_after``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "BadRequest", "Conflict", "Forbidden", "Gone", "InsufficientStorage", "InvalidJson",
           "IpNotAllowed", "NotFound", "PayloadTooLarge", "RateLimited", "ServiceUnavailable", "Unauthorized",
           "ValidationFailed"]


class ApiError(Exception):
    status = 500
    type = "INTERNAL_ERROR"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, type_: str | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.extra = extra
        if type_:  # a more precise type than the class's (INVALID_API_KEY, IP_BLOCKED...)
            self.type = type_


class BadRequest(ApiError):
    status = 400
    type = "BAD_REQUEST"


class InvalidJson(BadRequest):
    """A body that cannot be read as JSON.  ``details`` names the field ``body``, as a
    VALIDATION_ERROR names its field: a client reads every refused body the same way (the Kyros
    envelope's ``details.field``/``details.issue`` come from it)."""

    type = "INVALID_JSON"

    def __init__(self, message: str) -> None:
        super().__init__(message, details=[{"field": "body", "message": message}])


class PayloadTooLarge(ApiError):
    status = 413
    type = "PAYLOAD_TOO_LARGE"


class ValidationFailed(ApiError):
    """400 with ``details``: a list of ``{"field", "message"}``, one per broken rule."""

    status = 400
    type = "VALIDATION_ERROR"

    def __init__(self, details: list[dict[str, str]]) -> None:
        super().__init__(details[0]["message"], details=details)


class Unauthorized(ApiError):
    status = 401
    type = "UNAUTHORIZED"


class Forbidden(ApiError):
    status = 403
    type = "FORBIDDEN"


class IpNotAllowed(Forbidden):
    type = "IP_NOT_ALLOWED"


class NotFound(ApiError):
    status = 404
    type = "NOT_FOUND"


class Conflict(ApiError):
    status = 409
    type = "CONFLICT"


class Gone(ApiError):
    status = 410
    type = "GONE"


class RateLimited(ApiError):
    status = 429
    type = "RATE_LIMITED"


class ServiceUnavailable(ApiError):
    status = 503
    type = "SERVICE_UNAVAILABLE"


class InsufficientStorage(ApiError):
    """507: the state dir's disk is full, so this request's write was refused (nothing changed).
    Work already accepted is kept in memory and saved once space returns."""

    status = 507
    type = "INSUFFICIENT_STORAGE"
