"""``security.violation``: the one shape in which a refusal reaches the audit log and the
event stream, whether the request pipeline refused a request or the listener refused a
connection before its first byte."""

from __future__ import annotations

from typing import Any

from .audit import Actor, AuditLog
from .events import EventLog
from .tenancy import ADMINS_ONLY

__all__ = ["record_violation"]


def record_violation(audit: AuditLog, events: EventLog, actor: Actor, ip: str | None,
                     details: dict[str, Any]) -> None:
    """An audit entry (warning) and a ``security.violation`` event; the event is throttled
    per address and kind, so a scanner hammering the daemon cannot flood webhook receivers."""
    audit.record("security.violation", actor, severity="warning", details=details)
    # A refusal of a known key is that key's event (an admin sees them all); one with no
    # key (none sent, an unknown, revoked or expired token, a refused address) is the admins'
    # alone: its path may hold another key's ids and its address is another client's.
    events.emit_soon("security.violation", details | {"ip": ip}, throttle_key=f"violation:{ip}:{details['kind']}",
                     owner=actor.api_key_id or ADMINS_ONLY)
