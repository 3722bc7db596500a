"""Failed authentications, throttled per client address.

Checking a credential that is not in the key cache costs a database query (a key, a
ticket) or a signature check and maybe a query (a token), so an address guessing keys
would cost the database one query per guess. Each address has a bucket of
``CHAT_AUTH_FAILURE_BURST`` failures refilled at ``CHAT_AUTH_FAILURES_PER_S``; a failure
(a credential presented and refused) takes one, and while the bucket is empty that
address's credentials are not looked up: 429 with ``Retry-After``. A key already in the
cache is still accepted (it costs nothing), so clients behind the same proxy with
known-good keys keep working.

In this process only: the point is each process's database load, and a shared store
would cost a Redis round trip on the path it protects.
The address is the socket's peer; behind a proxy it is the proxy's, so raise the burst
there.
"""

from __future__ import annotations

import math
import time

from aiohttp import web

from chat_storage.server.errors import ApiError


class AuthThrottle:
    """A bucket of allowed failures per address (at most ``max_addresses`` kept)."""

    def __init__(self, rate_per_s: float, burst: int, max_addresses: int = 100_000) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_addresses = max_addresses
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (float(self.burst), now))
        return min(float(self.burst), tokens + max(0.0, now - at) * self.rate_per_s)

    def check(self, address: str | None) -> None:
        """429 while ``address`` has no failure left."""
        if address is None:
            return
        tokens = self._tokens(address, time.monotonic())
        if tokens < 1.0:
            retry_s = max(1, math.ceil((1.0 - tokens) / self.rate_per_s))
            raise ApiError(429, "too many failed authentications from this address; "
                                "retry later", headers={"Retry-After": str(retry_s)})

    def failed(self, address: str | None) -> None:
        """Count a refused credential of ``address``."""
        if address is None:
            return
        now = time.monotonic()
        tokens = self._tokens(address, now)
        if len(self._buckets) >= self.max_addresses and address not in self._buckets:
            self._buckets.clear()  # a flood of addresses must not grow memory
        self._buckets[address] = (max(0.0, tokens - 1.0), now)


AUTH_THROTTLE_KEY = web.AppKey("auth_throttle", AuthThrottle)
