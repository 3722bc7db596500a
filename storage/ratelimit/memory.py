"""Token buckets in this process: the limiter without Redis, and its fallback."""

from __future__ import annotations

import time

from chat_storage.storage.ratelimit.base import Decision, decision


class MemoryLimiter:
    """Token buckets in this process: ``rate_per_s`` refill, ``burst`` capacity."""

    def __init__(self, rate_per_s: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    async def take(self, key: str) -> Decision:
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._buckets.clear()  # a flood of distinct keys must not grow memory
        self._buckets[key] = (tokens, now)
        return decision(allowed, tokens, self.burst, self.rate_per_s)
