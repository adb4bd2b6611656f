"""What the typed request modules share (spawn_request.py, webhook_request.py,
security_request.py): the field error of the one error envelope, and the ``KEEP`` marker of a
partial change (a PUT or POST that changes only the fields it names)."""

from __future__ import annotations

import enum
from dataclasses import fields
from typing import Any

from .errors import ValidationFailed

__all__ = ["KEEP", "Keep", "bad", "changed"]


class Keep(enum.Enum):
    """A field a change leaves as it is (``None`` can be a value: a description is cleared)."""

    KEEP = "keep"


KEEP = Keep.KEEP


def changed(change: Any) -> dict[str, Any]:
    """The fields a change dataclass sets (those not ``KEEP``), by name."""
    return {f.name: getattr(change, f.name) for f in fields(change) if getattr(change, f.name) is not KEEP}


def bad(field: str, message: str) -> ValidationFailed:
    """A 400 VALIDATION_ERROR naming one field."""
    return ValidationFailed([{"field": field, "message": message}])
