"""Webhooks cannot be aimed at the inside (issue 12, item 2): the target policy.

A table of URLs is judged by the pure policy (no connection is made to any of them);
then through the API, with real receivers on loopback: without the operator's allowance
every route that takes a webhook URL answers 400 naming the field and nothing arrives;
with loopback allowed deliveries arrive; a hook stored while it was allowed is not sent
once the allowance is gone; and a name that passed when accepted but resolves to a
refused address at delivery (DNS rebinding, played by a resolver mapping names to
127.0.0.x) is never connected to.  All traffic stays on loopback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import ipaddress
import socket
import threading

import pytest
from aiohttp.abc import AbstractResolver

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from j1mskyd.config import ConfigError, WebhooksConfig, load_config
from j1mskyd import webhook_targets
from j1mskyd.webhook_client import GuardedResolver
from j1mskyd.webhook_targets import TargetPolicy, TargetRefused, own_listen_networks, parse_ipv4_any_form
from tests.conftest import make_config, wait_status
from tests.receiver import Receiver

SECRET = "receiver-secret-123"


@pytest.fixture(autouse=True)
def _loopback(loopback_only):
    """The tables below name link-local, LAN and multicast addresses: the shared guard
    (tests/conftest.py) fails a test that connects or looks up anything but loopback."""


def test_the_guard_stops_a_connect_outside_loopback_before_any_packet():
    with pytest.raises(AssertionError, match="10.0.0.1"):
        socket.create_connection(("10.0.0.1", 9), timeout=0.1)  # stopped at the lookup
    sock = socket.socket()
    try:
        with pytest.raises(AssertionError, match="169.254.169.254"):
            sock.connect(("169.254.169.254", 80))
    finally:
        sock.close()


def allowing(cfg, *networks: str):
    return dataclasses.replace(cfg, webhooks=WebhooksConfig(allowed_networks=networks))


def refusal(url: str, policy: TargetPolicy = TargetPolicy()) -> str | None:
    try:
        policy.check_url(url)
    except TargetRefused as exc:
        return exc.message
    return None


# -- the policy, unit table (validation only: nothing here connects anywhere) ---------------

@pytest.mark.parametrize("text, address", [
    ("127.0.0.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"),
    ("017700000001", "127.0.0.1"), ("127.1", "127.0.0.1"), ("127.0.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
    ("0177.0.0.01", "127.0.0.1"), ("0XA9.0xfe.0251.254", "169.254.169.254"), ("0", "0.0.0.0"),
    ("4294967295", "255.255.255.255"),
    ("4294967296", None), ("256.1.1.1", None), ("1.2.3.4.5", None), ("08.1.1.1", None), ("1.2.3.4x", None),
    ("example.com", None), ("", None),
])
def test_ipv4_forms_are_read_as_inet_aton_reads_them(text, address):
    got = parse_ipv4_any_form(text)
    assert (str(got) if got is not None else None) == address


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0x7f000001:9/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://127.0.0.1./", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[::127.0.0.1]/", "loopback"),
    ("http://localhost:9/", "loopback"),
    ("http://\uff11\uff12\uff17.0.0.1:9/", "loopback"),     # fullwidth digits: 127.0.0.1 to the HTTP client
    ("http://127\u30020.0.1/", "loopback"),                 # ideographic full stop
    ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/", "loopback"),  # fullwidth localhost
    ("http://api.localhost/", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::ffff:169.254.169.254]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://10.0.0.1/", "private network"),
    ("http://172.16.5.4/", "private network"),
    ("http://192.168.1.10:8123/api/webhook/x", "private network"),
    ("http://0xc0a8010a/", "private network"),
    ("http://[fd00::1]/", "private network"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://100.64.0.1/", "non-public"),
    ("http://192.0.2.1/", "non-public"),
    ("http://user:pw@example.com/", "user-info"),
    ("http://user@8.8.8.8/", "user-info"),
    ("https://:pw@8.8.8.8/", "user-info"),
    ("ftp://8.8.8.8/", "only http"),
    ("file:///etc/passwd", "only http"),
    ("http:///nohost", "no host"),
    ("http://8.8.8.8:99999/", "valid URL"),
])
def test_refused_targets(url, reason):
    message = refusal(url)
    assert message is not None and reason in message, message


@pytest.mark.parametrize("url", ["http://8.8.8.8/hook", "https://example.com/hook", "https://[2001:4860::8888]/x",
                                 "http://93.184.216.34:8443/h"])
def test_public_targets_pass(url):
    assert refusal(url) is None


def test_allowed_networks_open_exactly_what_they_name():
    lan = TargetPolicy(allowed=(ipaddress.ip_network("192.168.1.0/24"),))
    assert refusal("http://192.168.1.10:8123/api/webhook/x", lan) is None
    # The same address spelled in hex, or in any form but the dotted quad: refused for its spelling
    # (newer aiohttp refuses those at connect time, 3.8 hands them to the resolver).
    for other in ("0xc0a8010a", "192.168.1.10.", "3232235786", "192.168.266", "0300.0250.1.10"):
        assert "as 192.168.1.10" in refusal(f"http://{other}:8123/", lan), other
    assert "private network" in refusal("http://192.168.2.10/", lan)
    assert "loopback" in refusal("http://127.0.0.1/", lan)
    loop = TargetPolicy(allowed=(ipaddress.ip_network("127.0.0.0/8"),))
    assert refusal("http://127.0.0.1:9/", loop) is None
    assert refusal("http://[::ffff:127.0.0.1]:9/", loop) is None          # it *is* 127.0.0.1
    assert "loopback" in refusal("http://[::1]:9/", loop)                 # IPv6 loopback was not allowed
    # Never allowable, whatever the list says.
    wide = TargetPolicy(allowed=(ipaddress.ip_network("0.0.0.0/8"), ipaddress.ip_network("224.0.0.0/4")))
    assert "unspecified" in refusal("http://0.0.0.0/", wide)
    assert "multicast" in refusal("http://224.0.0.1/", wide)


def test_the_daemons_own_listen_address_is_refused_even_where_loopback_is_allowed():
    policy = TargetPolicy(allowed=(ipaddress.ip_network("127.0.0.0/8"),), own=own_listen_networks("127.0.0.1", 8080))
    assert "own listen address" in refusal("http://127.0.0.1:8080/api/keys", policy)
    assert "own listen address" in refusal("http://2130706433:8080/", policy)
    assert "own listen address" in refusal("http://[::ffff:127.0.0.1]:8080/", policy)
    assert refusal("http://127.0.0.1:8081/", policy) is None              # another port: another service
    # Bound to every address: every loopback address on that port is the daemon.
    anywhere = TargetPolicy(allowed=(ipaddress.ip_network("127.0.0.0/8"),), own=own_listen_networks("0.0.0.0", 8080))
    assert "own listen address" in refusal("http://127.0.0.2:8080/", anywhere)
    assert own_listen_networks("127.0.0.1", 0) == ()                      # port 0: no port to match


async def test_a_dot_invalid_name_is_answered_here_and_never_asked_of_a_dns_server(monkeypatch):
    # RFC 6761: no such name, at once.  The tests' webhooks at hooks.invalid sent a DNS query to
    # the machine's resolver, a LAN address, at every registration and delivery attempt.
    asked = []
    monkeypatch.setattr(webhook_targets.socket, "getaddrinfo", lambda *a, **k: asked.append(a) or [])
    for host in ("hooks.invalid", "X.INVALID.", "invalid"):
        with pytest.raises(socket.gaierror):
            await webhook_targets.lookup_infos(host, 443)
        assert await webhook_targets.getaddrinfo_lookup(host, 443) == []  # accepted, as any name that does not resolve
    await webhook_targets.lookup_infos("invalid.example", 443)  # only the .invalid domain
    assert asked == [("invalid.example", 443, 0, socket.SOCK_STREAM)]
    await TargetPolicy().check_accept("https://hooks.invalid/x")
    with pytest.raises(OSError):
        await GuardedResolver(TargetPolicy()).resolve("hooks.invalid", 443)
    assert len(asked) == 1


async def test_a_name_is_refused_when_any_address_it_resolves_to_is_refused():
    async def lookup(host, port):
        return {"mixed.test": ["8.8.8.8", "127.0.0.1"], "public.test": ["8.8.8.8"]}.get(host, [])

    policy = TargetPolicy()
    with pytest.raises(TargetRefused, match="mixed.test resolves to 127.0.0.1 is a loopback"):
        await policy.check_accept("http://mixed.test/hook", lookup)
    await policy.check_accept("http://public.test/hook", lookup)
    await policy.check_accept("http://unresolvable.test/hook", lookup)  # decided at connect time


def test_config_webhooks_table(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[webhooks]\nallowed_networks = ["192.168.1.0/24", "127.0.0.1"]\n'
                    '[providers.offline]\nplugin = "offline"\n[models.k2p5]\nprovider = "offline"\nupstream = "x"\n'
                    'input_per_1k = 0.001\noutput_per_1k = 0.002\nblended_per_1k = 0.001\n')
    assert load_config(path, env={}).webhooks.allowed_networks == ("192.168.1.0/24", "127.0.0.1")
    for bad, why in (('["192.168.1.0/33"]', "not an IP address"), ('["0.0.0.0/0"]', "too broad"),
                     ('["::/0"]', "too broad"), ('"10.0.0.0/8"', "array")):
        path.write_text(path.read_text().replace(path.read_text().splitlines()[1], f"allowed_networks = {bad}"))
        with pytest.raises(ConfigError) as info:
            load_config(path, env={})
        assert "webhooks.allowed_networks" in str(info.value) and why in str(info.value), str(info.value)


# -- through the API: nothing reaches a loopback receiver without the allowance -------------------

@pytest.fixture
async def receiver():
    rec = await Receiver(SECRET).start()
    yield rec
    await rec.stop()


def spellings(rec: Receiver) -> list[str]:
    return [rec.url, f"http://0x7f000001:{rec.port}/hook", f"http://2130706433:{rec.port}/hook",
            f"http://localhost:{rec.port}/hook", f"http://[::ffff:127.0.0.1]:{rec.port}/hook",
            f"http://127.1:{rec.port}/hook"]


async def until(probe, what: str):
    """Poll ``probe`` (bounded, about 5 s) until it returns something."""
    for _ in range(250):
        if found := await probe():
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def field_error(body: dict) -> tuple[str, str]:
    assert body["error"]["type"] == "VALIDATION_ERROR", body
    detail = body["error"]["details"][0]
    return detail["field"], detail["message"]


async def test_every_route_refuses_a_loopback_target_without_the_allowance(aiohttp_client, tmp_path, receiver):
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    task = {"model": "k2p5", "task": "tell the inside"}
    for url in spellings(receiver):
        cases = [("/api/spawn", {**task, "webhook_url": url}, "webhook_url"),
                 ("/api/spawn-team", {"team": "team_coding", "task": "x", "webhook_url": url}, "webhook_url"),
                 ("/api/spawn-batch", {"agents": [task, {**task, "webhook_url": url}]}, "agents[1].webhook_url"),
                 ("/api/webhooks", {"url": url, "events": ["*"], "secret": SECRET}, "url"),
                 ("/api/pricing/webhook", {"url": url, "secret": SECRET}, "url")]
        for path, body, field in cases:
            resp = await client.post(path, json=body)
            assert resp.status == 400, (path, url, await resp.text())
            got_field, message = field_error(await resp.json())
            assert got_field == field and "loopback" in message, (path, url, message)
    # User-info is refused even where loopback is allowed (below) and for public hosts.
    resp = await client.post("/api/spawn", json={**task, "webhook_url": "http://user:pw@8.8.8.8/h"})
    assert resp.status == 400 and "user-info" in field_error(await resp.json())[1]
    # Nothing was stored, nothing runs, nothing arrives.
    services = client.app[SERVICES]
    assert services.webhooks.hooks == {}
    listed = await (await client.get("/api/agents")).json()
    assert listed["pagination"]["total"] == 0
    agent = (await (await client.post("/api/spawn", json=task)).json())["agent_id"]
    await wait_status(client, agent)
    assert receiver.received == [] and receiver.rejected == [] and receiver.failed == []
    # An update to a refused URL is refused as well, and changes nothing.
    resp = await client.post("/api/webhooks", json={"url": "https://8.8.8.8/h", "events": ["agent.failed"]})
    hook_id = (await resp.json())["webhook_id"]
    resp = await client.put(f"/api/webhooks/{hook_id}", json={"url": receiver.url})
    assert resp.status == 400 and field_error(await resp.json())[0] == "url"
    assert services.webhooks.get(hook_id, None).url == "https://8.8.8.8/h"


async def test_with_loopback_allowed_every_kind_is_delivered(aiohttp_client, tmp_path, receiver):
    cfg = allowing(make_config(tmp_path), "127.0.0.0/8")
    client = await aiohttp_client(build_app(cfg))
    receiver.secret = None  # without authentication a spawn's hook is signed with a random secret
    resp = await client.post("/api/pricing/webhook", json={"url": f"http://127.0.0.1:{receiver.port}/hook",
                                                           "secret": SECRET})
    assert resp.status == 201, await resp.text()
    resp = await client.post("/api/pricing/quote", json={"model": "sonnet", "estimated_input": 3000, "estimated_output": 1200, "complexity": "high", "delivery_type": "task", "segment": "enterprise"})
    assert resp.status == 200, await resp.text()
    task = {"model": "k2p5", "task": "done?"}
    resp = await client.post("/api/spawn", json={**task, "webhook_url": receiver.url})
    assert resp.status == 200, await resp.text()
    resp = await client.post("/api/spawn-team", json={"team": "team_coding", "task": "x", "webhook_url": receiver.url})
    assert resp.status == 200, await resp.text()
    resp = await client.post("/api/spawn-batch", json={"agents": [{**task, "webhook_url": receiver.url}]})
    assert resp.status == 200, await resp.text()
    await receiver.wait_for(4)
    events = sorted(r.event for r in receiver.received)
    assert events.count("agent.completed") == 3 and "pricing.quote_generated" in events
    assert receiver.rejected == []


async def test_a_stored_hook_is_not_sent_once_its_target_is_no_longer_allowed(aiohttp_client, tmp_path, receiver):
    """Checked again at delivery: a hook accepted under an allowance (or stored before the
    policy existed) is refused when the allowance is gone."""
    cfg = allowing(make_config(tmp_path), "127.0.0.0/8")
    first = await aiohttp_client(build_app(cfg))
    resp = await first.post("/api/webhooks", json={"url": receiver.url, "events": ["agent.completed"], "secret": SECRET})
    hook_id = (await resp.json())["webhook_id"]
    await first.close()
    client = await aiohttp_client(build_app(allowing(cfg)))  # same state dir, allowance removed
    await wait_status(client, (await (await client.post("/api/spawn", json={"model": "k2p5", "task": "x"})).json())[
        "agent_id"])

    async def attempted():
        rows = (await (await client.get(f"/api/webhooks/{hook_id}/deliveries")).json())["data"]
        return rows if rows and rows[0]["attempts"] >= 1 else None

    rows = await until(attempted, "a delivery attempt")
    assert rows[0]["status"] == "pending" and "target refused" in rows[0]["last_error"]
    assert "loopback" in rows[0]["last_error"]
    assert receiver.received == [] and receiver.rejected == []


class MappedResolver(AbstractResolver):
    """A DNS server the test controls: names to loopback addresses only."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.asked: list[str] = []

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.asked.append(host)
        if host not in self.names:
            raise OSError(f"{host}: no such name")
        return [{"hostname": host, "host": self.names[host], "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": 0}]

    async def close(self):
        pass


async def test_dns_rebinding_is_caught_at_connect_time(aiohttp_client, tmp_path):
    """Only 127.0.0.1 is allowed.  ``rebind.test`` resolves to 127.0.0.1 when the spawn is
    accepted, and to 127.0.0.2 (a refused address, where a receiver listens) when the
    connector looks it up to deliver: the receiver there gets nothing.  ``good.test`` goes
    through the same resolver to 127.0.0.1 and arrives (the fake DNS is really the one used)."""
    inside = await Receiver(SECRET, host="127.0.0.2").start()
    allowed = await Receiver(None).start()
    try:
        client = await aiohttp_client(build_app(allowing(make_config(tmp_path), "127.0.0.1/32")))
        hooks = client.app[SERVICES].webhooks

        async def at_accept(host, port):
            return {"rebind.test": ["127.0.0.1"], "good.test": ["127.0.0.1"]}.get(host, [])

        hooks.lookup = at_accept
        dns = hooks.resolver.inner = MappedResolver({"rebind.test": "127.0.0.2", "good.test": "127.0.0.1"})
        resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "x",
                                                     "webhook_url": f"http://rebind.test:{inside.port}/hook"})
        assert resp.status == 200, await resp.text()
        bad_agent = (await resp.json())["agent_id"]
        resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "y",
                                                     "webhook_url": f"http://good.test:{allowed.port}/hook"})
        assert resp.status == 200, await resp.text()
        [got] = await allowed.wait_for(1)
        assert got.payload["data"]["agent_id"] == (await resp.json())["agent_id"]
        await wait_status(client, bad_agent)
        hook = next(h for h in hooks.hooks.values() if h.agent_id == bad_agent)

        async def last_error():
            rows = await hooks.store.read(lambda c: c.execute(
                "SELECT attempts, last_error FROM deliveries WHERE webhook_id = ?", (hook.webhook_id,)).fetchall())
            return rows[0]["last_error"] if rows and rows[0]["attempts"] else None

        error = await until(last_error, "a delivery attempt")
        assert "rebind.test" in dns.asked and "good.test" in dns.asked
        assert "target refused" in error and "127.0.0.2" in error, error
        assert inside.received == [] and inside.rejected == [] and inside.failed == []
        # Accept-time: a name that already resolves to a refused address is a 400.
        hooks.lookup = lambda host, port: asyncio.sleep(0, ["127.0.0.2"])
        resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "z",
                                                     "webhook_url": f"http://rebind.test:{inside.port}/hook"})
        assert resp.status == 400 and "resolves to 127.0.0.2" in field_error(await resp.json())[1]
    finally:
        await inside.stop()
        await allowed.stop()


async def test_the_daemons_own_address_is_refused_with_loopback_allowed(aiohttp_client, tmp_path, unused_tcp_port):
    cfg = allowing(make_config(tmp_path), "127.0.0.0/8")
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, port=unused_tcp_port))
    client = await aiohttp_client(build_app(cfg), server_kwargs={"port": unused_tcp_port})
    assert client.port == unused_tcp_port
    for url in (f"http://127.0.0.1:{unused_tcp_port}/api/keys", f"http://2130706433:{unused_tcp_port}/api/keys",
                f"http://localhost:{unused_tcp_port}/api/health"):
        resp = await client.post("/api/webhooks", json={"url": url, "events": ["*"]})
        assert resp.status == 400, await resp.text()
        assert "own listen address" in field_error(await resp.json())[1]


@pytest.fixture
def slow_dns(monkeypatch):
    """Names under .slow.test have a name server that never answers: getaddrinfo blocks for
    them (until the test ends) and then fails; ``entered`` lists the lookups begun."""
    release = threading.Event()
    entered: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".slow.test"):
            entered.append(host)
            release.wait(60)  # bounded: set at the end of the test
            raise socket.gaierror(socket.EAI_NONAME, "no such name")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield entered
    release.set()


async def until_entered(entered: list[str], n: int) -> None:
    for _ in range(2000):
        if len(entered) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(entered)} lookups began, not {n}")


async def test_slow_name_lookups_at_accept_do_not_starve_the_database(aiohttp_client, tmp_path, slow_dns):
    """Accept-time lookups of client-chosen names must not take the threads the database
    uses: a batch of webhook URLs under a domain whose name server never answers used to
    fill the loop's default executor, and every request that reads or writes the database
    waited behind them."""
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    batch = {"agents": [{"model": "k2p5", "task": f"t{i}", "webhook_url": f"http://n{i}.slow.test/hook"}
                        for i in range(100)]}
    pending = asyncio.ensure_future(client.post("/api/spawn-batch", json=batch))
    await until_entered(slow_dns, 1)
    # The database answers while the lookups hang (the bound is far above a read's time).
    resp = await asyncio.wait_for(client.get("/api/agents"), 10)
    assert resp.status == 200 and len(slow_dns) < 100
    pending.cancel()


async def test_slow_name_lookups_at_delivery_do_not_starve_the_database(aiohttp_client, tmp_path, slow_dns):
    """The same at delivery: the webhook connector's lookups (eight deliveries at a time) run
    on the lookups' own threads.  The loop's default executor has a 4-core Pi's eight threads."""
    asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=8))
    client = await aiohttp_client(build_app(make_config(tmp_path)))
    client.app[SERVICES].webhooks.lookup = lambda host, port: asyncio.sleep(0, [])  # accepted at once
    for i in range(12):
        resp = await client.post("/api/spawn", json={"model": "k2p5", "task": f"t{i}",
                                                     "webhook_url": f"http://n{i}.slow.test/hook"})
        assert resp.status == 200, await resp.text()
    await until_entered(slow_dns, 4)
    resp = await asyncio.wait_for(client.get("/api/agents"), 10)
    assert resp.status == 200
