"""/kyros/v1/ws: the Kyros document's WebSocket.  The socket's protocol is the native one
(api/events.py: ``{"type":"auth","token"}``, ``{"type":"subscribe","events":[...]}``, the key
held while open, a revoked key closing it with 4401); what it sends are the document's
messages ``{"type", "data", "timestamp"}`` built from the event log:

- ``task_progress``: task.created, task.progress, task.completed, task.failed, task.cancelled
  (data: task_id, status, progress, current_step and the rest of the task summary, the step);
- ``escalation_status``: escalation.submitted, .approved, .rejected (data: the escalation view);
- ``system_alerts``: budget.notice, .warning, .critical, .exceeded (data: the alert, as
  GET /monitoring/alerts lists it).
"""

from __future__ import annotations

from typing import Any

from ...events import Event
from ..events import Messages, websocket_handler
from .alerts import ALERT_EVENTS, alert_of

__all__ = ["KYROS_MESSAGES", "SOURCES", "websocket"]

TASK_EVENTS = ("task.created", "task.progress", "task.completed", "task.failed", "task.cancelled")
ESCALATION_EVENTS = ("escalation.submitted", "escalation.approved", "escalation.rejected")
SOURCES = {"task_progress": TASK_EVENTS, "escalation_status": ESCALATION_EVENTS, "system_alerts": tuple(ALERT_EVENTS)}
_KIND = {t: kind for kind, types in SOURCES.items() for t in types}


def _data(kind: str, event: Event) -> dict[str, Any]:
    data = event.data
    if kind == "task_progress":
        progress = data.get("progress") or {}
        return {"task_id": data.get("id"), **data,
                "current_step": data.get("current_step", progress.get("current_step"))}
    if kind == "escalation_status":
        return data
    return alert_of(event, True)


def _render(event: Event, wanted: set[str]) -> list[dict[str, Any]]:
    kind = _KIND.get(event.type)
    if kind is None or kind not in wanted:
        return []
    return [{"type": kind, "event": event.type, "data": _data(kind, event), "timestamp": event.payload()["timestamp"],
             "id": event.id}]


KYROS_MESSAGES = Messages(render=_render, types=lambda wanted: [t for kind in wanted for t in SOURCES.get(kind, ())],
                          unknown=lambda wanted: sorted(wanted - set(SOURCES)), default=tuple(SOURCES))
websocket = websocket_handler(KYROS_MESSAGES)
websocket.__name__ = "kyros_websocket"
websocket.__doc__ = "The Kyros WebSocket: auth, subscribe, task_progress / escalation_status / system_alerts"
