"""Shared fixtures: a real daemon app on a loopback test server, with its own state dir."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from j1mskyd.app import build_app
from j1mskyd.config import Config, embedded_default
from j1mskyd.keys import KeyService
from j1mskyd.providers import ProviderSettings
from j1mskyd.webhook_targets import parse_ipv4_any_form
from j1mskyd.ratelimit import ENDPOINT_CLASSES
from j1mskyd.store import Store
from tests.fakeupstream import FakeUpstream, fake_upstream  # noqa: F401  (re-exported fixture)


def make_config(tmp_path, *, runtime: Mapping[str, Any] | None = None,
                providers: Mapping[str, ProviderSettings] | None = None,
                models: Mapping[str, Any] | None = None, **server: Any) -> Config:
    """The embedded default with a private state dir and no drop-in dir, plus overrides.

    Request limits and the per-key agent cap are lifted and authentication is off (and
    [security] local_scopes empty), so that tests of other things never trip them; the tests of limits, budgets and
    security set their own.
    """
    base = embedded_default()
    cfg = dataclasses.replace(
        base,
        limits=dataclasses.replace(base.limits, **{c: 1_000_000 for c in ENDPOINT_CLASSES}),
        budget=dataclasses.replace(base.budget, max_agents_per_key=1_000_000),
        # No local_scopes: the test client connects from loopback, and the tests that turn
        # authentication on are about keys (tests/test_local_scopes.py tests the local caller).
        security=dataclasses.replace(base.security, auth=False, local_scopes=()),
        server=dataclasses.replace(base.server, state_dir=str(tmp_path / "state"), port=0, **server),
        plugins=dataclasses.replace(base.plugins, dropin_dir=""),
        runtime=dataclasses.replace(base.runtime, **(runtime or {})),
    )
    if providers is not None:
        cfg = dataclasses.replace(cfg, providers=providers)
    if models is not None:
        cfg = dataclasses.replace(cfg, models=models)
    return cfg


class Clock:
    """A clock the test moves by hand: set ``t``."""

    def __init__(self, t: float = 1_764_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def auth_config(tmp_path, **security) -> Config:
    """make_config with authentication on (the first start writes the bootstrap admin key)."""
    cfg = make_config(tmp_path)
    return dataclasses.replace(cfg, security=dataclasses.replace(cfg.security, auth=True, **security))


def bootstrap_path(cfg) -> Path:
    return Path(cfg.server.state_dir) / KeyService.BOOTSTRAP_FILE


def bootstrap_key(cfg) -> dict:
    """The bootstrap admin key's file (key_id, token, secret), once the app has started."""
    return json.loads(bootstrap_path(cfg).read_text())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def route_models(cfg: Config, provider_of: Mapping[str, str]) -> dict[str, Any]:
    """Models of ``cfg`` with their provider replaced per alias."""
    return {alias: dataclasses.replace(m, provider=provider_of.get(alias, m.provider))
            for alias, m in cfg.models.items()}


@pytest.fixture
def config(tmp_path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def client(aiohttp_client, config):
    return await aiohttp_client(build_app(config))


@pytest.fixture
async def upstreams():
    """Two fake upstreams (both wire formats each), for fallback between providers."""
    a, b = await FakeUpstream().start(), await FakeUpstream().start()
    yield a, b
    await a.close()
    await b.close()


async def wait_status(client, agent_id: str, statuses=("completed", "failed", "cancelled"),
                      timeout: float = 10.0) -> dict:
    """Poll GET /agent/{id} until it reaches one of ``statuses``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        resp = await client.get(f"/api/agent/{agent_id}")
        body = await resp.json()
        if body.get("status") in statuses:
            return body
        if loop.time() > end:
            raise AssertionError(f"agent {agent_id} stuck in {body.get('status')}: {body}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def store(tmp_path):
    """A real store in the test's own directory, opened, closed at the end."""
    s = Store(str(tmp_path / "j1msky.db"))
    s.open()
    yield s
    await s.close()


@pytest.fixture
def loopback_only(monkeypatch):
    """For a test that names link-local, LAN or other non-loopback addresses (a target policy's
    refusals): a connect or a name lookup to anything but loopback fails the test instead of
    leaving the machine."""
    real_connect, real_connect_ex, real_lookup = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(address) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and not _is_loopback_literal(host):
            raise AssertionError(f"a test tried to connect to {host}")

    def connect(sock, address):
        check(address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(address)
        return real_connect_ex(sock, address)

    def lookup(host, *args, **kwargs):
        if host not in (None, "localhost") and not _is_loopback_literal(host):
            raise AssertionError(f"a test tried to look up {host!r}")
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", lookup)


def _is_loopback_literal(host) -> bool:
    """An address literal in any spelling getaddrinfo takes (``0x7f000001`` too) that is loopback."""
    text = host.decode() if isinstance(host, bytes) else host
    v4 = parse_ipv4_any_form(text)
    if v4 is not None:
        return v4.is_loopback
    try:
        return ipaddress.ip_address(text.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False
