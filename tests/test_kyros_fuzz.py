"""Every documented field of every Kyros body with every JSON type (and its edges), and odd
query values and path ids on every Kyros GET: never a 5xx, every refusal the Kyros envelope
with one of the document's codes.  The routes and fields come from the OpenAPI document, so a
new Kyros route or field is fuzzed without editing this file."""

from __future__ import annotations

import re

from tests.kyros_helpers import BASE, CODES, start, success

VALUES = (None, True, False, 0, -1, 1.5, 1e308, 10**30, "", "x" * 30_000, "string", "\ud800", [], [1], {}, {"a": 1})
ODD_QUERY = ("", "-1", "0", "1.5", "1e308", "9" * 400, "nan", "true", "null", "[]", '{"a":1}', "a,b", "%00", " 1")


def _kyros_operations(doc):
    for path, ops in doc["paths"].items():
        if path.startswith(BASE) and not path.endswith("/ws"):
            for method, op in ops.items():
                yield method.upper(), path[len(BASE):], op


async def _check(resp, label, problems):
    text = await resp.text()
    if resp.status >= 500:
        problems.append(f"{label}: {resp.status} {text[:200]}")
    elif resp.status >= 400:
        body = await resp.json()
        if body.get("success") is not False or body["error"]["code"] not in CODES:
            problems.append(f"{label}: not the envelope: {text[:200]}")


async def test_every_body_field_with_every_json_type_and_odd_queries(aiohttp_client, tmp_path):
    d = await start(aiohttp_client, tmp_path)
    doc = await (await d.client.get("/api/openapi.json", headers=d.admin)).json()
    task = await success(await d.call("POST", "/tasks", json={"title": "t", "type": "implementation"}), 201)
    esc = await success(await d.call("POST", "/escalation/submit", json={"task_id": task["id"], "reason": "r"}))
    hook = await success(await d.call("POST", "/webhooks", json={"url": "http://127.0.0.1:9/h"}), 201)
    ids = {"task_id": task["id"], "escalation_id": esc["escalation_id"], "webhook_id": hook["id"],
           "role": "implementer", "model_name": "k2p5"}
    problems: list[str] = []
    sent = 0
    for method, path, op in _kyros_operations(doc):
        url = re.sub(r"{([^}]+)}", lambda m: ids[m.group(1)], path)
        schema = ((op.get("requestBody") or {}).get("content") or {}).get("application/json", {}).get("schema")
        if schema is not None:
            for field in schema.get("properties", {}):
                for value in VALUES:
                    resp = await d.call(method, url, d.admin, json={field: value})
                    sent += 1
                    await _check(resp, f"{method} {path} {field}={value!r:.40}", problems)
            for raw in (b"", b"{", b"[1]", b'"x"', b"\xff"):
                resp = await d.call(method, url, {**d.admin, "Content-Type": "application/json"}, data=raw)
                await _check(resp, f"{method} {path} body {raw!r}", problems)
        if method == "GET":
            params = [p["name"] for p in op.get("parameters", ()) if p["in"] == "query"] + ["limit", "unknown"]
            for name in params:
                for value in ODD_QUERY:
                    resp = await d.call("GET", url, d.admin, params={name: value})
                    sent += 1
                    await _check(resp, f"GET {path}?{name}={value!r:.40}", problems)
            for odd in ("x", "%00", "9" * 300, "task_" + "f" * 16, "..%2f"):
                odd_url = re.sub(r"{([^}]+)}", odd, path)
                if odd_url != path:
                    resp = await d.call("GET", odd_url, d.admin)
                    await _check(resp, f"GET {odd_url}", problems)
    assert sent > 500
    assert problems == [], "\n".join(problems[:40])
