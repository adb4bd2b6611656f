"""JSON in one place: orjson when importable (trixie, PyPI), stdlib json otherwise (bookworm).

Both paths produce compact UTF-8 output, so a response body does not depend on which
library served it.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from collections import deque
from collections.abc import Callable
from json.encoder import c_make_encoder, encode_basestring, encode_basestring_ascii  # type: ignore[attr-defined]
from types import ModuleType
from typing import Any

__all__ = ["TooManyDigits", "dumps", "is_unicode", "loads", "loads_strict", "lone_surrogates"]

try:  # pragma: no cover - depends on the machine
    import orjson
    _orjson: ModuleType | None = orjson
except ImportError:  # Debian bookworm ships no python3-orjson
    _orjson = None

JSONDecodeError = json.JSONDecodeError if _orjson is None else (json.JSONDecodeError, _orjson.JSONDecodeError)


def _encoder(ensure_ascii: bool) -> Callable[[Any], str]:
    """``json.JSONEncoder(separators=(",", ":"), ensure_ascii=...).encode``, its output to the
    byte, without what encode() rebuilds on every call: a C encoder (``c_make_encoder``, nine
    arguments) and a float formatter, ~8,000 instructions of the ~25,000 a spawn's answer takes
    to encode (callgrind; five encodings an agent: the answer, two events, two audit rows).

    One C encoder per thread: its ``markers`` (the containers being encoded, json's check for
    circular references) must not be shared, and an encoding that fails can leave entries in
    it, so it is emptied then."""
    slow = json.JSONEncoder(separators=(",", ":"), ensure_ascii=ensure_ascii)
    strings = encode_basestring_ascii if ensure_ascii else encode_basestring
    local = threading.local()

    def encode(obj: Any) -> str:
        try:
            markers, c_encode = local.c
        except AttributeError:
            if c_make_encoder is None:  # pragma: no cover - a Python without the _json accelerator
                return slow.encode(obj)
            markers = {}
            c_encode = c_make_encoder(markers, slow.default, strings, None, slow.key_separator, slow.item_separator,
                                      slow.sort_keys, slow.skipkeys, slow.allow_nan)
            local.c = markers, c_encode
        try:
            return "".join(c_encode(obj, 0))
        except BaseException:
            markers.clear()
            raise
    return encode


def _orjson_dumps(obj: Any) -> str:
    assert _orjson is not None
    return _orjson.dumps(obj).decode()


# Compact UTF-8 text (orjson's when it is there).  The encoders are the functions themselves,
# not called through a wrapper: a Python call level is ~500 instructions, on every response.
dumps: Callable[[Any], str] = _orjson_dumps if _orjson is not None else _encoder(ensure_ascii=False)

# ``json.dumps(obj, separators=(",", ":"))``, ASCII only (a lone surrogate comes out escaped,
# so the text always encodes to UTF-8): for values the daemon stores sealed (event data,
# audit details), read back with :func:`loads`.
compact: Callable[[Any], str] = _encoder(ensure_ascii=True)


def loads(data: str | bytes) -> Any:
    if _orjson is not None:
        return _orjson.loads(data)
    return json.loads(data)


def _not_json(word: str) -> Any:
    raise ValueError(f"{word} is not a JSON value")


class TooManyDigits(ValueError):
    """A JSON number the daemon cannot hold: an integer longer than the interpreter converts
    (``sys.get_int_max_str_digits()``), or a number beyond a float's range (``1e400``)."""


def _finite(text: str) -> float:
    """A JSON number with a fraction or an exponent, as a float; one beyond a float's range
    (``1e400``) is refused: the stdlib reads it as ``inf``, which was stored and then sent back
    as ``Infinity``, which no strict JSON parser reads."""
    value = float(text)
    if math.isinf(value):
        raise TooManyDigits(f"a number is too large ({text[:24]})")
    return value


# Built once: json.loads with any argument builds a JSONDecoder and its scanner per call
# (every request body: ~16,000 instructions of a spawn's ~35,000 to read its JSON).
_STRICT = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite).decode


def loads_strict(data: str | bytes) -> Any:
    """:func:`loads` of what a client sent: ``NaN``, ``Infinity`` and ``-Infinity`` (which the
    stdlib reads, orjson refuses and strict parsers such as JavaScript's cannot read back) are
    refused on every stack, so they are never stored and echoed to other clients.  An integer
    of more digits than Python converts, or a number beyond a float's range, is
    :class:`TooManyDigits`, in words a client can act on."""
    if _orjson is not None:
        return _orjson.loads(data)
    try:
        if isinstance(data, (bytes, bytearray)):  # json.loads' own decoding of bytes (UTF-8/16/32)
            return _STRICT(data.decode(json.detect_encoding(data), "surrogatepass"))
        # text: json.loads' checks (a BOM) as they are
        return json.loads(data, parse_constant=_not_json, parse_float=_finite)
    except TooManyDigits:
        raise
    except ValueError as exc:
        # int()'s own message tells the client to call sys.set_int_max_str_digits(): the
        # daemon's internals, and nothing a client can do.  Recognised by its wording, the only
        # mark it has (a plain ValueError); checked on the failure path only.
        if "integer string conversion" not in str(exc):
            raise
        raise TooManyDigits(f"a number has more than {sys.get_int_max_str_digits()} digits") from None


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
