"""Token buckets in this process: the limiter without Redis, and its fallback."""

from __future__ import annotations

import time

from chat_storage.storage.ratelimit.base import Decision, check_limits, decision


class MemoryLimiter:
    """Token buckets in this process: ``rate_per_s`` refill, ``burst`` capacity (the
    defaults; a take may give its own)."""

    def __init__(self, rate_per_s: float, burst: int, max_keys: int = 100_000) -> None:
        check_limits(rate_per_s, burst)
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    async def take(self, key: str, *, rate_per_s: float | None = None,
                   burst: int | None = None) -> Decision:
        rate_per_s = self.rate_per_s if rate_per_s is None else rate_per_s
        burst = self.burst if burst is None else burst
        check_limits(rate_per_s, burst)
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (float(burst), now))
        # a lowered burst caps what the bucket holds at once; a new rate refills from now
        tokens = min(float(burst), tokens + max(0.0, now - at) * rate_per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._buckets.clear()  # a flood of distinct keys must not grow memory
        self._buckets[key] = (tokens, now)
        return decision(allowed, tokens, burst, rate_per_s)
