"""The shared limiter that never fails a request: Redis, or memory while Redis fails.

Redis outages never make requests fail: the limiter falls back to the in-memory
bucket of this process for as long as Redis errors (fail open, still bounded per
process — refusing every request because Redis is down would turn a cache outage into
a full outage), logged on each change of state and counted.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from chat_storage.storage.ratelimit.base import Decision, Limiter, RateLimitUnavailable
from chat_storage.storage.ratelimit.redis import RedisLimiter

log = logging.getLogger(__name__)

FALLBACKS = Counter(
    "chat_ratelimit_fallback_total", "Rate-limit takes answered in memory because Redis failed"
)


class SharedLimiter:
    """The Redis token bucket; this process's in-memory one while Redis fails."""

    def __init__(self, shared: RedisLimiter, fallback: Limiter) -> None:
        self.shared = shared
        self.fallback = fallback
        self.failing = False

    async def take(self, key: str, *, rate_per_s: float | None = None,
                   burst: int | None = None) -> Decision:
        """Take a token from the shared bucket of ``key`` (or the local one, see above),
        with the same limits either way."""
        try:
            result = await self.shared.take(key, rate_per_s=rate_per_s, burst=burst)
        except RateLimitUnavailable as exc:
            FALLBACKS.inc()
            if not self.failing:
                log.warning("shared rate limit unavailable; limiting in memory",
                            extra={"error": repr(exc.__cause__)})
            self.failing = True
            return await self.fallback.take(key, rate_per_s=rate_per_s, burst=burst)
        if self.failing:
            log.info("shared rate limit available again")
        self.failing = False
        return result
