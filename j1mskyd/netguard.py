"""Who is asking: the client address (X-Forwarded-For only via trusted proxies) and
whether the IP allowlist admits it.  Pure functions over ``ipaddress``; no aiohttp."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Address", "IpPolicy", "Network", "PRIVATE_NETWORKS", "parse_address", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Loopback and the private ranges a Pi's LAN uses (RFC 1918, ULA, link-local).
PRIVATE_NETWORKS = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                    "fc00::/7", "fe80::/10")


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs or bare addresses; raises ValueError naming the bad entry."""
    nets = []
    for text in texts:
        try:
            nets.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR network: {text!r}") from None
    return tuple(nets)


def parse_address(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text.strip().split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
    return addr


def _within(addr: Address, networks: Iterable[Network]) -> bool:
    return any(addr.version == net.version and addr in net for net in networks)


@dataclass(frozen=True)
class IpPolicy:
    allowed: tuple[Network, ...]
    enforce: bool = True
    trusted_proxies: tuple[Network, ...] = ()

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> Address | None:
        """The peer address; behind a trusted proxy, the last X-Forwarded-For hop that is
        not itself a trusted proxy (anything left of it could be forged by the client)."""
        addr = parse_address(peer)
        if addr is None or not forwarded_for or not _within(addr, self.trusted_proxies):
            return addr
        for hop in reversed([h for h in forwarded_for.split(",") if h.strip()]):
            hop_addr = parse_address(hop)
            if hop_addr is None:
                return addr  # garbage in the header: trust only what we saw
            if not _within(hop_addr, self.trusted_proxies):
                return hop_addr
            addr = hop_addr
        return addr

    def trusts(self, addr: Address | None) -> bool:
        """Is this peer a trusted proxy (whose X-Forwarded-For names the client)?"""
        return addr is not None and _within(addr, self.trusted_proxies)

    def admits(self, addr: Address | None) -> bool:
        if not self.enforce:
            return True
        return addr is not None and _within(addr, self.allowed)
