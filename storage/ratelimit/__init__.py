"""Rate limiting: a token bucket per key, in memory or shared by replicas through Redis.

The interface is in :mod:`.base`; :mod:`.memory` keeps buckets in this process,
:mod:`.redis` in Redis, and :mod:`.fallback` uses Redis but answers from memory while
Redis fails. :func:`open_limiter` picks one.
"""

from __future__ import annotations

from redis.asyncio import Redis

from chat_storage.storage.ratelimit.base import (
    Decision,
    Limiter,
    RateLimitUnavailable,
    decision,
)
from chat_storage.storage.ratelimit.fallback import SharedLimiter
from chat_storage.storage.ratelimit.memory import MemoryLimiter
from chat_storage.storage.ratelimit.redis import RedisLimiter
from chat_storage.supervisor import Supervisor

__all__ = ["Decision", "Limiter", "MemoryLimiter", "RateLimitUnavailable", "RedisLimiter",
           "SharedLimiter", "decision", "open_limiter"]


def open_limiter(client: Redis | None, *, tasks: Supervisor, prefix: str, rate_per_s: float,
                 burst: int) -> Limiter:
    """In memory if ``client`` is ``None``; else the buckets in Redis under ``prefix``,
    falling back to memory while Redis fails. The limiter does not own ``client``."""
    memory = MemoryLimiter(rate_per_s, burst)
    if client is None:
        return memory
    return SharedLimiter(RedisLimiter(client, tasks=tasks, prefix=prefix,
                                      rate_per_s=rate_per_s, burst=burst), memory)
