"""Security endpoints (admin:write): IP allowlist, IP blocks, audit settings and entries."""

from __future__ import annotations

from aiohttp import web

from ..errors import NotFound
from ..ipcontrol import block_view
from ..security_request import parse_audit_change, parse_block, parse_whitelist
from .common import SERVICES, actor, client_address, json_response, query_params, read_json


async def get_ip_whitelist(request: web.Request) -> web.Response:
    return json_response(request.app[SERVICES].ip_control.whitelist())


async def put_ip_whitelist(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    result = await services.ip_control.set_whitelist(parse_whitelist(await read_json(request)), client_address(request))
    services.audit.record("config.change", actor(request), resource_type="setting", resource_id="ip_whitelist",
                          details=result)
    return json_response({"success": True, **result})


async def block_ip(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    block = await services.ip_control.block(parse_block(await read_json(request), client_address(request)))
    view = block_view(block)
    services.audit.record("config.change", actor(request), severity="warning", resource_type="ip_block",
                          resource_id=block.ip, details=view)
    return json_response({"success": True, **view}, status=201)


async def list_blocked_ips(request: web.Request) -> web.Response:
    blocks = [block_view(b) for b in request.app[SERVICES].ip_control.list_blocks()]
    return json_response({"blocked": blocks, "count": len(blocks)})


async def unblock_ip(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    ip = request.match_info["ip"]
    if not await services.ip_control.unblock(ip):
        raise NotFound(f"{ip} is not blocked")
    services.audit.record("config.change", actor(request), resource_type="ip_block", resource_id=ip,
                          details={"action": "unblock"})
    return json_response({"success": True, "message": f"{ip} unblocked"})


async def configure_audit(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    settings = await services.audit.configure(parse_audit_change(await read_json(request)))
    view = {"enabled": settings.enabled, "log_level": settings.log_level, "retention_days": settings.retention_days,
            "include_request_body": settings.include_request_body,
            "include_response_body": settings.include_response_body, "events": list(settings.events)}
    services.audit.record("config.change", actor(request), resource_type="setting", resource_id="audit",
                          details=view)
    return json_response({"success": True, **view})


async def audit_entries(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICES].audit.query(query_params(request)))
