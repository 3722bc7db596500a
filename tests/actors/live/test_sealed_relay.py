"""Two replicas' fan-outs in this process, on real Redis and Postgres: an encrypted
tenant's events cross Redis sealed and open on the other replica, in order, even when
that replica must first read the key; when the key cannot be read, nothing is published
(never plain text). A plain tenant's events stay plain (the scan sees them)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from chat_storage.actors.live.config import HubConfig
from chat_storage.actors.live.fanout import Fanout
from chat_storage.actors.live.outbox import Outbox
from chat_storage.actors.live.sealing import Sealing
from chat_storage.actors.live.source import SessionSource
from chat_storage.actors.live.stream_state import HeldStreams
from chat_storage.storage import db, sessions
from chat_storage.storage.broker import RedisBroker
from chat_storage.storage.crypto.kek import open_kek
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.supervisor import Supervisor
from tests.actors.conftest import MakeRegistry, metric, msg
from tests.conftest import REDIS_URL, Tenant
from tests.support.encryption import switched_off_after
from tests.support.redisscan import everything

CONFIG = HubConfig(send_queue=64, sweep=False)


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
        source = SessionSource(pool, self.broker, held, keyring=keyring, sealing=self.sealing)
        self.fanout = Fanout(self.broker, source, held, CONFIG, tasks=tasks)
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
