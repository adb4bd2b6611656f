"""What scripts/test-api-schema (schemathesis against GET /api/openapi.json) found, one test each,
so a finding stays fixed without the fuzzer: the request it sent, and the answer the document
promises."""

from __future__ import annotations

import dataclasses

import pytest

from j1mskyd.api.openapi import RESULTS
from j1mskyd.config import WebhooksConfig
from tests.conftest import make_config


@pytest.fixture
def config(tmp_path):
    # The webhooks here point at a closed loopback port (nothing is delivered that matters):
    # loopback targets need the operator's allowance (docs/webhooks.md).
    return dataclasses.replace(make_config(tmp_path), webhooks=WebhooksConfig(allowed_networks=("127.0.0.0/8",)))


def _refusal(body: dict, status: int, field: str) -> None:
    assert body["success"] is False and body["error"]["code"] == status
    assert body["error"]["type"] == "VALIDATION_ERROR"
    assert body["error"]["details"][0]["field"] == field


async def test_webhook_update_refuses_a_description_that_is_not_a_string(client):
    # Found: PUT /api/webhooks/{id} {"description": {}} was a 500 (the dict reached SQLite).
    resp = await client.post("/api/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["webhook.test"],
                                                    "description": "before"})
    assert resp.status == 201, await resp.text()
    webhook_id = (await resp.json())["webhook_id"]
    for bad in ({}, [], 7, "x" * 501):
        resp = await client.put(f"/api/webhooks/{webhook_id}", json={"status": "paused", "description": bad})
        assert resp.status == 400, await resp.text()
        _refusal(await resp.json(), 400, "description")
    view = await (await client.get(f"/api/webhooks/{webhook_id}")).json()
    assert view["description"] == "before" and view["status"] == "active"  # nothing changed
    resp = await client.put(f"/api/webhooks/{webhook_id}", json={"description": None})
    assert resp.status == 200 and (await resp.json())["description"] is None


async def test_an_admin_cannot_block_their_own_address(client):
    # Fuzzing POST /security/block-ip with generated addresses could block 127.0.0.1, after which
    # every request of the run (and of a real admin) is 403 with no way back, as the allowlist
    # already refuses for PUT /security/ip-whitelist.
    for own in ("127.0.0.1", "::ffff:127.0.0.1", " 127.0.0.1 "):
        resp = await client.post("/api/security/block-ip", json={"ip": own})
        assert resp.status == 400, await resp.text()
        _refusal(await resp.json(), 400, "ip")
    blocked = await (await client.get("/api/security/blocked-ips")).json()
    assert blocked["count"] == 0
    resp = await client.post("/api/security/block-ip", json={"ip": "127.0.0.2"})  # another address: fine
    assert resp.status == 201, await resp.text()
    assert (await client.get("/api/health")).status == 200


async def test_created_resources_answer_201_as_documented(client):
    # Found: POST /api/keys answers 201, which the document only covered as its error "default".
    doc = await (await client.get("/api/openapi.json")).json()
    for path, method in (("/api/keys", "post"), ("/api/webhooks", "post"), ("/api/security/block-ip", "post")):
        responses = doc["paths"][path][method]["responses"]
        assert "201" in responses and "200" not in responses and "default" not in responses
    resp = await client.post("/api/keys", json={"name": "ci", "scopes": ["agents:read"]})
    assert resp.status == 201
    body = await resp.json()
    assert set(RESULTS[("POST", "/keys")]["required"]) <= set(body)


async def test_list_and_team_results_match_their_documented_fields(client):
    # Found: GET /api/agents items carry created_at/actual_cost (not the single agent's created/cost),
    # and a team spawn has no "model": the document said otherwise.
    resp = await client.post("/api/spawn-team", json={"team": "team_coding", "task": "schema"})
    assert resp.status == 200, await resp.text()
    assert set(RESULTS[("POST", "/spawn-team")]["required"]) <= set(await resp.json())
    listed = await (await client.get("/api/agents?include_members=true")).json()
    item_schema = RESULTS[("GET", "/agents")]["properties"]["data"]["items"]
    assert listed["data"] and all(set(item_schema["required"]) <= set(item) for item in listed["data"])


async def test_offsets_and_ids_beyond_sqlite_integers_are_400_not_500(client):
    # Found: an offset, cursor or event id past 2**63 reached SQLite ("Python int too large to
    # convert to SQLite INTEGER") and was a 500.  The document now states offset <= 10**18 - 1.
    resp = await client.post("/api/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["webhook.test"]})
    webhook_id = (await resp.json())["webhook_id"]
    huge = "99999999999999999999"
    cursor = "eyJpZCI6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OX0"  # base64 of {"id":999999999999999999999}
    for path, field in ((f"/api/security/audit?offset={huge}", "limit"),
                        ("/api/security/audit?offset=1000000000000000000", "limit"),
                        (f"/api/webhooks/{webhook_id}/deliveries?offset={huge}", "limit"),
                        (f"/api/events?cursor={cursor}", "cursor"),
                        (f"/api/agents?offset={huge}", "offset"),
                        # int() also took "1_0", " 5" and other scripts' digits: plain ASCII only
                        ("/api/security/audit?limit=1_0", "limit"), ("/api/security/audit?offset=%EF%BC%91", "limit"),
                        (f"/api/webhooks/{webhook_id}/deliveries?limit=%205", "limit")):
        resp = await client.get(path)
        assert resp.status == 400, (path, await resp.text())
        _refusal(await resp.json(), 400, field)
    resp = await client.get("/api/events/stream", headers={"Last-Event-ID": huge})
    assert resp.status == 400
    _refusal(await resp.json(), 400, "Last-Event-ID")
    for path in ("/api/security/audit?offset=999999999999999999",
                 f"/api/webhooks/{webhook_id}/deliveries?offset=999999999999999999"):
        resp = await client.get(path)  # the largest documented offset: an empty page
        assert resp.status == 200 and (await resp.json())["data"] == [], path


async def test_billing_usage_up_to_the_last_representable_day(client):
    # Found: GET /api/billing/usage?from=9999-12-01&to=9999-12-31 was a 500 (the day after "to"
    # does not exist in Python's calendar).
    resp = await client.get("/api/billing/usage?from=9999-12-01&to=9999-12-31")
    assert resp.status == 400, await resp.text()
    _refusal(await resp.json(), 400, "to")
    resp = await client.get("/api/billing/usage?from=9999-12-01&to=9999-12-30")
    assert resp.status == 200, await resp.text()
