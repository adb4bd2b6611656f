"""OpenAI's Chat Completions (``POST /v1/chat/completions``) as a front-door dialect.

Pure translation, no I/O.  :meth:`OpenAIChat.parse` checks a request body field by field
(every JSON type in every field is a 400 naming the parameter, in OpenAI's error shape) and
builds a :class:`ChatRequest`; :meth:`OpenAIChat.render` and :class:`ChunkEncoder` write the
``chat.completion`` object and the ``chat.completion.chunk`` stream; :meth:`OpenAIChat.error`
gives every refusal OpenAI's status and ``{"error": {...}}`` body, so the official SDK raises
its own exception class (it picks the class from the status alone).

Parameters beyond the supported ones are decided one by one (the table is :data:`IGNORED`
and :data:`DEFAULT_ONLY`, and docs/openai-compatible.md): a parameter whose absence cannot
change the answer is accepted and ignored; one that would change it is refused with a 400
naming it unless it holds its default value, since dropping it silently would hand back an
answer the caller did not ask for.  Any other parameter is refused as OpenAI refuses it
("Unrecognized request argument").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from .. import jsonx
from ..chat_request import ChatFailed, ChatOutcome, ChatRequest
from ..config import ModelConfig
from ..errors import ApiError, ValidationFailed
from ..plugin_api import Block, Message, TextBlock, Tool, ToolCall, ToolChoice, ToolResult
from ..request_fields import finite_number
from . import MAX_TOKENS, TextFrame, model_alias

__all__ = ["DEFAULT_ONLY", "IGNORED", "MAX_STOP", "MAX_TOOLS", "MAX_USER", "OPENAI", "ChunkEncoder", "OpenAIChat"]

MAX_STOP = 4
MAX_TOOLS = 128
MAX_METADATA = 16
MAX_METADATA_KEY, MAX_METADATA_VALUE = 64, 512
MAX_USER = 256         # Anthropic's metadata.user_id limit: the strictest upstream the value may reach
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a function's or a JSON schema's name, as OpenAI allows


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_obj(v: Any) -> bool:
    return isinstance(v, dict)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Accepted and ignored: the answer is the same without them.  name -> (type check, why).
IGNORED: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "store": (_is_bool, "a boolean", "asks OpenAI to keep the completion; every call is recorded here anyway"),
    "service_tier": (_is_str, "a string", "OpenAI's processing tier (price and latency, not the answer)"),
    "prediction": (_is_obj, "an object", "predicted output only speeds a model up; the answer is the same"),
    "safety_identifier": (_is_str, "a string", "an end-user id for OpenAI's abuse monitoring"),
    "prompt_cache_key": (_is_str, "a string", "a hint for OpenAI's prompt cache (cost, not the answer)"),
    "prompt_cache_retention": (_is_str, "a string", "how long OpenAI keeps its prompt cache"),
}


def _zero(v: Any) -> bool:
    return _is_number(v) and v == 0


# Refused unless absent, null or their default: each would change the answer, and no provider
# behind the daemon is sent it.  name -> (is the default, why).
DEFAULT_ONLY: dict[str, tuple[Callable[[Any], bool], str]] = {
    "logprobs": (lambda v: v is False, "log probabilities are not returned by this daemon"),
    "top_logprobs": (_zero, "log probabilities are not returned by this daemon"),
    "logit_bias": (lambda v: v == {}, "token biases cannot be passed to every provider"),
    "seed": (lambda v: False, "seeded sampling cannot be promised across providers and fallbacks"),
    "frequency_penalty": (_zero, "sampling penalties cannot be passed to every provider"),
    "presence_penalty": (_zero, "sampling penalties cannot be passed to every provider"),
    "parallel_tool_calls": (lambda v: v is True, "the model may always call several tools at once here"),
    "audio": (lambda v: False, "audio output is not supported by this daemon (text only)"),
    "modalities": (lambda v: v == ["text"], "only text output is supported by this daemon"),
    "reasoning_effort": (lambda v: False, "reasoning effort cannot be passed to every provider"),
    "verbosity": (lambda v: False, "verbosity cannot be passed to every provider"),
    "web_search_options": (lambda v: False, "web search is not supported by this daemon"),
    "functions": (lambda v: False, "the deprecated functions parameter is not supported: use tools"),
    "function_call": (lambda v: False, "the deprecated function_call parameter is not supported: use tool_choice"),
}

_SUPPORTED = ("model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "n",
              "tools", "tool_choice", "response_format", "user", "metadata", "stream", "stream_options")
_ROLES = ("system", "developer", "user", "assistant", "tool")
# Fields of an assistant message that the SDK sends back when a caller appends the message it
# was given (ChatCompletionMessage): harmless when empty, refused otherwise.
_EMPTY_ECHO: dict[str, tuple[Any, ...]] = {"refusal": (None,), "annotations": (None, []), "audio": (None,), "function_call": (None,)}
# The fields each role's message may carry, worked out once (not a dict of sets and a union per message).
_MESSAGE_FIELDS: dict[str, frozenset[str]] = {
    role: frozenset({"role", "content"} | {"assistant": {"tool_calls", *_EMPTY_ECHO}, "tool": {"tool_call_id"}}.get(
        role, set())) for role in _ROLES}
_UNSUPPORTED_PART = "is not supported by this daemon (text only)"


def _bad(field: str, message: str, code: str | None = None) -> NoReturn:
    detail = {"field": field, "message": message}
    if code is not None:
        detail["code"] = code
    raise ValidationFailed([detail])


def _checked_json(value: Any, field: str) -> Any:
    """A free-form JSON value (a tool's schema) that the daemon can write back out: an integer
    past 64 bits cannot be (orjson refuses it), so it is a 400 here, not a 500 later."""
    todo = [value]
    while todo:  # iterative: the value may nest as deep as the JSON parser allowed
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, int) and not -2**63 <= item < 2**64:
            _bad(field, f"{field} holds an integer too large to pass on")
    return value


class _Parser:
    def __init__(self, body: Any, models: Mapping[str, ModelConfig]) -> None:
        if not isinstance(body, dict):
            _bad("body", "The request body must be a JSON object")
        self.body: dict[str, Any] = body
        self.models = models
        self.tool_call_ids: set[str] = set()

    # -- scalars ---------------------------------------------------------------------------------
    def number(self, name: str, low: float, high: float) -> float | None:
        v = self.body.get(name)
        if v is None:
            return None
        if not finite_number(v) or not low <= v <= high:
            _bad(name, f"{name} must be a number from {low:g} to {high:g}")
        return float(v)

    def max_tokens(self) -> int | None:
        found = None
        for name in ("max_completion_tokens", "max_tokens"):
            v = self.body.get(name)
            if v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_TOKENS:
                _bad(name, f"{name} must be a positive integer (at most {MAX_TOKENS})")
            if found is not None and v != found:
                _bad(name, "max_tokens and max_completion_tokens differ: send one of them")
            found = v
        return found

    def stop(self) -> tuple[str, ...]:
        v = self.body.get("stop")
        if v is None:
            return ()
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or len(items) > MAX_STOP or not all(
                isinstance(s, str) and s for s in items):
            _bad("stop", f"stop must be a non-empty string or a list of up to {MAX_STOP} non-empty strings")
        return tuple(items)

    def n(self) -> None:
        v = self.body.get("n")
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v != 1):
            _bad("n", "n must be 1: this daemon returns one choice per call", "unsupported_value")

    def user(self) -> str | None:
        v = self.body.get("user")
        if v is not None and (not isinstance(v, str) or len(v) > MAX_USER):
            _bad("user", f"user must be a string of at most {MAX_USER} characters")
        return v

    def metadata(self) -> dict[str, str]:
        v = self.body.get("metadata")
        if v is None:
            return {}
        if not isinstance(v, dict) or len(v) > MAX_METADATA:
            _bad("metadata", f"metadata must be an object of at most {MAX_METADATA} string pairs")
        for key, value in v.items():
            if len(key) > MAX_METADATA_KEY or not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
                _bad(f"metadata.{key}"[:80], f"metadata keys hold at most {MAX_METADATA_KEY} characters and "
                                             f"values are strings of at most {MAX_METADATA_VALUE}")
        return dict(v)

    def stream(self) -> tuple[bool, bool]:
        stream = self.body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            _bad("stream", "stream must be a boolean")
        options = self.body.get("stream_options")
        if options is None:
            return bool(stream), False
        if not stream:
            _bad("stream_options", "stream_options is only allowed when stream is true")
        if not isinstance(options, dict):
            _bad("stream_options", "stream_options must be an object")
        for key, value in options.items():
            if key not in ("include_usage", "include_obfuscation"):
                _bad(f"stream_options.{key}"[:80], f"Unrecognized stream option {key!r:.40}", "unknown_parameter")
            if value is not None and not isinstance(value, bool):
                _bad(f"stream_options.{key}", f"stream_options.{key} must be a boolean")
        # include_obfuscation (random padding against length side channels) is accepted: this
        # daemon sends no padding, which no client can tell from a stream without it.
        return True, bool(options.get("include_usage"))

    def others(self) -> None:
        """Every parameter beyond the supported ones: ignored, refused unless default, or unknown."""
        for name, value in self.body.items():
            if name in _SUPPORTED or value is None:
                continue
            if name in IGNORED:
                check, kind, _ = IGNORED[name]
                if not check(value):
                    _bad(name, f"{name} must be {kind}")
            elif name in DEFAULT_ONLY:
                is_default, why = DEFAULT_ONLY[name]
                if not is_default(value):
                    _bad(name, f"{name} is not supported: {why}", "unsupported_parameter")
            else:
                _bad(f"{name:.80}", f"Unrecognized request argument supplied: {name:.80}", "unknown_parameter")

    # -- messages --------------------------------------------------------------------------------
    def text(self, content: Any, field: str, *, refusal_parts: bool = False) -> str:
        """String content, or a list of text parts, as one text."""
        if isinstance(content, str):
            return content
        if not isinstance(content, list):
            _bad(field, f"{field} must be a string or a list of content parts")
        out = []
        for j, part in enumerate(content):
            pf = f"{field}[{j}]"
            if not isinstance(part, dict):
                _bad(pf, f"{pf} must be a content part object")
            kind = part.get("type")
            if not isinstance(kind, str):
                _bad(f"{pf}.type", f"{pf}.type must be a string")
            key = "refusal" if kind == "refusal" and refusal_parts else "text"
            if kind != key:
                _bad(f"{pf}.type", f"Content part type {kind!r:.40} {_UNSUPPORTED_PART}", "unsupported_content")
            for extra in part:
                if extra not in ("type", key):
                    _bad(f"{pf}.{extra:.40}", f"Unrecognized content part field {extra!r:.40}", "unknown_parameter")
            value = part.get(key)
            if not isinstance(value, str):
                _bad(f"{pf}.{key}", f"{pf}.{key} must be a string")
            out.append(value)
        return "".join(out)

    def tool_calls(self, calls: Any, field: str) -> list[Block]:
        if not isinstance(calls, list):
            _bad(field, f"{field} must be a list")
        out: list[Block] = []
        for j, call in enumerate(calls):
            cf = f"{field}[{j}]"
            if not isinstance(call, dict):
                _bad(cf, f"{cf} must be an object")
            for extra in call:
                if extra not in ("id", "type", "function"):
                    _bad(f"{cf}.{extra:.40}", f"Unrecognized tool call field {extra!r:.40}", "unknown_parameter")
            call_id, fn = call.get("id"), call.get("function")
            if not isinstance(call_id, str) or not call_id:
                _bad(f"{cf}.id", f"{cf}.id must be a non-empty string")
            if call.get("type", "function") != "function":
                _bad(f"{cf}.type", f"{cf}.type must be 'function'", "unsupported_value")
            if not isinstance(fn, dict):
                _bad(f"{cf}.function", f"{cf}.function must be an object")
            name, arguments = fn.get("name"), fn.get("arguments", "{}")
            if not isinstance(name, str) or not name:
                _bad(f"{cf}.function.name", f"{cf}.function.name must be a non-empty string")
            if not isinstance(arguments, str):
                _bad(f"{cf}.function.arguments", f"{cf}.function.arguments must be a string (JSON text)")
            for extra in fn:
                if extra not in ("name", "arguments"):
                    _bad(f"{cf}.function.{extra:.40}", f"Unrecognized function field {extra!r:.40}",
                         "unknown_parameter")
            self.tool_call_ids.add(call_id)
            out.append(ToolCall(call_id, name, arguments))
        return out

    def message(self, m: Any, field: str) -> tuple[str, list[Block]]:
        """(role, blocks) of one message; role ``system`` for system and developer messages."""
        if not isinstance(m, dict):
            _bad(field, f"{field} must be an object")
        role = m.get("role")
        if role not in _ROLES:
            _bad(f"{field}.role", f"{field}.role must be one of {', '.join(_ROLES)}")
        allowed = _MESSAGE_FIELDS[role]
        for key, value in m.items():
            if key in _EMPTY_ECHO and key in allowed and value in _EMPTY_ECHO[key]:
                continue
            if key not in allowed or key in _EMPTY_ECHO:
                why = ("participant names cannot be passed to every provider; put the name in the content"
                       if key == "name" else f"Unrecognized message field {key!r:.40}")
                _bad(f"{field}.{key:.40}", f"{field}.{key:.40} is not supported: {why}", "unsupported_parameter")
        content = m.get("content")
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in self.tool_call_ids:
                _bad(f"{field}.tool_call_id", f"{field}.tool_call_id must name a tool call of an earlier "
                                              "assistant message")
            return "user", [ToolResult(call_id, self.text(content, f"{field}.content"))]
        if role == "assistant":
            calls = m.get("tool_calls")
            text = None if content is None else self.text(content, f"{field}.content", refusal_parts=True)
            # An empty text beside tool calls (LangChain sends one) is no block: Anthropic refuses those.
            blocks: list[Block] = [TextBlock(text)] if text is not None and (text or calls is None) else []
            if calls is not None:
                blocks += self.tool_calls(calls, f"{field}.tool_calls")
            if not blocks:
                _bad(f"{field}.content", f"{field}.content is required unless tool_calls are given")
            return "assistant", blocks
        if content is None:
            _bad(f"{field}.content", f"{field}.content is required")
        text = self.text(content, f"{field}.content")
        return ("system", [TextBlock(text)]) if role in ("system", "developer") else ("user", [TextBlock(text)])

    def messages(self) -> tuple[str | None, tuple[Message, ...]]:
        items = self.body.get("messages")
        if not isinstance(items, list) or not items:
            _bad("messages", "messages must be a non-empty list of messages")
        system: list[str] = []
        merged: list[tuple[str, list[Block]]] = []
        for i, m in enumerate(items):
            role, blocks = self.message(m, f"messages[{i}]")
            if role == "system":
                # One system text for every upstream (Anthropic has no system messages in between).
                system.append("".join(b.text for b in blocks if isinstance(b, TextBlock)))
            elif merged and merged[-1][0] == role:
                merged[-1][1].extend(blocks)  # the upstreams want the roles to alternate
            else:
                merged.append((role, list(blocks)))
        if not merged:
            _bad("messages", "messages must hold a user, assistant or tool message besides the system ones")
        conversation = tuple(Message("user" if role == "user" else "assistant", tuple(blocks))
                             for role, blocks in merged)
        return ("\n\n".join(system) if system else None), conversation

    # -- tools -----------------------------------------------------------------------------------
    def tools(self) -> tuple[Tool, ...]:
        items = self.body.get("tools")
        if items is None:
            return ()
        if not isinstance(items, list) or len(items) > MAX_TOOLS:
            _bad("tools", f"tools must be a list of at most {MAX_TOOLS} tools")
        out: list[Tool] = []
        for i, tool in enumerate(items):
            tf = f"tools[{i}]"
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(
                    tool.get("function"), dict):
                _bad(tf, f"{tf} must be {{\"type\": \"function\", \"function\": {{...}}}}")
            for extra in tool:
                if extra not in ("type", "function"):
                    _bad(f"{tf}.{extra:.40}", f"Unrecognized tool field {extra!r:.40}", "unknown_parameter")
            fn = tool["function"]
            name, description, parameters = fn.get("name"), fn.get("description", ""), fn.get("parameters")
            if not isinstance(name, str) or not _NAME.match(name):
                _bad(f"{tf}.function.name", f"{tf}.function.name must be 1-64 letters, digits, _ or -")
            if any(t.name == name for t in out):
                _bad(f"{tf}.function.name", f"two tools are named {name!r}")
            if not isinstance(description, str):
                _bad(f"{tf}.function.description", f"{tf}.function.description must be a string")
            if parameters is None:
                parameters = {"type": "object", "properties": {}}
            if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
                _bad(f"{tf}.function.parameters", f"{tf}.function.parameters must be an object JSON Schema")
            strict = fn.get("strict")
            if strict is not None and not isinstance(strict, bool):
                _bad(f"{tf}.function.strict", f"{tf}.function.strict must be a boolean")
            for extra in fn:
                if extra not in ("name", "description", "parameters", "strict"):
                    _bad(f"{tf}.function.{extra:.40}", f"Unrecognized function field {extra!r:.40}",
                         "unknown_parameter")
            out.append(Tool(name, description, _checked_json(parameters, f"{tf}.function.parameters")))
        return tuple(out)

    def tool_choice(self, tools: tuple[Tool, ...]) -> ToolChoice | None:
        v = self.body.get("tool_choice")
        if v is None:
            return None
        if isinstance(v, str):
            if v not in ("none", "auto", "required"):
                _bad("tool_choice", "tool_choice must be none, auto, required or a function")
            choice = ToolChoice(v)  # type: ignore[arg-type]  # checked just above
        else:
            fn = v.get("function") if isinstance(v, dict) and v.get("type") == "function" else None
            name = fn.get("name") if isinstance(fn, dict) else None
            if not isinstance(name, str):
                _bad("tool_choice", 'tool_choice must be none, auto, required or '
                                    '{"type": "function", "function": {"name": ...}}')
            if not any(t.name == name for t in tools):
                _bad("tool_choice", f"tool_choice names {name!r:.80}, which is not among the tools")
            choice = ToolChoice("tool", name)
        if not tools:
            if choice.mode in ("none", "auto"):
                return None  # nothing to choose from: the same answer
            _bad("tool_choice", "tool_choice is only allowed when tools are given")
        return choice

    def response_format(self) -> dict[str, Any] | None:
        v = self.body.get("response_format")
        if v is None:
            return None
        kind = v.get("type") if isinstance(v, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            _bad("response_format", "response_format must be {\"type\": \"text\" | \"json_object\" | \"json_schema\"}")
        allowed = {"type", "json_schema"} if kind == "json_schema" else {"type"}
        for extra in v:
            if extra not in allowed:
                _bad(f"response_format.{extra:.40}", f"Unrecognized response_format field {extra!r:.40}",
                     "unknown_parameter")
        if kind == "text":
            return None  # the default: nothing to ask of the upstream
        if kind == "json_object":
            return {"type": "json_object"}
        spec = v.get("json_schema")
        if not isinstance(spec, dict):
            _bad("response_format.json_schema", "response_format.json_schema must be an object")
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            _bad("response_format.json_schema.name", "response_format.json_schema.name must be 1-64 letters, "
                                                     "digits, _ or -")
        checks = {"description": (str, "a string"), "schema": (dict, "an object"), "strict": (bool, "a boolean")}
        for key, value in spec.items():
            if key == "name":
                continue
            if key not in checks:
                _bad(f"response_format.json_schema.{key:.40}", f"Unrecognized json_schema field {key!r:.40}",
                     "unknown_parameter")
            kind_, what = checks[key]
            if value is not None and not isinstance(value, kind_):
                _bad(f"response_format.json_schema.{key}", f"response_format.json_schema.{key} must be {what}")
        return {"type": "json_schema", "json_schema": _checked_json(
            {k: x for k, x in spec.items() if x is not None}, "response_format.json_schema")}

    def request(self) -> ChatRequest:
        model = self.body.get("model")
        if not isinstance(model, str) or not model:
            _bad("model", "model must be the name of a model (GET /v1/models lists them)")
        self.others()
        self.n()
        system, messages = self.messages()
        tools = self.tools()
        stream, include_usage = self.stream()
        request = ChatRequest(
            model=model, messages=messages, system=system, max_tokens=self.max_tokens(),
            temperature=self.number("temperature", 0, 2), top_p=self.number("top_p", 0, 1), stop=self.stop(),
            tools=tools, tool_choice=self.tool_choice(tools), response_format=self.response_format(),
            user=self.user(), metadata=self.metadata(), dialect="openai", stream=stream,
            include_usage=include_usage)
        # Last: a body that is wrong in any way is a 400 naming the field, whatever its model.
        model_alias(model, self.models)
        return request


# -- answers ---------------------------------------------------------------------------------------

def _tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _usage(outcome: ChatOutcome) -> dict[str, int]:
    return {"prompt_tokens": outcome.input_tokens, "completion_tokens": outcome.output_tokens,
            "total_tokens": outcome.input_tokens + outcome.output_tokens}


def _finish_reason(outcome: ChatOutcome) -> str:
    return "tool_calls" if outcome.tool_calls else outcome.finish_reason


def fingerprint(outcome: ChatOutcome) -> str:
    """``system_fingerprint``: OpenAI's mark of the backend that answered.  Here the provider
    and the upstream model, so a caller sees when a fallback served the call."""
    return f"j1msky:{outcome.provider}/{outcome.upstream_model}"


# OpenAI's error ``code`` for the daemon's error types where OpenAI has a word of its own.
_CODES = {"UNAUTHORIZED": "invalid_api_key", "INVALID_API_KEY": "invalid_api_key", "RATE_LIMITED": "rate_limit_exceeded",
          "PAYLOAD_TOO_LARGE": "request_too_large", "MODEL_NOT_FOUND": "model_not_found"}


class OpenAIChat:
    """The Dialect of OpenAI's Chat Completions (see the module's docstring)."""

    name = "openai"

    def parse(self, body: Any, models: Mapping[str, ModelConfig]) -> ChatRequest:
        return _Parser(body, models).request()

    def render(self, outcome: ChatOutcome) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant",
                                   "content": outcome.text if outcome.text or not outcome.tool_calls else None,
                                   "refusal": None, "annotations": []}
        if outcome.tool_calls:
            message["tool_calls"] = [_tool_call(c) for c in outcome.tool_calls]
        return {"id": f"chatcmpl-{outcome.agent_id}", "object": "chat.completion", "created": int(outcome.created_at),
                "model": outcome.model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": _finish_reason(outcome)}],
                "usage": _usage(outcome), "system_fingerprint": fingerprint(outcome)}

    def encoder(self, request: ChatRequest, agent_id: str, created_at: float) -> ChunkEncoder:
        return ChunkEncoder(self, request, agent_id, created_at)

    def error(self, error: ApiError) -> tuple[int, dict[str, Any]]:
        status, kind = error.status, "invalid_request_error"
        code: str | None = _CODES.get(error.type, error.type.lower())
        param = error.extra.get("param")
        details = error.extra.get("details")
        if isinstance(error, ValidationFailed) and isinstance(details, list) and details:
            param, code = details[0].get("field"), details[0].get("code")
        if isinstance(error, ChatFailed):
            code = error.kind
        if status == 402:
            # A spent budget is OpenAI's insufficient_quota: a 429 that the SDK raises as
            # RateLimitError, as for an OpenAI account out of credit.
            status, kind, code = 429, "insufficient_quota", "insufficient_quota"
        elif status == 403 and "required_scope" in error.extra:
            code = "insufficient_scope"
        elif status == 429:
            kind = "requests"
        elif status >= 500:
            kind = "server_error"
        return status, {"error": {"message": error.message, "type": kind, "param": param, "code": code}}


OPENAI = OpenAIChat()


class ChunkEncoder:
    """``chat.completion.chunk`` frames of one streamed answer, as OpenAI sends them: the role
    first, the content deltas, the tool calls (whole, one chunk each: they are not streamed
    upstream), the finish reason, the usage when asked for, then ``data: [DONE]``."""

    def __init__(self, dialect: OpenAIChat, request: ChatRequest, agent_id: str, created_at: float) -> None:
        self.dialect = dialect
        self.include_usage = request.include_usage
        self.head = {"id": f"chatcmpl-{agent_id}", "object": "chat.completion.chunk", "created": int(created_at),
                     "model": request.model}
        self._text = TextFrame(self._delta({"content": ""}), b'"content":')

    def _frame(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk: dict[str, Any] = {**self.head, "choices": choices, **extra}
        if self.include_usage and "usage" not in chunk:
            chunk["usage"] = None  # OpenAI's chunks carry usage: null until the last one
        return b"data: " + jsonx.dumps(chunk).encode() + b"\n\n"

    def _delta(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        return self._frame([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra)

    def start(self) -> bytes:
        return self._delta({"role": "assistant", "content": "", "refusal": None})

    def delta(self, text: str) -> bytes:
        return self._text(text)  # == self._delta({"content": text})

    def finish(self, outcome: ChatOutcome) -> bytes:
        frames = [self._delta({"tool_calls": [{"index": i, **_tool_call(call)}]})
                  for i, call in enumerate(outcome.tool_calls)]
        fp = fingerprint(outcome)
        frames.append(self._delta({}, _finish_reason(outcome), system_fingerprint=fp))
        if self.include_usage:
            frames.append(self._frame([], usage=_usage(outcome), system_fingerprint=fp))
        frames.append(b"data: [DONE]\n\n")
        return b"".join(frames)

    def fail(self, error: ApiError) -> bytes:
        """An ``error`` frame, as OpenAI ends a stream that failed; no [DONE] follows, so a
        client that waits for it knows the answer is incomplete (the SDK raises APIError)."""
        _, body = self.dialect.error(error)
        return b"data: " + jsonx.dumps(body).encode() + b"\n\n"
