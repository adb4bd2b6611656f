"""Cursors of GET /agents (the API reference's "Pagination & Filtering": ``?cursor=``).

A cursor is a position in one listing: the sort key of the last agent a page showed and its
rowid (the tie-break), so the next page starts right after it whatever was inserted or
finished meanwhile (keyset pagination: stable under inserts, unlike an offset).  It is
opaque to clients (base64 of JSON) and bound to the listing it came from: the viewer's key
id, the sort and the filters, hashed.  A cursor from another key's listing, another sort or
other filters, or one this server did not make, is refused (400) before any row is read;
and even a forged one only moves the start within the caller's own listing (the viewer's
filter always applies), so a cursor can never show another key's agents.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from .errors import ValidationFailed
from .jsonx import is_unicode

__all__ = ["NULL_NUMBER", "Position", "decode", "encode", "fingerprint", "key_expr", "keyset_clause"]

Position = tuple[Any, int]  # (sort key value, rowid)
# The sort key of a NULL number or time (no cost yet, not started): below every real one, as
# SQLite orders NULL first, so the key orders exactly as the column does and compares with "=".
NULL_NUMBER = -1e308
# Parameters that move within a listing rather than choose it.
_PAGING = frozenset({"cursor", "limit", "per_page", "offset", "page"})


def key_expr(column: str, kind: str) -> str:
    """The SQL sort key of a column (NULL mapped to the lowest value of its kind)."""
    return f"IFNULL({column}, {NULL_NUMBER!r})" if kind in ("number", "time") else f"IFNULL({column}, '')"


def keyset_clause(expr: str, desc: bool) -> str:
    """The rows after a position (three parameters: value, value, rowid) in this order."""
    op = "<" if desc else ">"
    return f"({expr} {op} ? OR ({expr} = ? AND rowid {op} ?))"


def fingerprint(viewer_key: str, sort: str, params: Mapping[str, str]) -> str:
    """What binds a cursor to its listing: the viewer, the sort (as parsed: ``sort`` left out and
    ``sort=-created_at`` are one listing) and every filter parameter."""
    chosen = sorted((k, v) for k, v in params.items() if k not in _PAGING and k != "sort")
    text = json.dumps([viewer_key, sort, chosen], separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def encode(position: Position, listing: str) -> str:
    value, rowid = position
    raw = json.dumps({"l": listing, "v": value, "r": rowid}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _refused() -> ValidationFailed:
    return ValidationFailed([{"field": "cursor", "message": "cursor is not one this listing gave out (a cursor "
                                                            "works with the key, sort and filters it came with)"}])


def decode(cursor: str, listing: str, kind: str) -> Position:
    """The position a cursor of ``listing`` holds; 400 for anything else."""
    try:
        if len(cursor) > 512:
            raise ValueError
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        value, rowid = data["v"], data["r"]
        if not isinstance(data, dict) or data["l"] != listing:
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise _refused() from None
    numeric = kind in ("number", "time")
    if isinstance(rowid, bool) or not isinstance(rowid, int) or not 0 <= rowid < 2**63:
        raise _refused()
    if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))
                    or (isinstance(value, int) and not -2**63 <= value < 2**63)  # SQLite binds 64 bits
                    or not math.isfinite(value)):  # after the int bound: a huge int overflows a float
        raise _refused()
    if not numeric and (not isinstance(value, str) or not is_unicode(value)):
        raise _refused()
    return value, rowid

