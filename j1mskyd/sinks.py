"""Helpers for HTTP sink plugins: the signature and one POST with the target rules.

The sink contract (:class:`~j1mskyd.plugin_api.Sink`, ``SinkSettings``, :class:`SinkError`)
is in :mod:`j1mskyd.plugin_api`; ``SinkError`` is re-exported here for plugins that import
it from this module.

``session`` is the webhook session (webhook_client.py), not the providers': its
resolver refuses every name that resolves to an address the target policy refuses
(webhook_targets.py), and the worker checks the URL itself before each delivery.  A
sink sends to ``settings["url"]`` and nowhere else, and does not follow redirects (a
redirect to an IP literal would pass no resolver): :func:`post` does both.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

from .plugin_api import SinkError

__all__ = ["ANSWER_READ", "SinkError", "post", "signature"]

# Bytes of a receiver's answer read (and dropped): nothing in it is used, and reading a short
# answer to its end lets the connection be used again.  Past this the connection is closed
# instead: a receiver answering 2xx with an endless body filled the daemon's memory.
ANSWER_READ = 64 * 1024


def signature(secret: str, body: bytes) -> str:
    """The X-J1MSKY-Signature value: ``sha256=<hex HMAC-SHA256(secret, raw body)>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def post(session: Any, url: str, who: str, **kwargs: Any) -> None:
    """POST for the HTTP sinks: any 2xx within 10 s is success, anything else a SinkError."""
    import aiohttp
    try:
        async with session.post(url, timeout=aiohttp.ClientTimeout(total=10), allow_redirects=False,
                                **kwargs) as resp:
            if not 200 <= resp.status < 300:
                raise SinkError(f"{who} answered HTTP {resp.status}", resp.status)
            left = ANSWER_READ
            while left > 0 and (chunk := await resp.content.read(left)):
                left -= len(chunk)
    except asyncio.TimeoutError:
        raise SinkError(f"{who} did not answer within 10 s") from None
    except aiohttp.ClientError as exc:
        from .webhook_client import policy_reason
        reason = policy_reason(exc)
        if reason is not None:
            raise SinkError(f"target refused: {reason}") from None
        raise SinkError(f"cannot reach {who}: {type(exc).__name__}") from None
