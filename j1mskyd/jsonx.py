"""JSON in one place: orjson when importable (trixie, PyPI), stdlib json otherwise (bookworm).

Both paths produce compact UTF-8 output, so a response body does not depend on which
library served it.
"""

from __future__ import annotations

import json
from collections import deque
from types import ModuleType
from typing import Any

__all__ = ["dumps", "is_unicode", "loads", "loads_strict", "lone_surrogates"]

try:  # pragma: no cover - depends on the machine
    import orjson
    _orjson: ModuleType | None = orjson
except ImportError:  # Debian bookworm ships no python3-orjson
    _orjson = None

JSONDecodeError = json.JSONDecodeError if _orjson is None else (json.JSONDecodeError, _orjson.JSONDecodeError)


# Built once: json.dumps with any argument makes a new JSONEncoder per call (every response).
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(obj: Any) -> str:
    if _orjson is not None:
        return _orjson.dumps(obj).decode()
    return _DUMPS(obj)


_COMPACT = json.JSONEncoder(separators=(",", ":")).encode


def compact(obj: Any) -> str:
    """``json.dumps(obj, separators=(",", ":"))``, ASCII only (a lone surrogate comes out escaped,
    so the text always encodes to UTF-8): for values the daemon stores sealed (event data,
    audit details), read back with :func:`loads`."""
    return _COMPACT(obj)


def loads(data: str | bytes) -> Any:
    if _orjson is not None:
        return _orjson.loads(data)
    return json.loads(data)


def _not_json(word: str) -> Any:
    raise ValueError(f"{word} is not a JSON value")


def loads_strict(data: str | bytes) -> Any:
    """:func:`loads` of what a client sent: ``NaN``, ``Infinity`` and ``-Infinity`` (which the
    stdlib reads, orjson refuses and strict parsers such as JavaScript's cannot read back) are
    refused on every stack, so they are never stored and echoed to other clients."""
    if _orjson is not None:
        return _orjson.loads(data)
    return json.loads(data, parse_constant=_not_json)


def is_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate: JSON's "\\ud800" decodes to one, and it is
    not Unicode text (SQLite, UTF-8 output and the HTTP client all fail on it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def lone_surrogates(value: Any) -> list[str]:
    """Where a decoded JSON value holds a lone surrogate, as field names (``agents[0].task``).

    A key is reported as the object holding it (``body`` at the top): the key itself is not
    printable.  Breadth first, without recursion: a value may nest as deep as the parser allowed.
    """
    found: list[str] = []
    queue: deque[tuple[Any, str]] = deque([(value, "")])
    while queue:
        item, path = queue.popleft()
        if isinstance(item, str):
            if not is_unicode(item):
                found.append(path or "body")
        elif isinstance(item, dict):
            for key, sub in item.items():
                if not is_unicode(key):
                    found.append(path or "body")
                else:
                    queue.append((sub, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            queue.extend((sub, f"{path}[{i}]") for i, sub in enumerate(item))
    return list(dict.fromkeys(found))
