"""POST /orchestrator/experiment/results (the API reference's cookbook, Recipe 5): an A/B
experiment's results by its label, computed from the recorded pricing decisions.

The numbers are the business rules' experiment summary (../shared/spec/business-rules.md):
per variant count, approval rate and average margin (2 places), roll_out when the test's
margin is higher and its approval rate at least 0.85 x control's, discard when its approval
is below 0.8 x control's or its margin below 0.9 x control's, else inconclusive.
"""

from __future__ import annotations

import json

import pytest

from tests.test_pricing_api import SEED_QUOTE
from tests.test_pricing_history import ESCALATING, clock, decide, record_markup_5  # noqa: F401  (clock: a fixture)

PATH = "/api/orchestrator/experiment/results"
DAY = 86400.0


async def _post(client, body, status: int):
    resp = await client.post(PATH, data=body if isinstance(body, (str, bytes)) else json.dumps(body),
                             headers={"Content-Type": "application/json"})
    answer = await resp.json()
    assert resp.status == status, answer
    return answer


async def test_results_are_the_experiment_summary_of_its_recorded_decisions(client, clock):
    await record_markup_5(client)
    await decide(client, SEED_QUOTE, experiment="markup-5")  # the label without a variant: not in the A/B
    body = await _post(client, {"experiment_id": "markup-5"}, 200)
    assert body["success"] is True and body["experiment_id"] == "markup-5"
    assert body["status"] == "complete" and body["source"] == "history"
    # 3 approved at 94.6 % and 1 escalated at 50 % (test_pricing_history's numbers).
    assert body["control"] == {"count": 4, "approval_rate": 0.75, "avg_margin_pct": round((3 * 94.6 + 50) / 4, 2)}
    assert body["test"] == {"count": 2, "approval_rate": 1.0, "avg_margin_pct": 94.6}
    assert body["recommendation"] == "roll_out"
    # The other experiment alone: only a test variant so far.
    other = await _post(client, {"experiment_id": "other"}, 200)
    assert other["status"] == "in_progress" and other["recommendation"] == "inconclusive"
    assert other["test"] == {"count": 1, "approval_rate": 0.0, "avg_margin_pct": 50.0}


async def test_discard_when_the_test_variant_is_worse(client, clock):
    for _ in range(2):
        await decide(client, SEED_QUOTE, variant="control", experiment="cut")
    await decide(client, ESCALATING, variant="test", experiment="cut")
    body = await _post(client, {"experiment_id": "cut"}, 200)
    assert body["recommendation"] == "discard" and body["test"]["approval_rate"] == 0.0


async def test_days_narrows_the_window(client, clock):
    await decide(client, SEED_QUOTE, variant="control", experiment="old")
    clock.t += 10 * DAY
    await decide(client, SEED_QUOTE, variant="test", experiment="old")
    assert (await _post(client, {"experiment_id": "old"}, 200))["status"] == "complete"
    recent = await _post(client, {"experiment_id": "old", "days": 5}, 200)
    assert recent["status"] == "in_progress" and recent["period"]["days"] == 5
    assert recent["control"]["count"] == 0 and recent["test"]["count"] == 1


async def test_an_experiment_without_decisions_is_a_404(client):
    await decide(client, SEED_QUOTE, experiment="untagged")  # a label but no variant
    for name in ("never-heard-of", "untagged"):
        error = (await _post(client, {"experiment_id": name}, 404))["error"]
        assert error["type"] == "NOT_FOUND" and name in error["message"]


@pytest.mark.parametrize("body, field", [
    ({}, "experiment_id"), ({"experiment_id": None}, "experiment_id"), ({"experiment_id": ""}, "experiment_id"),
    ({"experiment_id": "   "}, "experiment_id"), ({"experiment_id": 5}, "experiment_id"),
    ({"experiment_id": True}, "experiment_id"), ({"experiment_id": ["a"]}, "experiment_id"),
    ({"experiment_id": {"a": 1}}, "experiment_id"), ({"experiment_id": 1.5}, "experiment_id"),
    ({"experiment_id": "x" * 65}, "experiment_id"),
    ({"experiment_id": "a", "days": 0}, "days"), ({"experiment_id": "a", "days": 367}, "days"),
    ({"experiment_id": "a", "days": "7"}, "days"), ({"experiment_id": "a", "days": 1.5}, "days"),
    ({"experiment_id": "a", "days": True}, "days"), ({"experiment_id": "a", "days": [7]}, "days"),
])
async def test_bad_fields_are_400_in_the_envelope_naming_the_field(client, body, field):
    error = (await _post(client, body, 400))["error"]
    assert error["type"] == "VALIDATION_ERROR"
    assert [d["field"] for d in error["details"]] == [field], error


@pytest.mark.parametrize("raw", ["", "not json", "[1, 2]", '"experiment"', "null", "7"])
async def test_a_body_that_is_not_an_object_is_400(client, raw):
    error = (await _post(client, raw, 400))["error"]
    assert error["code"] == 400


async def test_form_fields_work_too(client, clock):
    await decide(client, SEED_QUOTE, variant="control", experiment="f")
    resp = await client.post(PATH, data={"experiment_id": "f", "days": "30"})
    body = await resp.json()
    assert resp.status == 200 and body["control"]["count"] == 1, body


async def test_it_is_in_the_openapi_document_with_its_fields_and_404(client):
    doc = await (await client.get("/api/openapi.json")).json()
    op = doc["paths"]["/api/orchestrator/experiment/results"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["experiment_id"] and set(schema["properties"]) == {"experiment_id", "days"}
    assert {"200", "400", "401", "404"} <= set(op["responses"])
