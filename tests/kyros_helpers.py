"""Shared helpers of the Kyros dialect's tests (tests/test_kyros_*.py): a daemon with keys on,
its admin, a reader and a writer key, and the envelope's checks."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from j1mskyd.app import build_app
from j1mskyd.api.common import SERVICES
from j1mskyd.config import WebhooksConfig
from tests.conftest import auth_config as _auth_config, bearer, bootstrap_key

BASE = "/kyros/v1"
LOOPBACK = WebhooksConfig(allowed_networks=("127.0.0.0/8",))  # webhooks to loopback receivers only
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
CODES = {"UNAUTHORIZED", "FORBIDDEN", "NOT_FOUND", "VALIDATION_ERROR", "RATE_LIMITED", "INTERNAL_ERROR",
         "SERVICE_UNAVAILABLE", "TASK_NOT_FOUND", "AGENT_UNAVAILABLE", "MODEL_UNAVAILABLE", "ESCALATION_REJECTED"}


class Daemon:
    """A real app on a loopback test server with authentication on and three keys."""

    def __init__(self, client: Any, admin: str) -> None:
        self.client = client
        self.admin = bearer(admin)
        self.admin_key_id = ""
        self.writer: dict[str, str] = {}
        self.other: dict[str, str] = {}
        self.reader: dict[str, str] = {}

    @property
    def services(self) -> Any:
        return self.client.app[SERVICES]

    async def key(self, *scopes: str) -> dict[str, str]:
        resp = await self.client.post("/api/keys", json={"name": "k", "scopes": list(scopes)}, headers=self.admin)
        assert resp.status in (200, 201), await resp.text()
        body = await resp.json()
        return {**bearer(body["token"]), "key_id": body["key_id"]}

    async def call(self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        h = {k: v for k, v in (headers or self.writer).items() if k != "key_id"}
        return await self.client.request(method, BASE + path, headers=h, **kw)


def auth_config(tmp_path: Any) -> Any:
    return dataclasses.replace(_auth_config(tmp_path), webhooks=LOOPBACK)


async def start(aiohttp_client: Any, tmp_path: Any, cfg: Any = None) -> Daemon:
    cfg = cfg or auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    boot = bootstrap_key(cfg)
    d = Daemon(client, boot["token"])
    d.admin_key_id = boot["key_id"]
    d.writer = await d.key("agents:read", "agents:write")
    d.other = await d.key("agents:read", "agents:write")
    d.reader = await d.key("agents:read")
    return d


def with_config(tmp_path: Any, **sections: Any) -> Any:
    cfg = auth_config(tmp_path)
    return dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **values)
                                       for name, values in sections.items()})


async def success(resp: Any, status: int = 200) -> Any:
    """The data of a success envelope, after checking the envelope and the rate-limit headers."""
    body = await resp.json()
    assert resp.status == status, body
    assert body["success"] is True and set(body) == {"success", "data", "message", "timestamp", "request_id"}
    assert ISO_Z.match(body["timestamp"]) and body["request_id"] == resp.headers["X-Request-Id"]
    assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(resp.headers)
    return body["data"]


async def failure(resp: Any, status: int, code: str) -> dict[str, Any]:
    """The error of a failure envelope (its details), after checking the envelope."""
    body = await resp.json()
    assert resp.status == status, body
    assert set(body) == {"success", "error", "timestamp", "request_id"} and body["success"] is False, body
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code and code in CODES, body
    assert ISO_Z.match(body["timestamp"]) and body["request_id"] == resp.headers["X-Request-Id"]
    assert "X-RateLimit-Limit" in resp.headers
    return body["error"]  # type: ignore[no-any-return]
