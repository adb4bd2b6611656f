"""What the typed request modules share (spawn_request.py, webhook_request.py,
security_request.py, the listings' queries): the field error of the one error envelope, the
``KEEP`` marker of a partial change (a PUT or POST that changes only the fields it names), a
query parameter's integer and yes/no flag, and an ISO 8601 time."""

from __future__ import annotations

import enum
import math
import re
import sys
from dataclasses import fields
from datetime import datetime, timezone
from typing import Any

from .errors import ValidationFailed

__all__ = ["KEEP", "Keep", "bad", "changed", "finite_number", "flag_param", "int_param", "query_int", "utc_time"]


class Keep(enum.Enum):
    """A field a change leaves as it is (``None`` can be a value: a description is cleared)."""

    KEEP = "keep"


KEEP = Keep.KEEP


def changed(change: Any) -> dict[str, Any]:
    """The fields a change dataclass sets (those not ``KEEP``), by name."""
    return {f.name: getattr(change, f.name) for f in fields(change) if getattr(change, f.name) is not KEEP}


_QUERY_INT = re.compile(r"-?[0-9]{1,18}")


def query_int(text: str) -> int | None:
    """A query parameter's integer, written in plain ASCII digits (None: it is not one).
    ``int()`` alone would also take "1_0", " 5", "+5" and other scripts' digits ("５")."""
    return int(text) if _QUERY_INT.fullmatch(text) else None


def int_param(params: Any, name: str, default: int) -> int:
    """``params[name]`` as a :func:`query_int` (``default`` when absent); ValueError when it is
    not one (the caller says which values it takes)."""
    text = params.get(name)
    if text is None:
        return default
    value = query_int(text)
    if value is None:
        raise ValueError(f"{name} is not an integer")
    return value


_FLAGS = {"": False, "0": False, "false": False, "no": False, "1": True, "true": True, "yes": True}


def flag_param(params: Any, name: str) -> bool:
    """``params[name]`` as a yes/no flag (false when absent): 1/true/yes or 0/false/no, any
    case; ValueError for anything else, which silently meant no."""
    flag = _FLAGS.get(params.get(name, "").lower())
    if flag is None:
        raise ValueError(f"{name} must be true or false (1/0, yes/no)")
    return flag


def utc_time(value: Any) -> float | None:
    """ISO 8601 (``2024-01-20T23:59:59Z``; no zone: UTC) -> epoch seconds; None when it is not one.
    In UTC too it must be a date of years 1-9999: the views write it back in UTC, and
    9999-12-31T23:59:59-14:00 is in year 10000 there (stored, it made every listing a 500)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    try:
        return when.astimezone(timezone.utc).timestamp()
    except (OverflowError, OSError, ValueError):
        return None


_FLOAT_MAX = sys.float_info.max


def finite_number(value: Any) -> bool:
    """A JSON number (not a bool) that a float holds: finite, and an int within a float's range.
    ``math.isfinite`` of a 309-digit JSON int raises OverflowError (a 500 on ten routes); an int
    compared with a float never does."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -_FLOAT_MAX <= value <= _FLOAT_MAX
    return isinstance(value, float) and math.isfinite(value)


def bad(field: str, message: str) -> ValidationFailed:
    """A 400 VALIDATION_ERROR naming one field."""
    return ValidationFailed([{"field": field, "message": message}])
