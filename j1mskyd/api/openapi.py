"""GET /api/openapi.json: an OpenAPI 3.1 document built from the route table itself.

Built from ``routes.ROUTES`` (so a route cannot be missing from it), with the request
bodies of the spawn endpoints spelled out from the validation rules, the security
scheme and scope of each route, and the one error envelope on every failure.  It is
cheap enough to build per request (a few ms).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from .. import __version__
from .common import CONFIG, json_response

_PARAM = re.compile(r"{([^}]+)}")

ERROR = {
    "type": "object",
    "required": ["success", "error"],
    "properties": {
        "success": {"const": False},
        "error": {
            "type": "object",
            "required": ["code", "type", "message", "request_id"],
            "properties": {
                "code": {"type": "integer"}, "type": {"type": "string"}, "message": {"type": "string"},
                "request_id": {"type": ["string", "null"]},
                "details": {"type": "array", "items": {"type": "object", "properties": {
                    "field": {"type": "string"}, "message": {"type": "string"}}}},
                "retry_after": {"type": "integer"}, "your_ip": {"type": "string"},
            },
        },
    },
}


def _spawn_schema(config: Any) -> dict[str, Any]:
    rt = config.runtime
    return {
        "type": "object",
        "required": ["model", "task"],
        "properties": {
            "model": {"type": "string", "enum": list(config.models)},
            "task": {"type": "string", "minLength": 1, "maxLength": rt.max_task_chars},
            "priority": {"type": "string", "enum": ["low", "normal", "high"], "default": "normal"},
            "timeout": {"type": "number", "minimum": 1, "maximum": rt.max_timeout, "default": rt.default_timeout},
            "webhook_url": {"type": "string", "format": "uri"},
            "privacy": {"type": "object", "properties": {"retention_days": {"type": "number", "exclusiveMinimum": 0,
                                                                            "maximum": 3650}}},
        },
    }


def _bodies(config: Any) -> dict[tuple[str, str], dict[str, Any]]:
    spawn = _spawn_schema(config)
    team = {**spawn, "required": ["team", "task"], "properties": {
        **{k: v for k, v in spawn["properties"].items() if k != "model"},
        "team": {"type": "string", "enum": list(config.teams)}}}
    return {
        ("POST", "/spawn"): spawn,
        ("POST", "/spawn-team"): team,
        ("POST", "/spawn-batch"): {"type": "object", "required": ["agents"], "properties": {
            "agents": {"type": "array", "minItems": 1, "maxItems": config.runtime.max_batch, "items": spawn}}},
        ("POST", "/keys"): {"type": "object", "required": ["name", "scopes"], "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "scopes": {"type": "array", "items": {"type": "string", "enum": [
                "agents:read", "agents:write", "billing:read", "admin:write"]}},
            "require_signature": {"type": "boolean"}}},
        ("POST", "/webhooks"): {"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string"}, "events": {"type": "array", "items": {"type": "string"}},
            "secret": {"type": "string", "minLength": 8, "maxLength": 256}, "sink": {"type": "string"},
            "description": {"type": "string", "maxLength": 500}}},
    }


def build(routes: Any, prefixes: tuple[str, ...], public: str, config: Any) -> dict[str, Any]:
    bodies = _bodies(config)
    paths: dict[str, dict[str, Any]] = {}
    for prefix in prefixes:
        for method, path, handler, scope, limit_class in routes:
            operation: dict[str, Any] = {
                "operationId": f"{handler.__name__}{'_v1' if prefix.endswith('/v1') else ''}_{method.lower()}",
                "summary": (handler.__doc__ or handler.__name__.replace("_", " ")).strip().splitlines()[0],
                "x-rate-limit-class": limit_class,
                "responses": {
                    "200": {"description": "Success", "content": {"application/json": {"schema": {}}}},
                    "default": {"description": "The error envelope",
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                },
            }
            if scope == public:
                operation["security"] = []
            else:
                operation["security"] = [{"bearer": [scope]}, {"apiKey": [scope]}]
                operation["x-scope"] = scope
            names = _PARAM.findall(path)
            if names:
                operation["parameters"] = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                                           for n in names]
            body = bodies.get((method, path))
            if body is not None:
                operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
            paths.setdefault(prefix + path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "J1MSKY API (j1mskyd)", "version": __version__,
                 "description": "Spawn and manage LLM agents on a Raspberry Pi."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of every route."""
    from .middleware import PUBLIC
    from .routes import PREFIXES, ROUTES  # routes imports this module: import at call time
    return json_response(build(ROUTES, PREFIXES, PUBLIC, request.app[CONFIG]))
