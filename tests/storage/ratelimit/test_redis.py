"""The Redis token bucket against the real Redis (``TEST_REDIS_URL``).

Time is injected (``now_ms``) where the arithmetic is checked, so nothing depends on
how fast the test runs; one test lets Redis's own clock refill the bucket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from chat_storage.storage.ratelimit import Decision, RateLimitUnavailable, RedisLimiter, decision
from chat_storage.storage.redis_client import connect
from chat_storage.supervisor import Supervisor
from tests.conftest import REDIS_URL
from tests.support.procs import RedisServer, free_port

T0 = 1_700_000_000_000.0  # an injected "now", in ms


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    c = connect(REDIS_URL)
    yield c
    await c.aclose()


def limiter(client: Redis, prefix: str, rate_per_s: float, burst: int) -> RedisLimiter:
    # a generous timeout: 200 concurrent takes share one pool on a busy test machine
    return RedisLimiter(client, tasks=Supervisor(), prefix=prefix, rate_per_s=rate_per_s,
                        burst=burst, timeout_s=10.0)


async def test_concurrent_takes_never_overspend(client: Redis, prefix: str) -> None:
    bucket = limiter(client, prefix, rate_per_s=0.001, burst=50)
    results = await asyncio.gather(*(bucket.take("k1") for _ in range(200)))
    assert sum(r.allowed for r in results) == 50
    denied = [r for r in results if not r.allowed]
    assert all(r.remaining == 0 and r.retry_after_s >= 1 for r in denied)
    assert (await bucket.take("k2")).allowed  # buckets are per key


async def _script_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha",
                                                                      "cmdstat_eval"))


async def test_concurrent_takes_share_round_trips_and_answer_in_arrival_order(
    client: Redis, prefix: str,
) -> None:
    bucket = limiter(client, prefix, rate_per_s=0.001, burst=50)
    calls = await _script_calls(client)
    results = await asyncio.gather(*(bucket.take("k") for _ in range(200)))
    used = await _script_calls(client) - calls
    assert 1 <= used < 200  # takes that came during a call went together in the next
    # exactly as if they had gone one by one, in the order they were asked
    assert [r.allowed for r in results] == [True] * 50 + [False] * 150
    assert [r.remaining for r in results[:50]] == list(range(49, -1, -1))


async def test_a_take_whose_caller_went_away_does_not_disturb_the_others(
    client: Redis, prefix: str,
) -> None:
    bucket = limiter(client, prefix, rate_per_s=0.001, burst=5)
    tasks = [asyncio.create_task(bucket.take("k")) for _ in range(10)]
    await asyncio.sleep(0)  # every take queued, the first call under way
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    answered = [r for i, r in enumerate(results) if i != 3]
    assert all(not isinstance(r, BaseException) for r in answered)
    assert sum(r.allowed for r in answered if not isinstance(r, BaseException)) <= 5


async def test_refill_follows_the_clock(client: Redis, prefix: str) -> None:
    bucket = limiter(client, prefix, rate_per_s=10.0, burst=5)
    taken = [await bucket.take("k", now_ms=T0) for _ in range(6)]
    assert [t.allowed for t in taken] == [True] * 5 + [False]
    assert [t.remaining for t in taken[:5]] == [4, 3, 2, 1, 0]
    assert taken[5].retry_after_s == 1
    assert taken[5].reset_s == 1  # 5 tokens at 10/s
    assert not (await bucket.take("k", now_ms=T0 + 50)).allowed  # half a token
    assert (await bucket.take("k", now_ms=T0 + 100)).allowed  # one whole token
    assert not (await bucket.take("k", now_ms=T0 + 100)).allowed
    full = await bucket.take("k", now_ms=T0 + 60_000)  # refill stops at burst
    assert full.allowed and full.remaining == 4
    back = await bucket.take("k", now_ms=T0 + 30_000)  # a clock that went back
    assert back.allowed and back.remaining == 3
    again = await bucket.take("k", now_ms=T0 + 60_000)
    assert again.remaining == 2  # ... and then forward again refills nothing twice


async def test_bucket_key_expires_when_it_would_be_full(client: Redis, prefix: str) -> None:
    bucket = limiter(client, prefix, rate_per_s=10.0, burst=5)
    await bucket.take("k", now_ms=T0)
    ttl_ms = await client.pttl(f"{prefix}:rl:k")
    assert 0 < ttl_ms <= 100  # one token missing, 10 tokens per second
    for _ in range(4):
        await bucket.take("k", now_ms=T0)
    assert 100 < await client.pttl(f"{prefix}:rl:k") <= 500


async def test_refill_uses_redis_time(client: Redis, prefix: str) -> None:
    bucket = limiter(client, prefix, rate_per_s=2.0, burst=1)
    assert (await bucket.take("k")).allowed
    denied = await bucket.take("k")
    assert not denied.allowed and denied.retry_after_s == 1
    # Redis's clock refills the bucket: poll until it does (bounded), no sleep-and-hope
    for _ in range(200):
        if (await bucket.take("k")).allowed:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the bucket never refilled")


async def test_script_reloads_after_redis_forgot_it(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis.log")
    await server.start()
    c = connect(server.url)
    try:
        bucket = limiter(c, "chat-test", rate_per_s=1.0, burst=3)
        assert (await bucket.take("k", now_ms=T0)).remaining == 2
        await c.script_flush()  # as after a restart or failover: EVALSHA gets NOSCRIPT
        assert (await bucket.take("k", now_ms=T0)).remaining == 1
    finally:
        await c.aclose()
        await server.kill()


async def test_outage_raises_a_narrow_error() -> None:
    c = connect(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        bucket = RedisLimiter(c, tasks=Supervisor(), prefix="chat-test", rate_per_s=1.0, burst=1)
        with pytest.raises(RateLimitUnavailable):
            await asyncio.wait_for(bucket.take("k"), timeout=20)
    finally:
        await c.aclose()


def test_decision_matches_the_header_arithmetic() -> None:
    assert decision(True, 4.5, 10, 2.0) == Decision(True, 10, 4, 3, 0, 2.0)
    assert decision(False, 0.25, 10, 2.0) == Decision(False, 10, 0, 5, 1, 2.0)
    assert decision(False, 0.0, 10, 0.1).retry_after_s == 10
