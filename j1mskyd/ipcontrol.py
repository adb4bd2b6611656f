"""The IP allowlist (changeable over the API) and temporary IP blocks.

The allowlist starts from config; ``PUT /security/ip-whitelist`` replaces it and the
change is stored in the ``settings`` table, so it survives restarts (the stored value
wins over the config file until it is changed again).  Blocks live in ``ip_blocks``
with an optional expiry; an expired block is ignored and swept.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from . import settings
from .netguard import Address, IpPolicy, parse_address, parse_networks
from .request_fields import KEEP, bad
from .security_request import BlockRequest, WhitelistChange

__all__ = ["Block", "IpControl", "SETTING", "block_view"]

SETTING = "ip_whitelist"


@dataclass(frozen=True)
class Block:
    ip: str
    reason: str
    created_at: float
    expires_at: float | None

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


class IpControl:
    def __init__(self, store: Any, policy: IpPolicy, log_violations: bool,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.policy = policy
        self.log_violations = log_violations
        self.clock = clock
        self.blocks: dict[str, Block] = {}
        self._allowed_text: tuple[str, ...] = tuple(str(n) for n in policy.allowed)
        self._stored = False  # the allowlist was set over the API (settings table): the file's does not apply
        self._resolved: dict[tuple[str | None, str | None], tuple[Address | None, str | None, bool]] = {}

    async def load(self) -> None:
        def read(conn: sqlite3.Connection) -> tuple[str | None, list[sqlite3.Row]]:
            return settings.get(conn, SETTING), conn.execute("SELECT * FROM ip_blocks").fetchall()

        stored, blocks = await self.store.read(read)
        self._stored = stored is not None
        if stored is not None:
            data = json.loads(stored)
            self._apply(tuple(data["allowed_ips"]), data["enforce"], data["log_violations"])
        now = self.clock()
        self.blocks = {r["ip"]: Block(r["ip"], r["reason"], r["created_at"], r["expires_at"]) for r in blocks}
        self.blocks = {ip: b for ip, b in self.blocks.items() if b.active(now)}

    def _apply(self, allowed: tuple[str, ...], enforce: bool, log_violations: bool) -> None:
        self.policy = replace(self.policy, allowed=parse_networks(allowed), enforce=enforce)
        self._resolved = {}
        self._allowed_text = allowed
        self.log_violations = log_violations

    def reconfigure(self, policy: IpPolicy, log_violations: bool) -> str | None:
        """The ``[security]`` allowlist of a reloaded configuration.  The trusted proxies apply
        at once; the allowlist, enforcement and violation logging too, unless an admin set them
        over the API (PUT /security/ip-whitelist): that stored list wins over the file, as it
        does at a start, until it is changed again.  Returns a note saying so (None otherwise)."""
        self.policy = replace(self.policy, trusted_proxies=policy.trusted_proxies)
        self._resolved = {}
        if self._stored:
            return ("the IP allowlist set over the API (PUT /security/ip-whitelist) stays in force: "
                    "it wins over [security] allowed_ips, enforce_allowlist and log_violations")
        self._apply(tuple(str(n) for n in policy.allowed), policy.enforce, log_violations)
        return None

    def whitelist(self) -> dict[str, Any]:
        return {"allowed_ips": list(self._allowed_text), "enforce": self.policy.enforce,
                "log_violations": self.log_violations}

    async def set_whitelist(self, change: WhitelistChange, your_ip: Address | None) -> dict[str, Any]:
        """``change``: what PUT /security/ip-whitelist sent (security_request.parse_whitelist);
        ``your_ip``: the caller's address, which an enforced list must admit."""
        enforce = self.policy.enforce if change.enforce is KEEP else change.enforce
        log_violations = self.log_violations if change.log_violations is KEEP else change.log_violations
        networks = parse_networks(change.allowed_ips)
        if enforce and your_ip is not None and not any(
                your_ip.version == n.version and your_ip in n for n in networks):
            # Locking out the admin who makes the change helps nobody.
            raise bad("allowed_ips", f"the list must include your own address ({your_ip}), "
                                     "or you would lock yourself out")
        normalised = change.allowed_ips
        value = json.dumps({"allowed_ips": normalised, "enforce": enforce, "log_violations": log_violations})
        await self.store.write(settings.put(SETTING, value, self.clock()), fail_fast=True)
        self._stored = True
        self._apply(normalised, enforce, log_violations)
        return self.whitelist()

    def resolve(self, peer: str | None, forwarded_for: str | None) -> tuple[Address | None, str | None, bool]:
        """(client address, the same as text, admitted by the allowlist), cached per (peer,
        header): parsing addresses, walking networks and formatting the address (blocks and
        rate-limit buckets are keyed by the text) for every request is wasted work on a Pi."""
        key = (peer, forwarded_for)
        hit = self._resolved.get(key)
        if hit is None:
            addr = self.policy.client_ip(peer, forwarded_for)
            hit = (addr, None if addr is None else str(addr), self.policy.admits(addr))
            if len(self._resolved) >= 4096:
                self._resolved.clear()
            self._resolved[key] = hit
        return hit

    def verdict(self, peer: str | None, forwarded_for: str | None
                ) -> tuple[Address | None, str | None, tuple[str, str | None] | None]:
        """(client address, as text, refusal): the refusal is None, ``("ip_blocked", reason)``
        or ``("ip_not_allowed", None)``; blocks come first (a blocked address inside the
        allowlist is still refused).  The one decision, for requests and for connections."""
        addr, ip, admitted = self.resolve(peer, forwarded_for)
        block = self.blocked(ip)
        if block is not None:
            return addr, ip, ("ip_blocked", block.reason)
        return addr, ip, None if admitted else ("ip_not_allowed", None)

    def peer_refusal(self, peer: str | None) -> tuple[str | None, tuple[str, str | None]] | None:
        """At accept time, before a byte is read: (address, refusal) when a connection from
        ``peer`` is to be closed, None to accept it.  A trusted proxy is always accepted: the
        clients behind it are judged per request, from X-Forwarded-For."""
        addr, ip, refusal = self.verdict(peer, None)
        if refusal is None or self.policy.trusts(addr):
            return None
        return ip, refusal

    # -- blocks ----------------------------------------------------------------------------
    def blocked(self, ip: str | None) -> Block | None:
        """The active block of an address (its text, as resolve() gives it), if any."""
        if ip is None:
            return None
        block = self.blocks.get(ip)
        if block is not None and not block.active(self.clock()):
            del self.blocks[block.ip]  # expired; the row is swept by the next write or purge
            return None
        return block

    async def block(self, req: BlockRequest) -> Block:
        """``req``: what POST /security/ip-blocks sent (security_request.parse_block)."""
        now = self.clock()
        hours = req.duration_hours
        block = Block(req.ip, req.reason, now, None if hours is None else now + hours * 3600)
        await self.store.write(
            ("DELETE FROM ip_blocks WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)),
            ("INSERT OR REPLACE INTO ip_blocks (ip, reason, created_at, expires_at) VALUES (?, ?, ?, ?)",
             (block.ip, block.reason, block.created_at, block.expires_at)), fail_fast=True)
        self.blocks[block.ip] = block
        return block

    async def unblock(self, ip: str) -> bool:
        addr = parse_address(ip)
        key = str(addr) if addr is not None else ip
        if key not in self.blocks:
            return False
        await self.store.write(("DELETE FROM ip_blocks WHERE ip = ?", (key,)), fail_fast=True)
        del self.blocks[key]
        return True

    def list_blocks(self) -> list[Block]:
        now = self.clock()
        return sorted((b for b in self.blocks.values() if b.active(now)), key=lambda b: b.created_at)


def block_view(block: Block) -> dict[str, Any]:
    from .agent_record import iso
    return {"ip": block.ip, "reason": block.reason, "blocked_at": iso(block.created_at),
            "expires_at": iso(block.expires_at)}

