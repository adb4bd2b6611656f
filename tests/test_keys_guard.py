"""The admin-key guard and the key changes around it, under attack: each test a hole a hostile
review of a running daemon found (racing revocations, a rotation's successor revoked, an
expired or rotated-out key revived by PATCH, a scopes string, a name that forges lines)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from j1mskyd.api.common import SERVICES
from j1mskyd.app import build_app
from tests.conftest import auth_config, bearer, bootstrap_key
from tests.test_keys_cli import keys_cli, keys_json

ADMIN = ["admin:write"]


async def _start(aiohttp_client: Any, tmp_path: Any) -> tuple[Any, dict[str, str]]:
    cfg = auth_config(tmp_path)
    client = await aiohttp_client(build_app(cfg))
    return client, bootstrap_key(cfg)


async def _key(client: Any, admin: dict[str, str], name: str, scopes: list[str] = ADMIN) -> dict[str, Any]:
    resp = await client.post("/api/keys", json={"name": name, "scopes": scopes}, headers=bearer(admin["token"]))
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def _revoke(client: Any, by: dict[str, str], key_id: str) -> int:
    return (await client.delete(f"/api/keys/{key_id}", headers=bearer(by["token"]))).status


def _active_admins(client: Any) -> list[str]:
    """The ids of the active admin keys, as the daemon holds them (the racers' tokens may be revoked)."""
    keys = client.server.app[SERVICES].keys
    now = keys.clock()
    return [k.key_id for k in keys.ring.keys.values() if "admin:write" in k.scopes and k.state(now) == "active"]


async def _admins_only(client: Any, boot: dict[str, str], count: int) -> list[dict[str, Any]]:
    """``count`` new admin keys, the bootstrap key revoked: they are the only admin keys."""
    made = [await _key(client, boot, f"admin{i}") for i in range(count)]
    assert await _revoke(client, made[0], boot["key_id"]) == 200
    return made


# -- 1: the check and the write are one step -------------------------------------------------------

async def test_two_admins_revoking_each_other_at_once_leave_one(aiohttp_client, tmp_path):
    """A revokes B while B revokes A: both answered 200 (each checked the other was still
    active before either wrote), and no admin key was left.  Now one of the two is refused."""
    client, boot = await _start(aiohttp_client, tmp_path)
    a, b = await _admins_only(client, boot, 2)
    statuses = await asyncio.gather(_revoke(client, a, b["key_id"]), _revoke(client, b, a["key_id"]))
    assert sorted(statuses) in ([200, 401], [200, 409]), statuses
    assert _active_admins(client) in ([a["key_id"]], [b["key_id"]])


async def test_three_racing_revocations_leave_an_admin(aiohttp_client, tmp_path):
    """Three admin keys, each revoking the next at the same moment: all three went through."""
    client, boot = await _start(aiohttp_client, tmp_path)
    keys = await _admins_only(client, boot, 3)
    statuses = await asyncio.gather(*(_revoke(client, keys[i], keys[(i + 1) % 3]["key_id"]) for i in range(3)))
    assert statuses.count(200) <= 2 and set(statuses) <= {200, 401, 409}, statuses
    assert _active_admins(client)


# -- 2: an admin key that expires is no admin key to keep --------------------------------------------

async def test_a_rotated_admin_key_s_successor_is_kept_as_the_lasting_admin(aiohttp_client, tmp_path):
    """Rotating the only admin key, then revoking its successor (201, 200) left only the old key,
    which its rotation grace ends: nobody could administer the daemon after it.  Now revoking
    the successor is a 409 while no other admin key without an expiry is active; the old key in
    its grace period may go (the successor stays), and with another lasting admin key both may."""
    client, boot = await _start(aiohttp_client, tmp_path)
    rotated = await client.post(f"/api/keys/{boot['key_id']}/rotate", headers=bearer(boot["token"]))
    assert rotated.status == 201, await rotated.text()
    successor = await rotated.json()
    refused = await client.delete(f"/api/keys/{successor['key_id']}", headers=bearer(boot["token"]))
    error = (await refused.json())["error"]
    assert refused.status == 409 and error["type"] == "CONFLICT", error
    assert "last active admin key with no expiry" in error["message"], error
    assert sorted(_active_admins(client)) == sorted([boot["key_id"], successor["key_id"]])  # nothing changed
    assert await _revoke(client, successor, boot["key_id"]) == 200  # the old key may go: the successor lasts
    other = await _key(client, successor, "other admin")
    assert await _revoke(client, other, successor["key_id"]) == 200
    assert _active_admins(client) == [other["key_id"]]


# -- 3: an expired key stays expired; a rotated key's grace stays its expiry --------------------------

async def test_an_expired_key_is_not_revived_by_patch(aiohttp_client, tmp_path):
    """After its expiry the token got 401 and the key showed `expired`, yet PATCH
    {"expires_at": null} answered 200 and the key was active again (its queued webhook
    deliveries then went out).  Now a PATCH of an expired key is a 400 and it stays expired."""
    client, boot = await _start(aiohttp_client, tmp_path)
    key = await _key(client, boot, "short", ["agents:read"])
    services = client.server.app[SERVICES]
    # Its expiry passed: stored as an operator's PATCH would have left it, a second ago.
    await services.store.write(("UPDATE api_keys SET expires_at = ? WHERE key_id = ?",
                                (services.keys.clock() - 1, key["key_id"])))
    await services.keys.reload()
    assert (await client.get("/api/keys/me", headers=bearer(key["token"]))).status == 401
    for change in ({"expires_at": None}, {"expires_at": "2099-01-01T00:00:00Z"}, {"max_concurrency": 3}):
        resp = await client.patch(f"/api/keys/{key['key_id']}", json=change, headers=bearer(boot["token"]))
        error = (await resp.json())["error"]
        assert resp.status == 400 and "is expired; its limits cannot change" in error["message"], (change, error)
    assert (await client.get("/api/keys/me", headers=bearer(key["token"]))).status == 401
    view = await (await client.get(f"/api/keys/{key['key_id']}", headers=bearer(boot["token"]))).json()
    assert view["status"] == "expired" and view["max_concurrency"] is None


async def test_a_rotated_key_s_grace_period_cannot_be_cleared_or_moved(aiohttp_client, tmp_path):
    """PATCH {"expires_at": null} on a rotated-out key cancelled the end of its grace period:
    the old token never expired.  Now its expires_at cannot change (400 naming expires_at,
    nothing changed); its other limits still can, and the successor's expiry is its own."""
    client, boot = await _start(aiohttp_client, tmp_path)
    admin = bearer(boot["token"])
    old = await _key(client, boot, "worker", ["agents:read"])
    successor = await (await client.post(f"/api/keys/{old['key_id']}/rotate", headers=admin)).json()
    grace_end = successor["old_key_expires_at"]
    for when in (None, "2099-01-01T00:00:00Z"):
        resp = await client.patch(f"/api/keys/{old['key_id']}", json={"expires_at": when}, headers=admin)
        error = (await resp.json())["error"]
        assert resp.status == 400 and error["details"][0]["field"] == "expires_at", error
        assert "rotation grace period" in error["message"], error
    view = await (await client.get(f"/api/keys/{old['key_id']}", headers=admin)).json()
    assert view["expires_at"] == grace_end and view["status"] == "active"
    resp = await client.patch(f"/api/keys/{old['key_id']}", json={"max_concurrency": 2}, headers=admin)
    assert resp.status == 200, await resp.text()
    resp = await client.patch(f"/api/keys/{successor['key_id']}", json={"expires_at": "2099-01-01T00:00:00Z"},
                              headers=admin)
    assert resp.status == 200, await resp.text()


# -- 4: scopes are a list; a name is one line ------------------------------------------------------------

# A newline forged a line of `j1mskyd keys list`; NUL, DEL, C1 (U+0085 NEL) and the Unicode
# line and paragraph separators break or hide lines in a terminal or a log the same way.
LINE_BREAKERS = ["ops\nkey_0000000000000000  active   admin", "a\rb", "nul\x00", "tab\there", "del\x7f",
                 "nel\x85", "ls\u2028", "ps\u2029", "esc\x1b[2J",
                 # invisible format characters: "admin\u202egnp.exe" reads "adminexe.png", and
                 # "bootstrap-admin\u200b" as the bootstrap key's name (plain_text)
                 "admin\u202egnp.exe", "bootstrap-admin\u200b", "\ufeffops", "x\u2066y"]


@pytest.mark.parametrize("body, field", [
    ({"name": "n", "scopes": "agents:read"}, "scopes"),
    ({"name": "n", "scopes": "agents:read,agents:write"}, "scopes"),
    *(({"name": name, "scopes": ["agents:read"]}, "name") for name in LINE_BREAKERS),
], ids=lambda v: json.dumps(v)[:50] if isinstance(v, dict) else v)
async def test_a_scopes_string_or_a_name_that_breaks_lines_is_a_400_naming_it(aiohttp_client, tmp_path, body, field):
    """{"scopes": "agents:read"} (text, not a list) answered 201; a name with a newline was
    stored and forged a line in `j1mskyd keys list`.  Now each is a 400 naming its field, and
    no key is made."""
    client, boot = await _start(aiohttp_client, tmp_path)
    resp = await client.post("/api/keys", json=body, headers=bearer(boot["token"]))
    error = (await resp.json())["error"]
    assert resp.status == 400 and error["type"] == "VALIDATION_ERROR", error
    assert error["details"][0]["field"] == field and error["message"].startswith(field), error
    listed = await (await client.get("/api/keys", headers=bearer(boot["token"]))).json()
    assert listed["count"] == 1  # the bootstrap key only


async def test_a_name_may_be_any_printable_text(aiohttp_client, tmp_path):
    """Only control, line-breaking and invisible format characters are refused: accents, other
    scripts (right-to-left ones too), emoji and inner spaces are a name."""
    client, boot = await _start(aiohttp_client, tmp_path)
    made = await _key(client, boot, "  Zoë's 台所 tablet 🍳 ", ["agents:read"])
    assert made["name"] == "Zoë's 台所 tablet 🍳"
    assert (await _key(client, boot, "מטבח كمبيوتر", ["agents:read"]))["name"] == "מטבח كمبيوتر"


def test_the_cli_refuses_a_name_that_breaks_lines_and_still_reads_comma_separated_scopes(tmp_path):
    code, out, err = keys_cli(tmp_path, "create", "--name", "ops\nkey_0000000000000000  active", "--scopes",
                              "agents:read")
    assert code == 2 and "name must not contain control characters" in err and "Traceback" not in err, err
    made = keys_json(tmp_path, "create", "--name", "worker", "--scopes", "agents:read, agents:write")
    assert made["scopes"] == ["agents:read", "agents:write"]
    assert [k["name"] for k in keys_json(tmp_path, "list")] == ["worker"]
