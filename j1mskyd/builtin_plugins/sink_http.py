"""Built-in sink ``http``: the J1MSKY API reference's JSON payload POSTed to the webhook URL, signed.

Headers: ``X-J1MSKY-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>``,
``X-J1MSKY-Event`` (the event type) and ``X-J1MSKY-Delivery`` (unique per delivery:
receivers use it to drop the rare duplicate of at-least-once delivery).  The
payload's ``timestamp`` lets a receiver refuse old deliveries.  Any 2xx is success.
The webhook's custom ``headers`` go first; the daemon's own cannot be replaced by them.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from j1mskyd import __version__
from j1mskyd.plugin_api import Registrar, SinkSettings
from j1mskyd.sinks import post, signature

J1MSKY_PLUGIN_API = 1


class HttpSink:
    def __init__(self, settings: SinkSettings, session: aiohttp.ClientSession) -> None:
        self._url = settings["url"]
        self._secret = settings["secret"]
        self._custom = dict(settings.get("headers") or {})  # the webhook's own (webhook_request.py checked them)
        self._session = session

    async def deliver(self, payload: dict[str, Any], *, delivery_id: str, event: str) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {**self._custom, "Content-Type": "application/json", "User-Agent": f"j1mskyd/{__version__}",
                   "X-J1MSKY-Event": event, "X-J1MSKY-Delivery": delivery_id,
                   "X-J1MSKY-Signature": signature(self._secret, body)}
        await post(self._session, self._url, "receiver", data=body, headers=headers)

def register(registry: Registrar) -> None:
    registry.add_sink("http", HttpSink)
