"""The services of one process, built in dependency order and stopped in one place.

Start (:meth:`Services.open`), each step from the settings and what the steps before
it built, passed as constructor arguments:

1. the database: embedded or external Postgres, pool, durability check, migrations;
   this process's liveness lock, on one pooled connection (claims name it);
2. the object store: S3 or a local directory;
3. Redis, if configured: one client for the broker, the shared rate limit and ingestion;
   else the memory broker and the in-memory limiter;
4. live streaming, part one: the table of streams held here, the feeds' source and the
   fan-out (feeds, relay), which is the write path's ``CommitListener``;
5. the write path: the group committer and the session registry, which tells the
   fan-out of every commit; then live streaming, part two: the producers' streams
   (they write through the registry), the sweeper, and the hub in front of them all;
6. async ingestion (``CHAT_INGEST_MODE=async``): the ingest stream and its consumer;
7. maintenance every ``CHAT_MAINTENANCE_INTERVAL_S``.

A failure at step *k* closes what steps 1..k-1 opened. Shutdown is
:meth:`Services.close`, the only place its order is written; every step takes what
is left of one :class:`~chat_storage.runtime.deadline.Deadline`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from chat_storage.actors.live.fanout import Fanout
from chat_storage.actors.live.hub import Hub
from chat_storage.actors.live.sealing import Sealing
from chat_storage.actors.live.source import SessionSource
from chat_storage.actors.live.stream_state import HeldStreams
from chat_storage.actors.live.streams import Streams
from chat_storage.actors.live.sweeper import Sweeper
from chat_storage.actors.write.committer import Committer
from chat_storage.actors.write.ingest import IngestConsumer
from chat_storage.actors.write.registry import Registry
from chat_storage.actors.write.shared import SharedCommitter, SinkFactory
from chat_storage.runtime import config, maintenance
from chat_storage.runtime.database import close_pool, open_database
from chat_storage.runtime.deadline import Deadline
from chat_storage.runtime.keys import open_keyring
from chat_storage.runtime.objects import store_from_settings
from chat_storage.runtime.settings import Settings
from chat_storage.storage.broker import Broker, RedisBroker, open_broker
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.crypto.switch import check_configured
from chat_storage.storage.ingest import IngestStream
from chat_storage.storage.liveness import Liveness
from chat_storage.storage.objects import ObjectStore
from chat_storage.storage.privacy import Policies
from chat_storage.storage.ratelimit import Limiter, open_limiter
from chat_storage.storage.redis_client import connect
from chat_storage.supervisor import Supervisor

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 0.5


@dataclasses.dataclass(slots=True)
class Services:
    """Everything a process runs, wired; see the module docstring for the order."""

    settings: Settings
    tasks: Supervisor
    pool: asyncpg.Pool
    objects: ObjectStore
    redis: Redis | None
    broker: Broker
    limiter: Limiter
    registry: Registry
    hub: Hub
    ingest: IngestStream | None
    consumer: IngestConsumer | None
    privacy: Policies  # each tenant's PII redactor, for the write paths
    liveness: Liveness
    # opens and makes data keys; None when CHAT_ENCRYPTION_KEK is not set
    keyring: Keyring | None = None
    _intake_stopped: bool = False

    @classmethod
    async def open(cls, settings: Settings, *, sink: SinkFactory | None = None) -> Services:
        """Build and start every service; on failure, close what was opened and raise.

        ``sink``: what commits the session mailboxes' batches (default: the shared
        committer; ``loadtest/serve_direct.py`` swaps it to measure what it buys).
        """
        tasks = Supervisor()
        async with contextlib.AsyncExitStack() as undo:
            undo.push_async_callback(tasks.close, 0.0)  # last: whatever was started
            pool = await open_database(settings)
            undo.push_async_callback(close_pool, pool, 0.0)
            # a task: stopped with the others (step 5 of close), its connection released
            liveness = Liveness(pool, tasks=tasks, timeout_s=settings.db_acquire_timeout_s)
            liveness.start()
            objects = await store_from_settings(settings)
            undo.push_async_callback(objects.close)
            keyring = await open_keyring(settings)
            if keyring is not None:
                undo.push_async_callback(keyring.close)
            async with pool.acquire() as conn:
                await check_configured(conn, keyring is not None)
            redis, broker, limiter = await _open_redis(settings, tasks)
            undo.push_async_callback(broker.close)
            if redis is not None:
                undo.push_async_callback(redis.aclose)
            live = config.live(settings)
            held = HeldStreams()
            # encrypted tenants' events are sealed where they leave the process (Redis);
            # the memory broker is this process's memory, like the feeds it serves
            sealing = None if keyring is None or redis is None else Sealing(
                keyring, pool, tasks=tasks, acquire_timeout_s=live.stream.acquire_timeout_s)
            source = SessionSource(pool, broker, held,
                                   acquire_timeout_s=live.stream.acquire_timeout_s,
                                   keyring=keyring, sealing=sealing)
            fanout = Fanout(broker, source, held, live, tasks=tasks)
            write = config.write(settings)
            committer = (sink or SharedCommitter)(Committer(pool, write, keyring), write, tasks)
            registry = Registry(committer, write, tasks=tasks, listener=fanout,
                                idle_s=settings.actor_idle_s,
                                write_timeout_s=settings.write_timeout_s)
            privacy = Policies(pool, phone_region=settings.pii_phone_region,
                               ttl_s=settings.api_key_cache_s,
                               acquire_timeout_s=settings.db_acquire_timeout_s)
            streams = Streams(pool, live.stream, held, fanout.emit, writer=registry, tasks=tasks,
                              scrub=fanout.scrub, keyring=keyring)
            sweeper = Sweeper(streams, source, held, fanout.emit, live, tasks=tasks,
                              redactors=privacy.redactor, scrub=fanout.scrub)
            hub = Hub(fanout, streams, sweeper)
            registry.start()
            undo.push_async_callback(registry.close, 0.0)
            hub.start()
            undo.push_async_callback(hub.close, 0.0)
            ingest = consumer = None
            if settings.ingest_mode == "async":
                if redis is None:  # Settings refuses this; a clear error all the same
                    raise RuntimeError("async ingestion needs REDIS_URL")
                ingest = IngestStream(redis, prefix=settings.redis_prefix,
                                      max_backlog=settings.ingest_max_backlog, tasks=tasks)
                consumer = IngestConsumer(ingest, registry, pool, tasks=tasks,
                                          batch=settings.ingest_batch,
                                          claim_idle_s=settings.ingest_claim_idle_s,
                                          keyring=keyring)
                consumer.start()
                log.info("async ingestion on", extra={"consumer": consumer.name})
            if settings.maintenance_interval_s > 0:
                tasks.spawn(maintenance.every(pool, objects, settings, broker, keyring),
                            name="maintenance")
            undo.pop_all()  # started: from now on close() stops everything
        return cls(settings, tasks, pool, objects, redis, broker, limiter, registry, hub,
                   ingest, consumer, privacy, liveness, keyring)

    def stop_intake(self) -> None:
        """Step 1 of :meth:`close`, which the edge may take early (when its listeners
        close): refuse new writes (503) and stop reading the ingest stream. Queued
        writes are still committed and answered."""
        if self._intake_stopped:
            return
        self._intake_stopped = True
        self.registry.begin_shutdown()
        if self.consumer is not None:
            self.consumer.stop_reading()

    async def close(self, deadline: Deadline) -> None:
        """Stop everything, in this order, within ``deadline``."""
        # 1. no new work: writes refused, ingest stream no longer read
        self.stop_intake()
        # 2. the async-ingest batch under way commits through the registry and is acked
        if self.consumer is not None:
            await self.consumer.close(deadline.remaining_s)
        # 3. answers being streamed here are stored as interrupted, with all they
        #    received; the relay tells the other replicas what is left
        await self.hub.close(deadline.remaining_s)
        # 4. every session mailbox commits and every waiter is answered
        await self.registry.close(deadline.remaining_s)
        # 5. background jobs (maintenance, the liveness lock) end
        await self.tasks.close(deadline.remaining_s)
        # 6. the broker's reader stops, then the Redis client closes
        await deadline.run("broker", self.broker.close())
        if self.redis is not None:
            await deadline.run("redis", self.redis.aclose())
        # 7. the object store's client closes, and the KEK's (opened keys forgotten)
        await deadline.run("objects", self.objects.close())
        if self.keyring is not None:
            await deadline.run("keyring", self.keyring.close())
        # 8. last, the pool: whatever is still running is terminated
        await close_pool(self.pool, deadline.remaining_s)
        log.info("shutdown: services stopped", extra={"left_s": round(deadline.remaining_s, 3)})

    async def redis_status(self) -> str | None:
        """``ok`` or ``degraded`` for ``/readyz``; ``None`` when Redis is not configured."""
        if self.redis is None:
            return None
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                await self.redis.ping()
        except (RedisError, OSError, TimeoutError):
            return "degraded"
        healthy = not isinstance(self.broker, RedisBroker) or self.broker.healthy
        return "ok" if healthy else "degraded"


async def _open_redis(settings: Settings,
                      tasks: Supervisor) -> tuple[Redis | None, Broker, Limiter]:
    """The Redis client, broker and rate limiter; memory ones without ``REDIS_URL``."""
    client = None if settings.redis_url is None else connect(settings.redis_url)
    broker = open_broker(client, tasks=tasks, prefix=settings.redis_prefix)
    limiter = open_limiter(client, tasks=tasks, prefix=settings.redis_prefix,
                           rate_per_s=settings.rate_limit_per_s, burst=settings.rate_limit_burst)
    if client is not None:
        try:  # a Redis that is down at start is an outage like any other: start degraded
            async with asyncio.timeout(PING_TIMEOUT_S * 4):
                await client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis unreachable at start; running degraded",
                        extra={"error": repr(exc)})
    return client, broker, limiter
