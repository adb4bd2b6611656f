"""The front door's type fuzz, one loop for both dialects: every field of an example request
with every JSON type, every JSON type as the whole body, and broken raw bodies.  Each answer
is a 2xx, or a 4xx in the dialect's own error shape that names the field and changes nothing;
never a 5xx.  The dialect's test gives the shape check and what "names the field" means."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tests.test_body_types import VALUES, Api, Path, dotted, example_fields, with_value

RAW = (b"", b"{", b"\xff\xfe", b'{"a": NaN}', b"[" * 100_000)


async def fuzz_door(api: Api, post: Callable[..., Awaitable[Any]], example: dict[str, Any], extra: list[Path],
                    error_of: Callable[[Any], dict[str, Any]], names: Callable[[dict[str, Any], str], bool]) -> list[str]:
    """The problems found (empty: none).  ``post(body, raw=None)`` sends one request;
    ``error_of(json)`` is the error of a refusal (AssertionError when not the dialect's shape);
    ``names(error, field)``: does it name ``field`` (dotted, ``messages[0].content``)?"""
    problems: list[str] = []
    resp = await post(example)
    assert resp.status == 200, await resp.text()
    before = await api.state()
    for path in example_fields(example) + extra:
        field = dotted(path)
        for value in VALUES:
            resp = await post(with_value(example, path, value))
            label = f"{field}={value!r:.40}"
            if resp.status >= 500:
                problems.append(f"{label}: {resp.status} {await resp.text():.200}")
            elif resp.status >= 400:
                try:
                    error = error_of(await resp.json())
                except AssertionError as exc:
                    problems.append(f"{label}: {resp.status} not the dialect's error: {exc}")
                    continue
                if resp.status == 400 and not names(error, field):
                    problems.append(f"{label}: 400 {error}, not naming {field}")
                if await api.state() != before:
                    problems.append(f"{label}: {resp.status} but changed the state")
                    before = await api.state()
            else:
                await resp.read()
                before = await api.state()
    for value in VALUES:
        resp = await post(value)
        error = error_of(await resp.json())
        # Not an object: the body is named.  An object ({}, {"a": 1}): the first field it lacks
        # or should not have may be named instead.
        if resp.status != 400 or not (isinstance(value, dict) or names(error, "body")):
            problems.append(f"body={value!r:.40}: {resp.status} {error}")
    for raw in RAW:
        resp = await post(None, raw=raw)
        if resp.status != 400:
            problems.append(f"raw {raw[:8]!r}: {resp.status}")
        error_of(await resp.json())
    if await api.state() != before:
        problems.append("the bodies or raw bodies changed the state")
    return problems
