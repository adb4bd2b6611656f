"""Anthropic's Messages API (``POST /v1/messages``) as a front-door dialect.

Pure translation (docs/openai-compatible.md, "Anthropic Messages", says the same for users):

- :func:`parse` checks a request body the way Anthropic's API does (every field's JSON type,
  ``max_tokens`` required, tool_use/tool_result pairing) and turns it into a
  :class:`~j1mskyd.chat_request.ChatRequest`.  What j1mskyd cannot honour is refused with a
  400 that names it, never silently dropped: ``thinking`` (its providers' normalised request
  has no thinking budget and their answers no thinking blocks), ``top_k`` (no upstream field
  to carry it: OpenAI-format providers have none), image/document and other non-text blocks,
  server tools, ``disable_parallel_tool_use: true`` and any field this module does not know.
  Two fields that change nothing in the answer are accepted and ignored: ``cache_control``
  (prompt caching is an upstream's cost optimisation) and ``service_tier``.
- :meth:`AnthropicMessages.render` and the stream encoder give the Message object and the
  server-sent events as Anthropic's API sends them.
- :meth:`AnthropicMessages.error` renders any refusal as ``{"type": "error", "error": {...}}``
  with the status the ``anthropic`` SDK maps to its own exception class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NoReturn

from .. import jsonx
from ..budget import BudgetExceeded
from ..chat_request import ChatOutcome, ChatRequest
from ..config import ModelConfig
from ..errors import ApiError, ValidationFailed
from ..plugin_api import Block, CompletionRequest, Message, TextBlock, Tool, ToolCall, ToolChoice, ToolResult
from ..provider_http import estimate_tokens, request_text
from ..request_fields import finite_number
from . import MAX_TOKENS, Dialect, TextFrame, model_alias

__all__ = ["DIALECT", "AnthropicMessages", "AnthropicStream", "SPEND_LIMIT_CODE", "error_body", "estimate_input_tokens",
           "parse", "parse_count", "render", "stop_reason", "tool_input"]

# Fields of a Messages request this dialect reads.  Anything else is a 400 naming it, as
# Anthropic's own API answers an unknown field ("Extra inputs are not permitted"): a field
# nobody reads cannot be honoured.
_FIELDS = frozenset({"model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p",
                     "top_k", "tools", "tool_choice", "metadata", "stream", "thinking", "service_tier",
                     "cache_control"})
# count_tokens takes the request minus what only shapes the generation (as Anthropic's does).
_COUNT_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking", "cache_control"})

# Several text blocks where the upstream takes one text (the system prompt, a tool's result).
_JOIN = "\n\n"
_TOOL_NAME_MAX = 64
_USER_ID_MAX = 256

#: ``error.details.error_code`` of a spent budget: the ``anthropic`` SDK raises
#: ``EnforcedSpendLimitReachedError``, a ``RateLimitError``, for a 429 carrying it (and every
#: SDK version, older ones included, raises ``RateLimitError`` for the 429 alone).
SPEND_LIMIT_CODE = "enforced_spend_limit_reached"


# -- parsing ------------------------------------------------------------------------------------

def _bad(field: str, problem: str) -> NoReturn:
    """A 400 naming ``field`` in Anthropic's dotted form (``messages.0.content.1.type``)."""
    raise ValidationFailed([{"field": field, "message": f"{field}: {problem}"}])


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _want(field: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is of ``kind`` (a JSON boolean is never a number here), else a 400."""
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        _bad(field, f"must be {what}, not a boolean")
    if not isinstance(value, kind):
        _bad(field, f"must be {what}, not {_type_name(value)}")
    return value


def _text(field: str, value: Any, *, empty: bool = True) -> str:
    text = _want(field, value, str, "a string")
    if not empty and not text:
        _bad(field, "must not be empty")
    return text


def _only(field: str, obj: dict[str, Any], allowed: frozenset[str] | set[str]) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        name = f"{field}.{extra[0]}" if field else extra[0]
        _bad(name, "is not supported by this server (extra inputs are not permitted)")


def _cache_control(field: str, obj: dict[str, Any]) -> None:
    """Prompt caching is an upstream's cost optimisation; the answer is the same without it,
    so a well-formed ``cache_control`` is accepted and not passed on."""
    value = obj.get("cache_control")
    if value is not None:
        _want(f"{field}.cache_control", value, dict, "an object")


def _number(field: str, value: Any, low: float, high: float) -> float:
    number = _want(field, value, (int, float), "a number")
    if not finite_number(number) or not low <= number <= high:
        _bad(field, f"must be between {low:g} and {high:g}")
    return float(number)


def _text_block(field: str, block: dict[str, Any]) -> str:
    _only(field, block, {"type", "text", "cache_control", "citations"})
    _cache_control(field, block)
    if block.get("citations") not in (None, []):  # citations of an earlier answer: no upstream takes them back
        _bad(f"{field}.citations", "citations are not supported by this server")
    return _text(f"{field}.text", block.get("text"), empty=False)


def _text_blocks(field: str, value: Any) -> str:
    """A string, or an array of text blocks joined (the system prompt, a tool result's content)."""
    if isinstance(value, str):
        return value
    items = _want(field, value, list, "a string or an array of text blocks")
    texts = []
    for i, block in enumerate(items):
        where = f"{field}.{i}"
        _want(where, block, dict, "an object")
        kind = block.get("type")
        if kind != "text":
            _refuse_block(f"{where}.type", kind, "only text blocks")
        texts.append(_text_block(where, block))
    return _JOIN.join(texts)


def _refuse_block(field: str, kind: Any, allowed: str) -> NoReturn:
    if not isinstance(kind, str):
        _bad(field, f"must be a string, not {_type_name(kind)}")
    _bad(field, f"'{kind}' blocks are not supported by this server ({allowed}): "
                "j1mskyd passes text and tool calls to its providers, nothing else")


def _block(field: str, block: Any, role: str) -> Block:
    _want(field, block, dict, "an object")
    kind = block.get("type")
    if kind == "text":
        return TextBlock(_text_block(field, block))
    if kind == "tool_use" and role == "assistant":
        _only(field, block, {"type", "id", "name", "input", "cache_control"})
        _cache_control(field, block)
        arguments = _want(f"{field}.input", block.get("input"), dict, "an object")
        return ToolCall(_text(f"{field}.id", block.get("id"), empty=False),
                        _text(f"{field}.name", block.get("name"), empty=False), jsonx.dumps(arguments))
    if kind == "tool_result" and role == "user":
        _only(field, block, {"type", "tool_use_id", "content", "is_error", "cache_control"})
        _cache_control(field, block)
        is_error = block.get("is_error")
        if is_error is not None:
            _want(f"{field}.is_error", is_error, bool, "a boolean")
        content = block.get("content")
        return ToolResult(_text(f"{field}.tool_use_id", block.get("tool_use_id"), empty=False),
                          "" if content is None else _text_blocks(f"{field}.content", content), bool(is_error))
    if kind in ("tool_use", "tool_result"):
        _bad(f"{field}.type", f"'{kind}' blocks belong in {'assistant' if kind == 'tool_use' else 'user'} messages")
    _refuse_block(f"{field}.type", kind, "text, tool_use and tool_result")


def _message(field: str, value: Any, last: bool) -> Message:
    _want(field, value, dict, "an object")
    _only(field, value, {"role", "content"})
    role = value.get("role")
    if role not in ("user", "assistant"):
        if role == "system":
            _bad(f"{field}.role", "must be 'user' or 'assistant' (a system prompt goes in the top-level system field)")
        _bad(f"{field}.role", f"must be 'user' or 'assistant', not {jsonx.dumps(role)}")
    content = value.get("content")
    if isinstance(content, str):
        blocks: tuple[Block, ...] = (TextBlock(content),) if content else ()
    else:
        items = _want(f"{field}.content", content, list, "a string or an array of content blocks")
        blocks = tuple(_block(f"{field}.content.{i}", b, role) for i, b in enumerate(items))
    if not blocks and not (last and role == "assistant"):  # an empty final assistant turn asks for nothing
        _bad(f"{field}.content", "must not be empty (only the final assistant message may be)")
    return Message(role, blocks)


def _messages(value: Any) -> tuple[Message, ...]:
    """The conversation with consecutive turns of one role merged (Anthropic's API merges
    them too; OpenAI-format upstreams want them alternating), tool calls and results paired."""
    items = _want("messages", value, list, "an array")
    if not items:
        _bad("messages", "must hold at least one message")
    merged: list[Message] = []
    for i, item in enumerate(items):
        message = _message(f"messages.{i}", item, i == len(items) - 1)
        if merged and merged[-1].role == message.role:
            merged[-1] = Message(message.role, merged[-1].content + message.content)
        else:
            merged.append(message)
    merged = [m for m in merged if m.content]
    if not merged:
        _bad("messages", "must hold at least one message with content")
    _check_tool_pairs(merged)
    return tuple(merged)


def _check_tool_pairs(messages: list[Message]) -> None:
    """Anthropic's rule: each tool_result answers a tool_use of the turn just before, and each
    tool_use is answered in the turn just after (the last turn's excepted: nothing came yet).
    An OpenAI-format upstream refuses an unpaired one; refusing here names it and spends nothing."""
    for i, message in enumerate(messages):
        calls = {b.id for b in message.content if isinstance(b, ToolCall)}
        answered = {b.tool_call_id for b in messages[i + 1].content if isinstance(b, ToolResult)} \
            if i + 1 < len(messages) else None
        if calls and answered is not None and calls - answered:
            _bad("messages", f"tool_use ids were found without tool_result blocks immediately after: "
                             f"{', '.join(sorted(calls - answered))}")
        if message.role == "user":
            asked = {b.id for b in messages[i - 1].content if isinstance(b, ToolCall)} if i else set()
            unknown = sorted({b.tool_call_id for b in message.content if isinstance(b, ToolResult)} - asked)
            if unknown:
                _bad("messages", f"unexpected tool_use_id found in tool_result blocks: {', '.join(unknown)}; "
                                 "each tool_result must answer a tool_use block of the previous message")


def _tools(value: Any) -> tuple[Tool, ...]:
    items = _want("tools", value, list, "an array")
    tools: list[Tool] = []
    for i, tool in enumerate(items):
        field = f"tools.{i}"
        _want(field, tool, dict, "an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            if not isinstance(kind, str):
                _bad(f"{field}.type", f"must be a string, not {_type_name(kind)}")
            _bad(f"{field}.type", f"server tool '{kind}' is not supported by this server: Anthropic runs it on "
                                  "its own side, which j1mskyd's providers cannot; declare a client tool "
                                  "(name, description, input_schema) instead")
        _only(field, tool, {"type", "name", "description", "input_schema", "cache_control"})
        _cache_control(field, tool)
        name = _text(f"{field}.name", tool.get("name"), empty=False)
        if len(name) > _TOOL_NAME_MAX or not all(c.isascii() and (c.isalnum() or c in "_-") for c in name):
            _bad(f"{field}.name", f"must be 1 to {_TOOL_NAME_MAX} letters, digits, '_' or '-'")
        if any(t.name == name for t in tools):
            _bad(f"{field}.name", f"tool names must be unique ('{name}' is given twice)")
        description = tool.get("description")
        schema = _want(f"{field}.input_schema", tool.get("input_schema"), dict, "an object (a JSON Schema)")
        if schema.get("type") != "object":
            _bad(f"{field}.input_schema.type", "must be 'object'")
        tools.append(Tool(name, "" if description is None else _text(f"{field}.description", description),
                          dict(schema)))
    return tuple(tools)


_CHOICES: dict[str, Literal["auto", "none", "required", "tool"]] = {
    "auto": "auto", "any": "required", "tool": "tool", "none": "none"}


def _tool_choice(value: Any, tools: tuple[Tool, ...]) -> ToolChoice:
    _want("tool_choice", value, dict, "an object")
    kind = value.get("type")
    if not isinstance(kind, str) or kind not in _CHOICES:
        _bad("tool_choice.type", f"must be one of 'auto', 'any', 'tool', 'none', not {jsonx.dumps(kind)}")
    _only("tool_choice", value, {"type", "name", "disable_parallel_tool_use"} if kind == "tool"
          else {"type", "disable_parallel_tool_use"})
    serial = value.get("disable_parallel_tool_use")
    if serial is not None and _want("tool_choice.disable_parallel_tool_use", serial, bool, "a boolean"):
        # The normalised request has no such switch (and an upstream would not be bound by
        # one it never got): refused rather than promised and not kept.
        _bad("tool_choice.disable_parallel_tool_use", "true is not supported by this server (the model may ask "
                                                      "for several tools at once)")
    if kind in ("any", "tool") and not tools:
        _bad("tool_choice", "tool_choice may only be specified while providing tools")
    name = None
    if kind == "tool":
        name = _text("tool_choice.name", value.get("name"), empty=False)
        if all(t.name != name for t in tools):
            _bad("tool_choice.name", f"no tool named '{name}' in tools")
    return ToolChoice(_CHOICES[kind], name)


def _stop_sequences(value: Any) -> tuple[str, ...]:
    items = _want("stop_sequences", value, list, "an array of strings")
    for i, item in enumerate(items):
        if not _text(f"stop_sequences.{i}", item).strip():
            _bad(f"stop_sequences.{i}", "each stop sequence must contain non-whitespace characters")
    return tuple(dict.fromkeys(items))


def _metadata(value: Any) -> str | None:
    _want("metadata", value, dict, "an object")
    _only("metadata", value, {"user_id"})
    user = value.get("user_id")
    if user is None:
        return None
    if len(_text("metadata.user_id", user)) > _USER_ID_MAX:
        _bad("metadata.user_id", f"must be at most {_USER_ID_MAX} characters")
    return user or None


def _thinking(value: Any) -> None:
    """Only ``{"type": "disabled"}`` (the default) is honoured."""
    _want("thinking", value, dict, "an object")
    if value.get("type") != "disabled":
        _bad("thinking", "extended thinking is not supported by this server: j1mskyd's providers get no thinking "
                         "budget and return no thinking blocks; omit thinking (or send {\"type\": \"disabled\"})")
    _only("thinking", value, {"type"})


def _model(value: Any, models: Mapping[str, ModelConfig]) -> str:
    return model_alias(_text("model", value, empty=False), models)


def _present(body: dict[str, Any], name: str) -> bool:
    """Set to something other than null (a null field is taken as left out)."""
    return body.get(name) is not None


def _conversation(body: Any, fields: frozenset[str]) -> dict[str, Any]:
    """What a message and a token count share: the body checked as an object of known fields,
    the model's type, the messages, system prompt, tools and tool_choice, thinking refused."""
    if not isinstance(body, dict):
        _bad("body", f"must be a JSON object, not {_type_name(body)}")
    _only("", body, fields)
    _text("model", body.get("model"), empty=False)
    tools = _tools(body["tools"]) if _present(body, "tools") else ()
    if _present(body, "thinking"):
        _thinking(body["thinking"])
    if _present(body, "cache_control"):  # Anthropic's automatic caching marker: ignored as a block's is
        _want("cache_control", body["cache_control"], dict, "an object")
    return {
        "messages": _messages(body.get("messages")),
        "system": _text_blocks("system", body["system"]) if _present(body, "system") else None,
        "tools": tools,
        "tool_choice": _tool_choice(body["tool_choice"], tools) if _present(body, "tool_choice") else None,
    }


def parse(body: Any, models: Mapping[str, ModelConfig]) -> ChatRequest:
    """A Messages request body as a ChatRequest; 400 naming the field, 404 for an unknown
    model (checked last, so a 404 means the rest of the request was fine)."""
    fields = _conversation(body, _FIELDS)
    if not _present(body, "max_tokens"):
        _bad("max_tokens", "field required")
    max_tokens = _want("max_tokens", body["max_tokens"], int, "an integer")
    if max_tokens < 1:
        _bad("max_tokens", "must be at least 1")
    if max_tokens > MAX_TOKENS:
        _bad("max_tokens", f"must be at most {MAX_TOKENS}")
    if _present(body, "top_k"):
        _want("top_k", body["top_k"], int, "an integer")
        _bad("top_k", "is not supported by this server: its providers' normalised request has no top-k sampling "
                      "(OpenAI-format upstreams have none); use temperature or top_p")
    if _present(body, "service_tier"):  # Anthropic's own capacity tiers: nothing to choose here
        if _text("service_tier", body["service_tier"]) not in ("auto", "standard_only"):
            _bad("service_tier", "must be 'auto' or 'standard_only'")
    stream = body.get("stream")
    sampling = {
        "temperature": _number("temperature", body["temperature"], 0, 1) if _present(body, "temperature") else None,
        "top_p": _number("top_p", body["top_p"], 0, 1) if _present(body, "top_p") else None,
        "stop": _stop_sequences(body["stop_sequences"]) if _present(body, "stop_sequences") else (),
        "user": _metadata(body["metadata"]) if _present(body, "metadata") else None,
        "stream": False if stream is None else _want("stream", stream, bool, "a boolean"),
    }
    return ChatRequest(model=_model(body["model"], models), max_tokens=max_tokens, dialect="anthropic",
                       **sampling, **fields)


def parse_count(body: Any, models: Mapping[str, ModelConfig]) -> ChatRequest:
    """A count_tokens body (a Messages request without max_tokens and the sampling fields)."""
    fields = _conversation(body, _COUNT_FIELDS)
    return ChatRequest(model=_model(body["model"], models), dialect="anthropic", **fields)


def estimate_input_tokens(request: ChatRequest) -> int:
    """The input tokens of ``request``, estimated as the providers estimate a call's input when
    an upstream reports no usage (and as the offline provider counts it): about four
    characters a token (``provider_http.estimate_tokens``) over everything the model reads
    (``provider_http.request_text``: system text, messages, tool calls and results, tool
    definitions).  Not ``worstcase.input_bound``: that is a bound for reserving money (a token
    a byte), about four times the real count, and a client fitting a context window on it
    would cut its conversation for nothing."""
    read = CompletionRequest(model=request.model, prompt="", system=request.system, messages=request.messages,
                             tools=request.tools)
    return estimate_tokens(request_text(read))


# -- answers ------------------------------------------------------------------------------------

# OpenAI's finish reasons (the plugin contract's words) -> Anthropic's stop reasons.
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                 "content_filter": "refusal"}
_ANTHROPIC_STOP_REASONS = frozenset({"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                                     "model_context_window_exceeded"})


def stop_reason(outcome: ChatOutcome) -> str:
    """Anthropic's ``stop_reason`` for an outcome.  An answer holding tool calls stopped for
    them unless it ran out of tokens (some OpenAI-compatible servers say ``stop`` then); an
    Anthropic word that passed through the plugin stays; an unknown word is ``end_turn``.
    ``stop_sequence`` cannot be told apart from ``end_turn``: the plugin contract's ``stop``
    covers both and neither answer's text holds the sequence."""
    reason = outcome.finish_reason
    if reason in _ANTHROPIC_STOP_REASONS:
        mapped = reason
    else:
        mapped = _STOP_REASONS.get(reason, "end_turn")
    if outcome.tool_calls and mapped == "end_turn":
        return "tool_use"
    return mapped


def tool_input(call: ToolCall) -> dict[str, Any]:
    """A tool call's ``input`` object from its JSON text.  Text that is not a JSON object (a
    model's broken JSON, cut by max_tokens) is kept whole under ``_raw_arguments`` rather
    than dropped, so the caller's tool sees what the model wrote instead of running on ``{}``."""
    text = call.arguments.strip()
    if not text:
        return {}
    try:
        value = jsonx.loads(text)
    except (ValueError, RecursionError):
        value = None
    return value if isinstance(value, dict) else {"_raw_arguments": call.arguments}


def _message_id(agent_id: str) -> str:
    return f"msg_{agent_id}"


def _tool_block(call: ToolCall, value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": value}


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    # No prompt caching here (cache_control is not passed on): nothing was written or read.
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def render(outcome: ChatOutcome) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": outcome.text}] if outcome.text else []
    content += [_tool_block(call, tool_input(call)) for call in outcome.tool_calls]
    return {"id": _message_id(outcome.agent_id), "type": "message", "role": "assistant", "model": outcome.model,
            "content": content, "stop_reason": stop_reason(outcome), "stop_sequence": None,
            "usage": _usage(outcome.input_tokens, outcome.output_tokens)}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {jsonx.dumps(data)}\n\n".encode()


class AnthropicStream:
    """The events of one streamed Message, as Anthropic's API sends them: ``message_start``;
    per content block ``content_block_start``, its deltas (``text_delta``, or one
    ``input_json_delta`` holding a tool call's whole input: the plugin contract gives tool
    calls complete, at the end), ``content_block_stop``; ``message_delta`` (stop reason and
    the upstream's usage); ``message_stop``.  ``fail`` ends it with an ``error`` event."""

    def __init__(self, request: ChatRequest, agent_id: str) -> None:
        self._request = request
        self._agent_id = agent_id
        self._started = False
        self._text_open = False
        self._blocks = 0          # content blocks opened so far (the next one's index)
        self._streamed: list[str] = []
        self._text: TextFrame | None = None  # the open text block's delta frame

    def start(self) -> bytes:
        self._started = True
        # The upstream counts the input only at the end: message_start carries the estimate
        # count_tokens gives; message_delta carries the upstream's count, which the SDK's
        # accumulated message takes.
        message = {"id": _message_id(self._agent_id), "type": "message", "role": "assistant",
                   "model": self._request.model, "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": _usage(estimate_input_tokens(self._request), 0)}
        return _event("message_start", {"type": "message_start", "message": message})

    def _begin(self) -> bytes:
        return b"" if self._started else self.start()

    def delta(self, text: str) -> bytes:
        if not text:
            return self._begin()
        self._streamed.append(text)
        if self._text_open and self._text is not None:  # the usual case: more of the open text block
            return self._text(text)
        frames = [self._begin(), _event("content_block_start", {"type": "content_block_start", "index": self._blocks,
                                                                "content_block": {"type": "text", "text": ""}})]
        self._text_open = True
        self._text = TextFrame(_event("content_block_delta", {"type": "content_block_delta", "index": self._blocks,
                                                              "delta": {"type": "text_delta", "text": ""}}), b'"text":')
        self._blocks += 1
        frames.append(self._text(text))
        return b"".join(frames)

    def _close_text(self) -> bytes:
        if not self._text_open:
            return b""
        self._text_open = False
        return _event("content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1})

    def finish(self, outcome: ChatOutcome) -> bytes:
        frames = [self._begin()]
        streamed = "".join(self._streamed)
        if len(outcome.text) > len(streamed) and outcome.text.startswith(streamed):
            frames.append(self.delta(outcome.text[len(streamed):]))  # text the deltas did not carry
        frames.append(self._close_text())
        for call in outcome.tool_calls:
            index, self._blocks = self._blocks, self._blocks + 1
            value = tool_input(call)
            frames += (
                _event("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": _tool_block(call, {})}),
                _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                               "delta": {"type": "input_json_delta",
                                                         "partial_json": jsonx.dumps(value)}}),
                _event("content_block_stop", {"type": "content_block_stop", "index": index}))
        frames += (
            _event("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": stop_reason(outcome), "stop_sequence": None},
                                     "usage": _usage(outcome.input_tokens, outcome.output_tokens)}),
            _event("message_stop", {"type": "message_stop"}))
        return b"".join(frames)

    def fail(self, error: ApiError) -> bytes:
        # As Anthropic's API does mid-stream: no block is closed, the error event ends it.
        return _event("error", error_body(error)[1])


# -- errors -------------------------------------------------------------------------------------

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 409: "conflict_error", 413: "request_too_large",
                429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error"}


def error_body(error: ApiError) -> tuple[int, dict[str, Any]]:
    """The status and body of a refusal.  A spent budget (402 in the native API) is a 429
    ``rate_limit_error`` with ``details.error_code`` :data:`SPEND_LIMIT_CODE`: the status
    every ``anthropic`` SDK maps to ``RateLimitError`` (a 402 is a bare ``APIStatusError``
    for SDKs before ``PaymentRequiredError`` existed), the code the current SDK maps to its
    ``EnforcedSpendLimitReachedError`` subclass of it."""
    status = error.status
    detail: dict[str, Any] = {}
    if isinstance(error, BudgetExceeded):
        status = 429
        detail = {"details": {"error_code": SPEND_LIMIT_CODE}}
    kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return status, {"type": "error", "error": {"type": kind, "message": error.message, **detail}}


class AnthropicMessages:
    """The Dialect of ``/v1/messages`` (j1mskyd.dialects.Dialect)."""

    name = "anthropic"

    def parse(self, body: Any, models: Mapping[str, ModelConfig]) -> ChatRequest:
        return parse(body, models)

    def render(self, outcome: ChatOutcome) -> dict[str, Any]:
        return render(outcome)

    def encoder(self, request: ChatRequest, agent_id: str, created_at: float) -> AnthropicStream:
        return AnthropicStream(request, agent_id)

    def error(self, error: ApiError) -> tuple[int, dict[str, Any]]:
        return error_body(error)


DIALECT: Dialect = AnthropicMessages()
