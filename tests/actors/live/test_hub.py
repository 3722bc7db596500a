"""The hub, feeds and subscriptions against the real Postgres, without the HTTP edge."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

from chat_storage.actors import events
from chat_storage.actors.committer import ActorConfig
from chat_storage.actors.hub import Hub, HubConfig
from chat_storage.actors.registry import Registry
from chat_storage.actors.stream_state import StreamConfig
from chat_storage.actors.subscriber import Outbox, Subscription
from chat_storage.storage import sessions
from chat_storage.storage.broker import MemoryBroker
from chat_storage.storage.ids import new_id
from chat_storage.storage.messages import NewMessage, WriteGroup
from tests.conftest import Tenant


@pytest.fixture
async def registry(pool: asyncpg.Pool) -> AsyncIterator[Registry]:
    reg = Registry(pool, ActorConfig())
    reg.start()
    yield reg
    await reg.close(5.0)


@pytest.fixture
async def hub(pool: asyncpg.Pool, registry: Registry) -> AsyncIterator[Hub]:
    h = Hub(pool, MemoryBroker(), registry.write,
            HubConfig(send_queue=64, sweep=False, stream=StreamConfig(grace_s=60.0)))
    registry.on_commit = h.on_commit
    h.start()
    yield h
    await h.close(5.0)


async def _session(pool: asyncpg.Pool, tenant: Tenant) -> uuid.UUID:
    async with pool.acquire() as conn:
        return uuid.UUID(str((await sessions.create(conn, tenant.id, user_id="u"))["id"]))


async def _frames(outbox: Outbox, n: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while len(got) < n:
            got += [orjson.loads(f) for f in await outbox.take()]
    return got


def test_subscription_drops_duplicates_and_trims_overlaps() -> None:
    outbox = Outbox(100)
    sub = Subscription(outbox)
    sub.go_live()
    message = {"id": "m1", "seq": 1, "role": "assistant", "status": "streaming"}
    sub.offer(events.started(message))
    sub.offer(events.started(message))  # a duplicate
    sub.offer(events.delta("m1", 0, "abc"))
    sub.offer(events.delta("m1", 1, "bcdef"))  # overlaps: only "def" is new
    sub.offer(events.delta("m1", 2, "cd"))  # nothing new
    sub.offer(events.delta("m1", 9, "zz"))  # a hole: never sent
    assert sub.position() == "1,1:6"
    sent = [orjson.loads(f) for f in outbox._items]
    assert [(f["type"], f.get("offset"), f.get("delta")) for f in sent] == [
        ("stream.started", None, None), ("stream.delta", 0, "abc"), ("stream.delta", 3, "def")]
    final = dict(message, status="complete", content="abcdef")
    sub.offer(events.final(final))
    sub.offer(events.final(final))
    assert sub.position() == "1" and len(outbox) == 4


def test_outbox_cuts_instead_of_growing() -> None:
    cut: list[bool] = []
    outbox = Outbox(2, on_overflow=lambda: cut.append(True))
    assert outbox.put(b"1") and outbox.put(b"2")
    assert not outbox.put(b"3")
    assert cut == [True] and outbox.overflowed and outbox.closed and len(outbox) == 0
    assert not outbox.put(b"4", force=True)


async def test_feed_fills_a_hole_from_postgres(
    hub: Hub, registry: Registry, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    session_id = await _session(pool, tenant)
    key = (tenant.id, session_id)
    outbox = Outbox(64)
    await hub.subscribe(key, outbox)
    # commits this process is not told of (as if another replica made them, and its
    # events were lost on the way)
    registry.on_commit = None
    for text in ("one", "two"):
        await registry.write(tenant.id, session_id, WriteGroup(
            [NewMessage(id=new_id(), role="user", content=text)]))
    registry.on_commit = hub.on_commit
    await registry.write(tenant.id, session_id, WriteGroup(
        [NewMessage(id=new_id(), role="user", content="three")]))
    got = await _frames(outbox, 3)
    assert [(f["message"]["seq"], f["message"]["content"]) for f in got] == [
        (1, "one"), (2, "two"), (3, "three")]


async def test_sweeper_interrupts_streams_whose_owner_died(
    hub: Hub, registry: Registry, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    session_id = await _session(pool, tenant)
    key = (tenant.id, session_id)
    message_id = new_id()
    # a streaming row no process holds, last touched long ago: its replica died
    await registry.write(tenant.id, session_id, WriteGroup([NewMessage(
        id=message_id, role="assistant", content="", status="streaming")]))
    async with pool.acquire() as conn:
        await conn.execute("UPDATE messages SET content = 'half', stream_seen_at = now() - "
                           "interval '1 hour' WHERE id = $1", message_id)
    outbox = Outbox(64)
    await hub.subscribe(key, outbox)
    got = await _frames(outbox, 2)
    assert [f["type"] for f in got] == ["stream.started", "stream.snapshot"]
    assert got[1]["content"] == "half"
    assert await hub.sweep() >= 1
    final = (await _frames(outbox, 1))[0]
    assert final["type"] == "stream.interrupted"
    assert final["message"]["status"] == "interrupted" and final["message"]["content"] == "half"


async def test_streams_survive_their_owner_for_the_grace_period(
    hub: Hub, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    session_id = await _session(pool, tenant)
    key = (tenant.id, session_id)

    class Owner:
        closed = False

    first, second = Owner(), Owner()
    row = await hub.streams.start(key, first, NewMessage(
        id=new_id(), role="assistant", content="", status="streaming"))
    stream_id = str(row["id"])
    hub.streams.delta(key, stream_id, first, "kept ")
    first.closed = True
    hub.streams.release(first)
    assert hub.in_use(key)
    assert hub.streams.resume(key, stream_id, second) == 5
    hub.streams.delta(key, stream_id, second, "going")
    message = await hub.streams.end(key, stream_id, second, usage={"completion_tokens": 2})
    assert message["content"] == "kept going" and message["status"] == "complete"
    assert not hub.in_use(key)
