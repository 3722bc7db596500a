"""Rate limiting's interface: take one token from a key's bucket, get a :class:`Decision`.

Every limiter is a token bucket per key: ``rate_per_s`` refill, ``burst`` capacity.
Both are given per take (a tenant's or key's override), else the limiter's defaults;
a bucket whose limits change keeps its tokens, refills at the new rate from then on
and never holds more than the new burst.
:func:`decision` is the one formula that turns a bucket's tokens after a take into
what the caller reports (``RateLimit-*`` and ``Retry-After`` headers, in ``server/``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol

from chat_storage.storage.errors import StorageError


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of taking one token."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # seconds until one token is available (0 when allowed)
    rate_per_s: float  # the refill this take used (``limit`` is the burst it used)


class RateLimitUnavailable(StorageError):
    """The shared store did not answer the take in time; the caller picks a fallback."""


class Limiter(Protocol):
    """Takes one token from the bucket of ``key`` (``rate_per_s``/``burst``: its limits,
    ``None``: the limiter's defaults)."""

    async def take(self, key: str, *, rate_per_s: float | None = None,
                   burst: int | None = None) -> Decision: ...


def check_limits(rate_per_s: float, burst: int) -> None:
    """``ValueError`` unless both are greater than 0 (a bucket that never refills or
    holds nothing would refuse every request forever)."""
    if not rate_per_s > 0 or burst <= 0:
        raise ValueError("rate_per_s and burst must be greater than 0")


def decision(allowed: bool, tokens: float, burst: int, rate_per_s: float) -> Decision:
    """Build a :class:`Decision` from a bucket's tokens after the take."""
    reset_s = math.ceil((burst - tokens) / rate_per_s)
    retry_s = 0 if allowed else max(1, math.ceil((1.0 - tokens) / rate_per_s))
    return Decision(allowed, burst, int(tokens), reset_s, retry_s, rate_per_s)
