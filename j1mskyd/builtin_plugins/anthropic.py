"""Built-in plugin ``anthropic``: Anthropic's Messages API.

POSTs to ``{base_url}/v1/messages`` (``base_url`` defaults to
``https://api.anthropic.com``) with ``x-api-key`` and ``anthropic-version``
(option ``anthropic_version``, default ``2023-06-01``); option ``headers`` adds
request headers.  ``stop_reason`` is normalised to the OpenAI words the runtime
uses: ``end_turn``/``stop_sequence`` -> ``stop``, ``max_tokens`` -> ``length``;
anything else (``tool_use``, ``refusal``) passes through.
"""

from __future__ import annotations

from typing import Any

from j1mskyd.provider_http import HttpCaller, billed_usage, estimate_tokens
from j1mskyd.plugin_api import CompletionRequest, CompletionResult, ProviderSettings, Registrar

J1MSKY_PLUGIN_API = 1

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"
_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


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

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": "user", "content": request.prompt}],
        }
        if request.system:
            body["system"] = request.system
        data = await self._http.post_json(self._url, body, self._headers, request.timeout)
        content = data.get("content")
        if not isinstance(content, list):
            usage = billed_usage(data.get("usage"), "input_tokens", "output_tokens")
            raise self._http.error("answer has no content list", kind="invalid_response", status=200, usage=usage)
        text = "".join(
            b["text"]
            for b in content
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        )
        reported = data.get("usage")
        if not isinstance(reported, dict):
            reported = {}
        input_tokens, output_tokens = reported.get("input_tokens"), reported.get("output_tokens")
        if not isinstance(input_tokens, int):
            input_tokens = estimate_tokens((request.system or "") + request.prompt)
        if not isinstance(output_tokens, int):
            output_tokens = estimate_tokens(text)
        stop = data.get("stop_reason")
        return CompletionResult(
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=str(data.get("model") or request.model),
            finish_reason=_STOP_REASONS.get(stop, stop) if isinstance(stop, str) and stop else "stop",
        )


def register(registry: Registrar) -> None:
    registry.add_provider("anthropic", AnthropicProvider)
