"""The Kyros dialect's envelope and error codes on every answer under /kyros, the pipeline's
refusals included (401, 403, 404 unknown path, 405, 413, 429), while the native API keeps its
own envelope."""

from __future__ import annotations

from tests.conftest import bearer
from tests.kyros_helpers import BASE, failure, start, success, with_config


async def test_success_envelope_and_rate_limit_headers(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    resp = await d.call("GET", "/models", headers={**d.reader, "X-Request-Id": "req_kyros_1"})
    data = await success(resp)
    assert {m["name"] for m in data["models"]} >= {"k2p5", "opus"}
    assert resp.headers["X-Request-Id"] == "req_kyros_1"
    assert int(resp.headers["X-RateLimit-Remaining"]) < int(resp.headers["X-RateLimit-Limit"])  # counted


async def test_refusals_of_the_pipeline_speak_kyros(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    c = d.client
    err = await failure(await c.get(BASE + "/models"), 401, "UNAUTHORIZED")
    assert err["details"]["type"] == "UNAUTHORIZED"
    await failure(await c.get(BASE + "/models", headers=bearer("j1_not_a_key")), 401, "UNAUTHORIZED")
    err = await failure(await d.call("POST", "/webhooks", d.reader, json={"url": "http://127.0.0.1:9/h"}),
                        403, "FORBIDDEN")
    assert err["details"]["required_scope"] == "agents:write"
    # Unknown paths under /kyros, with or without a key, and a method a path does not take.
    await failure(await d.call("GET", "/no-such-thing"), 404, "NOT_FOUND")
    await failure(await c.get("/kyros/elsewhere"), 404, "NOT_FOUND")
    resp = await d.call("DELETE", "/models")
    await failure(resp, 405, "NOT_FOUND")
    assert "GET" in resp.headers["Allow"]
    # A malformed body is the document's VALIDATION_ERROR 422, naming the field.
    err = await failure(await d.call("POST", "/webhooks", data=b"{not json"), 422, "VALIDATION_ERROR")
    assert err["details"]["type"] == "INVALID_JSON"
    assert err["details"]["field"] == "body" and err["details"]["issue"] == err["message"]
    # An empty body too (the same two fields as any VALIDATION_ERROR).
    err = await failure(await d.call("POST", "/tasks", data=b""), 422, "VALIDATION_ERROR")
    assert (err["details"]["type"], err["details"]["field"]) == ("INVALID_JSON", "body") and err["details"]["issue"]
    # The native API keeps its envelope.
    native = await (await c.get("/api/no-such-thing")).json()
    assert native["error"]["code"] == 404 and native["error"]["type"] == "NOT_FOUND"


async def test_body_too_large_is_the_envelope(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path, with_config(tmp_path, server={"max_body_bytes": 1024}))
    resp = await d.call("POST", "/webhooks", data=b"{" + b" " * 4096 + b"}",
                        headers={**d.writer, "Content-Type": "application/json"})
    err = await failure(resp, 413, "VALIDATION_ERROR")
    assert err["details"]["type"] == "PAYLOAD_TOO_LARGE"
    assert (await success(await d.call("GET", "/webhooks")))["webhooks"] == []  # nothing was registered


async def test_rate_limited_is_the_envelope_with_retry_after(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    own = await d.key("agents:read")
    key_id = own.pop("key_id")
    resp = await d.client.patch(f"/api/keys/{key_id}", json={"limits": {"other": 2}}, headers=d.admin)
    assert resp.status == 200, await resp.text()
    statuses = []
    for _ in range(4):
        resp = await d.client.get(BASE + "/models", headers=own)
        statuses.append(resp.status)
    assert statuses[:2] == [200, 200] and statuses[-1] == 429, statuses
    err = await failure(resp, 429, "RATE_LIMITED")
    assert err["details"]["retry_after"] >= 1 and int(resp.headers["Retry-After"]) >= 1
    assert resp.headers["X-RateLimit-Remaining"] == "0"


async def test_openapi_describes_the_kyros_routes_with_their_envelope(aiohttp_client, tmp_path):
    from j1mskyd.api.kyros.envelope import CODES
    d = await start(aiohttp_client, tmp_path)
    doc = await (await d.client.get("/api/openapi.json", headers=d.admin)).json()
    models = doc["paths"][BASE + "/models"]["get"]
    assert models["x-scope"] == "agents:read" and models["x-rate-limit-class"] == "other"
    error = models["responses"]["401"]["content"]["application/json"]["schema"]
    assert set(error["properties"]["error"]["properties"]["code"]["enum"]) == set(CODES)
    hook = doc["paths"][BASE + "/webhooks"]["post"]
    assert hook["requestBody"]["content"]["application/json"]["schema"]["required"] == ["url"]
    assert "201" in hook["responses"] and "422" in hook["responses"]


async def test_an_integer_of_too_many_digits_is_refused_in_plain_words(aiohttp_client, tmp_path):
    """5,000 digits is past what Python converts: the refusal says so, not how to raise the limit."""
    d = await start(aiohttp_client, tmp_path)
    raw = b'{"title": "t", "type": "review", "metadata": {"n": ' + b"7" * 5000 + b"}}"
    resp = await d.call("POST", "/tasks", data=raw, headers={**d.writer, "Content-Type": "application/json"})
    err = await failure(resp, 422, "VALIDATION_ERROR")
    assert "digits" in err["message"] and "sys." not in err["message"] and "int_max" not in err["message"]
    assert err["details"]["type"] == "INVALID_JSON" and err["details"]["field"] == "body"
    assert (await success(await d.call("GET", "/tasks")))["tasks"] == []  # nothing was created
