"""Security bodies read into typed requests: PUT /security/ip-whitelist, POST
/security/ip-blocks and POST /security/audit (j1mskyd/api/security.py).

The handlers parse a body here and hand the result to IpControl or AuditLog, which no longer
see raw JSON.  The first broken rule is reported (400 VALIDATION_ERROR with ``details``), with
the field names and messages the API has always used.  What needs the service's state (the
allowlist that would lock its admin out) is the service's to refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .audit import EVENTS, LOG_LEVELS, AuditSettings
from .netguard import Address, parse_address, parse_networks
from .request_fields import KEEP, Keep, bad

__all__ = ["MAX_BLOCK_HOURS", "AuditChange", "BlockRequest", "WhitelistChange", "parse_audit_change", "parse_block",
           "parse_whitelist"]

MAX_BLOCK_HOURS = 24 * 365


@dataclass(frozen=True, kw_only=True)
class WhitelistChange:
    """The new allowlist (normalised CIDRs) and, when given, the two switches."""

    allowed_ips: tuple[str, ...]
    enforce: bool | Keep = KEEP
    log_violations: bool | Keep = KEEP


@dataclass(frozen=True, kw_only=True)
class BlockRequest:
    ip: str                                # normalised (the form blocks are keyed by)
    reason: str = "blocked"
    duration_hours: float | None = None    # None: until removed


@dataclass(frozen=True, kw_only=True)
class AuditChange:
    """What a POST /security/audit changes; every other setting is ``KEEP``."""

    enabled: bool | Keep = KEEP
    log_level: str | Keep = KEEP
    retention_days: int | Keep = KEEP
    include_request_body: bool | Keep = KEEP
    include_response_body: bool | Keep = KEEP
    events: tuple[str, ...] | Keep = KEEP


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad("body", "Request body must be a JSON object")
    return body


def _switches(body: dict[str, Any], names: tuple[str, ...]) -> dict[str, bool]:
    for name in names:
        if name in body and not isinstance(body[name], bool):
            raise bad(name, f"{name} must be true or false")
    return {name: body[name] for name in names if name in body}


def parse_whitelist(body: Any) -> WhitelistChange:
    body = _object(body)
    allowed = body.get("allowed_ips")
    if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
        raise bad("allowed_ips", "allowed_ips must be a list of CIDR strings")
    try:
        networks = parse_networks(allowed)
    except ValueError as exc:
        raise bad("allowed_ips", str(exc)) from None
    return WhitelistChange(allowed_ips=tuple(str(n) for n in networks),
                           **_switches(body, ("enforce", "log_violations")))


def parse_block(body: Any, your_ip: Address | None) -> BlockRequest:
    """``your_ip``: the caller's address; blocking it is refused (the admin would lock themself out)."""
    body = _object(body)
    addr = parse_address(body.get("ip")) if isinstance(body.get("ip"), str) else None
    if addr is None:
        raise bad("ip", "ip must be an IPv4 or IPv6 address")
    if your_ip is not None and addr == your_ip:
        # As with the allowlist: an admin who blocks their own address can no longer undo it.
        raise bad("ip", f"{your_ip} is your own address; blocking it would lock you out")
    reason = body.get("reason", "blocked")
    if not isinstance(reason, str) or not reason or len(reason) > 200:
        raise bad("reason", "reason must be a non-empty string of at most 200 characters")
    hours = body.get("duration_hours")
    if hours is not None and (isinstance(hours, bool) or not isinstance(hours, (int, float))
                              or not 0 < hours <= MAX_BLOCK_HOURS):
        raise bad("duration_hours", f"duration_hours must be a number between 0 and {MAX_BLOCK_HOURS} "
                                    "(leave it out for a block until removed)")
    return BlockRequest(ip=str(addr), reason=reason, duration_hours=hours)


def parse_audit_change(body: Any) -> AuditChange:
    body = _object(body)
    unknown = set(body) - set(AuditSettings.__dataclass_fields__)
    if unknown:
        raise bad(sorted(unknown)[0], f"Unknown audit setting '{sorted(unknown)[0]}'")
    changes: dict[str, Any] = _switches(body, ("enabled", "include_request_body", "include_response_body"))
    if "log_level" in body:
        if body["log_level"] not in LOG_LEVELS:
            raise bad("log_level", f"log_level must be one of: {', '.join(LOG_LEVELS)}")
        changes["log_level"] = body["log_level"]
    if "retention_days" in body:
        days = body["retention_days"]
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
            raise bad("retention_days", "retention_days must be an integer from 1 to 3650")
        changes["retention_days"] = days
    if "events" in body:
        events = body["events"]
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise bad("events", "events must be a list of event names")
        unknown_events = [e for e in events if e not in EVENTS]
        if unknown_events:
            raise bad("events", f"Unknown event(s): {', '.join(unknown_events)} (known: {', '.join(EVENTS)})")
        changes["events"] = tuple(dict.fromkeys(events))
    return AuditChange(**changes)
