"""The Redis subsystem of the app: the broker and the shared rate limiter.

With ``REDIS_URL``: one client (one connection pool) for both, a
:class:`storage.broker.RedisBroker` at :data:`BROKER_KEY` and the Redis token
bucket as the app's limiter. Without it: a :class:`storage.broker.MemoryBroker` at
:data:`BROKER_KEY` (always set) and the in-memory limiter ``create_app`` installed.

Start order: registered right after the database, so the broker is in place before
the session actors start (their cleanup_ctx comes later). Shutdown runs backwards: the
actors flush (and publish) first, then the broker's reader stops and the client
closes, then the pool.

Redis outages never make requests fail here: the limiter falls back to the in-memory
bucket of this process for as long as Redis errors
(:class:`storage.ratelimit.SharedLimiter`); ``/readyz`` reports ``redis: degraded``
but stays ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from chat_storage.server import ratelimit
from chat_storage.server.settings import SETTINGS_KEY
from chat_storage.storage.broker import Broker, MemoryBroker, RedisBroker
from chat_storage.storage.ratelimit import RedisLimiter, SharedLimiter
from chat_storage.storage.redis_client import connect

log = logging.getLogger(__name__)

BROKER_KEY: web.AppKey[Broker] = web.AppKey("broker")
REDIS_KEY = web.AppKey("redis", Redis)  # absent when REDIS_URL is not set

PING_TIMEOUT_S = 0.5


async def status(app: web.Application) -> str | None:
    """``ok`` or ``degraded`` for ``/readyz``; ``None`` when Redis is not configured."""
    client = app.get(REDIS_KEY)
    if client is None:
        return None
    broker = app[BROKER_KEY]
    try:
        async with asyncio.timeout(PING_TIMEOUT_S):
            await client.ping()
    except (RedisError, OSError, TimeoutError):
        return "degraded"
    healthy = not isinstance(broker, RedisBroker) or broker.healthy
    return "ok" if healthy else "degraded"


def setup(app: web.Application) -> None:
    """Register the broker's (and Redis client's) lifecycle on ``app``."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS_KEY]
        if settings.redis_url is None:
            memory = MemoryBroker()
            app[BROKER_KEY] = memory
            yield
            await memory.close()
            return
        client = connect(settings.redis_url)
        broker = RedisBroker(client, prefix=settings.redis_prefix)
        limiter = RedisLimiter(client, prefix=settings.redis_prefix,
                               rate_per_s=settings.rate_limit_per_s,
                               burst=settings.rate_limit_burst)
        app[REDIS_KEY] = client
        app[BROKER_KEY] = broker
        app[ratelimit.LIMITER_KEY] = SharedLimiter(limiter, app[ratelimit.LIMITER_KEY])
        try:  # a Redis that is down at start is an outage like any other: start degraded
            async with asyncio.timeout(PING_TIMEOUT_S * 4):
                await client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis unreachable at start; running degraded",
                        extra={"error": repr(exc)})
        yield
        await broker.close()
        await client.aclose()

    app.cleanup_ctx.append(ctx)
