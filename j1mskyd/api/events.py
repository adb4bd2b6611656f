"""Live events: GET /events (cursor pages), GET /events/stream (SSE), GET /ws (WebSocket).

SSE and WebSocket readers subscribe first and then replay what they missed from the
database, so no event falls between the two; an event id is never sent twice on one
connection.  Both resume: SSE with ``Last-Event-ID`` (browsers send it on reconnect),
WebSocket with ``last_event_id`` in its subscribe message.  A WebSocket subscribe without
``last_event_id`` starts live (the API reference's "subscribe"): it replays nothing.

Both hold the key that opened them (KeyService.watch): when it is revoked, expires (the
end of a rotation grace period) or loses agents:read, the stream is closed at once
(SSE: the stream ends; WebSocket: close code 4401 with the reason).

A key that sees only its own work (tenancy.Viewer) gets its own key's events and the
daemon-wide ones on every one of them, live and replayed; one with admin:read or
admin:write gets every event.  The WebSocket takes the viewer of the key that
authenticated last when it subscribes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from ..errors import ApiError, ValidationFailed
from ..events import EVENT_TYPES, SHUTDOWN, Event, Subscription
from ..keys import KeyWatch
from ..request_fields import int_param
from ..tenancy import Viewer
from .common import AWAITING_CREDENTIALS, SERVICES, config_of, is_local, json_response, key_of, query_params, viewer
from .middleware import authenticate_in_band, count_in_band

__all__ = ["HEARTBEAT", "KEY_LOST", "Messages", "NATIVE", "decode_cursor", "encode_cursor", "list_events", "stream",
           "websocket", "websocket_handler"]

HEARTBEAT = 15.0
POLL = 0.25  # seconds between looks at an idle reader's connection
REPLAY_PAGE = 500
MAX_ID = 2**63  # event ids are SQLite integers: a larger one is refused, not an OverflowError
READ_SCOPE = "agents:read"  # what a live reader's key must keep granting
KEY_LOST = 4401  # WebSocket close code: the key was refused or stopped granting READ_SCOPE


def _bad(field: str, message: str) -> ValidationFailed:
    return ValidationFailed([{"field": field, "message": message}])


def encode_cursor(event_id: int) -> str:
    """The API reference's opaque cursor: base64 of ``{"id":N}`` (its example decodes to that)."""
    return base64.urlsafe_b64encode(json.dumps({"id": event_id}, separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        value = data["id"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_ID:
            raise ValueError
        return value
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
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
        limit = int_param(params, "limit", 50)
        if not 1 <= limit <= 500:
            raise ValueError
    except ValueError:
        raise _bad("limit", "limit must be an integer from 1 to 500") from None
    log = request.app[SERVICES].events
    # A cursor past the newest event (another daemon's, or this one's before its database was
    # replaced) pages on from the newest, as a stream resumes: the next events are not skipped.
    after = min(decode_cursor(params["cursor"]), log.newest) if params.get("cursor") else 0
    events = await log.after(after, limit + 1, _types(params.get("types")), viewer(request))
    has_more = len(events) > limit
    events = events[:limit]
    last = events[-1].id if events else after
    return json_response({"data": [e.payload() for e in events],
                          "pagination": {"cursor": encode_cursor(last), "has_more": has_more, "limit": limit}})


def _last_id(value: str | None) -> int:
    if not value:
        return 0
    try:
        last = int_param({"id": value}, "id", 0)
        if not 0 <= last < MAX_ID:
            raise ValueError
        return last
    except ValueError:
        raise _bad("Last-Event-ID", "Last-Event-ID must be an event id (a non-negative integer)") from None


def _watch_key(request: web.Request, key: Any, on_lost: Callable[[str], None]) -> KeyWatch | None:
    """Hold ``key`` for a live reader (None: authentication is off, nothing to hold)."""
    return None if key is None else request.app[SERVICES].keys.watch(key.key_id, READ_SCOPE, on_lost)


def _reader(request: web.Request) -> Viewer | None:
    """Whose events a live reader gets: None (every key's) for a viewer that sees all."""
    seen = viewer(request)
    return None if seen.sees_all else seen


def _release(request: web.Request, watch: KeyWatch | None) -> None:
    if watch is not None:
        request.app[SERVICES].keys.unwatch(watch)


async def _replay_then_live(request: web.Request, sub: Subscription, last: int | None, types: list[str] | None,
                            send: Callable[[Event | None], Awaitable[object]]) -> int:
    """Send what was missed after event id ``last`` (None: nothing, live only), then live
    events; returns the last id sent when the reader fell too far behind (it must reconnect
    and resume from there) or was ended."""
    events = request.app[SERVICES].events
    # The subscription was made before this, so it holds every event published since; the
    # replay stops at the last one published before it (sub.head).  Reading on to the
    # database's newest would send an event committed during the replay ahead of the
    # live-only ones queued before it (an agent's agent.completed before its agent.output).
    replay = last is not None
    # A resume point past the newest event published (another daemon's id, or this one's from
    # before its database was replaced) hears what comes next: every later event is numbered
    # from the head, and a reader told to skip up to its id heard nothing until then.
    sent = min(last or 0, sub.head)
    while replay:  # replay in pages until caught up with the subscription
        page = await events.after(sent, REPLAY_PAGE, types, sub.viewer, upto=sub.head)
        for event in page:
            if sub.ended is not None:  # its key was lost while the history was being read
                return sent
            await send(event)
            sent = event.id
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
            return sent  # too slow: closed; the client resumes from its last id
        if event.id == 0:  # live-only (agent.output deltas): not in the log, nothing to resume
            await send(event)
        elif event.id > sent:
            await send(event)
            sent = event.id


async def stream(request: web.Request) -> web.StreamResponse:
    params = query_params(request)
    types = _types(params.get("types"))
    last = _last_id(request.headers.get("Last-Event-ID") or params.get("last_event_id"))
    events = request.app[SERVICES].events
    sub = events.subscribe(types, _reader(request))
    watch = _watch_key(request, key_of(request), sub.end)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    try:
        await response.prepare(request)
    except BaseException:
        events.unsubscribe(sub)
        _release(request, watch)
        raise

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
        if watch is not None and watch.lost is not None:
            # A comment, which EventSource ignores; its reconnect then gets the 401.
            await response.write(f": closed: {watch.lost}\n\n".encode())
    except ConnectionResetError:
        pass  # the reader went away (a cancellation, on shutdown or disconnect, propagates)
    finally:
        events.unsubscribe(sub)
        _release(request, watch)
    return response


@dataclass(frozen=True)
class Messages:
    """What a WebSocket dialect sends for the events it subscribes to (the native /ws here,
    Kyros's /kyros/v1/ws in api/kyros/ws.py); the socket's protocol (auth, subscribe, ping,
    the key held, replay, closing) is the same for all."""

    render: Callable[[Event, set[str]], list[dict[str, Any]]]  # the messages of an event for these names
    types: Callable[[set[str]], list[str] | None]  # the event types to read for these names (None: all)
    unknown: Callable[[set[str]], list[str]]  # names that are not subscribable (refused)
    default: tuple[str, ...]  # names of a subscribe without "events"


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


def _native_messages(event: Event, wanted: set[str]) -> list[dict[str, Any]]:
    out = [{"type": event.type, **event.payload()}] if event.type in wanted or "*" in wanted else []
    if "task_progress" in wanted and (msg := _kyros_progress(event)) is not None:
        out.append(msg)
    return out


NATIVE = Messages(render=_native_messages,
                  types=lambda wanted: None if ("*" in wanted or "task_progress" in wanted)
                  else [t for t in wanted if t in EVENT_TYPES],
                  unknown=lambda wanted: [], default=("*",))


def _text(message: dict[str, Any], name: str) -> str | None:
    value = message.get(name)
    return value if isinstance(value, str) else None


def websocket_handler(messages: Messages) -> Callable[[web.Request], Awaitable[web.WebSocketResponse]]:
    """A WebSocket route that sends ``messages``' rendering of the events."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        return await _websocket(request, messages)
    return handler


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Kyros messages: {"type":"auth","token"}, {"type":"subscribe","events":[...],"last_event_id"?}."""
    return await _websocket(request, NATIVE)


async def _websocket(request: web.Request, messages: Messages) -> web.WebSocketResponse:
    """Kyros messages: {"type":"auth","token"}, {"type":"subscribe","events":[...],"last_event_id"?}.

    The key comes in the upgrade's headers (checked by the pipeline like any GET) or in an
    auth message, which passes the same checks (authenticate_in_band): a key that must
    sign adds ``timestamp`` and ``signature``, signed as the GET of this path.
    """
    services = request.app[SERVICES]
    # The local caller ([security] local_scopes) was admitted by the pipeline without a key.
    auth_needed = config_of(request).security.auth and not is_local(request)
    # A message is held to the request body limit (aiohttp's default is 4 MiB, and each one
    # is parsed as JSON, before the socket has authenticated too): closed with 1009 beyond it.
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=config_of(request).server.max_body_bytes)
    await ws.prepare(request)
    if "token" in request.query:
        # Never from the URL: it ends up in proxy and access logs and in browser history.
        await ws.send_json({"type": "error", "message": "a token in the URL is not accepted (and is now exposed: "
                                                        "rotate it); send {\"type\":\"auth\",\"token\":...}"})
    pump: asyncio.Task[None] | None = None
    pump_closes = asyncio.Event()  # the pump closes the socket itself (too slow, shutdown)
    sub: Subscription | None = None
    closing: asyncio.Future[Any] | None = None

    def key_lost(reason: str) -> None:
        nonlocal closing
        if sub is not None:
            sub.end(reason)
        # Also closes a socket that is only waiting for messages; close() wakes its reader.
        closing = asyncio.ensure_future(ws.close(code=KEY_LOST, message=reason.encode()))

    watch = _watch_key(request, key_of(request), key_lost)  # a key in the upgrade's headers
    # No key yet: until its auth message, the socket is a client that has not said who it
    # is, and the listener may evict it or time it out (connguard.awaiting_credentials).
    awaiting = request.get(AWAITING_CREDENTIALS)
    authenticated = awaiting() if auth_needed and watch is None and awaiting is not None else None

    async def send_event(event: Event | None, wanted: set[str]) -> None:
        if event is None:
            return
        for out in messages.render(event, wanted):
            await ws.send_json(out)

    async def pump_events(sub: Subscription, last: int | None, db_types: list[str] | None,
                          wanted: set[str]) -> None:
        try:
            last = await _replay_then_live(request, sub, last, db_types, lambda e: send_event(e, wanted))
            if sub.ended == SHUTDOWN:
                pump_closes.set()
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"daemon stopping")
                return
            if sub.ended is not None:
                return  # the key was lost: key_lost() closes the socket
            # Fell too far behind: say where to resume, and close (the client resubscribes).
            await ws.send_json({"type": "error", "message": "too slow: subscribe again with last_event_id",
                                "last_event_id": last})
            pump_closes.set()
            await ws.close(code=4008, message=b"too slow")
        except ConnectionResetError:
            return  # gone: the receive loop ends too

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
                try:
                    key = await authenticate_in_band(request, _text(message, "token"), _text(message, "timestamp"),
                                                     _text(message, "signature"))
                except ApiError as exc:
                    message = exc.message if exc.type != "SIGNATURE_REQUIRED" else (
                        'This key must sign: add "timestamp" and "signature" (hex HMAC-SHA256 of '
                        f'"<timestamp>\\nGET\\n{request.path}\\n") to the auth message')
                    await ws.send_json({"type": "auth", "success": False, "error": message,
                                        "error_type": exc.type, "code": exc.status})
                    await ws.close(code=4000 + exc.status, message=exc.type.encode())  # 4401, 4403, 4429
                    break
                _release(request, watch)
                watch = _watch_key(request, key, key_lost)
                if sub is not None:  # a subscription goes on as the key that authenticated now
                    sub.viewer = _reader(request)
                if authenticated is not None:
                    authenticated()
                    authenticated = None
                await ws.send_json({"type": "auth", "success": True})
            elif kind == "subscribe":
                if auth_needed and (watch is None or watch.lost is not None):
                    await ws.send_json({"type": "error", "message": "authenticate first: {\"type\":\"auth\"}"})
                    continue
                try:
                    count_in_band(request, key_of(request))  # the key that authenticated last
                except ApiError as exc:  # the current subscription, if any, goes on
                    await ws.send_json({"type": "error", "message": exc.message, "error_type": exc.type,
                                        "code": exc.status, **exc.extra})
                    continue
                wanted = message.get("events") or list(messages.default)
                if not isinstance(wanted, list) or not all(isinstance(e, str) for e in wanted):
                    await ws.send_json({"type": "error", "message": "events must be a list of names"})
                    continue
                wanted_set = set(wanted)
                refused = messages.unknown(wanted_set)
                if refused:
                    await ws.send_json({"type": "error", "error_type": "VALIDATION_ERROR", "code": 400,
                                        "message": f"unknown event(s) {', '.join(sorted(refused))}; these are: "
                                                   f"{', '.join(messages.default)}"})
                    continue
                db_types = messages.types(wanted_set)
                # No last_event_id: live from now on (the stored log is not replayed); an id
                # (0: from the start) replays what came after it first.
                last = message.get("last_event_id")
                if last is not None and (isinstance(last, bool) or not isinstance(last, int)
                                         or not 0 <= last < MAX_ID):
                    await ws.send_json({"type": "error", "error_type": "VALIDATION_ERROR", "code": 400,
                                        "message": "last_event_id must be an event id (an integer from 0) or "
                                                   "absent (live only)"})
                    continue
                if pump is not None:
                    pump.cancel()
                    services.events.unsubscribe(sub)
                sub = services.events.subscribe(db_types, _reader(request))  # the last key to authenticate
                assert sub is not None  # services is untyped: tell mypy what subscribe() returns
                await ws.send_json({"type": "subscribed", "events": sorted(wanted_set)})
                pump = asyncio.ensure_future(pump_events(sub, last, db_types, wanted_set))
            elif kind == "ping":
                await ws.send_json({"type": "pong"})
            else:
                await ws.send_json({"type": "error", "message": f"unknown message type {kind!r}"})
    finally:
        _release(request, watch)
        if pump is not None:
            if pump_closes.is_set():
                await asyncio.gather(pump, return_exceptions=True)  # let it finish the closing handshake
            else:
                pump.cancel()
        if sub is not None:
            services.events.unsubscribe(sub)
        if closing is not None:
            await asyncio.gather(closing, return_exceptions=True)  # the 4401 closing handshake
    return ws
