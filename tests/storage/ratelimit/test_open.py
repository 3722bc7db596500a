"""open_limiter picks the limiter; the shared one falls back to memory while Redis fails."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from chat_storage.storage.ratelimit import (
    MemoryLimiter,
    RedisLimiter,
    SharedLimiter,
    open_limiter,
)
from chat_storage.storage.redis_client import connect
from chat_storage.supervisor import Supervisor
from tests.conftest import REDIS_URL
from tests.support.procs import free_port


async def test_without_redis_the_limiter_is_in_memory() -> None:
    limiter = open_limiter(None, tasks=Supervisor(), prefix="chat-test", rate_per_s=1.0, burst=2)
    assert isinstance(limiter, MemoryLimiter)
    assert [(await limiter.take("k")).allowed for _ in range(3)] == [True, True, False]


async def test_with_redis_the_limiter_is_shared_with_a_memory_fallback(prefix: str) -> None:
    client = connect(REDIS_URL)
    try:
        limiter = open_limiter(client, tasks=Supervisor(), prefix=prefix, rate_per_s=0.001, burst=2)
        assert isinstance(limiter, SharedLimiter)
        assert isinstance(limiter.shared, RedisLimiter)
        assert isinstance(limiter.fallback, MemoryLimiter)
        assert [(await limiter.take("k")).remaining for _ in range(2)] == [1, 0]
        assert await client.exists(f"{prefix}:rl:k")
    finally:
        await client.delete(f"{prefix}:rl:k")
        await client.aclose()


async def test_redis_down_answers_from_memory_and_counts(
        caplog: pytest.LogCaptureFixture) -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        limiter = open_limiter(client, tasks=Supervisor(), prefix="chat-test",
                               rate_per_s=0.001, burst=2)
        before = REGISTRY.get_sample_value("chat_ratelimit_fallback_total") or 0.0
        answers = [(await limiter.take("k")).allowed for _ in range(3)]
        after = REGISTRY.get_sample_value("chat_ratelimit_fallback_total") or 0.0
        assert answers == [True, True, False]  # still limited, by this process's bucket
        assert after - before == 3
        warnings = [r for r in caplog.records
                    if r.getMessage() == "shared rate limit unavailable; limiting in memory"]
        assert len(warnings) == 1  # once per change of state, not per take
    finally:
        await client.aclose()
