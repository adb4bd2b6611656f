"""The OpenAI/Anthropic front door's handlers (docs/openai-compatible.md), the same for every
dialect: parse the body with the route's dialect, start the call (ChatService), answer in
the dialect.

A streamed call sends nothing until its first delta: a failure before it (every retry and
fallback spent, the budget, a refused request) is then a real HTTP error in the dialect's
status and shape, and what happened before it is invisible to the client.  A client that
goes away cancels the call: a write to it fails (a stream), its connection is seen closed
(a call waiting for its answer, looked at every ``chat_request.WATCH`` seconds: neither aiohttp
3.8 nor the daemon's default on later versions cancels a handler whose client left), or its
handler is cancelled (a server run with handler_cancellation, and at shutdown).  What the
call used is billed either way (the chat service's part).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from aiohttp import web

from ..agent_record import ANONYMOUS
from ..chat_request import ChatCall, ChatFailed, ChatOutcome, ChatRequest, ClientGone
from ..config import ModelConfig
from ..dialects import Dialect, model_alias
from ..pii import preview
from ..keys import KeyWatch
from .common import Pass, actor_of, config_of, json_response, pass_of, read_json, usable
from .middleware import early_headers

__all__ = ["chat_handler", "get_model", "list_models"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")
_STREAM_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def chat_handler(dialect: Dialect) -> Handler:
    """The handler of a dialect's chat call (POST /v1/chat/completions, POST /v1/messages)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        # The request's Pass once; the services and the configuration in force from its route
        # (each request.get or app lookup is ~1,000 instructions of aiohttp's).
        p = pass_of(request).record
        services = p.route.services
        chat = dialect.parse(await read_json(request), p.route.config.current.models)
        # As a spawn is: who started which agent, committed with the call's insert (the runtime
        # records how it ended, with its end).
        who, audit = actor_of(request, p), services.audit
        details = {"model": chat.model, "kind": "chat", "dialect": dialect.name,
                   "task_preview": preview(chat.messages[-1].text)}
        caller_id = p.caller_id
        call = await services.chat.start(chat, caller_id if caller_id is not None else ANONYMOUS,
                                         lambda agent: audit.statement("agent.spawn", who, resource_type="agent",
                                                                       resource_id=agent.agent_id, details=details))
        watch: KeyWatch | None = None
        try:
            watch = _watch_key(p, call)
            if not chat.stream:
                return json_response(dialect.render(await _watched(call.outcome(partial(_gone, request)), call)))
            return await _stream(request, dialect, chat, call)
        except BaseException:
            # The handler is cancelled (aiohttp 3.8 does so when the client goes away; a
            # shutdown too), or fails: the call ends with it (a call already ended: nothing).
            await asyncio.shield(call.cancel())
            raise
        finally:
            if watch is not None:
                services.keys.unwatch(watch)

    handler.__name__ = handler.__qualname__ = f"{dialect.name}_chat"
    handler.__doc__ = f"A chat call in {dialect.name}'s format (streamed with stream: true)"
    return handler


def _watch_key(p: Pass, call: ChatCall) -> KeyWatch | None:
    """A call under way holds its key, as a live event stream does (KeyService.watch): when
    the key is revoked or expires (or loses the scope), the call is cancelled, its upstream
    call with it; what it used is billed, and the answer ends (a stream with its dialect's
    error frame).  None: authentication is off."""
    key = p.key
    if key is None:
        return None
    ending: list[asyncio.Future[None]] = []  # held: a task nobody references may be collected

    def lost(reason: str) -> None:
        ending.append(asyncio.ensure_future(call.cancel()))

    route = p.route
    return route.services.keys.watch(key.key_id, route.scope, lost)  # type: ignore[no-any-return]


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _watched(waiting: Awaitable[T], call: ChatCall) -> T:
    """What ``waiting`` (the outcome or the first delta, waited for with ``gone`` = :func:`_gone`)
    gives; the call cancelled, and ConnectionResetError (ClientGone) raised, if the client
    leaves first.  Awaited in the handler's own task: no task or ``asyncio.wait`` per wait."""
    try:
        return await waiting
    except ClientGone:
        await asyncio.shield(call.cancel())
        raise


async def _first(call: ChatCall, deltas: AsyncIterator[str]) -> str | None:
    """The first delta (None: the call ended without text), watching the connection meanwhile."""
    try:
        first: str = await _watched(deltas.__anext__(), call)
        return first
    except StopAsyncIteration:
        return None


async def _stream(request: web.Request, dialect: Dialect, chat: ChatRequest, call: ChatCall) -> web.StreamResponse:
    deltas = call.deltas(partial(_gone, request)).__aiter__()
    first = await _first(call, deltas)
    outcome: ChatOutcome | None = None
    if first is None:
        # No text came: the call ended first.  Failed: raised here, a real HTTP error.  Done
        # (an answer of tool calls only): the whole stream below, at once.
        outcome = await _watched(call.outcome(partial(_gone, request)), call)
    encoder = dialect.encoder(chat, call.agent_id, call.created_at)
    response = web.StreamResponse(headers={**_STREAM_HEADERS, **early_headers(request)})
    try:
        await response.prepare(request)
        await response.write(encoder.start() + (encoder.delta(first) if first is not None else b""))
        if outcome is None:
            async for text in deltas:
                await response.write(encoder.delta(text))
            try:
                outcome = await call.outcome()
            except ChatFailed as exc:
                # Failed after the first frame: the status is sent, the dialect's error frame ends it.
                await response.write(encoder.fail(exc))
                return response
        await response.write(encoder.finish(outcome))
        await response.write_eof()
    except ConnectionResetError:
        # The client went away (a write to it failed): the upstream call ends too.
        await asyncio.shield(call.cancel())
    return response


# -- the models ------------------------------------------------------------------------------------

def _model(model: ModelConfig) -> dict[str, Any]:
    # created: the catalogue has no dates; 0 is OpenAI's "unknown" and sorts every alias alike.
    return {"id": model.alias, "object": "model", "created": 0, "owned_by": model.provider}


async def list_models(request: web.Request) -> web.Response:
    """The configured model aliases the key may use, in OpenAI's list shape."""
    models = usable(request, config_of(request).models)
    return json_response({"object": "list", "data": [_model(m) for m in models.values()]})


async def get_model(request: web.Request) -> web.Response:
    """One configured model alias the key may use (404 model_not_found for any other name, as
    OpenAI answers a model that does not exist or that the caller has no access to)."""
    models = usable(request, config_of(request).models)
    return json_response(_model(models[model_alias(request.match_info["name"], models)]))
