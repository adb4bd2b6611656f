"""Built-in plugin ``offline``: a deterministic provider that never touches the network.

It is a stand-in for tests, demos and benchmarks, not a model.  The answer is
``[offline:<model>] <first words of the question> (id <sha256 prefix>)``, so the same
request always gives the same text and it is obvious nothing real answered.  The
question is the last user message of the conversation: its text, then what the tool
results it carries said (``tool <id>: <content>``), so a tool round trip through it is
deterministic too.  An agent's call is its prompt, as it always was.  Tokens are
estimated as ``ceil(len(text) / 4)``, at least 1 (the input: an agent's prompt, or all of
a conversation the model would read).

A prompt that asks for a reviewer's verdict (``VERDICT: APPROVE`` or ``VERDICT: REVISE``, as a
task's critic step does) gets a last line ``VERDICT: APPROVE (offline provider: no review was
performed)``: tasks complete on the embedded default, and say that nothing reviewed them.

Tools: when the request defines tools and its ``tool_choice`` is ``required`` (the first
tool) or ``tool`` (the one named), the answer is one call of that tool with arguments
``{}`` (id ``call_<digest>``) and ``finish_reason`` ``tool_calls``; otherwise it answers in
text.  The sampling fields (``temperature``, ``top_p``, ``stop``, ``response_format``,
``user``) are accepted and ignored: nothing here samples.

Options: ``delay`` (seconds to sleep per call, to simulate a slow upstream in
tests and benchmarks); ``fail`` (a ProviderError kind such as ``"server_error"``:
every call raises that error, to exercise retries and fallback).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from j1mskyd.plugin_api import (
    ERROR_KINDS,
    CompletionRequest,
    CompletionResult,
    ProviderError,
    ProviderSettings,
    Registrar,
    ToolCall,
    ToolResult,
)
from j1mskyd.provider_http import request_text

J1MSKY_PLUGIN_API = 1

_SUMMARY_WORDS = 12


def _tokens(text: str) -> int:
    return max(1, -(-len(text) // 4))  # ceil without floats


def _question(request: CompletionRequest) -> str:
    """What the answer repeats: the prompt of an agent's call; else the last user message's
    text and its tool results."""
    if not request.messages:
        return request.prompt
    last = next((m for m in reversed(request.messages) if m.role == "user"), None)
    if last is None:
        return ""
    results = [f"tool {b.tool_call_id}: {b.content}" for b in last.content if isinstance(b, ToolResult)]
    return " ".join(([last.text] if last.text else []) + results)


def _digest(request: CompletionRequest) -> str:
    """The same for the same request: model, system text, prompt and, for a conversation,
    every block and tool (an agent's call hashes as it always did)."""
    seed = f"{request.model}\0{request.system or ''}\0{request.prompt}"
    if request.messages or request.tools:
        seed += "\0" + repr((request.messages, request.tools, request.tool_choice))
    return hashlib.sha256(seed.encode()).hexdigest()


class OfflineProvider:
    def __init__(self, settings: ProviderSettings, session: Any = None) -> None:
        delay = settings.options.get("delay", 0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            raise ValueError("options.delay must be a number of seconds >= 0")
        fail = settings.options.get("fail")
        if fail is not None and fail not in ERROR_KINDS:
            raise ValueError(f"options.fail must be one of {sorted(ERROR_KINDS)}")
        self._delay = float(delay)
        self._fail = fail
        self._name = settings.name

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._fail:
            raise ProviderError(f"{self._name} (offline): configured to fail with {self._fail}", kind=self._fail)
        digest = _digest(request)
        input_tokens = _tokens(request_text(request) if request.messages else request.prompt)
        call = _forced_call(request, digest)
        if call is not None:
            return CompletionResult(text="", input_tokens=input_tokens,
                                    output_tokens=_tokens(call.name + call.arguments), model=request.model,
                                    finish_reason="tool_calls", tool_calls=(call,))
        words = _question(request).split(None, _SUMMARY_WORDS)
        summary = " ".join(words[:_SUMMARY_WORDS]) + (" …" if len(words) > _SUMMARY_WORDS else "")
        text = f"[offline:{request.model}] {summary} (id {digest[:12]})"
        finish = "stop"
        if _tokens(text) > request.max_tokens:  # honour max_tokens like a real model would
            text, finish = text[: max(1, request.max_tokens) * 4], "length"
        if _asks_verdict(request.prompt):
            text += "\n" + VERDICT
        return CompletionResult(
            text=text,
            input_tokens=input_tokens,
            output_tokens=_tokens(text),
            model=request.model,
            finish_reason=finish,
        )


# A task's reviewing step (j1mskyd/tasks.py) ends its prompt asking for one of these lines; the
# offline provider approves, saying so, so that tasks complete on the embedded default config.
VERDICT = "VERDICT: APPROVE (offline provider: no review was performed)"


def _asks_verdict(prompt: str) -> bool:
    return "VERDICT: APPROVE" in prompt and "VERDICT: REVISE" in prompt


def _forced_call(request: CompletionRequest, digest: str) -> ToolCall | None:
    """The tool call a ``required``/``tool`` tool choice asks for, or None."""
    choice = request.tool_choice
    if not request.tools or choice is None or choice.mode not in ("required", "tool"):
        return None
    name = choice.name if choice.mode == "tool" and choice.name else request.tools[0].name
    return ToolCall(id=f"call_{digest[:24]}", name=name, arguments="{}")


def register(registry: Registrar) -> None:
    registry.add_provider("offline", OfflineProvider)
