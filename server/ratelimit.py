"""Per-API-key token bucket. Every ``/api/v1`` response carries ``RateLimit-*`` headers.

The limiter is chosen at start: in memory for one process (this module), or shared
through Redis when ``REDIS_URL`` is set (see ``storage.ratelimit_redis``). Both answer
the same :class:`Decision`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol

from aiohttp import web

from chat_storage.server.errors import ApiError
from chat_storage.storage.ratelimit_redis import take_result
from chat_storage.storage.tenants import Principal


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of taking one token."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # seconds until one token is available (0 when allowed)


class Limiter(Protocol):
    """Takes one token from the bucket of ``key``."""

    async def take(self, key: str) -> Decision: ...


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


def decision(allowed: bool, tokens: float, burst: int, rate_per_s: float) -> Decision:
    """Build a :class:`Decision` from a bucket's tokens after the take."""
    return Decision(*take_result(allowed, tokens, burst, rate_per_s))  # one formula for both


LIMITER_KEY = web.AppKey("limiter", Limiter)
DECISION_KEY = web.RequestKey("ratelimit", Decision)


async def take_token(request: web.Request, principal: Principal) -> None:
    """Take a token for ``principal``'s key; 429 with ``Retry-After`` when there is none.

    Called by the API middleware (``server.middlewares``) after authentication.
    """
    result = await request.app[LIMITER_KEY].take(principal.key_id)
    request[DECISION_KEY] = result
    if not result.allowed:
        raise ApiError(429, "rate limit exceeded",
                       headers={"Retry-After": str(result.retry_after_s)})


def apply_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Copy the request's rate-limit decision into the response headers."""
    result = request.get(DECISION_KEY)
    if result is None:
        return
    response.headers["RateLimit-Limit"] = str(result.limit)
    response.headers["RateLimit-Remaining"] = str(result.remaining)
    response.headers["RateLimit-Reset"] = str(result.reset_s)


def setup(app: web.Application, limiter: Limiter) -> None:
    """Use ``limiter`` for every ``/api/v1`` request of ``app``."""
    app[LIMITER_KEY] = limiter
