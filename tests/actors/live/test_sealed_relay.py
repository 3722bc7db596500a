"""Two replicas' fan-outs in this process, on real Redis and Postgres: an encrypted
tenant's events cross Redis sealed and open on the other replica, in order, even when
that replica must first read the key; when the key cannot be read, nothing is published
(never plain text). A plain tenant's events stay plain (the scan sees them). The
sweeper recovers a dead replica's sealed deltas."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from chat_storage.actors.live import events, relay
from chat_storage.actors.live.config import HubConfig
from chat_storage.actors.live.fanout import Fanout
from chat_storage.actors.live.outbox import Outbox
from chat_storage.actors.live.sealing import Sealing
from chat_storage.actors.live.source import SessionSource
from chat_storage.actors.live.stream_state import HeldStreams, StreamConfig
from chat_storage.actors.live.streams import Streams
from chat_storage.actors.live.sweeper import Sweeper
from chat_storage.storage import db, sessions
from chat_storage.storage.broker import RedisBroker
from chat_storage.storage.crypto.kek import open_kek
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.ids import new_id
from chat_storage.storage.messages import NewMessage, WriteGroup
from chat_storage.supervisor import Supervisor
from tests.actors.conftest import MakeRegistry, metric, msg
from tests.conftest import REDIS_URL, Tenant
from tests.support.encryption import switched_off_after
from tests.support.redisscan import everything

CONFIG = HubConfig(send_queue=64, sweep=False, stream=StreamConfig(grace_s=60.0))


@pytest.fixture(autouse=True)
async def _encryption_off_afterwards(pool: asyncpg.Pool) -> AsyncIterator[None]:
    async for _ in switched_off_after(pool):
        yield


class Replica:
    """One replica's broker, sealing and fan-out (no HTTP)."""

    def __init__(self, pool: asyncpg.Pool, keyring: Keyring, prefix: str,
                 tasks: Supervisor) -> None:
        self.broker = RedisBroker.from_url(REDIS_URL, tasks=tasks, prefix=prefix)
        held = HeldStreams()
        self.sealing = Sealing(keyring, pool, tasks=tasks)
        self.source = SessionSource(pool, self.broker, held, keyring=keyring,
                                    sealing=self.sealing)
        self.fanout = Fanout(self.broker, self.source, held, CONFIG, tasks=tasks)
        self.fanout.start()

    async def close(self) -> None:
        await self.fanout.flush(5.0)
        await self.fanout.close()
        await self.broker.close()


async def frames_until(outbox: Outbox, n: int) -> list[dict[str, object]]:
    got: list[dict[str, object]] = []
    async with asyncio.timeout(10):
        while len(got) < n:
            got += [orjson.loads(f) for f in await outbox.take()]
    return got


async def test_an_encrypted_tenants_events_cross_redis_sealed_and_open_elsewhere(
        make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant,
        other_tenant: Tenant, tasks: Supervisor, prefix: str) -> None:
    await pool.execute("UPDATE tenants SET encrypted = true WHERE id = $1", tenant.id)
    kek = f"local:{secrets.token_hex(32)}"
    # two keyrings: B has never opened the key, so its listener must wait for it
    ring_a, ring_b = Keyring(await open_kek(kek)), Keyring(await open_kek(kek))
    a, b = Replica(pool, ring_a, prefix, tasks), Replica(pool, ring_b, prefix, tasks)
    redis = Redis.from_url(REDIS_URL)
    try:
        registry = await make_registry(listener=a.fanout)
        said = [f"said-{i}-{secrets.token_hex(8)}" for i in range(3)]
        shown = f"shown-{secrets.token_hex(8)}"
        async with pool.acquire() as conn:
            sid = uuid.UUID(str((await sessions.create(conn, tenant.id, user_id="u"))["id"]))
            psid = uuid.UUID(str((await sessions.create(conn, other_tenant.id,
                                                         user_id="u"))["id"]))
        outbox, plain_box = Outbox(64), Outbox(64)
        await b.fanout.subscribe((tenant.id, sid), outbox)
        await b.fanout.subscribe((other_tenant.id, psid), plain_box)
        for text in said:
            await registry.write(tenant.id, sid, msg(text))
        await registry.write(other_tenant.id, psid, msg(shown))
        got = await frames_until(outbox, 3)
        assert [f["message"]["content"] for f in got] == said  # type: ignore[index]
        assert (await frames_until(plain_box, 1))[0]["message"]["content"] == shown  # type: ignore[index]
        kept = await everything(redis, prefix)
        assert str(sid).encode() in kept  # its events are there, sealed
        for text in said:
            assert text.encode() not in kept
        assert shown.encode() in kept
    finally:
        await redis.aclose()
        await a.close()
        await b.close()
        await ring_a.close()
        await ring_b.close()


async def test_an_event_whose_key_cannot_be_read_is_not_published(
        make_registry: MakeRegistry, pool: asyncpg.Pool, database_url: str, tenant: Tenant,
        tasks: Supervisor, prefix: str) -> None:
    await pool.execute("UPDATE tenants SET encrypted = true WHERE id = $1", tenant.id)
    ring = Keyring(await open_kek(f"local:{secrets.token_hex(32)}"))
    gone = await db.create_pool(database_url, min_size=1, max_size=1)
    await gone.close()  # Postgres out of reach for the sealing: which key? unknown
    a = Replica(gone, ring, prefix, tasks)
    redis = Redis.from_url(REDIS_URL)
    try:
        registry = await make_registry(listener=a.fanout)
        async with pool.acquire() as conn:
            sid = uuid.UUID(str((await sessions.create(conn, tenant.id, user_id="u"))["id"]))
        said = f"said-{secrets.token_hex(8)}"
        before = metric("chat_broker_errors_total", reason="no_key")
        await registry.write(tenant.id, sid, msg(said))
        async with asyncio.timeout(10):
            while metric("chat_broker_errors_total", reason="no_key") == before:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await a.fanout.flush(5.0)
        assert said.encode() not in await everything(redis, prefix)
    finally:
        await redis.aclose()
        await a.close()
        await ring.close()


async def test_the_sweeper_recovers_a_dead_replicas_sealed_deltas(
        make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant, tasks: Supervisor,
        prefix: str) -> None:
    await pool.execute("UPDATE tenants SET encrypted = true WHERE id = $1", tenant.id)
    kek = f"local:{secrets.token_hex(32)}"
    ring_dead, ring = Keyring(await open_kek(kek)), Keyring(await open_kek(kek))
    a = Replica(pool, ring, prefix, tasks)
    redis = Redis.from_url(REDIS_URL)
    try:
        registry = await make_registry(listener=a.fanout)
        async with pool.acquire() as conn:
            sid = uuid.UUID(str((await sessions.create(conn, tenant.id, user_id="u"))["id"]))
        key, message_id = (tenant.id, sid), new_id()
        await registry.write(tenant.id, sid, WriteGroup([NewMessage(
            id=message_id, role="assistant", content="", status="streaming")]))
        # its replica died after a checkpoint; what it streamed since is in Redis, sealed
        head, tail = "checkpointed ", f"lost-{secrets.token_hex(8)}"
        await pool.execute("UPDATE messages SET content = $2, stream_seen_at = now() - "
                           "interval '1 hour' WHERE id = $1", message_id, head)
        dead = Sealing(ring_dead, pool, tasks=tasks)
        delta = events.delta(str(message_id), len(head), tail)
        [sealed] = await dead.envelopes(b"dead", [(key, delta)])
        assert sealed is not None and tail.encode() not in sealed
        await a.broker.publish(relay.channel(key), sealed)
        streams = Streams(pool, CONFIG.stream, HeldStreams(), a.fanout.emit, writer=registry,
                          tasks=tasks)
        sweeper = Sweeper(streams, a.source, HeldStreams(), a.fanout.emit, CONFIG,
                          tasks=tasks)
        assert await sweeper.sweep() == 1
        row = await pool.fetchrow("SELECT status, content FROM messages WHERE id = $1",
                                  message_id)
        assert (row["status"], row["content"]) == ("interrupted", head + tail)
    finally:
        await redis.aclose()
        await a.close()
        await ring.close()
        await ring_dead.close()
