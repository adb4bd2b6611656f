"""Request and provider rate limits through real HTTP: headers, 429s, refill, per-IP
buckets, persistence across restarts (in-process and kill -9), provider quota waits."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import stat
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.api.middleware import LIMITER
from j1mskyd.app import build_app
from j1mskyd.providers import ProviderSettings
from j1mskyd.ratelimit import BucketFile, Buckets, Limit
from tests.conftest import Clock, make_config, route_models, wait_status
from tests.daemon import Daemon, write_config
from tests.fakeupstream import FakeUpstream

HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-RateLimit-Reset-At")
# Distinct limits per class, so the headers tell which bucket answered.
CLASS_LIMITS = {"spawn": 3, "agent_read": 4, "agents_list": 5, "system": 6, "other": 7}



def limited(cfg, **limits):
    return dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, **limits))


def state_file(cfg) -> Path:
    return Path(cfg.server.state_dir) / "ratelimits.json"


def preload(cfg, buckets: dict[str, list[float]]) -> None:
    """Write the counters file a previous run would have left (the app loads it at start)."""
    path = state_file(cfg)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "saved_at": time.time(), "buckets": buckets}))


def check_headers(resp, limit: int, remaining: int | None = None) -> None:
    for name in HEADERS:
        assert name in resp.headers, (resp.status, resp.url, dict(resp.headers))
    assert int(resp.headers["X-RateLimit-Limit"]) == limit, (resp.url, dict(resp.headers))
    if remaining is not None:
        assert int(resp.headers["X-RateLimit-Remaining"]) == remaining, (resp.url, dict(resp.headers))
    reset = int(resp.headers["X-RateLimit-Reset"])
    reset_at = datetime.strptime(resp.headers["X-RateLimit-Reset-At"], "%Y-%m-%dT%H:%M:%SZ")
    assert reset_at.replace(tzinfo=timezone.utc).timestamp() == reset
    assert time.time() - 5 <= reset <= time.time() + 3600 + 5


# -- headers -----------------------------------------------------------------------------

async def test_headers_on_every_api_response_and_only_there(aiohttp_client, tmp_path):
    cfg = limited(make_config(tmp_path), **CLASS_LIMITS)
    app = build_app(cfg)

    async def boom(request):
        raise RuntimeError("a handler bug")

    app.router.add_get("/api/boom", boom)  # a 500 envelope from inside the API
    client = await aiohttp_client(app)

    resp = await client.get("/api/system")
    assert resp.status == 200
    check_headers(resp, 6, 5)
    resp = await client.get("/api/v1/system")  # the alias shares the class's bucket
    check_headers(resp, 6, 4)
    resp = await client.get("/api/agents")
    assert resp.status == 200
    check_headers(resp, 5, 4)
    resp = await client.get("/api/agents/active")
    check_headers(resp, 5, 3)
    resp = await client.get("/api/agent/subagent_1_0001")
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "NOT_FOUND"
    check_headers(resp, 4, 3)
    resp = await client.post("/api/spawn", json={"task": ""})
    assert resp.status == 400 and (await resp.json())["success"] is False
    check_headers(resp, 3, 2)
    resp = await client.post("/api/spawn", data=b"{nope", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    check_headers(resp, 3, 1)
    other = 7
    for method, path, status in [("GET", "/api/health", 200), ("GET", "/api/rate-limits", 200),
                                 ("GET", "/api/no-such-endpoint", 404), ("DELETE", "/api/health", 405),
                                 ("POST", "/api/agent", 410), ("GET", "/api/boom", 500)]:
        resp = await client.request(method, path)
        assert resp.status == status, (method, path, await resp.text())
        # Public routes (health, the sunset 410s) show the standing but do not count.
        public = (method, path) in (("GET", "/api/health"), ("POST", "/api/agent"))
        other -= 0 if public else 1
        check_headers(resp, 7, other)
        if status >= 400:
            body = await resp.json()
            assert body["success"] is False and body["error"]["code"] == status
    # Outside /api: no rate-limit headers (Prometheus scrapes /metrics at the root).
    for path in ("/metrics", "/no-such-page"):
        resp = await client.get(path)
        assert resp.status in (200, 404)
        assert not [h for h in HEADERS if h in resp.headers], (path, dict(resp.headers))


@pytest.mark.parametrize("case", ["413", "403", "401"])
async def test_headers_on_api_refusals_made_before_the_rate_limiter(aiohttp_client, tmp_path, case):
    cfg = limited(make_config(tmp_path, max_body_bytes=64), **CLASS_LIMITS)
    cfg = dataclasses.replace(cfg, security=dataclasses.replace(
        cfg.security, trusted_proxies=("127.0.0.1/32",), allowed_ips=("127.0.0.0/8",), auth=case == "401"))
    client = await aiohttp_client(build_app(cfg))
    if case == "413":
        resp = await client.post("/api/spawn", json={"task": "x" * 200, "model": "k2p5"})
    elif case == "403":
        resp = await client.get("/api/system", headers={"X-Forwarded-For": "203.0.113.9"})
    else:
        resp = await client.get("/api/system")
    assert resp.status == int(case), await resp.text()
    check_headers(resp, 3 if case == "413" else 6)


# -- 429 ----------------------------------------------------------------------------------

async def test_429_is_the_error_envelope_with_retry_after(aiohttp_client, tmp_path):
    cfg = limited(make_config(tmp_path), system=2)  # one token per 1800 s
    client = await aiohttp_client(build_app(cfg))
    for left in (1, 0):
        resp = await client.get("/api/system", headers={"X-Request-Id": "req_mine"})
        assert resp.status == 200
        check_headers(resp, 2, left)
    resp = await client.get("/api/system", headers={"X-Request-Id": "req_mine"})
    assert resp.status == 429
    body = await resp.json()
    error = body["error"]
    assert body["success"] is False
    assert error["code"] == 429 and error["type"] == "RATE_LIMITED"
    assert error["message"] == "Rate limit exceeded" and error["request_id"] == "req_mine"
    assert isinstance(error["retry_after"], int) and 1790 <= error["retry_after"] <= 1800
    assert resp.headers["Retry-After"] == str(error["retry_after"])
    check_headers(resp, 2, 0)
    assert int(resp.headers["X-RateLimit-Reset"]) >= time.time() + 3590  # empty: full again in ~an hour
    # Other classes keep their own buckets.
    assert (await client.get("/api/health")).status == 200
    assert (await client.get("/api/agents")).status == 200


# -- refill ---------------------------------------------------------------------------------

async def test_refill_as_time_passes(aiohttp_client, tmp_path):
    cfg = limited(make_config(tmp_path), system=2, window_seconds=1.0)  # a token every 0.5 s
    clock = Clock(time.time())  # the app's clock, moved by the test
    client = await aiohttp_client(build_app(cfg, clock=clock))
    assert [(await client.get("/api/system")).status for _ in range(2)] == [200, 200]
    refused = await client.get("/api/system")
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"  # 0.5 s, rounded up
    clock.t += 0.6
    again = await client.get("/api/system")
    assert again.status == 200
    check_headers(again, 2, 0)
    assert (await client.get("/api/system")).status == 429


async def test_refill_at_limit_over_window_with_an_injected_clock(aiohttp_client, tmp_path):
    clock = Clock(time.time())
    app = build_app(limited(make_config(tmp_path), system=4))  # 3600 s window: a token per 900 s
    app[LIMITER].buckets.clock = clock
    client = await aiohttp_client(app)
    for left in (3, 2, 1, 0):
        resp = await client.get("/api/system")
        assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == str(left)
    assert int(resp.headers["X-RateLimit-Reset"]) == math.ceil(clock.t + 3600)
    resp = await client.get("/api/system")
    assert resp.status == 429 and (await resp.json())["error"]["retry_after"] == 900
    clock.t += 899.5
    resp = await client.get("/api/system")
    assert resp.status == 429 and resp.headers["Retry-After"] == "1"
    clock.t += 0.5
    resp = await client.get("/api/system")
    assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == "0"
    clock.t += 1800  # two tokens
    assert [(await client.get("/api/system")).status for _ in range(3)] == [200, 200, 429]
    clock.t += 10 * 3600  # refill never goes past the capacity
    resp = await client.get("/api/system")
    assert resp.headers["X-RateLimit-Remaining"] == "3"
    body = await (await client.get("/api/rate-limits")).json()
    assert body["requests"]["system"] == {"used": 1, "limit": 4, "remaining": 3,
                                          "reset_at": resp.headers["X-RateLimit-Reset-At"]}


# -- per IP --------------------------------------------------------------------------------

def _behind_proxy(cfg):
    return dataclasses.replace(cfg, security=dataclasses.replace(cfg.security, trusted_proxies=("127.0.0.1/32",)))


async def test_ip_buckets_are_separate_from_the_key_bucket(aiohttp_client, tmp_path):
    cfg = _behind_proxy(limited(make_config(tmp_path), system=3))
    preload(cfg, {"ip:10.0.0.1:system": [0.0, time.time()]})  # this IP spent its quota earlier
    client = await aiohttp_client(build_app(cfg))
    one, two, three = ({"X-Forwarded-For": f"10.0.0.{i}"} for i in (1, 2, 3))

    resp = await client.get("/api/system", headers=one)
    assert resp.status == 429 and (await resp.json())["error"]["type"] == "RATE_LIMITED"
    resp = await client.get("/api/system", headers=two)  # another IP: its own quota, same key
    assert resp.status == 200
    check_headers(resp, 3, 2)
    status = (await (await client.get("/api/rate-limits", headers=two)).json())["requests"]["system"]
    assert status["remaining"] == 2  # the refused request did not cost the key anything
    assert (await client.get("/api/system", headers=one)).status == 429
    # The key's bucket binds every IP: spend it from 10.0.0.2, then a fresh IP is refused too.
    assert [(await client.get("/api/system", headers=two)).status for _ in range(2)] == [200, 200]
    resp = await client.get("/api/system", headers=three)
    assert resp.status == 429
    check_headers(resp, 3, 0)


async def test_one_ip_exhausting_its_bucket_while_the_key_has_room(aiohttp_client, tmp_path):
    """The IP bucket is counted on its own: IP A is refused after `limit` requests even
    though the key's bucket was topped up in between."""
    cfg = _behind_proxy(limited(make_config(tmp_path), system=2))
    app = build_app(cfg)
    clock = Clock(time.time())
    app[LIMITER].buckets.clock = clock
    client = await aiohttp_client(app)
    a = {"X-Forwarded-For": "10.0.0.1"}
    assert (await client.get("/api/system", headers=a)).status == 200
    buckets = app[LIMITER].buckets
    assert set(buckets.dump()) == {"key:anonymous:system", "ip:10.0.0.1:system"}
    buckets._state["key:anonymous:system"][0] = 2.0  # the key alone refilled
    assert (await client.get("/api/system", headers=a)).status == 200
    assert buckets.peek("key:anonymous:system", app[LIMITER].limits["system"]).remaining == 1
    resp = await client.get("/api/system", headers=a)
    assert resp.status == 429  # A's own bucket is empty
    assert (await client.get("/api/system", headers={"X-Forwarded-For": "10.0.0.2"})).status == 200


# -- persistence ---------------------------------------------------------------------------

def _provider_limited(cfg, hourly_limit: int):
    providers = {n: dataclasses.replace(p, hourly_limit=hourly_limit) for n, p in cfg.providers.items()}
    return dataclasses.replace(cfg, providers=providers)


async def test_counters_survive_a_restart_of_the_app(aiohttp_client, tmp_path):
    cfg = _provider_limited(limited(make_config(tmp_path), system=5), 10)
    client = await aiohttp_client(build_app(cfg))
    for _ in range(3):
        assert (await client.get("/api/system")).status == 200
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "count me"})
    assert resp.status == 200
    await wait_status(client, (await resp.json())["agent_id"])
    await client.close()  # graceful stop: saves the counters

    path = state_file(cfg)
    data = json.loads(path.read_text())
    assert data["version"] == 1
    assert {"key:anonymous:system", "ip:127.0.0.1:system", "provider:offline"} <= set(data["buckets"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in os.listdir(path.parent) if p.startswith(".ratelimits.")]

    client = await aiohttp_client(build_app(cfg))
    resp = await client.get("/api/system")
    assert resp.status == 200
    check_headers(resp, 5, 1)  # 5 - 3 before the restart - this one
    body = await (await client.get("/api/rate-limits")).json()
    assert body["limits"]["offline"]["used"] == 1 and body["limits"]["offline"]["remaining"] == 9
    assert body["requests"]["system"]["remaining"] == 1
    resp = await client.get("/api/system")
    assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == "0"
    assert (await client.get("/api/system")).status == 429


async def test_saver_writes_while_running_atomically_and_not_when_idle(aiohttp_client, tmp_path):
    cfg = limited(make_config(tmp_path), system=50, persist_interval=0.1)
    client = await aiohttp_client(build_app(cfg))
    path = state_file(cfg)

    async def written(expect_tokens: float) -> os.stat_result:
        for _ in range(100):
            if path.exists():
                tokens = json.loads(path.read_text())["buckets"].get("key:anonymous:system", [None])[0]
                if tokens is not None and int(tokens) == expect_tokens:
                    return path.stat()
            await asyncio.sleep(0.02)
        raise AssertionError(f"counters not saved while running: {path.read_text() if path.exists() else None}")

    for _ in range(3):
        await client.get("/api/system")
    first = await written(47)
    assert stat.S_IMODE(first.st_mode) == 0o600
    await asyncio.sleep(0.45)  # more than 4 intervals with no request: no rewrite
    idle = path.stat()
    assert (idle.st_ino, idle.st_mtime_ns, idle.st_size) == (first.st_ino, first.st_mtime_ns, first.st_size)
    await client.get("/api/system")
    second = await written(46)
    assert second.st_ino != first.st_ino  # replaced by rename, never rewritten in place
    assert not [p for p in os.listdir(path.parent) if p.startswith(".ratelimits.")]


def test_saving_from_a_thread_while_buckets_are_added(tmp_path):
    """The app saves in an executor thread while the event loop adds buckets (new client
    IPs): the snapshot must not die of "dictionary changed size during iteration" (which
    killed the saver task for good), and must keep the changed flag when it fails."""
    buckets = Buckets()
    bucket_file = BucketFile(str(tmp_path / "ratelimits.json"), buckets)
    limit = Limit(10, 60)
    for i in range(20_000):
        buckets.take(f"ip:10.0.{i // 256 % 256}.{i % 256}:{i}", limit)
    errors: list[BaseException] = []
    stop = threading.Event()

    def saver() -> None:
        while not stop.is_set():
            buckets.changed = True
            try:
                bucket_file.save_if_changed()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    thread = threading.Thread(target=saver)
    thread.start()
    end, i = time.monotonic() + 0.5, 0
    try:
        while time.monotonic() < end and not errors:
            buckets.take(f"ip:192.168.{i // 256 % 256}.{i % 256}:{i}", limit)
            i += 1
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[0]
    assert bucket_file.writes > 0
    assert BucketFile(str(tmp_path / "ratelimits.json"), Buckets()).load() >= 20_000


async def test_a_saved_time_stamp_from_the_future_does_not_freeze_a_bucket(aiohttp_client, tmp_path):
    cfg = limited(make_config(tmp_path), system=2, window_seconds=1.0)  # a token every 0.5 s
    clock = Clock(time.time())
    preload(cfg, {"key:anonymous:system": [0.0, clock.t + 86_400]})  # saved under a clock a day ahead
    client = await aiohttp_client(build_app(cfg, clock=clock))
    assert (await client.get("/api/system")).status == 429
    clock.t += 0.6
    assert (await client.get("/api/system")).status == 200


def _get_with_headers(daemon: Daemon, path: str) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(f"http://127.0.0.1:{daemon.port}{path}", headers=daemon.auth_headers())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers)


def _wait_for_saved_level(path, endpoint_class: str, below: float, limit: float = 10.0) -> None:
    """Until the counters file holds a bucket of ``endpoint_class`` whose level is under ``below``
    (the saver runs on an executor thread every persist_interval: a condition to wait for, not a
    period of time)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            buckets = json.loads(path.read_text())["buckets"]
        except (FileNotFoundError, ValueError, KeyError):
            buckets = {}
        if any(level < below for name, (level, _) in buckets.items() if name.endswith(":" + endpoint_class)):
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} held no bucket under {below} within {limit} s")


def test_kill_9_loses_at_most_the_last_interval(tmp_path):
    config = write_config(tmp_path / "j1msky.toml")
    with open(config, "a", encoding="utf-8") as fh:
        fh.write("\n[limits]\nsystem = 20\npersist_interval = 0.2\n")
    state = tmp_path / "state"
    with Daemon(tmp_path, state, config, name="first") as daemon:
        for _ in range(4):
            status, headers = _get_with_headers(daemon, "/api/system")
            assert status == 200
        assert headers["X-RateLimit-Remaining"] == "16"
        # These four are on disk once a bucket of 20 is saved under 17 (three would leave ~17.0).
        _wait_for_saved_level(state / "ratelimits.json", "system", 17.0)
        for _ in range(2):  # these two may be lost: the kill comes within the interval
            _get_with_headers(daemon, "/api/system")
        daemon.kill()
    with Daemon(tmp_path, state, config, name="second") as daemon:
        status, headers = _get_with_headers(daemon, "/api/system")
        assert status == 200
        # 20 - 6 - 1 if the last two were saved, 20 - 4 - 1 if they were lost; never back to 19.
        assert 13 <= int(headers["X-RateLimit-Remaining"]) <= 15, headers


# -- provider hourly limits ------------------------------------------------------------------

def provider_config(tmp_path, primary: FakeUpstream, secondary: FakeUpstream, primary_hourly: int,
                    secondary_hourly: int):
    """k2p5 -> "primary" whose fallback minimax-m2.5 -> "secondary" (whose fallback is k2p5 again)."""
    base = make_config(tmp_path, runtime={"retry_base_delay": 0.01, "retry_max_delay": 0.05})
    providers = dict(base.providers)
    providers["primary"] = ProviderSettings(name="primary", plugin="openai_compat", base_url=primary.url + "/v1",
                                            api_key="sk-p", timeout=30, max_concurrency=4,
                                            hourly_limit=primary_hourly)
    providers["secondary"] = ProviderSettings(name="secondary", plugin="anthropic", base_url=secondary.url,
                                              api_key="sk-s", timeout=30, max_concurrency=4,
                                              hourly_limit=secondary_hourly)
    models = route_models(base, {"k2p5": "primary", "minimax-m2.5": "secondary"})
    return dataclasses.replace(base, providers=providers, models=models)


async def spawn(client, **body) -> str:
    resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "limited work"} | body)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["agent_id"]


async def test_provider_limit_falls_back_then_queues_then_fails_on_timeout(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    client = await aiohttp_client(build_app(provider_config(tmp_path, primary, secondary, 2, 1)))
    for _ in range(2):
        done = await wait_status(client, await spawn(client))
        assert done["status"] == "completed" and done["served_by"]["provider"] == "primary"
    # primary is out of hourly tokens: the spawn is accepted and served down the chain.
    done = await wait_status(client, await spawn(client))
    assert done["status"] == "completed"
    assert done["served_by"] == {"model": "minimax-m2.5", "provider": "secondary"}
    assert len(primary.calls) == 2 and len(secondary.calls) == 1
    # Now the whole chain is out: an agent that would outlive its timeout waiting for a
    # token (the next in ~30 min) fails at once, saying why...
    failed = await wait_status(client, await spawn(client, timeout=2), timeout=1)
    assert failed["status"] == "failed" and "rate limited" in failed["error"]
    # ...and one that can wait waits queued.
    waiting = await spawn(client, timeout=3600)
    await asyncio.sleep(0.3)
    assert (await (await client.get(f"/api/agent/{waiting}")).json())["status"] == "queued"
    limits = (await (await client.get("/api/rate-limits")).json())["limits"]
    assert limits["primary"]["used"] == 2 and limits["primary"]["remaining"] == 0
    assert limits["secondary"] == limits["secondary"] | {"used": 1, "limit": 1, "remaining": 0}
    assert len(primary.calls) == 2 and len(secondary.calls) == 1  # no call beyond the quota
    assert (await (await client.get(f"/api/agent/{waiting}")).json())["status"] == "queued"


@pytest.mark.parametrize("primary_hourly,secondary_hourly,served", [
    (1800, 360, {"model": "k2p5", "provider": "primary"}),               # own provider refills first
    (360, 1800, {"model": "minimax-m2.5", "provider": "secondary"}),     # the fallback refills first
])
async def test_queued_agent_starts_when_a_provider_of_its_chain_refills(
        aiohttp_client, tmp_path, upstreams, primary_hourly, secondary_hourly, served):
    primary, secondary = upstreams
    cfg = provider_config(tmp_path, primary, secondary, primary_hourly, secondary_hourly)
    now = time.time()
    preload(cfg, {"provider:primary": [0.0, now], "provider:secondary": [0.0, now]})  # both spent
    client = await aiohttp_client(build_app(cfg))
    # 1800/h is a token every 2 s: a 1 s timeout cannot be met, a 10 s one can.
    failed = await wait_status(client, await spawn(client, timeout=1), timeout=3)
    assert failed["status"] == "failed" and "rate limited" in failed["error"]
    agent_id = await spawn(client, timeout=10)
    await asyncio.sleep(0.2)
    assert (await (await client.get(f"/api/agent/{agent_id}")).json())["status"] == "queued"
    done = await wait_status(client, agent_id, timeout=6)
    assert done["status"] == "completed" and done["served_by"] == served
    # Started by the refill, not before it: the daemon's own record of the start (a slow
    # machine only makes it later), against the moment the first token of the chain exists.
    started = await client.server.app[SERVICES].store.read(lambda c: c.execute(
        "SELECT started_at FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()[0])
    assert started >= now + 3600 / max(primary_hourly, secondary_hourly) - 0.01, (started - now)
    assert len(primary.calls) + len(secondary.calls) == 1


async def test_an_agent_waiting_for_quota_does_not_block_one_that_can_fall_back(aiohttp_client, tmp_path, upstreams):
    primary, secondary = upstreams
    cfg = provider_config(tmp_path, primary, secondary, 10, 10)
    models = dict(cfg.models)
    models["codex"] = dataclasses.replace(models["codex"], provider="primary", fallback=None)  # nowhere to go
    cfg = dataclasses.replace(cfg, models=models)
    preload(cfg, {"provider:primary": [0.0, time.time()]})  # primary spent; secondary has its 10
    client = await aiohttp_client(build_app(cfg))
    stuck = await spawn(client, model="codex", timeout=3600)  # waits ~6 min for primary, at the queue's head
    movable = await spawn(client, model="k2p5", timeout=3600)  # its fallback (secondary) can serve it now
    done = await wait_status(client, movable, timeout=2)
    assert done["served_by"] == {"model": "minimax-m2.5", "provider": "secondary"}
    assert (await (await client.get(f"/api/agent/{stuck}")).json())["status"] == "queued"
