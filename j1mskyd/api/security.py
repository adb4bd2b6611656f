"""Security endpoints (admin:write): IP allowlist, IP blocks, audit settings and entries."""

from __future__ import annotations

from aiohttp import web

from ..errors import NotFound, ValidationFailed
from ..ipcontrol import block_view
from ..netguard import parse_address
from .common import CLIENT_IP, SERVICES, actor, json_response, query_params, read_json


async def get_ip_whitelist(request: web.Request) -> web.Response:
    return json_response(request.app[SERVICES].ip_control.whitelist())


async def put_ip_whitelist(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    result = await services.ip_control.set_whitelist(await read_json(request), request.get(CLIENT_IP))
    services.audit.record("config.change", actor(request), resource_type="setting", resource_id="ip_whitelist",
                          details=result)
    return json_response({"success": True, **result})


async def block_ip(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body = await read_json(request)
    your_ip = request.get(CLIENT_IP)
    if isinstance(body, dict) and isinstance(body.get("ip"), str) and your_ip is not None \
            and parse_address(body["ip"]) == your_ip:
        # As with the allowlist: an admin who blocks their own address can no longer undo it.
        raise ValidationFailed([{"field": "ip", "message": f"{your_ip} is your own address; blocking it "
                                                           "would lock you out"}])
    block = await services.ip_control.block(body)
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
    settings = await services.audit.configure(await read_json(request))
    view = {"enabled": settings.enabled, "log_level": settings.log_level, "retention_days": settings.retention_days,
            "include_request_body": settings.include_request_body,
            "include_response_body": settings.include_response_body, "events": list(settings.events)}
    services.audit.record("config.change", actor(request), resource_type="setting", resource_id="audit",
                          details=view)
    return json_response({"success": True, **view})


async def audit_entries(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICES].audit.query(query_params(request)))
