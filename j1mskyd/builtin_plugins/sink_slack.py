"""Built-in sink ``slack``: a short message to a Slack incoming-webhook URL.

Slack's incoming webhooks take ``{"text": ...}``; they cannot check our signature, so
the URL itself is the secret (keep it out of shared configs).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from j1mskyd.sinks import SinkError

J1MSKY_PLUGIN_API = 1
TIMEOUT = aiohttp.ClientTimeout(total=10)


def message(payload: dict[str, Any]) -> str:
    data = payload.get("data") or {}
    event = payload.get("event", "event")
    parts = [f"*j1mskyd* `{event}`"]
    if "agent_id" in data:
        parts.append(f"agent `{data['agent_id']}` ({data.get('model')})")
        if data.get("cost") is not None:
            parts.append(f"cost ${data['cost']:.4f}")
        if data.get("error"):
            parts.append(f"error: {data['error'][:200]}")
    elif data:
        parts.append(", ".join(f"{k}: {v}" for k, v in list(data.items())[:6]))
    return " — ".join(parts)


class SlackSink:
    def __init__(self, settings: dict[str, Any], session: aiohttp.ClientSession) -> None:
        self._url = settings["url"]
        self._session = session

    async def deliver(self, payload: dict[str, Any], *, delivery_id: str, event: str) -> None:
        try:
            async with self._session.post(self._url, json={"text": message(payload)}, timeout=TIMEOUT) as resp:
                if not 200 <= resp.status < 300:
                    raise SinkError(f"Slack answered HTTP {resp.status}", resp.status)
                await resp.read()
        except asyncio.TimeoutError:
            raise SinkError("Slack did not answer within 10 s") from None
        except aiohttp.ClientError as exc:
            raise SinkError(f"cannot reach Slack: {type(exc).__name__}") from None


def register(registry: Any) -> None:
    registry.add_sink("slack", SlackSink)
