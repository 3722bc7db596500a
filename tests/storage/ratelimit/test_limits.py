"""Limits given per take (a tenant's or key's override): memory, Redis and the fallback.

Redis is the real one (``TEST_REDIS_URL``); Redis takes inject ``now_ms`` so the
arithmetic does not depend on how fast the test runs.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from chat_storage.storage.ratelimit import MemoryLimiter, RedisLimiter, SharedLimiter
from chat_storage.storage.redis_client import connect
from chat_storage.supervisor import Supervisor
from tests.conftest import REDIS_URL

T0 = 1_700_000_000_000.0


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    c = connect(REDIS_URL)
    yield c
    await c.aclose()


def redis_limiter(client: Redis, prefix: str) -> RedisLimiter:
    # defaults far from what the takes ask for: a take that ignored its limits would show
    return RedisLimiter(client, tasks=Supervisor(), prefix=prefix, rate_per_s=1000.0,
                        burst=1000, timeout_s=10.0)


async def test_memory_takes_use_the_limits_they_are_given() -> None:
    limiter = MemoryLimiter(rate_per_s=1000.0, burst=1000)
    small = [await limiter.take("a", rate_per_s=0.001, burst=2) for _ in range(3)]
    assert [d.allowed for d in small] == [True, True, False]
    assert {(d.limit, d.rate_per_s) for d in small} == {(2, 0.001)}
    large = [await limiter.take("b", rate_per_s=0.001, burst=5) for _ in range(6)]
    assert [d.allowed for d in large] == [True] * 5 + [False]
    default = await limiter.take("c")
    assert (default.limit, default.rate_per_s, default.remaining) == (1000, 1000.0, 999)


async def test_memory_bucket_adapts_when_its_limits_change() -> None:
    limiter = MemoryLimiter(rate_per_s=1000.0, burst=1000)
    assert (await limiter.take("k", rate_per_s=0.001, burst=10)).remaining == 9
    lowered = await limiter.take("k", rate_per_s=0.001, burst=3)  # 9 left, capped at 3
    assert (lowered.allowed, lowered.remaining, lowered.limit) == (True, 2, 3)
    raised = await limiter.take("k", rate_per_s=0.001, burst=10)  # keeps its 2, no gift
    assert (raised.allowed, raised.remaining, raised.limit) == (True, 1, 10)


@pytest.mark.parametrize("rate, burst", [(0.0, 1), (-1.0, 1), (1.0, 0), (float("nan"), 1)])
async def test_limits_must_be_positive(client: Redis, prefix: str, rate: float,
                                       burst: int) -> None:
    with pytest.raises(ValueError):
        await MemoryLimiter(1.0, 1).take("k", rate_per_s=rate, burst=burst)
    with pytest.raises(ValueError):
        await redis_limiter(client, prefix).take("k", rate_per_s=rate, burst=burst)


async def test_redis_takes_use_the_limits_they_are_given(client: Redis, prefix: str) -> None:
    bucket = redis_limiter(client, prefix)
    small = [await bucket.take("a", rate_per_s=10.0, burst=2, now_ms=T0) for _ in range(3)]
    assert [d.allowed for d in small] == [True, True, False]
    assert {(d.limit, d.rate_per_s) for d in small} == {(2, 10.0)}
    # the rate given refills: 10/s is one token per 100 ms
    assert not (await bucket.take("a", rate_per_s=10.0, burst=2, now_ms=T0 + 50)).allowed
    assert (await bucket.take("a", rate_per_s=10.0, burst=2, now_ms=T0 + 100)).allowed
    large = [await bucket.take("b", rate_per_s=10.0, burst=5, now_ms=T0) for _ in range(6)]
    assert [d.allowed for d in large] == [True] * 5 + [False]
    default = await bucket.take("c", now_ms=T0)
    assert (default.limit, default.remaining) == (1000, 999)


async def test_redis_bucket_adapts_when_its_limits_change(client: Redis, prefix: str) -> None:
    bucket = redis_limiter(client, prefix)
    assert (await bucket.take("k", rate_per_s=1.0, burst=10, now_ms=T0)).remaining == 9
    lowered = await bucket.take("k", rate_per_s=1.0, burst=3, now_ms=T0)  # 9 capped at 3
    assert (lowered.allowed, lowered.remaining, lowered.limit) == (True, 2, 3)
    raised = await bucket.take("k", rate_per_s=1.0, burst=10, now_ms=T0)  # keeps its 2
    assert (raised.allowed, raised.remaining) == (True, 1)
    # a new rate refills from then on: 2 s at 0.5/s is one token
    slower = await bucket.take("k", rate_per_s=0.5, burst=10, now_ms=T0 + 2000)
    assert (slower.allowed, slower.remaining) == (True, 1)


async def test_the_fallback_uses_the_same_limits(prefix: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = connect(f"redis://127.0.0.1:{port}/0")  # nothing listens there
    try:
        limiter = SharedLimiter(
            RedisLimiter(down, tasks=Supervisor(), prefix=prefix, rate_per_s=1000.0,
                         burst=1000, timeout_s=2.0),
            MemoryLimiter(1000.0, 1000))
        answers = [await limiter.take("k", rate_per_s=0.001, burst=2) for _ in range(3)]
        assert limiter.failing
        assert [(d.allowed, d.limit) for d in answers] == [(True, 2), (True, 2), (False, 2)]
    finally:
        await down.aclose()
