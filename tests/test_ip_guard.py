"""The IP allowlist and X-Forwarded-For trust."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from multidict import CIMultiDict

from j1mskyd.app import build_app
from j1mskyd.config import ConfigError, load_config
from j1mskyd.netguard import IpPolicy, parse_networks
from tests.conftest import make_config


def policy(allowed=("10.0.0.0/8",), proxies=(), enforce=True) -> IpPolicy:
    return IpPolicy(parse_networks(allowed), enforce, parse_networks(proxies))


@pytest.mark.parametrize("peer,xff,expected", [
    ("192.0.2.1", None, "192.0.2.1"),
    ("192.0.2.1", "10.0.0.1", "192.0.2.1"),            # untrusted peer: its header is ignored
    ("127.0.0.1", "10.0.0.1", "10.0.0.1"),             # trusted proxy: the hop before it
    ("127.0.0.1", "6.6.6.6, 10.0.0.1", "10.0.0.1"),    # leftmost entries can be forged
    ("127.0.0.1", "10.0.0.1, 127.0.0.2", "10.0.0.1"),  # proxies chained: skip trusted hops
    ("127.0.0.1", "not-an-ip", "127.0.0.1"),           # garbage: trust only the peer
    ("::ffff:10.1.2.3", None, "10.1.2.3"),             # dual-stack socket
    ("fe80::1%eth0", None, "fe80::1"),
])
def test_client_ip(peer, xff, expected):
    assert str(policy(proxies=("127.0.0.0/8",)).client_ip(peer, xff)) == expected


def test_admits_by_version_and_network():
    p = policy(allowed=("10.0.0.0/8", "fc00::/7"))
    assert p.admits(ipaddress.ip_address("10.9.9.9")) and p.admits(ipaddress.ip_address("fd00::1"))
    assert not p.admits(ipaddress.ip_address("11.0.0.1")) and not p.admits(None)
    assert policy(enforce=False).admits(ipaddress.ip_address("8.8.8.8"))


def test_bad_cidr_in_config_is_reported(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[security]\nallowed_ips = ["10.0.0.0/8", "10.0.0.300/8"]\n'
                    '[providers.offline]\nplugin = "offline"\n'
                    '[models.k2p5]\nprovider = "offline"\nupstream = "k"\ninput_per_1k = 0\noutput_per_1k = 0\n'
                    'blended_per_1k = 0\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert err.value.issues[0].key == "security.allowed_ips" and "10.0.0.300/8" in err.value.issues[0].reason


def secured(tmp_path, **security):
    base = make_config(tmp_path)
    return dataclasses.replace(base, security=dataclasses.replace(base.security, **security))


async def test_outside_the_allowlist_gets_403_with_your_ip(aiohttp_client, tmp_path, caplog):
    client = await aiohttp_client(build_app(secured(tmp_path, allowed_ips=("10.0.0.0/8",))))
    for method, path in (("GET", "/api/health"), ("POST", "/api/spawn"), ("GET", "/nowhere")):
        resp = await client.request(method, path, json={"model": "k2p5", "task": "x"})
        body = await resp.json()
        assert resp.status == 403, path
        assert body["error"]["type"] == "IP_NOT_ALLOWED" and body["error"]["your_ip"] == "127.0.0.1"
        assert body["error"]["request_id"] == resp.headers["X-Request-Id"]
    assert "from 127.0.0.1: ip_not_allowed" in caplog.text


async def test_default_allowlist_admits_loopback(client):
    assert (await client.get("/api/health")).status == 200


async def test_enforcement_can_be_switched_off(aiohttp_client, tmp_path):
    client = await aiohttp_client(build_app(secured(tmp_path, allowed_ips=("10.0.0.0/8",), enforce_allowlist=False)))
    assert (await client.get("/api/health")).status == 200


async def test_forwarded_for_is_believed_only_from_trusted_proxies(aiohttp_client, tmp_path):
    trusting = await aiohttp_client(build_app(secured(
        tmp_path / "a", allowed_ips=("10.0.0.0/8",), trusted_proxies=("127.0.0.1/32",))))
    assert (await trusting.get("/api/health", headers={"X-Forwarded-For": "10.1.2.3"})).status == 200
    resp = await trusting.get("/api/health", headers={"X-Forwarded-For": "8.8.8.8"})
    assert resp.status == 403 and (await resp.json())["error"]["your_ip"] == "8.8.8.8"

    untrusting = await aiohttp_client(build_app(secured(tmp_path / "b", allowed_ips=("10.0.0.0/8",))))
    resp = await untrusting.get("/api/health", headers={"X-Forwarded-For": "10.1.2.3"})
    assert resp.status == 403 and (await resp.json())["error"]["your_ip"] == "127.0.0.1"


async def test_several_forwarded_for_lines_are_one_list(aiohttp_client, tmp_path):
    """RFC 9110 5.3: header lines of one name are one comma-joined list.  The client sends
    its own line claiming a LAN address; the trusted proxy appends a second line with the
    address it really saw.  Reading only the first line admitted the client."""
    client = await aiohttp_client(build_app(secured(tmp_path, allowed_ips=("10.0.0.0/8",),
                                                    trusted_proxies=("127.0.0.1/32",))))
    two_lines = CIMultiDict([("X-Forwarded-For", "10.1.2.3"), ("X-Forwarded-For", "203.0.113.7")])
    resp = await client.get("/api/health", headers=two_lines)
    assert resp.status == 403 and (await resp.json())["error"]["your_ip"] == "203.0.113.7"
    # The same list on one line, and the honest case on two lines, for comparison.
    resp = await client.get("/api/health", headers={"X-Forwarded-For": "10.1.2.3, 203.0.113.7"})
    assert resp.status == 403 and (await resp.json())["error"]["your_ip"] == "203.0.113.7"
    honest = CIMultiDict([("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "10.1.2.3")])
    assert (await client.get("/api/health", headers=honest)).status == 200
