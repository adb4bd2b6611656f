"""Live events: GET /events (cursor pages), GET /events/stream (SSE), GET /ws (WebSocket).

SSE and WebSocket readers subscribe first and then replay what they missed from the
database, so no event falls between the two; an event id is never sent twice on one
connection.  Both resume: SSE with ``Last-Event-ID`` (browsers send it on reconnect),
WebSocket with ``last_event_id`` in its subscribe message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any

from aiohttp import WSMsgType, web

from ..errors import ValidationFailed
from ..events import EVENT_TYPES, Event
from .common import CONFIG, SERVICES, json_response, query_params

HEARTBEAT = 15.0
POLL = 0.25  # seconds between looks at an idle reader's connection
REPLAY_PAGE = 500
MAX_ID = 2**63  # event ids are SQLite integers: a larger one is refused, not an OverflowError


def _bad(field: str, message: str) -> ValidationFailed:
    return ValidationFailed([{"field": field, "message": message}])


def encode_cursor(event_id: int) -> str:
    """The seed's opaque cursor: base64 of ``{"id":N}`` (its example decodes to that)."""
    return base64.urlsafe_b64encode(json.dumps({"id": event_id}, separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        value = data["id"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_ID:
            raise ValueError
        return value
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise _bad("cursor", "cursor is not one this server gave out") from None


def _types(text: str | None) -> list[str] | None:
    if not text:
        return None
    types = [t for t in (x.strip() for x in text.split(",")) if t]
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise _bad("types", f"Unknown event type(s): {', '.join(unknown)}")
    return types


async def list_events(request: web.Request) -> web.Response:
    params = query_params(request)
    try:
        limit = int(params.get("limit", 50))
        if not 1 <= limit <= 500:
            raise ValueError
    except ValueError:
        raise _bad("limit", "limit must be an integer from 1 to 500") from None
    after = decode_cursor(params["cursor"]) if params.get("cursor") else 0
    events = await request.app[SERVICES].events.after(after, limit + 1, _types(params.get("types")))
    has_more = len(events) > limit
    events = events[:limit]
    last = events[-1].id if events else after
    return json_response({"data": [e.payload() for e in events],
                          "pagination": {"cursor": encode_cursor(last), "has_more": has_more, "limit": limit}})


def _last_id(value: str | None) -> int:
    if not value:
        return 0
    try:
        last = int(value)
        if not 0 <= last < MAX_ID:
            raise ValueError
        return last
    except ValueError:
        raise _bad("Last-Event-ID", "Last-Event-ID must be an event id (a non-negative integer)") from None


async def _replay_then_live(request: web.Request, sub: Any, last: int, types: list[str] | None, send) -> int:
    """Send what was missed, then live events; returns the last id sent when the reader
    fell too far behind (it must reconnect and resume from there)."""
    events = request.app[SERVICES].events
    while True:  # replay in pages until caught up with the database
        page = await events.after(last, REPLAY_PAGE, types)
        for event in page:
            await send(event)
            last = event.id
        if len(page) < REPLAY_PAGE:
            break
    idle = 0.0
    while True:
        try:
            async with asyncio.timeout(POLL):  # not wait_for: see webhooks.py
                event = await sub.queue.get()
        except TimeoutError:
            # aiohttp does not always cancel a handler whose client went away (3.8 never
            # does, 3.9+ only with handler_cancellation): look, so no reader lingers.
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError("the reader went away") from None
            idle += POLL
            if idle >= HEARTBEAT:
                idle = 0.0
                await send(None)
            continue
        idle = 0.0
        if event is None:
            return last  # too slow: closed; the client resumes from its last id
        if event.id == 0:  # live-only (agent.output deltas): not in the log, nothing to resume
            await send(event)
        elif event.id > last:
            await send(event)
            last = event.id


async def stream(request: web.Request) -> web.StreamResponse:
    params = query_params(request)
    types = _types(params.get("types"))
    last = _last_id(request.headers.get("Last-Event-ID") or params.get("last_event_id"))
    events = request.app[SERVICES].events
    sub = events.subscribe(types)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)

    async def send(event: Event | None) -> None:
        if event is None:
            await response.write(b": keep-alive\n\n")
            return
        data = json.dumps(event.payload(), separators=(",", ":"))
        event_id = f"id: {event.id}\n" if event.id else ""  # live-only events leave Last-Event-ID alone
        await response.write(f"{event_id}event: {event.type}\ndata: {data}\n\n".encode())

    try:
        await response.write(b"retry: 3000\n\n")
        await _replay_then_live(request, sub, last, types, send)
    except ConnectionResetError:
        pass  # the reader went away (a cancellation, on shutdown or disconnect, propagates)
    finally:
        events.unsubscribe(sub)
    return response


def _kyros_progress(event: Event) -> dict[str, Any] | None:
    """Agent events as the Kyros document's ``task_progress`` messages."""
    if not event.type.startswith("agent."):
        return None
    data = event.data
    status = {"agent.spawned": "queued", "agent.started": "in_progress",
              "agent.output": "in_progress"}.get(event.type, data.get("status"))
    return {"type": "task_progress", "timestamp": event.payload()["timestamp"], "id": event.id,
            "data": {"task_id": data.get("agent_id"), "status": status, "model": data.get("model"),
                     **({"delta": data["delta"]} if "delta" in data else {})}}


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Kyros messages: {"type":"auth","token"}, {"type":"subscribe","events":[...],"last_event_id"?}."""
    services = request.app[SERVICES]
    auth_needed = request.app[CONFIG].security.auth
    ws = web.WebSocketResponse(heartbeat=30.0)
    await ws.prepare(request)
    key = None
    if "token" in request.query:
        # Never from the URL: it ends up in proxy and access logs and in browser history.
        await ws.send_json({"type": "error", "message": "a token in the URL is not accepted (and is now exposed: "
                                                        "rotate it); send {\"type\":\"auth\",\"token\":...}"})
    pump: asyncio.Task[None] | None = None
    overflowed = asyncio.Event()
    sub = None

    async def send_event(event: Event | None, wanted: set[str]) -> None:
        if event is None:
            return
        if event.type in wanted or "*" in wanted:
            await ws.send_json({"type": event.type, **event.payload()})
        if "task_progress" in wanted and (msg := _kyros_progress(event)) is not None:
            await ws.send_json(msg)

    async def pump_events(sub: Any, last: int, db_types: list[str] | None, wanted: set[str]) -> None:
        try:
            last = await _replay_then_live(request, sub, last, db_types, lambda e: send_event(e, wanted))
        except ConnectionResetError:
            return  # gone: the receive loop ends too
        # Fell too far behind: say where to resume, and close (the client resubscribes).
        await ws.send_json({"type": "error", "message": "too slow: subscribe again with last_event_id",
                            "last_event_id": last})
        overflowed.set()
        await ws.close(code=4008, message=b"too slow")

    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                message = json.loads(msg.data)
                kind = message.get("type")
            except (ValueError, AttributeError):
                await ws.send_json({"type": "error", "message": "messages are JSON objects with a type"})
                continue
            if kind == "auth":
                token = message.get("token")
                key = services.keys.authenticate(token) if isinstance(token, str) else None
                ok = key is not None and key.allows("agents:read")
                await ws.send_json({"type": "auth", "success": ok, **({} if ok else {"error": "invalid token"})})
                if not ok:
                    await ws.close(code=4401, message=b"unauthorized")
                    break
            elif kind == "subscribe":
                if auth_needed and (key is None or not key.allows("agents:read")):
                    await ws.send_json({"type": "error", "message": "authenticate first: {\"type\":\"auth\"}"})
                    continue
                wanted = message.get("events") or ["*"]
                if not isinstance(wanted, list) or not all(isinstance(e, str) for e in wanted):
                    await ws.send_json({"type": "error", "message": "events must be a list of names"})
                    continue
                wanted_set = set(wanted)
                db_types = None if ("*" in wanted_set or "task_progress" in wanted_set) else \
                    [t for t in wanted_set if t in EVENT_TYPES]
                last = message.get("last_event_id", 0)
                if isinstance(last, bool) or not isinstance(last, int) or not 0 <= last < MAX_ID:
                    last = 0
                if pump is not None:
                    pump.cancel()
                    services.events.unsubscribe(sub)
                sub = services.events.subscribe(db_types)
                await ws.send_json({"type": "subscribed", "events": sorted(wanted_set)})
                pump = asyncio.ensure_future(pump_events(sub, last, db_types, wanted_set))
            elif kind == "ping":
                await ws.send_json({"type": "pong"})
            else:
                await ws.send_json({"type": "error", "message": f"unknown message type {kind!r}"})
    finally:
        if pump is not None:
            if overflowed.is_set():
                await asyncio.gather(pump, return_exceptions=True)  # let it finish the closing handshake
            else:
                pump.cancel()
        if sub is not None:
            services.events.unsubscribe(sub)
    return ws
