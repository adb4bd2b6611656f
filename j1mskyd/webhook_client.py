"""The HTTP client that delivers webhooks: its own session, whose resolver refuses what
the target policy refuses.

The daemon's shared session also carries provider calls, which may rightly go to
loopback (Ollama on 127.0.0.1:11434); webhooks get this one instead.  Every name the
connector looks up passes through :class:`GuardedResolver`, which judges each address
the lookup returned, the ones the socket is about to connect to, with
:meth:`TargetPolicy.refusal`: a name that resolved to a public address when the URL was
accepted and to 127.0.0.1 now (DNS rebinding) fails here, before any connection.  That
is the same lookup the connection uses, not a second one.  IP literals never reach a
resolver (aiohttp connects to them directly), so the worker checks a webhook's URL
with :meth:`TargetPolicy.check_url` before each delivery; sinks must not follow
redirects (``sinks.post`` does not).

Works with aiohttp 3.8 (``resolve(host, port, family)`` returning dicts) and 3.9+
(the same with ``ResolveResult`` dicts).
"""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver

from .webhook_targets import TargetPolicy, lookup_infos, parse_host_address

__all__ = ["GuardedResolver", "LookupResolver", "RefusedByPolicy", "policy_reason", "webhook_session"]


class RefusedByPolicy(OSError):
    """Raised inside the connector (it wraps OSErrors as ClientConnectorError)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.policy_reason = message


class LookupResolver(AbstractResolver):
    """aiohttp's threaded resolver, but on the webhook lookups' own threads
    (webhook_targets.lookup_infos): a client's name whose server never answers must not hold
    the loop's default executor, where the database's reads and commits run."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[Any]:
        infos = await lookup_infos(host, port, family)
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [{"hostname": host, "host": address[0], "port": address[1], "family": fam, "proto": proto,
                 "flags": flags} for fam, _, proto, _, address in infos]

    async def close(self) -> None:
        pass


class GuardedResolver(AbstractResolver):
    """Wraps a resolver (LookupResolver unless ``inner`` is given) and refuses a name when
    any address it resolves to is refused by ``policy`` (so nothing of it is connected to)."""

    def __init__(self, policy: TargetPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner if inner is not None else LookupResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[Any]:
        # aiohttp 3.8 types family as int, later ones as AddressFamily: this takes both.
        infos = await self.inner.resolve(host, port, socket.AddressFamily(family))
        for info in infos:
            addr = parse_host_address(info["host"])
            reason = f"{info['host']} is not an IP address" if addr is None \
                else self.policy.refusal(addr, info.get("port") or port)
            if reason is not None:
                raise RefusedByPolicy(f"{host} resolves to {reason}")
        return infos

    async def close(self) -> None:
        await self.inner.close()


def webhook_session(policy: TargetPolicy) -> tuple[aiohttp.ClientSession, GuardedResolver]:
    """A session for webhook delivery only (create it inside the running loop)."""
    resolver = GuardedResolver(policy)
    connector = aiohttp.TCPConnector(resolver=resolver, limit=32)
    session = aiohttp.ClientSession(connector=connector,
                                    timeout=aiohttp.ClientTimeout(total=None, connect=30))
    return session, resolver


def policy_reason(exc: BaseException) -> str | None:
    """The policy's reason when ``exc`` is a connection refused by :class:`GuardedResolver`."""
    inner = getattr(exc, "os_error", None) or exc.__cause__
    return getattr(inner, "policy_reason", None)
