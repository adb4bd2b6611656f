"""HMAC request signing: the seed's own client through real HTTP, refusals by type, and
unit tests of signing.parse_timestamp, body_forms, ReplayGuard and verify.

The seed's ``sign_request`` signs the compact JSON but its example sends
``requests.post(json=data)``, whose body is ``json.dumps(data)`` with the default
``", "``/``": "`` separators; the aiohttp client here sends exactly those bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from j1mskyd import signing
from j1mskyd.signing import ReplayGuard, SignatureError, body_forms, parse_timestamp, verify
from tests.test_auth import auth_config, bearer, error_of, new_key, start

# ---------------------------------------------------------------------------------------------
# The seed's client, copied as written (seed 000, "Request Signing"); its imports are
# hmac, hashlib, base64 (unused) and datetime, imported above.
import base64  # noqa: E402,F401


def sign_request(api_key, api_secret, method, path, body):
    timestamp = datetime.utcnow().isoformat()
    
    message = f"{timestamp}\n{method}\n{path}\n{body}"
    signature = hmac.new(
        api_secret.encode(),
        message.encode(),
        hashlib.sha256
    ).hexdigest()
    
    return {
        'Authorization': f'Bearer {api_key}',
        'X-Timestamp': timestamp,
        'X-Signature': signature
    }
# ---------------------------------------------------------------------------------------------

# datetime.utcnow() is deprecated from Python 3.12 on; the seed's client uses it anyway.
pytestmark = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")

SPAWN = {"model": "k2p5", "task": "test"}
SEED_BODY = '{"model":"k2p5","task":"test"}'  # what the seed's example signs
JSON = {"Content-Type": "application/json"}


def requests_body(data) -> str:
    """What ``requests.post(json=data)`` sends: json.dumps with the default separators."""
    return json.dumps(data)


def signed(token: str, secret: str, method: str, path: str, body: str = "", timestamp: str | None = None):
    """An independent signer with a chosen timestamp (the seed's format by default)."""
    ts = timestamp if timestamp is not None else datetime.now(timezone.utc).replace(tzinfo=None).isoformat()
    sig = hmac.new(secret.encode(), f"{ts}\n{method}\n{path}\n{body}".encode(), hashlib.sha256).hexdigest()
    return {"Authorization": f"Bearer {token}", "X-Timestamp": ts, "X-Signature": sig}


def iso_utc(offset_seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=offset_seconds)).replace(tzinfo=None).isoformat()


@pytest.fixture
async def setup(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path))
    key = await new_key(client, admin, ["agents:read", "agents:write"], name="signer")
    return client, admin, key


# -- the seed's client ------------------------------------------------------------------------

async def test_seed_client_as_written_with_requests_style_body(setup):
    client, _, key = setup
    headers = sign_request(key["token"], key["secret"], "POST", "/api/spawn", SEED_BODY)
    body = requests_body(SPAWN)
    assert body == '{"model": "k2p5", "task": "test"}'  # spaced, unlike what was signed
    resp = await client.post("/api/spawn", headers=headers | JSON, data=body)
    answer = await resp.json()
    assert resp.status == 200, answer
    assert answer["agent_id"]


async def test_seed_client_with_compact_body(setup):
    client, _, key = setup
    headers = sign_request(key["token"], key["secret"], "POST", "/api/spawn", SEED_BODY)
    resp = await client.post("/api/spawn", headers=headers | JSON, data=SEED_BODY)
    assert resp.status == 200, await resp.text()


async def test_seed_client_on_a_get_with_empty_body(setup):
    client, _, key = setup
    headers = sign_request(key["token"], key["secret"], "GET", "/api/agents", "")
    resp = await client.get("/api/agents", headers=headers)
    assert resp.status == 200, await resp.text()


async def test_non_ascii_body_signed_compact_with_or_without_ascii_escapes(setup):
    client, _, key = setup
    data = {"model": "k2p5", "task": "résumé ✓"}
    sent = requests_body(data)  # requests escapes to \u00e9 ...
    for signed_body in (json.dumps(data, separators=(",", ":")),
                        json.dumps(data, separators=(",", ":"), ensure_ascii=False)):  # ... a client may not
        headers = signed(key["token"], key["secret"], "POST", "/api/spawn", signed_body)
        resp = await client.post("/api/spawn", headers=headers | JSON, data=sent.encode())
        assert resp.status == 200, (signed_body, await resp.text())


# -- refusals -----------------------------------------------------------------------------------

async def expect_401(resp, type_: str) -> None:
    error = await error_of(resp, 401)
    assert error["type"] == type_, error


async def test_wrong_secret_tampered_body_and_wrong_path_are_invalid_signature(setup):
    client, admin, key = setup
    headers = sign_request(key["token"], admin["secret"], "POST", "/api/spawn", SEED_BODY)  # another key's secret
    await expect_401(await client.post("/api/spawn", headers=headers | JSON, data=SEED_BODY), "INVALID_SIGNATURE")

    headers = sign_request(key["token"], key["secret"], "POST", "/api/spawn", SEED_BODY)
    tampered = requests_body({"model": "opus", "task": "test"})
    await expect_401(await client.post("/api/spawn", headers=headers | JSON, data=tampered), "INVALID_SIGNATURE")

    headers = sign_request(key["token"], key["secret"], "POST", "/api/spawn-batch", SEED_BODY)
    await expect_401(await client.post("/api/spawn", headers=headers | JSON, data=SEED_BODY), "INVALID_SIGNATURE")

    headers = sign_request(key["token"], key["secret"], "GET", "/api/spawn", SEED_BODY)  # wrong method
    await expect_401(await client.post("/api/spawn", headers=headers | JSON, data=SEED_BODY), "INVALID_SIGNATURE")

    headers = sign_request(key["token"], key["secret"], "POST", "/api/spawn", SEED_BODY)
    headers["X-Signature"] = "0" * 64
    await expect_401(await client.post("/api/spawn", headers=headers | JSON, data=SEED_BODY), "INVALID_SIGNATURE")

    # none of these spawned anything
    listing = await (await client.get("/api/agents", headers=bearer(key["token"]))).json()
    assert listing["pagination"]["total"] == 0, listing


@pytest.mark.parametrize("offset", [-331, +331])
async def test_timestamp_beyond_max_skew_is_stale(setup, offset):
    client, _, key = setup
    headers = signed(key["token"], key["secret"], "POST", "/api/spawn", SEED_BODY, timestamp=iso_utc(offset))
    await expect_401(await client.post("/api/spawn", headers=headers | JSON, data=SEED_BODY), "STALE_TIMESTAMP")
    unix = str(int(time.time() + offset))
    headers = signed(key["token"], key["secret"], "POST", "/api/spawn", SEED_BODY, timestamp=unix)
    await expect_401(await client.post("/api/spawn", headers=headers | JSON, data=SEED_BODY), "STALE_TIMESTAMP")


@pytest.mark.parametrize("offset", [-280, +280])
async def test_timestamp_within_max_skew_is_accepted(setup, offset):
    client, _, key = setup
    headers = signed(key["token"], key["secret"], "POST", "/api/spawn", SEED_BODY, timestamp=iso_utc(offset))
    resp = await client.post("/api/spawn", headers=headers | JSON, data=SEED_BODY)
    assert resp.status == 200, await resp.text()


async def test_configured_max_skew_is_honoured(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path, signature_max_skew=30.0))
    headers = signed(admin["token"], admin["secret"], "GET", "/api/agents", timestamp=iso_utc(-60))
    await expect_401(await client.get("/api/agents", headers=headers), "STALE_TIMESTAMP")
    headers = signed(admin["token"], admin["secret"], "GET", "/api/agents", timestamp=iso_utc(-20))
    assert (await client.get("/api/agents", headers=headers)).status == 200


@pytest.mark.parametrize("timestamp", ["yesterday", "2024-13-45T00:00:00", "nan", "inf", "1e30",
                                       str(int(time.time() * 1000))])
async def test_garbage_timestamp_is_invalid_timestamp(setup, timestamp):
    client, _, key = setup
    headers = signed(key["token"], key["secret"], "GET", "/api/agents", timestamp=timestamp)
    await expect_401(await client.get("/api/agents", headers=headers), "INVALID_TIMESTAMP")


async def test_replay_of_the_identical_request_is_refused(setup):
    client, _, key = setup
    headers = sign_request(key["token"], key["secret"], "POST", "/api/spawn", SEED_BODY)
    body = requests_body(SPAWN)
    first = await client.post("/api/spawn", headers=headers | JSON, data=body)
    assert first.status == 200, await first.text()
    await expect_401(await client.post("/api/spawn", headers=headers | JSON, data=body), "REPLAYED_REQUEST")
    # the same signature in upper case is the same signature
    upper = headers | {"X-Signature": headers["X-Signature"].upper()}
    await expect_401(await client.post("/api/spawn", headers=upper | JSON, data=body), "REPLAYED_REQUEST")
    # a fresh signature of the same request is fine
    headers = sign_request(key["token"], key["secret"], "POST", "/api/spawn", SEED_BODY)
    assert (await client.post("/api/spawn", headers=headers | JSON, data=body)).status == 200


async def test_key_with_require_signature_refuses_unsigned_requests(setup):
    client, admin, _ = setup
    strict = await new_key(client, admin, ["agents:read"], require_signature=True)
    assert strict["require_signature"] is True
    for headers in (bearer(strict["token"]), {"X-API-Key": strict["token"]},
                    bearer(strict["token"]) | {"X-Timestamp": iso_utc(0)},
                    bearer(strict["token"]) | {"X-Signature": "ab" * 32}):
        await expect_401(await client.get("/api/agents", headers=headers), "SIGNATURE_REQUIRED")
    headers = sign_request(strict["token"], strict["secret"], "GET", "/api/agents", "")
    assert (await client.get("/api/agents", headers=headers)).status == 200
    # other keys are unaffected
    assert (await client.get("/api/agents", headers=bearer(admin["token"]))).status == 200


async def test_global_require_signatures_refuses_unsigned_requests(aiohttp_client, tmp_path):
    client, admin = await start(aiohttp_client, auth_config(tmp_path, require_signatures=True))
    await expect_401(await client.get("/api/keys", headers=bearer(admin["token"])), "SIGNATURE_REQUIRED")
    headers = sign_request(admin["token"], admin["secret"], "GET", "/api/keys", "")
    assert (await client.get("/api/keys", headers=headers)).status == 200
    assert (await client.get("/api/health")).status == 200  # public stays public


async def test_signature_is_checked_only_after_the_key(setup):
    client, _, key = setup
    headers = sign_request("jsk_unknown", key["secret"], "GET", "/api/agents", "")
    await expect_401(await client.get("/api/agents", headers=headers), "INVALID_API_KEY")


@pytest.mark.parametrize("make_ts", [lambda: str(int(time.time())), lambda: f"{time.time():.3f}",
                                     lambda: datetime.now(timezone.utc).isoformat(),
                                     lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                     lambda: datetime.now(timezone(timedelta(hours=5, minutes=30))).isoformat()],
                         ids=["unix", "unix-float", "iso-offset", "iso-z", "iso-plus0530"])
async def test_other_timestamp_forms_are_accepted(setup, make_ts):
    client, _, key = setup
    headers = signed(key["token"], key["secret"], "GET", "/api/agents", timestamp=make_ts())
    resp = await client.get("/api/agents", headers=headers)
    assert resp.status == 200, (headers["X-Timestamp"], await resp.text())


@pytest.mark.parametrize("signed_path,ok", [("/api/agents?limit=5", True), ("/api/agents", True),
                                             ("/api/agents?limit=6", False), ("/api/agents?", False)])
async def test_get_with_query_string_signed_with_or_without_it(setup, signed_path, ok):
    client, _, key = setup
    headers = signed(key["token"], key["secret"], "GET", signed_path)
    resp = await client.get("/api/agents?limit=5", headers=headers)
    if ok:
        assert resp.status == 200, await resp.text()
    else:
        await expect_401(resp, "INVALID_SIGNATURE")


async def test_versioned_prefix_is_signed_as_sent(setup):
    client, _, key = setup
    headers = signed(key["token"], key["secret"], "GET", "/api/v1/agents")
    assert (await client.get("/api/v1/agents", headers=headers)).status == 200
    headers = signed(key["token"], key["secret"], "GET", "/api/agents")
    await expect_401(await client.get("/api/v1/agents", headers=headers), "INVALID_SIGNATURE")


# -- units -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("1700000000", 1700000000.0),
    (" 1700000000.25 ", 1700000000.25),
    ("2023-11-14T22:13:20", 1700000000.0),           # naive: UTC, as datetime.utcnow().isoformat()
    ("2023-11-14T22:13:20.500000", 1700000000.5),
    ("2023-11-14T22:13:20Z", 1700000000.0),
    ("2023-11-14T22:13:20+00:00", 1700000000.0),
    ("2023-11-15T00:13:20+02:00", 1700000000.0),
    ("2023-11-14T17:13:20-05:00", 1700000000.0),
])
def test_parse_timestamp_accepts(text, expected):
    assert parse_timestamp(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "   ", "yesterday", "nan", "NaN", "inf", "-inf", "1e11", "1700000000000",
                                  "2023-11-14T25:00:00", "2023-02-30", "Z", "0x10", "１７００", "1_700_000_000",
                                  "1.7e9", "+1700000000", "2023-11-14T22:13:20+25:00"])
def test_parse_timestamp_refuses(text):
    assert parse_timestamp(text) is None


def test_parse_timestamp_of_utcnow_isoformat_is_now():
    assert parse_timestamp(datetime.utcnow().isoformat()) == pytest.approx(time.time(), abs=2)


def test_body_forms():
    assert body_forms(b"") == [""]
    assert body_forms(SEED_BODY.encode()) == [SEED_BODY]
    assert body_forms(requests_body(SPAWN).encode()) == [requests_body(SPAWN), SEED_BODY]
    assert body_forms(b'{\n  "a": [1, 2]\n}') == ['{\n  "a": [1, 2]\n}', '{"a":[1,2]}']
    assert body_forms(b"not json") == ["not json"]
    assert body_forms(b"   ") == ["   "]
    assert body_forms(b"\xff\xfe") == []
    deep = b"[" * 100_000 + b"]" * 100_000
    assert body_forms(deep) == [deep.decode()]
    assert body_forms(b'{"t": "\\u00e9"}')[:2] == ['{"t": "\\u00e9"}', '{"t":"\\u00e9"}']
    forms = body_forms('{"t": "é"}'.encode())
    assert forms[0] == '{"t": "é"}' and '{"t":"\\u00e9"}' in forms and '{"t":"é"}' in forms
    assert len(forms) == len(set(forms))


def test_sign_matches_the_seed_formula():
    sig = signing.sign("s3cret", "2023-11-14T22:13:20", "post", "/api/spawn", SEED_BODY)
    msg = f"2023-11-14T22:13:20\nPOST\n/api/spawn\n{SEED_BODY}"
    assert sig == hmac.new(b"s3cret", msg.encode(), hashlib.sha256).hexdigest()


def test_replay_guard_forgets_after_ttl():
    guard = ReplayGuard()
    assert guard.first_time("a", 1000.0, 600.0)
    assert not guard.first_time("a", 1599.0, 600.0)
    assert guard.first_time("b", 1599.0, 600.0)
    assert guard.first_time("a", 1600.5, 600.0)


def test_replay_guard_memory_is_bounded():
    guard = ReplayGuard()
    for i in range(25_000):
        guard.first_time(f"s{i}", float(i), 600.0)
    assert len(guard._seen) < 12_000


def test_verify_errors_by_type():
    now = 1_700_000_000.0
    guard = ReplayGuard()
    ts = "2023-11-14T22:13:20"
    good = signing.sign("k", ts, "POST", "/p", SEED_BODY)

    def check(type_, *, secret="k", timestamp=ts, given=good, body=SEED_BODY.encode(), paths=("/p",)):
        with pytest.raises(SignatureError) as info:
            verify(secret, timestamp, given, "POST", list(paths), body, guard, 300.0, now=now)
        assert info.value.type == type_, info.value.message

    check("SIGNATURE_REQUIRED", timestamp=None)
    check("SIGNATURE_REQUIRED", given=None)
    check("SIGNATURE_REQUIRED", given="")
    check("INVALID_TIMESTAMP", timestamp="soon")
    check("STALE_TIMESTAMP", timestamp=str(now - 301))
    check("STALE_TIMESTAMP", timestamp=str(now + 301))
    check("INVALID_SIGNATURE", secret="other")
    check("INVALID_SIGNATURE", paths=("/q",))
    check("INVALID_SIGNATURE", body=b'{"model":"k2p5","task":"test2"}')
    check("INVALID_SIGNATURE", given="zz")
    verify("k", ts, good, "POST", ["/q", "/p"], requests_body(SPAWN).encode(), guard, 300.0, now=now)
    check("REPLAYED_REQUEST")
    check("REPLAYED_REQUEST", given=f"  {good.upper()} ")
