"""Built-in sink ``slack``: a short message to a Slack incoming-webhook URL.

Slack's incoming webhooks take ``{"text": ...}``; they cannot check our signature, so
the URL itself is the secret (keep it out of shared configs).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from j1mskyd.plugin_api import Registrar, SinkSettings
from j1mskyd.sinks import post

J1MSKY_PLUGIN_API = 1


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
    def __init__(self, settings: SinkSettings, session: aiohttp.ClientSession) -> None:
        self._url = settings["url"]
        self._session = session

    async def deliver(self, payload: dict[str, Any], *, delivery_id: str, event: str) -> None:
        await post(self._session, self._url, "Slack", json={"text": message(payload)})

def register(registry: Registrar) -> None:
    registry.add_sink("slack", SlackSink)
