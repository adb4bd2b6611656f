"""HEAD follows GET's authorization on every route (issue 12, item 6).

aiohttp answers HEAD on every GET route; the pipeline looked its scope up under "HEAD",
found none, and let any key through (HEAD /metrics: 200 to a billing-only key).
"""

from __future__ import annotations

import asyncio
import re

import aiohttp

from j1mskyd.api.route_table import PUBLIC, ROUTE_TABLE
from j1mskyd.app import build_app
from j1mskyd.keys import ANY_KEY, SCOPES
from tests.conftest import auth_config, bearer, bootstrap_key

LIMIT = aiohttp.ClientTimeout(total=10)  # a route that streams instead of refusing fails the test


async def test_head_answers_as_get_on_every_get_route(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])
    tokens = {}
    for scope in ("agents:read", "billing:read"):
        resp = await client.post("/api/keys", json={"name": scope, "scopes": [scope]}, headers=admin)
        assert resp.status == 201
        tokens[scope] = (await resp.json())["token"]

    def lacking(scope: str) -> str:  # a key without the scope (and without admin:write)
        return tokens["billing:read" if scope == "agents:read" else "agents:read"]

    app_scopes = client.app[ROUTE_TABLE].scopes
    patterns = sorted({r.resource.canonical for r in client.app.router.routes()
                       if r.method == "GET" and r.resource is not None})
    seen: dict[str, tuple[int, int]] = {}
    mismatches = []
    for pattern in patterns:
        path = re.sub(r"\{[^}]+\}", "x", pattern)
        scope = app_scopes.get(("GET", pattern))
        # ANY_KEY ("key"): a key's own record, which every key may read (no key: 401).
        assert scope in SCOPES or scope in (PUBLIC, ANY_KEY) or not pattern.startswith("/api/"), pattern
        cases = {"no key": {}}
        if scope in SCOPES:
            cases["key lacking " + scope] = bearer(lacking(scope))
        for case, headers in cases.items():
            try:
                get = await client.get(path, headers=headers, timeout=LIMIT)
                await get.read()  # releases the connection (an unread body keeps it from the pool)
                head = await client.head(path, headers=headers, timeout=LIMIT)
            except asyncio.TimeoutError:
                mismatches.append(f"{pattern} with {case}: no answer within {LIMIT.total} s")
                continue
            if head.status != get.status:
                mismatches.append(f"{pattern} with {case}: GET {get.status}, HEAD {head.status}")
            seen[f"{pattern} with {case}"] = (get.status, head.status)
    assert mismatches == []
    # The walk did meet refusals of both kinds, /metrics among them (no tautology).
    assert seen["/metrics with key lacking agents:read"] == (403, 403)
    assert seen["/api/billing/usage with key lacking billing:read"] == (403, 403)
    assert seen["/api/keys with key lacking admin:read"] == (403, 403)
    assert seen["/api/agents with no key"] == (401, 401)
    assert seen["/api/health with no key"] == (200, 200)
