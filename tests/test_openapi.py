"""GET /api/openapi.json is an OpenAPI 3.1 document that matches the router exactly."""

from __future__ import annotations

import re

from j1mskyd.api.routes import ROUTES


async def test_openapi_document_covers_every_route_and_nothing_else(client):
    resp = await client.get("/api/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1") and doc["info"]["version"]
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routed = set()
    for resource in client.app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        if path and path.startswith("/api/"):
            for route in resource:
                if route.method != "HEAD":  # aiohttp adds HEAD to every GET
                    routed.add((route.method, path))
    sunset = {(m, p) for m, p in routed if re.fullmatch(r"/api(/v1)?/(agent|status|cancel)", p)}
    assert documented == routed - sunset  # the 410s of v3 are not part of the API any more
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


async def test_scopes_bodies_and_errors_are_described(client):
    doc = await (await client.get("/api/openapi.json")).json()
    spawn = doc["paths"]["/api/spawn"]["post"]
    body = spawn["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["model", "task"] and body["properties"]["task"]["maxLength"] == 2000
    assert set(body["properties"]["model"]["enum"]) == {"opus", "sonnet", "k2p5", "minimax-m2.5", "codex"}
    assert spawn["x-scope"] == "agents:write" and {"bearer": ["agents:write"]} in spawn["security"]
    assert doc["paths"]["/api/health"]["get"]["security"] == []
    assert doc["paths"]["/api/agent/{agent_id}"]["get"]["parameters"][0]["name"] == "agent_id"
    error = doc["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["code", "type", "message", "request_id"]
    assert {(m, p) for m, p, *_ in ROUTES} <= {(m.upper(), p[len("/api"):]) for p, ops in doc["paths"].items()
                                              for m in ops if not p.startswith("/api/v1/")}
