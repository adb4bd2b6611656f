"""JSON in one place: orjson when importable (trixie, PyPI), stdlib json otherwise (bookworm).

Both paths produce compact UTF-8 output, so a response body does not depend on which
library served it.
"""

from __future__ import annotations

import json
from typing import Any

try:  # pragma: no cover - depends on the machine
    import orjson as _orjson
except ImportError:  # Debian bookworm ships no python3-orjson
    _orjson = None

JSONDecodeError = json.JSONDecodeError if _orjson is None else (json.JSONDecodeError, _orjson.JSONDecodeError)


def dumps(obj: Any) -> str:
    if _orjson is not None:
        return _orjson.dumps(obj).decode()
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def loads(data: str | bytes) -> Any:
    if _orjson is not None:
        return _orjson.loads(data)
    return json.loads(data)
