"""GET /rate-limits' ``used`` counts the calls of the last window (issue 18: the dashboard's
"Used / limit" showed a token bucket's level, which refills within seconds at 10,000 an hour,
so a provider that was just called looked unused)."""

from __future__ import annotations

from j1mskyd.app import build_app
from j1mskyd.ratelimit import CALL_SLOTS, Buckets, Limit
from tests.conftest import Clock, make_config, wait_status


def test_buckets_count_calls_over_the_window_while_the_level_refills():
    clock = Clock(1_000_000.0)
    buckets = Buckets(clock)
    hourly = Limit(60, 3600.0)  # one token back a minute
    for _ in range(3):
        assert buckets.take("provider:p", hourly).allowed
    assert buckets.calls("provider:p", hourly) == 3
    clock.t += 1800  # half an hour: the bucket is full again, the calls are still in the hour
    assert buckets.peek("provider:p", hourly).remaining == 60
    assert buckets.calls("provider:p", hourly) == 3
    buckets.take_each((("key:a:spawn", hourly), ("ip:1:spawn", hourly)))  # both buckets of a request
    assert buckets.calls("key:a:spawn", hourly) == buckets.calls("ip:1:spawn", hourly) == 1
    clock.t += 1800 + 3600 / CALL_SLOTS  # the first three are now older than the hour
    assert buckets.calls("provider:p", hourly) == 0
    assert buckets.calls("key:a:spawn", hourly) == 1
    assert buckets.calls("never:called", hourly) == 0
    refused = Limit(1, 3600.0)
    buckets.take("tight", refused)
    assert not buckets.take("tight", refused).allowed  # a refusal is not a call
    assert buckets.calls("tight", refused) == 1


def test_pruning_forgets_counts_only_once_their_window_passed():
    clock = Clock(1_000_000.0)
    buckets = Buckets(clock)
    hourly = Limit(60, 3600.0)
    buckets.take("ip:9:other", hourly)
    clock.t += 120  # full again: the bucket goes, its call stays counted
    buckets.prune(lambda key: hourly)
    assert len(buckets) == 0 and buckets.calls("ip:9:other", hourly) == 1
    clock.t += 3600
    buckets.prune(lambda key: hourly)
    assert buckets._calls == {}  # nothing kept for an address that passed by


async def test_rate_limits_used_is_the_calls_of_the_hour(aiohttp_client, tmp_path):
    clock = Clock(1_800_000_000.0)
    cfg = make_config(tmp_path)
    client = await aiohttp_client(build_app(cfg, clock=clock))
    for _ in range(2):
        resp = await client.post("/api/spawn", json={"model": "k2p5", "task": "count me"})
        await wait_status(client, (await resp.json())["agent_id"])
    clock.t += 600  # ten minutes: the offline provider's bucket (10,000 an hour) is long full again
    body = await (await client.get("/api/rate-limits")).json()
    offline = body["limits"]["offline"]
    assert offline["remaining"] == offline["limit"]
    assert offline["used"] == 2  # was limit - remaining: 0
    assert body["requests"]["spawn"]["used"] == 2
    clock.t += 3600
    body = await (await client.get("/api/rate-limits")).json()
    assert body["limits"]["offline"]["used"] == 0 and body["requests"]["spawn"]["used"] == 0



def test_after_a_restart_used_is_at_least_what_the_saved_bucket_lacks():
    clock = Clock(1_000_000.0)
    before = Buckets(clock)
    hourly = Limit(60, 3600.0)
    for _ in range(5):
        before.take("provider:p", hourly)
    after = Buckets(clock)
    after.load(before.dump())  # a restart: the levels are saved, the counts are not
    assert after.calls("provider:p", hourly) == 0 and after.used("provider:p", hourly) == 5
    assert before.used("provider:p", hourly) == 5
