"""Built-in plugin ``openai_compat``: any server speaking OpenAI's chat-completions API.

``base_url`` is the API root *including* the version segment; the plugin POSTs to
``{base_url}/chat/completions``.  Examples:

- Kimi / Moonshot: ``https://api.moonshot.ai/v1``
- MiniMax:         ``https://api.minimax.io/v1``
- Ollama:          ``http://127.0.0.1:11434/v1``
- llama.cpp:       ``http://127.0.0.1:8080/v1``

The API key, when set, is sent as ``Authorization: Bearer <key>``.  Options:
``headers`` (dict of extra request headers).  When an upstream reports no
``usage`` (some llama.cpp builds), token counts are estimated from text length.

The whole conversation goes up in OpenAI's words: the system text first, assistant
``ToolCall`` blocks as ``tool_calls`` (arguments as text), ``ToolResult`` blocks as
``role: tool`` messages (a result marked ``is_error`` has no OpenAI field: its content is
sent prefixed ``Error: ``), the text beside them kept in order; ``tools``, ``tool_choice``,
``temperature``, ``top_p``, ``stop``, ``response_format`` and ``user`` only when set.
``stream(request)`` yields text deltas from the ``"stream": true`` SSE variant, assembles
tool-call deltas by index, then yields the CompletionResult with the upstream's usage
(``stream_options.include_usage``).  A stream that ends with neither ``[DONE]`` nor a
finish reason died: a ProviderError of kind ``connection``.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from j1mskyd.plugin_api import (
    CompletionRequest,
    CompletionResult,
    Message,
    ProviderSettings,
    Registrar,
    TextBlock,
    ToolCall,
    ToolChoice,
    ToolResult,
)
from j1mskyd.provider_http import HttpCaller, StreamState, as_object, completion, kind_for_error_type
from j1mskyd.provider_http import arguments_text, billed_usage, tool_choice_problem
from j1mskyd.sampling_fields import put_sampling_fields

J1MSKY_PLUGIN_API = 1

#: How a tool result that reports an error reads to a model that has no field for it.
ERROR_RESULT_PREFIX = "Error: "


class OpenAICompatProvider:
    def __init__(self, settings: ProviderSettings, session: Any) -> None:
        if not settings.base_url:
            raise ValueError("openai_compat needs base_url, e.g. https://api.moonshot.ai/v1")
        extra = settings.options.get("headers") or {}
        if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
            raise ValueError("options.headers must be a table of string values")
        self._url = settings.base_url.rstrip("/") + "/chat/completions"
        self._headers = dict(extra)
        if settings.api_key:
            self._headers["Authorization"] = f"Bearer {settings.api_key}"
        self._http = HttpCaller(session, f"{settings.name} (openai_compat)", settings.api_key)

    def _body(self, request: CompletionRequest) -> dict[str, Any]:
        problem = tool_choice_problem(request)
        if problem:
            raise self._http.error(problem, kind="bad_request")
        messages: list[dict[str, Any]] = [{"role": "system", "content": request.system}] if request.system else []
        if request.messages:
            for message in request.messages:
                messages += _messages(message)
        else:  # an agent's call: what _messages makes of conversation()'s one user message, without making it
            messages.append({"role": "user", "content": request.prompt})
        body: dict[str, Any] = {"model": request.model, "messages": messages, "max_tokens": request.max_tokens}
        if request.tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, **({"description": t.description} if t.description else {}),
                "parameters": t.parameters}} for t in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        put_sampling_fields(body, request)  # only those set (an agent's call sets none of them)
        return body

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        data = await self._http.post_json(self._url, self._body(request), self._headers, request.timeout)
        try:
            choice = data["choices"][0]
            message = choice["message"]
            calls = _tool_calls(message.get("tool_calls"))
            if "content" not in message and not calls:
                raise KeyError("content")
            text = _content_text(message.get("content"))
        except (KeyError, IndexError, TypeError, AttributeError):
            reason = "answer has no choices[0].message.content"
            usage = billed_usage(data.get("usage"), "prompt_tokens", "completion_tokens")
            raise self._http.error(reason, kind="invalid_response", status=200, usage=usage) from None
        reported = as_object(data.get("usage"))
        return completion(request, text, calls, input_tokens=reported.get("prompt_tokens"),
                          output_tokens=reported.get("completion_tokens"), model=data.get("model"),
                          finish=choice.get("finish_reason"))

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | CompletionResult]:
        """Text deltas as they come, then one CompletionResult with the whole text, the tool
        calls put together from their deltas, and the upstream's token counts (asked for with
        ``stream_options.include_usage``; estimated when it sends none)."""
        body = {**self._body(request), "stream": True, "stream_options": {"include_usage": True}}
        state = StreamState(request, self._http)
        ended = False
        async for event in state.events(self._http.post_sse(self._url, body, self._headers, request.timeout)):
            if event.done:
                ended = True
                break
            chunk = event.data
            if not isinstance(chunk, dict):
                continue
            error = as_object(chunk.get("error"))
            if error:  # an upstream that fails after it began
                raise state.failed(f"error in stream: {error.get('message') or error.get('type')}",
                                   kind=kind_for_error_type(error.get("type")), status=200)
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                state.input_tokens = usage.get("prompt_tokens", state.input_tokens)
                state.output_tokens = usage.get("completion_tokens", state.output_tokens)
            state.model = chunk.get("model") or state.model
            choices = chunk.get("choices")
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                continue  # e.g. the final usage-only chunk with empty choices
            choice = choices[0]
            state.finish = choice.get("finish_reason") or state.finish
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict) and isinstance(call.get("index"), int):
                    function = as_object(call.get("function"))
                    state.tools.add(call["index"], id=call.get("id"), name=function.get("name"),
                                    arguments=function.get("arguments"))
            text = state.text(delta.get("content"))
            if text is not None:
                yield text
        if not ended and not state.finish:
            raise state.failed("the stream ended before the answer did (no finish reason, no [DONE])",
                               kind="connection", status=200)
        yield state.result()


def _messages(message: Message) -> list[dict[str, Any]]:
    """One conversation message as OpenAI messages: an assistant message with its text and
    ``tool_calls``; a user message split where tool results stand (each its own ``tool``
    message), the text around them kept in order."""
    if message.role == "assistant":
        calls = [b for b in message.content if isinstance(b, ToolCall)]
        out: dict[str, Any] = {"role": "assistant", "content": message.text or (None if calls else "")}
        if calls:
            out["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.name, "arguments": c.arguments}} for c in calls]
        return [out]
    messages: list[dict[str, Any]] = []
    text: list[str] = []
    for block in message.content:
        if isinstance(block, ToolResult):
            if text:
                messages.append({"role": "user", "content": "".join(text)})
                text = []
            content = ERROR_RESULT_PREFIX + block.content if block.is_error else block.content
            messages.append({"role": "tool", "tool_call_id": block.tool_call_id, "content": content})
        elif isinstance(block, TextBlock):
            text.append(block.text)
    if text or not messages:
        messages.append({"role": "user", "content": "".join(text)})
    return messages


def _tool_choice(choice: ToolChoice) -> Any:
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode  # "auto", "none", "required": OpenAI's own words


def _tool_calls(raw: Any) -> tuple[ToolCall, ...]:
    """An answer's ``tool_calls``, the arguments kept as the upstream's text."""
    if raw is None:
        return ()
    calls = []
    for call in raw:
        function = call["function"]
        calls.append(ToolCall(id=str(call.get("id") or ""), name=str(function["name"]),
                              arguments=arguments_text(function.get("arguments") or "{}")))
    return tuple(calls)


def _content_text(content: Any) -> str:
    # Reasoning or tool-call answers may carry null content; some servers send a
    # list of typed parts instead of a string.
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    raise TypeError("content is neither text nor parts")


def register(registry: Registrar) -> None:
    registry.add_provider("openai_compat", OpenAICompatProvider)
