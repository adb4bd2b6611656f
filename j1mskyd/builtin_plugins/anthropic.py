"""Built-in plugin ``anthropic``: Anthropic's Messages API.

POSTs to ``{base_url}/v1/messages`` (``base_url`` defaults to
``https://api.anthropic.com``) with ``x-api-key`` and ``anthropic-version``
(option ``anthropic_version``, default ``2023-06-01``); option ``headers`` adds
request headers.

The conversation goes up in Anthropic's words: ``system`` as the top-level field; user and
assistant messages of content blocks (``text``; ``tool_use`` with the ToolCall's JSON text
parsed into ``input``; ``tool_result`` with ``tool_use_id``, ``content``, ``is_error``),
consecutive messages of one role merged (the API wants the roles to alternate);
``tools`` with ``input_schema``; ``tool_choice`` auto/any/tool/none; ``temperature``
(0 to 1 here), ``top_p``, ``stop`` as ``stop_sequences`` and ``user`` as
``metadata.user_id``, only when set.  What cannot be translated is refused as
``bad_request`` naming the field: a ``response_format`` other than ``text`` (the API has no
JSON mode), a temperature above 1, tool arguments that are not a JSON object.

``stop_reason`` is normalised to the OpenAI words the runtime uses: ``end_turn``/
``stop_sequence`` -> ``stop``, ``max_tokens``/``model_context_window_exceeded`` -> ``length``,
``tool_use`` -> ``tool_calls``, ``refusal`` -> ``content_filter``; anything else passes
through.  ``stream(request)`` reads the ``"stream": true`` event stream: text deltas are
yielded, ``input_json_delta`` pieces put together into the result's tool calls, usage taken
from ``message_start`` and ``message_delta``.  A stream that ends before ``message_stop``
(or sends an ``error`` event) fails with the usage seen so far on the error.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from j1mskyd import jsonx
from j1mskyd.plugin_api import (
    CompletionRequest,
    CompletionResult,
    ProviderError,
    ProviderSettings,
    Registrar,
    TextBlock,
    ToolCall,
    ToolChoice,
    conversation,
)
from j1mskyd.provider_http import HttpCaller, StreamState, as_object, completion, kind_for_error_type
from j1mskyd.provider_http import arguments_text, billed_usage, tool_choice_problem

J1MSKY_PLUGIN_API = 1

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"
_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                 "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
_TOOL_CHOICE = {"auto": "auto", "none": "none", "required": "any", "tool": "tool"}
_MAX_TEMPERATURE = 1.0


class AnthropicProvider:
    def __init__(self, settings: ProviderSettings, session: Any) -> None:
        extra = settings.options.get("headers") or {}
        if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
            raise ValueError("options.headers must be a table of string values")
        version = settings.options.get("anthropic_version", DEFAULT_VERSION)
        if not isinstance(version, str) or not version:
            raise ValueError("options.anthropic_version must be a non-empty string")
        self._url = (settings.base_url or DEFAULT_BASE_URL).rstrip("/") + "/v1/messages"
        self._headers = {**extra, "anthropic-version": version}
        if settings.api_key:
            self._headers["x-api-key"] = settings.api_key
        self._http = HttpCaller(session, f"{settings.name} (anthropic)", settings.api_key)

    def _refuse(self, message: str) -> ProviderError:
        return self._http.error(message, kind="bad_request")

    def _body(self, request: CompletionRequest) -> dict[str, Any]:
        problem = tool_choice_problem(request)
        if problem:
            raise self._refuse(problem)
        fmt = request.response_format
        if fmt is not None and fmt.get("type") != "text":
            raise self._refuse(f"response_format {fmt.get('type')!r} cannot be sent to an Anthropic model: the "
                               "Messages API has no JSON mode to enforce it (ask for JSON in the prompt instead)")
        if request.temperature is not None and request.temperature > _MAX_TEMPERATURE:
            raise self._refuse(f"temperature {request.temperature} is above {_MAX_TEMPERATURE:g}, the most an "
                               "Anthropic model takes (its scale is 0 to 1, not OpenAI's 0 to 2)")
        messages: list[dict[str, Any]] = []
        for message in conversation(request):
            content = [self._block(b) for b in message.content
                       if not (isinstance(b, TextBlock) and not b.text and len(message.content) > 1)]
            if messages and messages[-1]["role"] == message.role:  # the API wants the roles to alternate
                messages[-1]["content"] = _blocks(messages[-1]["content"]) + content
            else:
                messages.append({"role": message.role, "content": _collapse(content)})
        body: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens, "messages": messages}
        if request.system:
            body["system"] = request.system
        if request.tools:
            body["tools"] = [{"name": t.name, **({"description": t.description} if t.description else {}),
                              "input_schema": t.parameters} for t in request.tools]
            if request.tool_choice is not None:
                body["tool_choice"] = _tool_choice(request.tool_choice)
        optional = {"temperature": request.temperature, "top_p": request.top_p,
                    "stop_sequences": list(request.stop) or None,
                    "metadata": {"user_id": request.user} if request.user is not None else None}
        body.update((k, v) for k, v in optional.items() if v is not None)
        return body

    def _block(self, block: Any) -> dict[str, Any]:
        if isinstance(block, TextBlock):
            return {"type": "text", "text": block.text}
        if isinstance(block, ToolCall):
            try:
                arguments = jsonx.loads(block.arguments) if block.arguments.strip() else {}
            except ValueError:  # both JSON libraries' decode errors are ValueErrors
                arguments = None
            if not isinstance(arguments, dict):
                raise self._refuse(f"the arguments of tool call {block.id!r} ({block.name}) are not a JSON object, "
                                   "and Anthropic's tool_use input must be one")
            return {"type": "tool_use", "id": block.id, "name": block.name, "input": arguments}
        return {"type": "tool_result", "tool_use_id": block.tool_call_id, "content": block.content,
                "is_error": block.is_error}

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        data = await self._http.post_json(self._url, self._body(request), self._headers, request.timeout)
        content = data.get("content")
        if not isinstance(content, list):
            usage = billed_usage(data.get("usage"), "input_tokens", "output_tokens")
            raise self._http.error("answer has no content list", kind="invalid_response", status=200, usage=usage)
        blocks = [b for b in content if isinstance(b, dict)]
        text = "".join(b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str))
        calls = [ToolCall(id=str(b.get("id") or ""), name=str(b.get("name") or ""),
                          arguments=arguments_text(b.get("input", {})))
                 for b in blocks if b.get("type") == "tool_use"]
        reported = as_object(data.get("usage"))
        return completion(request, text, calls, input_tokens=reported.get("input_tokens"),
                          output_tokens=reported.get("output_tokens"), model=data.get("model"),
                          finish=_finish(data.get("stop_reason")))

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | CompletionResult]:
        """Text deltas as they come, then one CompletionResult: the whole text, the tool calls
        put together from their ``input_json_delta`` pieces, usage from ``message_start``
        (input) and ``message_delta`` (output)."""
        body = {**self._body(request), "stream": True}
        state = StreamState(request, self._http)
        stopped = False
        async for event in state.events(self._http.post_sse(self._url, body, self._headers, request.timeout)):
            data = event.data
            if not isinstance(data, dict):
                continue
            kind = data.get("type")
            if kind == "message_start" and isinstance(data.get("message"), dict):
                message = data["message"]
                state.model = message.get("model") or state.model
                _usage(state, message.get("usage"))
            elif kind == "content_block_start" and isinstance(data.get("content_block"), dict):
                block = data["content_block"]
                if block.get("type") == "tool_use" and isinstance(data.get("index"), int):
                    state.tools.add(data["index"], id=block.get("id"), name=block.get("name"))
                elif block.get("type") == "text":
                    text = state.text(block.get("text"))
                    if text is not None:
                        yield text
            elif kind == "content_block_delta" and isinstance(data.get("delta"), dict):
                delta = data["delta"]
                if delta.get("type") == "text_delta":
                    text = state.text(delta.get("text"))
                    if text is not None:
                        yield text
                elif delta.get("type") == "input_json_delta" and isinstance(data.get("index"), int) \
                        and data["index"] in state.tools:
                    state.tools.add(data["index"], arguments=delta.get("partial_json"))
            elif kind == "message_delta":
                state.finish = _finish(as_object(data.get("delta")).get("stop_reason")) or state.finish
                _usage(state, data.get("usage"))
            elif kind == "message_stop":
                stopped = True
                break
            elif kind == "error":
                error = as_object(data.get("error"))
                raise state.failed(f"error in stream: {error.get('type')}: {error.get('message')}",
                                   kind=kind_for_error_type(error.get("type")), status=200)
        if not stopped:
            raise state.failed("the stream ended before message_stop", kind="connection", status=200)
        yield state.result()


def _usage(state: StreamState, usage: Any) -> None:
    """Anthropic reports input tokens in ``message_start`` and the output so far in each
    ``message_delta`` (cumulative, so the last one counts)."""
    if isinstance(usage, dict):
        state.input_tokens = usage.get("input_tokens", state.input_tokens)
        state.output_tokens = usage.get("output_tokens", state.output_tokens)


def _finish(stop: Any) -> str | None:
    return _STOP_REASONS.get(stop, stop) if isinstance(stop, str) and stop else None


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    out: dict[str, Any] = {"type": _TOOL_CHOICE[choice.mode]}
    if choice.mode == "tool":
        out["name"] = choice.name
    return out


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _collapse(content: list[dict[str, Any]]) -> Any:
    """A message of one text block as plain text (the API's short form), else the blocks."""
    if len(content) == 1 and content[0]["type"] == "text":
        return content[0]["text"]
    return content


def register(registry: Registrar) -> None:
    registry.add_provider("anthropic", AnthropicProvider)
