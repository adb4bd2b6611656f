"""Local callers without a key: ``[security] local_scopes``.

The API reference says keys are optional for local instances, and its quick starts and
cookbook recipes send none.  A request that carries NO credentials, whose peer (the TCP
address the connection came from) is loopback, is served as the anonymous *local* caller
with the scopes ``local_scopes`` lists (embedded default: agents:read, agents:write,
billing:read; ``[]`` requires a key everywhere).  The rules, each a guard against a way in:

* Loopback is the real peer, and the client address after any trusted proxy must be
  loopback too: an ``X-Forwarded-For: 127.0.0.1`` is never believed from an untrusted
  peer, and a trusted proxy on this host forwarding a LAN client does not make it local,
  nor does one that does not name its client (names_client).
* A request that carries a key, valid or not, is judged by that key: a revoked or wrong
  key is a 401, never a fall-back to local.
* Never an admin scope: keys, projects, security and audit are managed with a key only
  (the config refuses ``admin:*`` here, and routes open to any key, e.g. GET /keys/me,
  are not for a caller without one).
* Its work is ownerless (owned by ``anonymous``, as work made with authentication off)
  and it sees only ownerless work, never a key's (tenancy.Viewer without sees_all).

* Not for a web page: a browser on this machine reaches loopback too, for any site it
  shows.  A request whose ``Host`` is not a loopback name (``localhost``, a 127.x or ::1
  address: a DNS-rebinding page uses its own name) or that carries an ``Origin`` of
  another host (a cross-site form or fetch) is not local (browser_safe).

The IP allowlist, blocks and per-IP rate limits apply as to any request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from .netguard import Address, parse_address

__all__ = ["GRANTABLE", "LOCAL_ACTOR", "browser_safe", "grants_local", "is_loopback", "names_client", "refusal"]

# What local_scopes may name: everything but the admin scopes.
GRANTABLE = ("agents:read", "agents:write", "billing:read")
# The audit log's actor for a local caller (no key id ever looks like it: those are key_<hex>).
LOCAL_ACTOR = "local"


def is_loopback(address: str | Address | None) -> bool:
    """127.0.0.0/8 or ::1 (an IPv4-mapped ::ffff:127.x too); None or a non-address: no."""
    addr = parse_address(address) if isinstance(address, str) or address is None else address
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr is not None and addr.is_loopback


def _loopback_name(host: str | None) -> bool:
    """``localhost`` or a loopback address, as a Host header or URL gives it (port aside)."""
    if not host:
        return False
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:  # an unclosed "[" and the like
        return False
    return name is not None and (name == "localhost" or is_loopback(name))


def browser_safe(host: str | None, origin: str | None) -> bool:
    """May a keyless request with these headers be the local caller?  Its ``Host`` names this
    machine's loopback (a page that rebinds its own name to 127.0.0.1 sends its name), and an
    ``Origin``, when sent (browsers send it on cross-site and scripted requests), is a page of
    a loopback host too ("null", a sandboxed or file page, is not)."""
    if not _loopback_name(host):
        return False
    if origin is None:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and _loopback_name(parts.netloc)


def names_client(forwarded_for: str) -> bool:
    """Does a trusted proxy's ``X-Forwarded-For`` (its lines joined) name the client: present,
    and every hop a bare address?  Otherwise (no header, ``unknown``, an address with a port)
    the IP guard falls back to the proxy's own address, loopback for a proxy on this host,
    which says nothing about who is behind it: such a request is not local."""
    hops = [hop for hop in forwarded_for.split(",") if hop.strip()]
    return bool(hops) and all(parse_address(hop) is not None for hop in hops)


def grants_local(peer: str | None, client: str | Address | None, scope: str | None,
                 local_scopes: Iterable[str]) -> bool:
    """Is a request without credentials from ``peer`` (the socket's address) for a route of
    ``scope`` served as the local caller?  ``client``: the address the IP guard resolved
    (X-Forwarded-For from a trusted proxy); both must be loopback."""
    return (scope is not None and scope in GRANTABLE and scope in tuple(local_scopes)
            and is_loopback(peer) and is_loopback(client))


def refusal(values: Iterable[str]) -> str | None:
    """Why ``values`` is not a valid local_scopes list (None: it is)."""
    admin = [v for v in values if v.startswith("admin:")]
    if admin:
        return (f"{', '.join(admin)} cannot be granted without a key (keys, projects and security are "
                "managed with an admin key only)")
    unknown = [v for v in values if v not in GRANTABLE]
    if unknown:
        return f"unknown scope(s) {', '.join(unknown)} (local_scopes may name {', '.join(GRANTABLE)})"
    return None
