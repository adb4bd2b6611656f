"""A key's own limits read into a typed change: POST /keys, PATCH /keys/{key_id} and
``j1mskyd keys create|update`` (the CLI turns its flags into the same fields), so the rules
have one home.

Fields (docs/security.md, "Key limits"): ``max_budget`` (USD) with ``budget_duration``
(tenancy.DURATIONS), ``models`` (aliases and team ids of the config), ``max_concurrency``,
``limits`` ({endpoint class: requests per window}), ``expires_at`` (ISO-8601, in the
future) and ``metadata`` (a JSON object of at most 4 KB).  A field that is absent is
``KEEP``; ``null`` clears it.  Every broken rule is reported at once (400 VALIDATION_ERROR
with ``details``) and nothing is changed.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .config import Config
from .errors import ValidationFailed
from .ratelimit import ENDPOINT_CLASSES
from .request_fields import KEEP, Keep, utc_time
from .tenancy import parse_allowance

__all__ = ["LIMIT_FIELDS", "METADATA_MAX_BYTES", "KeyLimits", "model_names", "parse_expiry", "parse_limits"]

LIMIT_FIELDS = ("max_budget", "budget_duration", "models", "max_concurrency", "limits", "expires_at", "metadata")
METADATA_MAX_BYTES = 4096
_MAX_CONCURRENCY = 100_000
_MAX_REQUESTS = 1_000_000


@dataclass(frozen=True, kw_only=True)
class KeyLimits:
    """What a create or an update sets; ``KEEP``: unchanged (a new key: none of its own).

    ``max_budget`` and ``budget_duration`` are the pair as it will be stored (the key's
    current one merged with the change, checked together): both ``KEEP``, both None (no
    budget), or a budget and its duration."""

    max_budget: float | None | Keep = KEEP
    budget_duration: str | None | Keep = KEEP
    models: tuple[str, ...] | None | Keep = KEEP
    max_concurrency: int | None | Keep = KEEP
    limits: dict[str, int] | None | Keep = KEEP
    expires_at: float | None | Keep = KEEP
    metadata: dict[str, Any] | None | Keep = KEEP


def model_names(config: Config) -> frozenset[str]:
    """What a key's ``models`` may name: the configured model aliases and team ids."""
    return frozenset((*config.models, *config.teams))


def _models(value: Any, known: Collection[str], errors: list[dict[str, str]]) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not value or not all(isinstance(m, str) and m for m in value):
        errors.append({"field": "models", "message": "models must be a non-empty list of model aliases or team ids "
                                                     "(null: every model)"})
        return None
    unknown = [m for m in dict.fromkeys(value) if m not in known]
    if unknown:
        errors.append({"field": "models", "message": f"unknown model(s) or team(s): {', '.join(unknown)} "
                                                     f"(known: {', '.join(sorted(known))})"})
        return None
    return tuple(dict.fromkeys(value))


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _limits(value: Any, errors: list[dict[str, str]]) -> dict[str, int] | None:
    if not isinstance(value, dict):
        errors.append({"field": "limits", "message": "limits must be an object of endpoint class -> requests per "
                                                     f"window ({', '.join(ENDPOINT_CLASSES)})"})
        return None
    bad_classes = [c for c in value if c not in ENDPOINT_CLASSES]
    if bad_classes:
        errors.append({"field": "limits", "message": f"unknown endpoint class(es): {', '.join(bad_classes)} "
                                                     f"(known: {', '.join(ENDPOINT_CLASSES)})"})
        return None
    wrong = [c for c, n in value.items() if not _count(n) or not 1 <= n <= _MAX_REQUESTS]
    if wrong:
        errors.append({"field": f"limits.{wrong[0]}",
                       "message": f"limits.{wrong[0]} must be a whole number of requests from 1 to {_MAX_REQUESTS}"})
        return None
    return dict(value) or None  # {}: no limits of its own


def parse_expiry(value: Any, now: float, errors: list[dict[str, str]]) -> float | None:
    """An ISO-8601 time (UTC when it names no offset), in the future, as unix seconds."""
    when = utc_time(value)
    if when is None:
        errors.append({"field": "expires_at", "message": "expires_at must be an ISO-8601 time such as "
                                                         "2030-01-31T12:00:00Z (null: never)"})
        return None
    if when <= now:
        errors.append({"field": "expires_at", "message": "expires_at must be in the future"})
        return None
    return when


def _metadata(value: Any, errors: list[dict[str, str]]) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        errors.append({"field": "metadata", "message": "metadata must be a JSON object"})
        return None
    try:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError):
        size = METADATA_MAX_BYTES + 1
    if size > METADATA_MAX_BYTES:
        errors.append({"field": "metadata", "message": f"metadata must be at most {METADATA_MAX_BYTES} bytes as JSON"})
        return None
    return value


def parse_limits(body: Mapping[str, Any], *, known_models: Collection[str], now: float,
                 current: tuple[float | None, str | None] = (None, None)) -> KeyLimits:
    """The limit fields of ``body`` (other fields are the caller's); ``current``: the key's
    (max_budget, budget_duration) today, which a change of one of the two is merged with
    (a new key: none).  Raises ValidationFailed naming every broken field."""
    errors: list[dict[str, str]] = []
    out: dict[str, Any] = {}
    if "max_budget" in body or "budget_duration" in body:
        amount = body["max_budget"] if "max_budget" in body else current[0]
        if "budget_duration" in body:
            duration = body["budget_duration"]
        else:  # the amount alone: the duration stays (none when the budget is cleared)
            duration = current[1] if amount is not None else None
        # (a duration without an amount, a cleared amount beside a duration: parse_allowance says so)
        out["max_budget"], out["budget_duration"] = parse_allowance(amount, duration, errors)
    if "models" in body:
        out["models"] = None if body["models"] is None else _models(body["models"], known_models, errors)
    if "max_concurrency" in body:
        value = body["max_concurrency"]
        if value is not None and (not _count(value) or not 1 <= value <= _MAX_CONCURRENCY):
            errors.append({"field": "max_concurrency",
                           "message": f"max_concurrency must be a whole number from 1 to {_MAX_CONCURRENCY} "
                                      "(null: the daemon's [budget] max_agents_per_key)"})
        out["max_concurrency"] = value
    if "limits" in body:
        out["limits"] = None if body["limits"] is None else _limits(body["limits"], errors)
    if "expires_at" in body:
        out["expires_at"] = None if body["expires_at"] is None else parse_expiry(body["expires_at"], now, errors)
    if "metadata" in body:
        out["metadata"] = None if body["metadata"] is None else _metadata(body["metadata"], errors)
    if errors:
        raise ValidationFailed(errors)
    return KeyLimits(**out)
