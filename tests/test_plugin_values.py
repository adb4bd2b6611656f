"""Frozen values (plugin_api's contract, provider_http's SseEvent): built by a faster ``__init__`` than the one
dataclasses generates (frozen.built_in_place), they must be the same values in every way a plugin
or the daemon can see."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle

import pytest

from j1mskyd.plugin_api import (CompletionRequest, CompletionResult, Message, TextBlock, ToolCall, ToolChoice,
                                ToolResult)
from j1mskyd.provider_http import SseEvent

BUILT = [
    (CompletionRequest, ("m", "p"), {"max_tokens": 7, "timeout": 2.5, "agent_id": "ag", "temperature": 0.3,
                                     "stop": ("x",), "user": "u"}),
    (CompletionResult, ("text", 3, 4), {"model": "mm", "finish_reason": "length"}),
    (TextBlock, ("t",), {}),
    (ToolCall, ("id1", "fn"), {"arguments": '{"a":1}'}),
    (ToolResult, ("id1", "out"), {"is_error": True}),
    (Message, ("user", (TextBlock("hi"),)), {}),
    (ToolChoice, ("tool",), {"name": "fn"}),
    (SseEvent, ("message", ("a", 1)), {"done": False}),  # data: decoded JSON (hashable here for the test)
]


def names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls,args,kwargs", BUILT, ids=[c.__name__ for c, _, _ in BUILT])
def test_a_value_holds_what_it_was_given_and_stays_frozen(cls: type, args: tuple, kwargs: dict) -> None:
    value = cls(*args, **kwargs)
    assert type(value) is cls
    given = dict(zip(names(cls), args)) | kwargs
    for f in dataclasses.fields(cls):
        expected = given[f.name] if f.name in given else f.default
        assert getattr(value, f.name) == expected, f.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, names(cls)[0], "changed")
    assert not hasattr(value, "__dict__")  # still slotted: no per-object dict
    # positional and keyword calls build the same value; equality, hash, copy, pickling, replace
    same = cls(**given)
    assert same == value and hash(same) == hash(value) and repr(same) == repr(value)
    assert copy.copy(value) == value and copy.deepcopy(value) == value
    assert pickle.loads(pickle.dumps(value)) == value
    first = names(cls)[0]
    changed = dataclasses.replace(value, **{first: given[first] if cls is Message else "other"})
    assert type(changed) is cls


@pytest.mark.parametrize("cls", [c for c, _, _ in BUILT], ids=[c.__name__ for c, _, _ in BUILT])
def test_the_signature_is_the_dataclass_one(cls: type) -> None:
    params = list(inspect.signature(cls).parameters.values())
    assert [p.name for p in params] == names(cls)
    for param, f in zip(params, dataclasses.fields(cls)):
        assert param.default == (inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
        assert param.annotation == f.type
    with pytest.raises(TypeError):
        cls()  # required fields stay required
    with pytest.raises(TypeError):
        cls(*BUILT[[c for c, _, _ in BUILT].index(cls)][1], not_a_field=1)


def test_a_subclass_is_built_as_before() -> None:
    @dataclasses.dataclass(frozen=True)
    class Mine(CompletionResult):
        extra: int = 0

    value = Mine("t", 1, 2, extra=5)
    assert type(value) is Mine and value.text == "t" and value.extra == 5

    class Plain(CompletionResult):
        __slots__ = ()

    plain = Plain("t", 1, 2)
    assert type(plain) is Plain and plain.output_tokens == 2


def test_keyword_only_fields_and_default_factories_keep_the_generated_init_s_rules():
    """A keyword-only class (the front door's ChatRequest) stays keyword-only, and a
    ``default_factory`` gives each value its own fresh default, as dataclasses' ``__init__`` does;
    a class with a field outside ``__init__`` is refused rather than built wrong."""
    from j1mskyd.chat_request import ChatRequest
    from j1mskyd.frozen import built_in_place

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Plain:
        a: int
        tags: dict = dataclasses.field(default_factory=dict)
        b: str = "x"

    @built_in_place
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Fast:
        a: int
        tags: dict = dataclasses.field(default_factory=dict)
        b: str = "x"

    assert str(inspect.signature(Fast)) == str(inspect.signature(Plain))
    with pytest.raises(TypeError):
        Fast(1)
    one, two = Fast(a=1), Fast(a=1)
    assert one.tags == {} and one.tags is not two.tags and (one.a, one.b) == (1, "x")
    assert Fast(a=2, tags={"k": "v"}, b="y").tags == {"k": "v"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.a = 3  # type: ignore[misc]
    first, second = ChatRequest(model="m", messages=()), ChatRequest(model="m", messages=())
    assert first == second and first.metadata == {} and first.metadata is not second.metadata

    with pytest.raises(TypeError, match="init=False"):
        built_in_place(dataclasses.make_dataclass(
            "Hidden", [("a", int), ("b", int, dataclasses.field(default=0, init=False))], frozen=True, slots=True))
