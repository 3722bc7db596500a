"""The Redis client of this service: one per process, shared by the broker, the rate
limiter and async ingestion (see :mod:`storage.redis_keys` for every key they use)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff


def connect(url: str, *, socket_timeout_s: float = 5.0, connect_timeout_s: float = 2.0,
            max_connections: int = 64) -> Redis:
    """A client for ``url`` that fails fast instead of retrying for seconds.

    One quick retry, so a pooled connection left stale by a Redis restart costs no
    error; a bounded pool that waits (at most ``socket_timeout_s``) for a free connection
    rather than failing under a burst. No I/O happens until the first command.
    """
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=socket_timeout_s,
        socket_timeout=socket_timeout_s, socket_connect_timeout=connect_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
