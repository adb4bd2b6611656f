"""Project bodies read into typed requests: POST /projects and PATCH /projects/{id}
(j1mskyd/api/projects.py).

The handlers parse a body here and hand the result to ProjectService, which never sees raw
JSON.  The first broken rule is a 400 VALIDATION_ERROR naming its field.  What needs the
service's state (a name already taken, key ids that do not exist) is the service's to refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ValidationFailed
from .key_request import METADATA_MAX_BYTES, _metadata as _key_metadata
from .plain_text import name_problem
from .request_fields import KEEP, Keep, bad
from .tenancy import parse_allowance

__all__ = ["CHANGEABLE", "MAX_MEMBERS", "MAX_METADATA_BYTES", "NewProject", "ProjectChange", "parse_change",
           "parse_metadata", "parse_new"]

MAX_METADATA_BYTES = METADATA_MAX_BYTES  # serialised: labels, not a document store
MAX_MEMBERS = 1000          # key ids in one request: far more than a household or a team has keys
CREATABLE = ("name", "max_budget", "budget_duration", "metadata", "members")
CHANGEABLE = ("name", "max_budget", "budget_duration", "metadata", "members", "add_members", "remove_members")


@dataclass(frozen=True, kw_only=True)
class NewProject:
    name: str
    max_budget: float | None = None     # None: no budget of its own (its keys' and the daemon's apply)
    budget_duration: str | None = None  # a tenancy.DURATIONS name when max_budget is set
    metadata: dict[str, Any]
    members: tuple[str, ...] = ()       # key ids, not yet checked against the keys


@dataclass(frozen=True, kw_only=True)
class ProjectChange:
    """What a PATCH changes; every other field is ``KEEP``.  ``budget``: (max_budget,
    duration), (None, None) to remove the budget.  ``members`` replaces the list;
    ``add_members``/``remove_members`` edit it (never together with ``members``)."""

    name: str | Keep = KEEP
    budget: tuple[float | None, str | None] | Keep = KEEP
    metadata: dict[str, Any] | Keep = KEEP
    members: tuple[str, ...] | Keep = KEEP
    add_members: tuple[str, ...] = ()
    remove_members: tuple[str, ...] = ()


def _object(body: Any, allowed: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad("body", "Request body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise bad(unknown[0], f"Unknown field '{unknown[0]}' ({what}: {', '.join(allowed)})")
    return body


def _name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise bad("name", "name must be a non-empty string of at most 100 characters")
    problem = name_problem(name)  # a newline forged `j1mskyd projects list` lines, ESC ran in the terminal
    if problem is not None:
        raise bad("name", problem)
    return name.strip()


def parse_metadata(metadata: Any) -> dict[str, Any]:
    """Free-form labels: a JSON object of at most MAX_METADATA_BYTES serialised (a key's
    metadata rule, key_request.py's, so both read alike)."""
    errors: list[dict[str, str]] = []
    parsed = _key_metadata(metadata, errors)
    if errors or parsed is None:
        raise ValidationFailed(errors[:1])
    return parsed


def _key_ids(ids: Any, field: str) -> tuple[str, ...]:
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise bad(field, f"{field} must be a list of API key ids")
    if len(ids) > MAX_MEMBERS:
        raise bad(field, f"{field} holds at most {MAX_MEMBERS} key ids")
    return tuple(dict.fromkeys(ids))


def _budget(max_budget: Any, duration: Any) -> tuple[float | None, str | None]:
    errors: list[dict[str, str]] = []
    parsed = parse_allowance(max_budget, duration, errors)
    if errors:
        raise ValidationFailed(errors[:1])
    return parsed


def parse_new(body: Any) -> NewProject:
    body = _object(body, CREATABLE, "a project has")
    if "name" not in body:
        raise bad("name", "name is required")
    name = _name(body["name"])
    max_budget, duration = _budget(body.get("max_budget"), body.get("budget_duration"))
    metadata = parse_metadata(body["metadata"]) if body.get("metadata") is not None else {}
    members = _key_ids(body["members"], "members") if body.get("members") is not None else ()
    return NewProject(name=name, max_budget=max_budget, budget_duration=duration, metadata=metadata,
                      members=members)


def parse_change(body: Any, current: tuple[float | None, str | None]) -> ProjectChange:
    """A PATCH body for a project whose budget is ``current`` (max_budget, duration): a
    ``budget_duration`` alone changes the period of the budget it has; ``max_budget: null``
    removes the budget."""
    body = _object(body, CHANGEABLE, "a PATCH may change")
    if not body:
        raise bad("body", f"send a JSON object with any of: {', '.join(CHANGEABLE)}")
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = _name(body["name"])
    if "max_budget" in body or "budget_duration" in body:
        amount = body["max_budget"] if "max_budget" in body else current[0]
        duration = body.get("budget_duration")
        if "max_budget" in body and amount is None:
            if duration is not None:
                raise bad("budget_duration", "budget_duration needs a max_budget (max_budget: null removes it)")
        elif duration is None and amount is not None and "budget_duration" not in body:
            duration = current[1]  # a new amount keeps the period it had
        elif amount is None:  # a duration alone, and no budget to give it to
            raise bad("budget_duration", "budget_duration needs a max_budget: this project has none")
        changes["budget"] = _budget(amount, duration)
    if "metadata" in body:
        changes["metadata"] = {} if body["metadata"] is None else parse_metadata(body["metadata"])
    if "members" in body:
        if "add_members" in body or "remove_members" in body:
            raise bad("members", "members replaces the list: send it alone, or add_members/remove_members")
        changes["members"] = () if body["members"] is None else _key_ids(body["members"], "members")
    for field in ("add_members", "remove_members"):
        if field in body:
            changes[field] = _key_ids(body[field], field)
    both = set(changes.get("add_members", ())) & set(changes.get("remove_members", ()))
    if both:
        raise bad("add_members", f"a key cannot be both added and removed: {', '.join(sorted(both))}")
    return ProjectChange(**changes)
