"""GET /agents pagination forms of the API reference (issue 16): ``cursor`` (opaque, stable
under inserts, bound to its key, sort and filters) and ``page`` with ``limit``/``per_page``,
beside ``offset``.  Real app and store; every bad form is a 400 in the envelope."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import auth_config, bearer, bootstrap_key, wait_status
from j1mskyd.app import build_app


async def _spawn(client, task: str, headers=None, model: str = "k2p5") -> str:
    resp = await client.post("/api/spawn", json={"model": model, "task": task}, headers=headers)
    assert resp.status == 200, await resp.text()
    agent_id = (await resp.json())["agent_id"]
    if headers is None:  # authentication off: wait_status reads without a key
        await wait_status(client, agent_id)
    return agent_id


async def _page(client, query: str, status: int = 200, headers=None) -> dict:
    resp = await client.get(f"/api/agents?{query}", headers=headers)
    body = await resp.json()
    assert resp.status == status, body
    return body


async def _walk(client, query: str, headers=None) -> list[str]:
    """Every page by next_cursor, from the first (bounded: a cursor that loops fails)."""
    body = await _page(client, query, headers=headers)
    ids = [a["agent_id"] for a in body["data"]]
    for _ in range(50):
        nxt = body["pagination"]["next_cursor"]
        if nxt is None:
            assert body["pagination"]["has_more"] is False
            return ids
        body = await _page(client, f"{query}&cursor={nxt}", headers=headers)
        ids += [a["agent_id"] for a in body["data"]]
    raise AssertionError("the cursor walk did not end")


@pytest.fixture
async def seven(client) -> list[str]:
    ids = []
    for i in range(7):
        ids.append(await _spawn(client, f"task {i}", model=("k2p5", "sonnet")[i % 2]))
    return ids


@pytest.mark.parametrize("query", ["limit=3", "limit=2&sort=cost", "limit=3&sort=-model", "limit=1&sort=status",
                                   "limit=2&sort=agent_id", "limit=3&sort=-completed_at", "limit=2&sort=started_at",
                                   "limit=3&model=k2p5",
                                   'limit=2&filter={"task":{"starts_with":"task"}}'])  # the sealed-field path
async def test_a_cursor_walk_lists_what_the_offset_listing_lists_once_each(client, seven, query):
    by_offset = [a["agent_id"] for a in (await _page(client, _all(query)))["data"]]
    walked = await _walk(client, query)
    assert walked == by_offset and len(set(walked)) == len(walked) and walked


def _all(query: str) -> str:
    """The same listing in one page."""
    return "&".join("limit=100" if p.startswith("limit=") else p for p in query.split("&"))


async def test_a_cursor_is_stable_under_inserts_where_an_offset_shifts(client, seven):
    first = await _page(client, "limit=3")
    second_before = [a["agent_id"] for a in (await _page(client, "limit=3&offset=3"))["data"]]
    cursor = first["pagination"]["next_cursor"]
    new = [await _spawn(client, "inserted later") for _ in range(2)]
    by_cursor = await _page(client, f"limit=3&cursor={cursor}")
    assert [a["agent_id"] for a in by_cursor["data"]] == second_before
    assert by_cursor["pagination"]["offset"] == 5  # the two new agents sort before it now
    by_offset = [a["agent_id"] for a in (await _page(client, "limit=3&offset=3"))["data"]]
    assert by_offset != second_before  # what the cursor protects against
    assert not set(new) & set(a["agent_id"] for a in by_cursor["data"])


async def test_the_pagination_block_and_links_of_a_cursor_page(client, seven):
    first = await _page(client, "limit=3&model=k2p5")
    p = first["pagination"]
    assert p["cursor"] == p["next_cursor"] and p["has_more"] is True and p["page"] == 1 and p["per_page"] == 3
    assert first["links"]["next"].endswith("offset=3")  # an offset listing links by offset
    second = await _page(client, f"limit=3&model=k2p5&cursor={p['next_cursor']}")
    assert second["pagination"]["has_more"] is False and second["pagination"]["next_cursor"] is None
    assert second["pagination"]["offset"] == 3 and second["links"]["next"] is None
    assert "cursor=" not in second["links"]["self"] and "model=k2p5" in second["links"]["self"]
    # Past the end: an empty page that keeps the cursor where it stood.
    last_cursor = second["pagination"]["cursor"]
    empty = await _page(client, f"limit=3&model=k2p5&cursor={last_cursor}")
    assert empty["data"] == [] and empty["pagination"]["cursor"] == last_cursor
    # Followed by cursor, the next link is a cursor link.
    one = (await _page(client, "limit=1&model=k2p5"))["pagination"]["next_cursor"]
    again = await _page(client, f"limit=1&model=k2p5&cursor={one}")
    assert again["pagination"]["has_more"] is True and "cursor=" in again["links"]["next"]


async def test_page_and_per_page_are_offset_pages(client, seven):
    by_offset = (await _page(client, "limit=3&offset=3"))["data"]
    assert (await _page(client, "limit=3&page=2"))["data"] == by_offset
    assert (await _page(client, "per_page=3&page=2"))["data"] == by_offset
    assert (await _page(client, "per_page=3&limit=3&page=2"))["data"] == by_offset
    third = await _page(client, "per_page=3&page=3")
    assert len(third["data"]) == 1 and third["pagination"]["page"] == 3 and third["pagination"]["has_more"] is False
    assert (await _page(client, "page=9"))["data"] == []


@pytest.mark.parametrize("query, field", [
    ("page=0", "page"), ("page=-1", "page"), ("page=abc", "page"), ("page=1.5", "page"), ("page=%20", "page"),
    ("per_page=0", "per_page"), ("per_page=101", "per_page"), ("per_page=x", "per_page"),
    ("per_page=5&limit=6", "per_page"), ("page=2&offset=3", "page"), ("offset=3&cursor=abc", "cursor"),
    ("page=2&cursor=abc", "cursor"),
])
async def test_bad_page_forms_are_400(client, query, field):
    body = await _page(client, query, 400)
    assert body["error"]["type"] == "VALIDATION_ERROR"
    assert field in [d["field"] for d in body["error"]["details"]], body


def _b64(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _forged(cursor: str, **changes) -> str:
    data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    return _b64({**data, **changes})


async def test_bad_cursors_are_400_and_read_nothing(client, seven):
    good = (await _page(client, "limit=2"))["pagination"]["next_cursor"]
    bad = ["abc", "%%%", "=" * 4, _b64([1, 2]), _b64("x"), _b64(None), _b64({}), "x" * 600,
           base64.urlsafe_b64encode(b"\xff\xfe").decode(),
           *(_forged(good, v=v) for v in (None, True, "1", [1], {"a": 1})),
           *(_forged(good, r=r) for r in (None, True, "3", 1.5, -1, 2**63, [3])),
           _forged(good, l="0" * 24)]
    for cursor in bad:
        body = await _page(client, f"limit=2&cursor={cursor}", 400)
        assert body["error"]["details"][0]["field"] == "cursor", cursor
    # A cursor of another sort or other filters is not this listing's.
    await _page(client, f"limit=2&sort=cost&cursor={good}", 400)
    await _page(client, f"limit=2&model=k2p5&cursor={good}", 400)
    await _page(client, f"limit=2&sort=created_at&cursor={good}", 400)
    # The default sort spelled out is the same listing.
    assert (await _page(client, f"limit=2&sort=-created_at&cursor={good}"))["pagination"]["offset"] == 2
    # The limit may change between pages: it is not part of the listing.
    assert (await _page(client, f"limit=5&cursor={good}"))["pagination"]["offset"] == 2


async def test_a_cursor_from_another_key_s_listing_reveals_none_of_its_agents(aiohttp_client, tmp_path):
    cfg = auth_config(tmp_path, local_scopes=("agents:read", "agents:write"))
    client = await aiohttp_client(build_app(cfg))
    admin = bearer(bootstrap_key(cfg)["token"])

    async def key() -> dict[str, str]:
        made = await (await client.post("/api/keys", json={"name": "k", "scopes": ["agents:read", "agents:write"]},
                                        headers=admin)).json()
        return bearer(made["token"])

    a, b = await key(), await key()
    a_ids = [await _spawn(client, f"A {i}", headers=a) for i in range(3)]
    b_ids = [await _spawn(client, f"B {i}", headers=b) for i in range(2)]
    a_cursor = (await _page(client, "limit=1", headers=a))["pagination"]["next_cursor"]
    for headers in (b, None):  # another key, and the keyless local caller
        body = await _page(client, f"limit=1&cursor={a_cursor}", 400, headers=headers)
        assert not [i for i in a_ids if i in json.dumps(body)]
    # B forging a cursor for its own listing moves only within B's agents.
    b_cursor = (await _page(client, "limit=1", headers=b))["pagination"]["next_cursor"]
    for value in (1e300, -1e300, 0):
        body = await _page(client, f"limit=100&cursor={_forged(b_cursor, v=value, r=2**62)}", headers=b)
        assert {x["agent_id"] for x in body["data"]} <= set(b_ids)
        assert body["pagination"]["total"] == 2


async def test_a_forged_cursor_value_sqlite_cannot_bind_is_400_not_500(client, seven):
    """An integer beyond SQLite's 64 bits (OverflowError when bound) or text with a lone
    surrogate (not encodable as UTF-8) is no position of any listing: refused like any forgery."""
    good = (await _page(client, "limit=2"))["pagination"]["next_cursor"]
    for value in (2**63, -(2**63) - 1, 10**30, 10**309):  # 10**309: math.isfinite overflowed, a 500
        assert len(_forged(good, v=value)) <= 512  # not refused for its length alone
        body = await _page(client, f"limit=2&cursor={_forged(good, v=value)}", 400)
        assert body["error"]["details"][0]["field"] == "cursor", value
    text = (await _page(client, "limit=2&sort=model"))["pagination"]["next_cursor"]
    body = await _page(client, f"limit=2&sort=model&cursor={_forged(text, v=chr(0xD800))}", 400)
    assert body["error"]["details"][0]["field"] == "cursor"
