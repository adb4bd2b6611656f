"""GET /agents query language -> one parameterised SQL WHERE/ORDER BY.

Accepts the API reference's three spellings, all through one parser:
  * plain parameters:      ``?status=running&model=k2p5``
  * suffixed parameters:   ``?cost_gt=1.00&created_after=2026-02-01``
  * the JSON ``filter``:   ``?filter={"status":"running","cost":{"gte":0.5},"model":["k2p5","opus"]}``
    where a value is a scalar (eq), a list (in) or an object of ``{operator: value}``,
    and keys may use the suffixed spelling too (``{"cost_gt":0.50}``).
Operators: eq ne gt gte lt lte in contains starts_with ends_with.  Field names are
whitelisted, so no user text ever reaches SQL except as a bound parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, get_args

from . import agent_cursor, jsonx
from .agent_record import PRIORITIES, STATUSES, Agent, Kind
from .errors import ValidationFailed
from .request_fields import flag_param, query_int, utc_time
from .tenancy import Viewer

__all__ = ["ALIASES", "AgentQuery", "ENUMS", "FIELDS", "MAX_LIMIT", "OPERATORS", "RESERVED", "SORTABLE", "parse", "parse_time"]

# public field name -> (column, type)
FIELDS: dict[str, tuple[str, str]] = {
    "agent_id": ("agent_id", "text"),
    # The key that spawned it: a viewer that sees every key's work filters by it
    # (``?api_key=key_x``); for any other viewer parse() already keeps its own only.
    "api_key": ("api_key", "text"),
    "kind": ("kind", "text"),  # agent, team, member, chat
    # Encrypted at rest (crypto.py): SQL cannot see it, so these filters run in Python
    # on the decrypted rows that the other filters selected (AgentQuery.post).
    "task": ("task", "sealed"),
    "model": ("model", "text"),
    "status": ("status", "text"),
    "team": ("team", "text"),
    "priority": ("priority", "text"),
    "provider": ("provider", "text"),
    "served_model": ("served_model", "text"),
    "parent_id": ("parent_id", "text"),
    "error": ("error", "text"),
    "created_at": ("created_at", "time"),
    "started_at": ("started_at", "time"),
    "completed_at": ("completed_at", "time"),
    "cost": ("cost", "number"),
    "actual_cost": ("cost", "number"),
    "estimated_cost": ("estimated_cost", "number"),
    "input_tokens": ("input_tokens", "number"),
    "output_tokens": ("output_tokens", "number"),
}
# Fields with a fixed set of values: any other value is a 400 naming them (``?status=done``
# was a 200 with an empty list, which reads as "no agents" rather than "no such status").
ENUMS: dict[str, tuple[str, ...]] = {"status": STATUSES, "kind": get_args(Kind), "priority": tuple(PRIORITIES)}
ALIASES = {"created_after": ("created_at", "gt"), "created_before": ("created_at", "lt")}
OPERATORS = ("eq", "ne", "gte", "gt", "lte", "lt", "in", "contains", "starts_with", "ends_with")
# "ne" is IS NOT so that a NULL column (no team, no cost yet) counts as "not equal".
_SQL_OPS = {"eq": "=", "ne": "IS NOT", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_STRING_OPS = ("contains", "starts_with", "ends_with")
SORTABLE = ("created_at", "started_at", "completed_at", "cost", "actual_cost", "estimated_cost", "status",
            "model", "priority", "agent_id")
RESERVED = frozenset({"limit", "per_page", "offset", "page", "sort", "filter", "cursor", "include_members"})
MAX_LIMIT, DEFAULT_LIMIT = 100, 20
MAX_OFFSET = 10**18 - 1  # SQLite's integers are 64-bit


@dataclass
class AgentQuery:
    where: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    order: str = "created_at DESC, rowid DESC"
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    post: list[tuple[str, str, Any]] = field(default_factory=list)
    # Keyset pagination (agent_cursor.py): the sort key expression, the listing's fingerprint,
    # and, for ?cursor=, the clause and parameters of the rows after its position.
    sort_key: str = "created_at"
    listing: str = ""
    after: tuple[str, list[Any]] | None = None

    def where_sql(self) -> str:
        return " AND ".join(self.where) if self.where else "1"

    def matches(self, agent: Agent) -> bool:
        """The sealed-field filters, on a decrypted agent.  String operators ignore case,
        as SQLite's LIKE does for the SQL-side filters."""
        for column, op, value in self.post:
            text = getattr(agent, column) or ""
            if op in _STRING_OPS:
                text, value = text.lower(), value.lower()
            ok = {"eq": lambda: text == value, "ne": lambda: text != value, "gt": lambda: text > value,
                  "gte": lambda: text >= value, "lt": lambda: text < value, "lte": lambda: text <= value,
                  "in": lambda: text in value, "contains": lambda: value in text,
                  "starts_with": lambda: text.startswith(value), "ends_with": lambda: text.endswith(value)}[op]()
            if not ok:
                return False
        return True


def _split_key(key: str) -> tuple[str, str] | None:
    if key in ALIASES:
        return ALIASES[key]
    if key in FIELDS:
        return key, "eq"
    for op in OPERATORS:
        suffix = "_" + op
        if key.endswith(suffix) and key[: -len(suffix)] in FIELDS:
            return key[: -len(suffix)], op
    return None


def _coerce(fieldname: str, kind: str, value: Any, errors: list[dict[str, str]]) -> Any:
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            errors.append({"field": fieldname, "message": f"{fieldname} must be a number"})
            return None
        try:  # float() would also take "1_000" and other scripts' digits ("１")
            number = math.nan if isinstance(value, str) and (not value.isascii() or "_" in value) else float(value)
        except (ValueError, OverflowError):  # OverflowError: an integer of 400 digits in a filter's JSON
            number = math.nan
        if not math.isfinite(number):  # float() takes "nan" and "inf"; sqlite would bind NaN as NULL
            errors.append({"field": fieldname, "message": f"{fieldname} must be a finite number, got {value!r}"})
            return None
        return number
    if kind == "time":
        if not isinstance(value, str):
            errors.append({"field": fieldname, "message": f"{fieldname} must be an ISO 8601 date or time"})
            return None
        when = utc_time(value)
        if when is None:
            errors.append({"field": fieldname, "message": f"{fieldname} must be an ISO 8601 date or time, "
                                                         f"got {value!r}"})
        return when
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        errors.append({"field": fieldname, "message": f"{fieldname} must be a string"})
        return None
    if not _unicode_ok(value, fieldname, errors):
        return None
    return str(value)


def parse_time(name: str, value: Any, errors: list[dict[str, str]]) -> float | None:
    """An ISO 8601 date or time (naive = UTC) as unix seconds; a problem goes to ``errors``."""
    return _coerce(name, "time", value, errors)


def _unicode_ok(value: Any, fieldname: str, errors: list[dict[str, str]]) -> bool:
    """JSON's "\\ud800" is a lone surrogate: sqlite cannot bind it (a 500, not a 400)."""
    if isinstance(value, str) and not jsonx.is_unicode(value):
        errors.append({"field": fieldname, "message": f"{fieldname} must be valid Unicode text"})
        return False
    return True


def _check_enum(name: str, values: list[Any], errors: list[dict[str, str]]) -> None:
    """A value of an enumerated field (status, kind, priority) outside its set: one error
    naming the valid ones.  (Values that failed to coerce are None and already reported.)"""
    allowed = ENUMS.get(name)
    if allowed is None:
        return
    wrong = [v for v in values if v is not None and v not in allowed]
    if wrong:
        errors.append({"field": name, "message": f"{name} must be one of {', '.join(allowed)}; got "
                                                 f"{', '.join(repr(v) for v in wrong)}"})


def _add(q: AgentQuery, name: str, op: str, value: Any, errors: list[dict[str, str]]) -> None:
    column, kind = FIELDS[name]
    if kind == "sealed":
        values = value if op == "in" and isinstance(value, list) and value else [value]
        if not all(isinstance(v, str) for v in values):
            errors.append({"field": name, "message": f"{name}: '{op}' needs a string"
                                                     + (" list" if op == "in" else "")})
            return
        if all(_unicode_ok(v, name, errors) for v in values):
            q.post.append((column, op, value))
        return
    if op == "in":
        if not isinstance(value, list) or not value:
            errors.append({"field": name, "message": f"{name}: 'in' needs a non-empty list"})
            return
        values = [_coerce(name, kind, v, errors) for v in value]
        _check_enum(name, values, errors)
        q.where.append(f"{column} IN ({', '.join('?' * len(values))})")
        q.params.extend(values)
        return
    if op in _STRING_OPS:
        if kind != "text":
            errors.append({"field": name, "message": f"{name}: '{op}' applies to text fields only"})
            return
        if not isinstance(value, str):
            errors.append({"field": name, "message": f"{name}: '{op}' needs a string"})
            return
        if not _unicode_ok(value, name, errors):
            return
        escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = {"contains": f"%{escaped}%", "starts_with": f"{escaped}%", "ends_with": f"%{escaped}"}[op]
        q.where.append(f"{column} LIKE ? ESCAPE '\\'")
        q.params.append(pattern)
        return
    coerced = _coerce(name, kind, value, errors)
    if op in ("eq", "ne"):
        _check_enum(name, [coerced], errors)
    q.where.append(f"{column} {_SQL_OPS[op]} ?")
    q.params.append(coerced)


def _add_filter_entry(q: AgentQuery, key: str, value: Any, errors: list[dict[str, str]],
                      from_query: bool = False) -> None:
    split = _split_key(key)
    if split is None:
        errors.append({"field": key, "message": f"Unknown filter field '{key}'"})
        return
    name, op = split
    if from_query and op == "in":  # ?model_in=k2p5,opus: a query string has no lists
        value = value.split(",")
    if isinstance(value, dict) and op == "eq" and key in FIELDS:
        if not value:
            errors.append({"field": key, "message": f"{key}: empty operator object"})
        for sub_op, sub_value in value.items():
            if sub_op not in OPERATORS:
                errors.append({"field": key, "message": f"Unknown operator '{sub_op}' (use one of "
                                                        f"{', '.join(OPERATORS)})"})
                continue
            _add(q, name, sub_op, sub_value, errors)
    elif isinstance(value, list) and op == "eq":
        _add(q, name, "in", value, errors)
    else:
        _add(q, name, op, value, errors)


def _int_param(params: dict[str, str], name: str, default: int, lo: int, hi: int | None,
               errors: list[dict[str, str]]) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    value = query_int(raw)
    if value is None:
        errors.append({"field": name, "message": f"{name} must be an integer"})
        return default
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        errors.append({"field": name, "message": f"{name} must be {bound}"})
        return default
    return value


def parse(params: dict[str, str], viewer: Viewer | None = None) -> AgentQuery:
    """Build a query from request parameters; every problem is a 400 with details.

    ``viewer``: a key that sees only its own work gets only its own agents, whatever it
    asks for (its filters narrow that further; ``api_key`` of another key selects nothing).
    None: every key's (the daemon's own reads)."""
    errors: list[dict[str, str]] = []
    q = AgentQuery()
    if viewer is not None and not viewer.sees_all:
        owners = viewer.owners
        q.where.append(f"api_key IN ({', '.join('?' * len(owners))})")
        q.params.extend(owners)
    for key, value in params.items():
        if key in RESERVED:
            continue
        _add_filter_entry(q, key, value, errors, from_query=True)
    raw_filter = params.get("filter")
    if raw_filter:
        try:
            parsed = jsonx.loads(raw_filter)
        except (ValueError, TypeError, RecursionError):
            parsed = None  # not JSON (or nested deeper than json parses): refused below
        if not isinstance(parsed, dict):
            errors.append({"field": "filter", "message": "filter must be a JSON object"})
        else:
            for key, value in parsed.items():
                _add_filter_entry(q, key, value, errors)
    try:
        members = flag_param(params, "include_members")
    except ValueError as exc:
        errors.append({"field": "include_members", "message": str(exc)})
        members = True
    if not members:  # team members are listed under their team agent, not beside it, unless asked
        q.where.append("parent_id IS NULL")
    name, desc = "created_at", True
    sort = params.get("sort", "").strip()  # "?sort=+cost" arrives as " cost"
    if sort:
        desc = sort.startswith("-")
        name = sort[1:] if sort[0] in "-+" else sort  # one sign: "--cost" names no field
        if name not in SORTABLE:
            errors.append({"field": "sort", "message": f"Cannot sort by '{name}' (use one of {', '.join(SORTABLE)})"})
            name, desc = "created_at", True
    column, kind = FIELDS[name]
    direction = "DESC" if desc else "ASC"
    q.sort_key = agent_cursor.key_expr(column, kind)  # orders as the column does, NULLs first
    q.order = f"{q.sort_key} {direction}, rowid {direction}"
    _paging(q, params, errors)
    if errors:
        raise ValidationFailed(errors)
    sort_name = ("-" if desc else "") + name
    q.listing = agent_cursor.fingerprint(viewer.key_id if viewer is not None else "", sort_name, params)
    if params.get("cursor"):
        value, rowid = agent_cursor.decode(params["cursor"], q.listing, kind)
        q.after = (agent_cursor.keyset_clause(q.sort_key, desc), [value, value, rowid])
    return q


def _paging(q: AgentQuery, params: dict[str, str], errors: list[dict[str, str]]) -> None:
    """``limit`` (or ``per_page``) and one of ``offset``, ``page`` (1, 2, ...) or ``cursor``."""
    limit = _int_param(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT, errors)
    if params.get("per_page"):
        per_page = _int_param(params, "per_page", DEFAULT_LIMIT, 1, MAX_LIMIT, errors)
        if params.get("limit") and per_page != limit:
            errors.append({"field": "per_page", "message": "per_page and limit differ: send one of them"})
        limit = per_page
    q.limit = limit
    given = [p for p in ("offset", "page", "cursor") if params.get(p)]
    if len(given) > 1:
        errors.append({"field": given[1], "message": f"send one of offset, page or cursor, not {' and '.join(given)}"})
        return
    q.offset = _int_param(params, "offset", 0, 0, MAX_OFFSET, errors)
    if params.get("page"):
        page = _int_param(params, "page", 1, 1, MAX_OFFSET // MAX_LIMIT, errors)
        q.offset = (page - 1) * limit
