"""Loaded by ``bench/call_timeline.py``'s daemon (this directory on its PYTHONPATH): marks, with
``time.perf_counter_ns`` (CLOCK_MONOTONIC, the clock the client reads too), the entry and exit
of the steps of a front-door call, and writes them to ``$TIMELINE_OUT`` at exit.  A step whose
name is gone from the code is left out (named on stderr), not an error: a bench, not a test.
Nothing here is imported by the daemon otherwise."""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import os
import sys
import threading
import time
from typing import Any

_MARKS: list[tuple[int, str, int]] = []
_now = time.perf_counter_ns


def mark(name: str) -> None:
    _MARKS.append((_now(), name, threading.get_ident()))


def _dump() -> None:
    out = os.environ.get("TIMELINE_OUT")
    if out is None:  # loaded without call_timeline.py: nowhere to write
        return
    with open(out, "w") as f:
        for t, name, thread in _MARKS:
            f.write(f"{t} {name} {thread}\n")


atexit.register(_dump)

# (module, class or None, attribute, label, is it a coroutine function)
STEPS = [
    ("aiohttp.web_protocol", "RequestHandler", "data_received", "data_received", False),
    ("j1mskyd.dialects.openai_chat", "OpenAIChat", "parse", "parse", False),
    ("j1mskyd.dialects.anthropic_messages", "AnthropicMessages", "parse", "parse", False),
    ("j1mskyd.chat_service", "ChatService", "start", "start", True),
    ("j1mskyd.agents", "AgentService", "store_and_admit", "store_and_admit", True),
    ("j1mskyd.runtime", "AgentRuntime", "_run", "run", True),
    ("j1mskyd.runtime", "AgentRuntime", "_complete", "provider_call", True),
    ("aiohttp.client", "ClientSession", "_request", "upstream_http", True),
    ("j1mskyd.runtime", "AgentRuntime", "_finish_soon", "finish", False),
    ("j1mskyd.store", "Store", "submit", "submit", False),
    ("j1mskyd.store", "Store", "_commit_batch", "commit", False),
    ("j1mskyd.runtime", "AgentRuntime", "_written", "written", False),
    ("j1mskyd.chat_service", "LiveChatCall", "_ended", "ended", False),
    ("aiohttp.web_protocol", "RequestHandler", "finish_response", "response_write", True),
]


def _wrap(owner: Any, attr: str, label: str, is_async: bool) -> None:
    orig = getattr(owner, attr)
    if is_async:
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            mark(label + ">")
            try:
                return await orig(*args, **kwargs)
            finally:
                mark(label + "<")
    else:
        def wrapped(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            mark(label + ">")
            try:
                return orig(*args, **kwargs)
            finally:
                mark(label + "<")
    setattr(owner, attr, wrapped)


def _install() -> None:
    for module, cls, attr, label, is_async in STEPS:
        try:
            owner: Any = importlib.import_module(module)
            if cls is not None:
                owner = getattr(owner, cls)
            getattr(owner, attr)
        except (ImportError, AttributeError):
            print(f"timeline: no {module}.{cls + '.' if cls else ''}{attr}: step {label} left out", file=sys.stderr)
            continue
        _wrap(owner, attr, label, is_async)


class _AfterApp:
    """Installs the marks once ``j1mskyd.app`` is imported (everything the steps name is then)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "j1mskyd.app":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.loader is not None
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            _install()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


sys.meta_path.insert(0, _AfterApp())
