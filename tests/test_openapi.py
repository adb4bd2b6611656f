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
        # the API, the front door, Kyros, Prometheus
        if path and (path.startswith(("/api/", "/v1/", "/kyros/")) or path == "/metrics"):
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


async def test_every_operation_lists_its_status_codes_and_the_error_envelope(client):
    """No catch-all "default": a status a route answers with but the document omits is a
    contract failure (scripts/test-api-schema checks that against a running daemon)."""
    doc = await (await client.get("/api/openapi.json")).json()
    envelopes = doc["components"]["responses"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert "default" not in codes, (method, path)
            assert len([c for c in codes if c.startswith(("1", "2"))]) == 1, (method, path, codes)
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")) and "$ref" in response:
                    assert envelopes[response["$ref"].rsplit("/", 1)[1]]["content"]["application/json"][
                        "schema"] == {"$ref": "#/components/schemas/Error"}
            if op["security"]:  # a key is needed: it can be missing, wrong, short of scope, or spent
                assert {"401", "403"} <= codes, (method, path)
                # spent: every route the limiter counts (all but the root's /metrics, which has no class)
                assert ("429" in codes) == ("x-rate-limit-class" in op), (method, path)
    assert "503" in doc["paths"]["/api/health"]["get"]["responses"]
    assert "text/event-stream" in doc["paths"]["/api/events/stream"]["get"]["responses"]["200"]["content"]
    params = {p["name"] for p in doc["paths"]["/api/agents"]["get"]["parameters"]}
    assert {"limit", "offset", "sort", "filter"} <= params
    quote = doc["paths"]["/api/pricing/quote"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert quote["required"] == ["model", "complexity", "estimated_input", "estimated_output"]
    assert doc["paths"]["/api/keys/{key_id}"]["delete"]["requestBody"]["required"] is False


async def test_the_document_is_built_once(client, monkeypatch):
    from j1mskyd.api import openapi
    calls = []
    real = openapi.build
    monkeypatch.setattr(openapi, "build", lambda *a: calls.append(1) or real(*a))
    first = await (await client.get("/api/openapi.json")).read()
    second = await (await client.get("/api/v1/openapi.json")).read()
    assert first == second and len(calls) == 1
