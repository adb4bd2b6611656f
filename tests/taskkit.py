"""What the task tests share: a config whose models all answer from a fake upstream, and a
wait for a task to reach a status (polling the native API, bounded)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from j1mskyd.config import Config
from j1mskyd.providers import ProviderSettings
from tests.conftest import make_config, route_models

ENDED = ("completed", "failed", "cancelled")


def upstream_config(tmp_path: Any, upstream: Any, **changes: Any) -> Config:
    """make_config with every model served by ``upstream`` (tests/fakeupstream.py, OpenAI's
    format) with one attempt per model and no fallback chain to walk: each step is one call."""
    base = make_config(tmp_path, runtime={"max_attempts": 1})
    providers = {"up": ProviderSettings(name="up", plugin="openai_compat", base_url=upstream.url + "/v1")}
    models = {alias: dataclasses.replace(m, fallback=None)
              for alias, m in route_models(base, {alias: "up" for alias in base.models}).items()}
    return dataclasses.replace(base, providers=providers, models=models, **changes)


def with_role(cfg: Config, name: str, **changes: Any) -> Config:
    """``cfg`` with role ``name`` changed (escalation keys go in ``escalation``)."""
    role = cfg.roles[name]
    esc = changes.pop("escalation", None)
    if esc is not None:
        changes["escalation"] = dataclasses.replace(role.escalation, **esc)
    return dataclasses.replace(cfg, roles={**cfg.roles, name: dataclasses.replace(role, **changes)})


async def wait_task(client: Any, task_id: str, statuses: tuple[str, ...] = ENDED, timeout: float = 15.0,
                    headers: dict[str, str] | None = None) -> dict[str, Any]:
    """GET /api/tasks/{id} until its status is one of ``statuses``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        resp = await client.get(f"/api/tasks/{task_id}", headers=headers)
        body = await resp.json()
        assert resp.status == 200, body
        if body["status"] in statuses:
            return body
        if loop.time() > end:
            raise AssertionError(f"task {task_id} stuck in {body['status']}: {body}")
        await asyncio.sleep(0.01)


async def events_of(client: Any, prefix: str = "", headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every stored event (GET /api/events) whose type starts with ``prefix``, oldest first."""
    resp = await client.get("/api/events?limit=500", headers=headers)
    body = await resp.json()
    assert resp.status == 200, body
    return [e for e in body["data"] if e["event"].startswith(prefix)]
