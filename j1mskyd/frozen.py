"""Frozen dataclass values built with fewer instructions (see :func:`built_in_place`).

The plugin contract's values (plugin_api: a provider call's request and result, the
conversation's blocks) and the upstream's server-sent events (provider_http) are frozen, so that
no plugin can change what another part of the daemon holds, and built once or more per agent.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["built_in_place"]

_C = TypeVar("_C", bound=type)


class _Factory:
    """The default of a field with a ``default_factory``: a fresh value is made when it is left out
    (shown as dataclasses shows it)."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def built_in_place(cls: _C) -> _C:
    """Give a frozen slotted dataclass an ``__init__`` that stores its fields with plain attribute
    stores, to a value that is the same as the generated ``__init__``'s in every way (fields,
    defaults, signature, equality, hash, repr, ``replace``, copy, pickling; frozen to anyone after).

    Why: a frozen dataclass's generated ``__init__`` gets past its own ``__setattr__`` with one
    ``object.__setattr__(self, name, value)`` call per field, ~1,200 instructions each (a wrapper
    call with an argument tuple, a type lookup): a CompletionRequest cost 24,300 instructions to
    build, a CompletionResult 13,000, both once per agent (callgrind).  This ``__init__`` makes the
    new object, for the length of the stores, an instance of a twin class with the same slots and
    no ``__setattr__`` of its own (``__class__`` may move between two classes of the same layout),
    stores the fields (STORE_ATTR into a slot: tens of instructions each) and gives the object its
    class back: 9,400 and 7,800 instructions (-14,900 and -5,200).  A subclass's object is built by the generated
    ``__init__``, as before (its layout is not the twin's).  Keyword-only fields stay keyword-only
    and a ``default_factory`` gives a fresh value per call, as in the generated ``__init__`` (the
    front door's ChatRequest: 29,900 -> ~14,000)."""
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    if tuple(getattr(cls, "__slots__", ())) != tuple(names):
        raise TypeError(f"{cls.__name__}: a slotted dataclass is needed")
    if not all(f.init for f in fields):
        raise TypeError(f"{cls.__name__}: a field outside __init__ (init=False) is not supported here")
    generated = vars(cls)["__init__"]
    env: dict[str, Any] = {"_twin": type(f"_{cls.__name__}InTheMaking", (), {"__slots__": tuple(names)}),
                           "_cls": cls, "_generated": generated, "_set": object.__setattr__,
                           "_FACTORY": _FACTORY}
    positional: list[str] = []
    keywords: list[str] = []
    resolve: list[str] = []
    for f in fields:
        if f.default is not dataclasses.MISSING:
            env[f"_default_{f.name}"] = f.default
            param = f"{f.name}=_default_{f.name}"
        elif f.default_factory is not dataclasses.MISSING:  # as dataclasses does: a fresh value per call
            env[f"_factory_{f.name}"] = f.default_factory
            param = f"{f.name}=_FACTORY"
            resolve.append(f"    if {f.name} is _FACTORY:\n        {f.name} = _factory_{f.name}()\n")
        else:
            param = f.name
        (keywords if f.kw_only is True else positional).append(param)
    signature = ", ".join(positional + (["*", *keywords] if keywords else []))
    arguments = ", ".join([f.name for f in fields if f.kw_only is not True]
                          + [f"{f.name}={f.name}" for f in fields if f.kw_only is True])
    stores = "".join(f"    self.{n} = {n}\n" for n in names)
    source = (f"def __init__(self, {signature}):\n"
              f"{''.join(resolve)}"
              f"    if type(self) is not _cls:\n"
              f"        return _generated(self, {arguments})\n"
              f"    _set(self, '__class__', _twin)\n"
              f"{stores}"
              f"    self.__class__ = _cls\n")
    exec(source, env)  # noqa: S102 (source made above from the class's own field names)
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = dict(generated.__annotations__)
    setattr(cls, "__init__", init)
    return cls
