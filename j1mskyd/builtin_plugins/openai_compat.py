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
``stream(request)`` yields text deltas from the ``"stream": true`` SSE variant, then a
CompletionResult with the upstream's usage (``stream_options.include_usage``).
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from j1mskyd.provider_http import HttpCaller, billed_usage, estimate_tokens
from j1mskyd.plugin_api import CompletionRequest, CompletionResult, ProviderSettings, Registrar

J1MSKY_PLUGIN_API = 1


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
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages.append({"role": "user", "content": request.prompt})
        return {"model": request.model, "messages": messages, "max_tokens": request.max_tokens}

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        data = await self._http.post_json(self._url, self._body(request), self._headers, request.timeout)
        try:
            choice = data["choices"][0]
            text = _content_text(choice["message"]["content"])
        except (KeyError, IndexError, TypeError):
            message = "answer has no choices[0].message.content"
            usage = billed_usage(data.get("usage"), "prompt_tokens", "completion_tokens")
            raise self._http.error(message, kind="invalid_response", status=200, usage=usage) from None
        return _result(request, text, data.get("usage"), data.get("model"), choice.get("finish_reason"))

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | CompletionResult]:
        """Text deltas as they come, then one CompletionResult with the whole text and the
        upstream's token counts (asked for with ``stream_options.include_usage``)."""
        body = {**self._body(request), "stream": True, "stream_options": {"include_usage": True}}
        parts: list[str] = []
        usage: Any = None
        model: Any = None
        finish: Any = None
        async for event in self._http.post_sse(self._url, body, self._headers, request.timeout):
            if not isinstance(event, dict):
                continue
            usage = event.get("usage") or usage
            model = event.get("model") or model
            try:
                choice = event["choices"][0]
                delta = choice.get("delta") or {}
            except (KeyError, IndexError, TypeError, AttributeError):
                continue  # e.g. the final usage-only chunk with empty choices
            finish = choice.get("finish_reason") or finish
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                parts.append(content)
                yield content
        yield _result(request, "".join(parts), usage, model, finish)


def _result(request: CompletionRequest, text: str, usage: Any, model: Any, finish: Any) -> CompletionResult:
    """Token counts from ``usage`` when the upstream gave them, else estimated from the text."""
    usage = usage if isinstance(usage, dict) else {}
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    if not isinstance(prompt_tokens, int):
        prompt_tokens = estimate_tokens((request.system or "") + request.prompt)
    if not isinstance(completion_tokens, int):
        completion_tokens = estimate_tokens(text)
    return CompletionResult(
        text=text,
        input_tokens=prompt_tokens,
        output_tokens=completion_tokens,
        model=str(model or request.model),
        finish_reason=finish if isinstance(finish, str) and finish else "stop",
    )


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
