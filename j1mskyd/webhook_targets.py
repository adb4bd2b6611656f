"""Where webhooks may go: the target policy applied to every outgoing webhook.

A webhook URL is chosen by a client (a spawn's ``webhook_url``) or an admin, and the
daemon POSTs signed task text and results to it; aimed at the inside (loopback, the
cloud metadata address, the LAN, the daemon itself) that is server-side request
forgery.  So, pure functions over ``ipaddress`` and ``urllib`` (no HTTP here):

- :meth:`TargetPolicy.check_url` parses a URL (http/https only, no user-info) and
  checks its host when it is an address, in any spelling ``inet_aton`` accepts
  (``2130706433``, ``0x7f000001``, ``017700000001``, ``127.1``) and in the IPv6 forms
  that carry an IPv4 address (``::ffff:127.0.0.1``, ``::127.0.0.1``, NAT64, 6to4);
- :meth:`TargetPolicy.check_accept` does that and, for a name, looks it up once and
  refuses the URL if *any* address it resolves to is refused (when the URL is accepted);
- :meth:`TargetPolicy.refusal` judges one address and port; the webhook HTTP client's
  resolver calls it on every address it is about to connect to (at delivery, so a name
  that resolves elsewhere by then, DNS rebinding, is caught without a second lookup).

Refused always: unspecified, multicast and broadcast addresses, and the daemon's own
listen address and port.  Refused unless inside an operator's ``[webhooks]
allowed_networks``: loopback, link-local, private LAN ranges and every other
non-public (special-purpose) address.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yarl

from .netguard import Address, Network, parse_networks

__all__ = ["LOOKUP_TIMEOUT", "Lookup", "TargetPolicy", "TargetRefused", "effective_addresses", "getaddrinfo_lookup",
           "lookup_infos", "never_resolves", "own_listen_networks", "parse_host_address", "parse_ipv4_any_form",
           "policy_from"]

LOOKUP_TIMEOUT = 5.0          # seconds for the accept-time lookup of a name
# The names are chosen by clients, and a name server that never answers holds a thread for
# the resolver's own timeout, whatever LOOKUP_TIMEOUT says: their own few threads, not the
# loop's default executor, where the database's reads and commits run.
_LOOKUPS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-dns")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_LAN = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPAT = ipaddress.ip_network("::/96")   # deprecated IPv4-compatible IPv6 (::a.b.c.d)
_WILDCARDS = ("", "0.0.0.0", "::", "*")

Lookup = Callable[[str, int], Awaitable[list[str]]]


class TargetRefused(ValueError):
    """A webhook target the policy refuses; ``message`` says why (safe to show the caller)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_ipv4_any_form(text: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any form C's ``inet_aton`` (and so getaddrinfo) accepts, or None.

    One to four parts, each decimal, ``0x`` hex or ``0``-led octal; the last part fills
    the remaining bytes (``127.1`` is 127.0.0.1, ``2130706433`` is too).
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        low = part.lower()
        if low.startswith("0x"):
            digits, base, allowed = low[2:], 16, "0123456789abcdef"
        elif len(low) > 1 and low.startswith("0"):
            digits, base, allowed = low[1:], 8, "01234567"
        else:
            digits, base, allowed = low, 10, "0123456789"
        if not digits and base == 16:
            digits = "0"      # inet_aton reads a bare "0x" as 0
        if not digits or any(c not in allowed for c in digits):
            return None
        values.append(int(digits, base))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for i, v in enumerate(head):
        number += v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def parse_host_address(host: str) -> Address | None:
    """The address a URL host names when it is a literal (any IPv4 form, IPv6 without zone), else None."""
    host = host.strip().rstrip(".").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
    return parse_ipv4_any_form(host)


def effective_addresses(addr: Address) -> list[Address]:
    """The addresses to judge for ``addr``: an IPv4-mapped or IPv4-compatible IPv6 address
    *is* its IPv4 address (the socket connects there); a NAT64 or 6to4 one is judged as
    itself and as the IPv4 address it carries."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return [addr.ipv4_mapped]
        if addr in _COMPAT and int(addr) > 1:   # not :: and ::1, which are IPv6's own
            return [ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)]
        if addr in _NAT64:
            return [addr, ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)]
        if addr.sixtofour is not None:
            return [addr, addr.sixtofour]
    return [addr]


def _kind(addr: Address) -> str | None:
    """Why an address outside the operator's allowance is refused, or None when public."""
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_link_local:
        return "a link-local address"
    if any(addr.version == n.version and addr in n for n in _LAN):
        return "a private network address"
    if addr.is_reserved:
        return "a reserved address"
    if not addr.is_global:
        return "a non-public (special-purpose) address"
    return None


@dataclass(frozen=True)
class TargetPolicy:
    """``allowed``: networks an operator opened (``[webhooks] allowed_networks``);
    ``own``: the daemon's own listen addresses, each with its port."""

    allowed: tuple[Network, ...] = ()
    own: tuple[tuple[Network, int], ...] = ()

    def refusal(self, addr: Address, port: int) -> str | None:
        """Why a connection to ``addr``:``port`` is refused, or None when it is allowed."""
        for a in effective_addresses(addr):
            if a.is_unspecified:
                return f"{addr} is an unspecified address"
            if a.is_multicast:
                return f"{addr} is a multicast address"
            if a == _BROADCAST:
                return f"{addr} is the broadcast address"
            if any(a.version == net.version and a in net and port == p for net, p in self.own):
                return f"{addr} port {port} is this daemon's own listen address"
        for a in effective_addresses(addr):
            if any(a.version == net.version and a in net for net in self.allowed):
                continue
            kind = _kind(a)
            if kind is not None:
                shown = str(addr) if a == addr else f"{addr} ({a})"
                hint = " (an operator can allow its network in [webhooks] allowed_networks)" \
                    if kind in ("a private network address", "a loopback address") else ""
                return f"{shown} is {kind}{hint}"
        return None

    def check_url(self, url: str) -> tuple[str, int, Address | None]:
        """Host, port and literal address of an http(s) URL; raises TargetRefused.

        Everything that needs no lookup: the scheme, user-info, the port, and the
        address when the host is one.  A name's addresses are checked by the caller.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
            # The HTTP client's own reading (yarl): its host is the one connected to, after
            # IDNA mapping ("１２７.0.0.1" and "127。0.0.1" are 127.0.0.1 to it).
            client = yarl.URL(url)
            host = client.raw_host or ""
        except (ValueError, UnicodeError) as exc:
            raise TargetRefused(f"not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https") or client.scheme not in ("http", "https"):
            raise TargetRefused("only http:// and https:// URLs can be webhook targets")
        if "@" in parts.netloc or client.raw_user is not None or client.raw_password is not None:
            raise TargetRefused("URLs with user-info (user:password@) are refused")
        if not host or not parts.hostname:
            raise TargetRefused("the URL has no host")
        port = port or (443 if parts.scheme == "https" else 80)
        addr = None
        for candidate in dict.fromkeys((host, parts.hostname)):  # both readings, should they differ
            found = _literal(candidate)
            if found is not None:
                reason = self.refusal(found, port)
                if reason is not None:
                    raise TargetRefused(reason)
                addr = addr or found
        literal = parse_host_address(host)
        if isinstance(literal, ipaddress.IPv4Address) and host != str(literal):
            # "127.0.0.1.", "127.1", "0x7f.0.0.1": newer aiohttp refuses them at connect time
            # (not a canonical IPv4 address) and 3.8 hands them to the resolver: refused here on both.
            raise TargetRefused(f"write the address {host!r} as {literal} (the HTTP client takes only that form)")
        return host, port, addr

    async def check_accept(self, url: str, lookup: Lookup | None = None) -> None:
        """When a URL is accepted: :meth:`check_url`, then a name's addresses, all of them.

        A name that does not resolve (yet) is accepted: the receiver may be set up later
        or the Pi be offline now; the check at connect time decides then.
        """
        host, port, addr = self.check_url(url)
        if addr is not None:
            return
        for text in await (lookup or getaddrinfo_lookup)(host, port):
            resolved = parse_host_address(text)
            reason = None if resolved is None else self.refusal(resolved, port)
            if reason is not None:
                raise TargetRefused(f"{host} resolves to {reason}")


def _literal(host: str) -> Address | None:
    """The address a host stands for without a lookup: a literal in any form, or a
    ``localhost`` name (RFC 6761: always loopback, never looked up)."""
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")  # fullwidth digits, ideographic dots
        except UnicodeError:
            return None
    addr = parse_host_address(host)
    name = host.rstrip(".").lower()
    if addr is None and (name == "localhost" or name.endswith(".localhost")):
        addr = ipaddress.IPv4Address("127.0.0.1")
    return addr


def never_resolves(host: str) -> bool:
    """A ``.invalid`` name (RFC 6761: resolvers answer "no such name" at once, and so does this,
    without asking a DNS server on the network: a query for it would only leave the machine)."""
    name = host.rstrip(".").lower()
    return name == "invalid" or name.endswith(".invalid")


async def lookup_infos(host: str, port: int, family: int = 0) -> list[tuple[Any, ...]]:
    """getaddrinfo for a webhook target's name (TCP), on the lookups' own threads (_LOOKUPS)."""
    if never_resolves(host):
        raise socket.gaierror(socket.EAI_NONAME, f"{host}: a .invalid name never resolves")

    def lookup() -> list[tuple[Any, ...]]:
        return list(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))

    return await asyncio.get_running_loop().run_in_executor(_LOOKUPS, lookup)


async def getaddrinfo_lookup(host: str, port: int) -> list[str]:
    """The addresses getaddrinfo gives for ``host``; [] when it cannot resolve."""
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT):
            infos = await lookup_infos(host, port)
    except (OSError, TimeoutError, UnicodeError):
        return []
    return [str(info[4][0]) for info in infos]  # str(): typeshed allows an int (AF_PACKET), not ours


def own_listen_networks(host: str, port: int) -> tuple[tuple[Network, int], ...]:
    """The daemon's own listen addresses, with its port.

    A wildcard or a name binds (or may bind) every local address: then loopback and every
    interface address count.  Port 0 (any free port, tests) names no port: nothing.
    """
    if not port:
        return ()
    addr = parse_host_address(host) if host not in _WILDCARDS else None
    if addr is not None and not addr.is_unspecified:
        return ((ipaddress.ip_network(addr), port),)
    nets: list[Network] = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    nets.extend(ipaddress.ip_network(a) for a in _interface_addresses())
    return tuple((n, port) for n in dict.fromkeys(nets))


def _interface_addresses() -> Iterable[Address]:
    try:
        import psutil  # lazy, as in sysinfo.py
        groups = psutil.net_if_addrs().values()
    except Exception:  # noqa: BLE001 - no interface list: loopback still counts
        return []
    out = []
    for group in groups:
        for entry in group:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    out.append(ipaddress.ip_address(entry.address.split("%", 1)[0]))
                except ValueError:
                    continue
    return out


def policy_from(allowed_networks: Iterable[str], host: str, port: int) -> TargetPolicy:
    """The policy for a config: its ``[webhooks] allowed_networks`` and its listen address."""
    return TargetPolicy(parse_networks(allowed_networks), own_listen_networks(host, port))
