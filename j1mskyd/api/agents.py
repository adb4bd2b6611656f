"""Agent endpoints: parse -> AgentService -> serialise.  Nothing else happens here."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from urllib.parse import urlencode

from aiohttp import web

from ..agent_record import ANONYMOUS
from ..agents import AgentService, SpawnRecorder
from ..audit import AuditLog
from ..spawn_request import SpawnParser, SpawnRequest, TeamRequest
from .common import SERVICES, Pass, actor_of, json_response, pass_of, query_params, read_json, viewer


def _agents(request: web.Request) -> AgentService:
    return request.app[SERVICES].agents


def _key_id(p: Pass) -> str:
    """Who owns what the request makes (the record of its Pass: see common.Pass)."""
    caller_id = p.caller_id
    return caller_id if caller_id is not None else ANONYMOUS


def _signing_secret(p: Pass, spawns: Sequence[SpawnRequest | TeamRequest]) -> str | None:
    """The caller's key's webhook secret signs its spawn's own webhook_url deliveries; it is opened only
    when one of ``spawns`` has a webhook_url."""
    key = p.key
    if key is not None:
        for s in spawns:  # a loop, not any() over a generator (~2,000 instructions a spawn)
            if s.webhook_url:
                return key.webhook_secret
    return None


def _spawn_recorder(request: web.Request, p: Pass, audit: AuditLog) -> SpawnRecorder:
    """The ``agent.spawn`` audit entry of each agent a request spawns (a team: its lead), as a
    statement of the spawn's own transaction: who spawned what commits with it, in one commit."""
    return functools.partial(audit.spawn_entry, actor_of(request, p))


# The spawn handlers take the request's Pass once and the services and the configuration in
# force from its route (each request.get or app lookup is ~1,000 instructions of aiohttp's).
async def spawn(request: web.Request) -> web.Response:
    p = pass_of(request).record
    services = p.route.services
    req = SpawnParser(p.route.config.current).spawn(await read_json(request))
    result = await services.agents.spawn(req, _key_id(p), _signing_secret(p, [req]),
                                         _spawn_recorder(request, p, services.audit))
    return json_response(result)


async def spawn_team(request: web.Request) -> web.Response:
    p = pass_of(request).record
    services = p.route.services
    req = SpawnParser(p.route.config.current).team(await read_json(request))
    result = await services.agents.spawn_team(req, _key_id(p), _signing_secret(p, [req]),
                                              _spawn_recorder(request, p, services.audit))
    return json_response(result)


async def spawn_batch(request: web.Request) -> web.Response:
    p = pass_of(request).record
    services = p.route.services
    reqs = SpawnParser(p.route.config.current).batch(await read_json(request))
    result = await services.agents.spawn_batch(reqs, _key_id(p), _signing_secret(p, reqs),
                                               _spawn_recorder(request, p, services.audit))
    return json_response(result)


async def get_agent(request: web.Request) -> web.Response:
    return json_response(await _agents(request).status(request.match_info["agent_id"], viewer(request)))


async def agent_deliveries(request: web.Request) -> web.Response:
    return json_response(await _agents(request).deliveries(request.match_info["agent_id"], viewer(request)))


async def cancel_agent(request: web.Request) -> web.Response:
    return json_response(await _agents(request).cancel(request.match_info["agent_id"], viewer(request)))


async def delete_agent_data(request: web.Request) -> web.Response:
    return json_response(await _agents(request).delete_data(request.match_info["agent_id"], viewer(request)))


async def active_agents(request: web.Request) -> web.Response:
    return json_response(await _agents(request).active(viewer(request)))


async def list_agents(request: web.Request) -> web.Response:
    params = query_params(request)
    page = await _agents(request).list(params, viewer(request))
    total, limit, offset, cursor = page.pop("total"), page.pop("limit"), page.pop("offset"), page.pop("cursor")
    has_more = offset + len(page["data"]) < total if params.get("cursor") else offset + limit < total
    page["pagination"] = {
        "total": total, "limit": limit, "offset": offset, "has_more": has_more,
        "next_offset": offset + limit if has_more else None,
        "previous_offset": _previous(total, limit, offset),
        "page": offset // limit + 1, "per_page": limit,
        # Cursor pagination (the reference's "Pagination & Filtering"): pass next_cursor as
        # ?cursor= for the next page; "cursor" is where this page ends (the events' name).
        "cursor": cursor, "next_cursor": cursor if has_more else None,
    }
    page["links"] = _links(request.path, params, total, limit, offset, has_more,
                           cursor if has_more and params.get("cursor") else None)
    return json_response(page)


def _links(path: str, params: dict[str, str], total: int, limit: int, offset: int,
           has_more: bool, next_cursor: str | None = None) -> dict[str, str | None]:
    """Relative links that keep the caller's filters, as in the API reference's example; a
    listing read by cursor links its next page by cursor."""
    kept = {k: v for k, v in params.items() if k not in ("limit", "per_page", "offset", "page", "cursor")}

    def at(off: int) -> str:
        return f"{path}?{urlencode({**kept, 'limit': limit, 'offset': off})}"

    previous = _previous(total, limit, offset)
    following = f"{path}?{urlencode({**kept, 'limit': limit, 'cursor': next_cursor})}" if next_cursor else \
        at(offset + limit) if has_more else None
    return {"self": at(offset), "next": following,
            "prev": at(previous) if previous is not None else None,
            "first": at(0), "last": at(_last(total, limit))}


def _last(total: int, limit: int) -> int:
    return max((total - 1) // limit * limit, 0)


def _previous(total: int, limit: int, offset: int) -> int | None:
    """The page before this one; from past the end, the last real page (not another empty one)."""
    if offset <= 0:
        return None
    return min(max(offset - limit, 0), _last(total, limit))
