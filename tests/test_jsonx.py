"""jsonx (the JSON of every request and response, event and audit row): the same text and the
same errors as the stdlib calls it stands for, built once instead of per call."""

from __future__ import annotations

import enum
import json
import threading

import pytest

from j1mskyd import jsonx


class Colour(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


VALUES = [
    {"success": True, "agent_id": "subagent_1_0001", "estimated_cost": 0.000123, "n": None},
    [1, 2.5, -0.0, 1e308, 10 ** 30, "x", ["nested", {"deep": [{}]}]],
    "plain", "", 0, 1.5, None, True, [], {},
    {"text": "Grüße, 漢字, emoji 😀", "quote": "\"\\\n\t\u0001"},
    {"lone": "\ud800"},
    {1: "int key", 2.5: "float key", None: "null key", True: "bool key"},
    (1, 2, (3,)),
    {"enum": Colour.RED, "int_enum": Level.HIGH},
    [float("nan"), float("inf"), float("-inf")],
]


@pytest.mark.parametrize("value", VALUES)
def test_dumps_and_compact_write_what_the_stdlib_writes(value):
    assert jsonx.compact(value) == json.dumps(value, separators=(",", ":"))
    if value != {"lone": "\ud800"}:
        assert jsonx.dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_a_failed_encoding_raises_as_the_stdlib_and_leaves_the_encoder_usable():
    for encode in (jsonx.dumps, jsonx.compact):
        shared = [[1], {2}]
        circular: list = [[1]]
        circular.append(circular)
        with pytest.raises(TypeError, match="not JSON serializable"):
            encode({"bad": shared})  # fails inside ``shared``
        with pytest.raises(ValueError, match="Circular reference"):
            encode(circular)
        # What a failure left half-encoded is not taken for a cycle afterwards.
        shared.pop()
        assert encode({"again": shared}) == '{"again":[[1]]}'


def test_each_thread_encodes_on_its_own():
    out: list[str] = []
    worker = threading.Thread(target=lambda: out.append(jsonx.compact({"from": "thread"})))
    worker.start()
    worker.join()
    assert out == ['{"from":"thread"}'] and jsonx.compact({"from": "main"}) == '{"from":"main"}'


@pytest.mark.parametrize("raw", [
    b'{"task": "x", "n": [1, 2.5]}',
    '{"task": "ü"}'.encode("utf-16"),
    '{"task": "ü"}'.encode("utf-32-le"),
    b'\xef\xbb\xbf{"bom": true}',
    bytearray(b'[1, 2]'),
])
def test_loads_strict_reads_bytes_as_json_loads_does(raw):
    assert jsonx.loads_strict(raw) == json.loads(raw)


@pytest.mark.parametrize("raw", [b'{"x": NaN}', b'[Infinity]', b'-Infinity', '{"x": NaN}'])
def test_loads_strict_refuses_what_json_cannot_carry(raw):
    with pytest.raises(ValueError, match="is not a JSON value"):
        jsonx.loads_strict(raw)


@pytest.mark.parametrize("raw", [b'{"x": 1', b'', b'\xff\xfe\xfd', '\ufeff{}'])
def test_loads_strict_fails_where_json_loads_fails(raw):
    with pytest.raises(ValueError) as expected:
        json.loads(raw)
    with pytest.raises(type(expected.value)) as got:
        jsonx.loads_strict(raw)
    assert str(got.value) == str(expected.value)
