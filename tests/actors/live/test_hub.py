"""The hub, feeds and subscriptions against the real Postgres, without the HTTP edge.

The live side is built as the composition root builds it: the fan-out first (the
registry's commit listener), then the registry, then the producers' streams (which
write through it), the sweeper and the hub.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

from chat_storage.actors.live.config import HubConfig
from chat_storage.actors.live.fanout import Fanout
from chat_storage.actors.live.hub import Hub
from chat_storage.actors.live.outbox import Outbox
from chat_storage.actors.live.source import SessionSource
from chat_storage.actors.live.stream_state import HeldStreams, StreamConfig
from chat_storage.actors.live.streams import Streams
from chat_storage.actors.live.sweeper import Sweeper
from chat_storage.actors.write.registry import Registry
from chat_storage.storage import sessions
from chat_storage.storage.broker import MemoryBroker
from chat_storage.storage.ids import new_id
from chat_storage.storage.messages import NewMessage, WriteGroup
from chat_storage.storage.records import SessionKey
from chat_storage.storage.writes import Stored
from chat_storage.supervisor import Supervisor
from tests.actors.conftest import MakeRegistry
from tests.conftest import Tenant

CONFIG = HubConfig(send_queue=64, sweep=False, stream=StreamConfig(grace_s=60.0))


class Muted:
    """The fan-out as the registry's commit listener, with a switch to stop telling it."""

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self.muted = False

    def on_commit(self, key: SessionKey, stored: Stored) -> None:
        if not self.muted:
            self.fanout.on_commit(key, stored)

    def in_use(self, key: SessionKey) -> bool:
        return self.fanout.in_use(key)


@pytest.fixture
def held() -> HeldStreams:
    return HeldStreams()


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def source(pool: asyncpg.Pool, broker: MemoryBroker, held: HeldStreams) -> SessionSource:
    return SessionSource(pool, broker, held)


@pytest.fixture
def fanout(broker: MemoryBroker, source: SessionSource, held: HeldStreams,
           tasks: Supervisor) -> Fanout:
    return Fanout(broker, source, held, CONFIG, tasks=tasks)


@pytest.fixture
def listener(fanout: Fanout) -> Muted:
    return Muted(fanout)


@pytest.fixture
async def registry(make_registry: MakeRegistry, listener: Muted) -> Registry:
    return await make_registry(listener=listener)


@pytest.fixture
async def hub(pool: asyncpg.Pool, held: HeldStreams, source: SessionSource, fanout: Fanout,
              registry: Registry, tasks: Supervisor) -> AsyncIterator[Hub]:
    streams = Streams(pool, CONFIG.stream, held, fanout.emit, writer=registry, tasks=tasks)
    h = Hub(fanout, streams, Sweeper(streams, source, held, fanout.emit, CONFIG, tasks=tasks))
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


async def test_feed_fills_a_hole_from_postgres(
    hub: Hub, registry: Registry, listener: Muted, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    session_id = await _session(pool, tenant)
    key = (tenant.id, session_id)
    outbox = Outbox(64)
    await hub.subscribe(key, outbox)
    # commits this process is not told of (as if another replica made them, and its
    # events were lost on the way)
    listener.muted = True
    for text in ("one", "two"):
        await registry.write(tenant.id, session_id, WriteGroup(
            [NewMessage(id=new_id(), role="user", content=text)]))
    listener.muted = False
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
    row = await hub.start_stream(key, first, NewMessage(
        id=new_id(), role="assistant", content="", status="streaming"))
    stream_id = str(row["id"])
    hub.delta(key, stream_id, first, "kept ")
    first.closed = True
    hub.release(first)
    assert hub.in_use(key)
    assert hub.resume_stream(key, stream_id, second) == 5
    hub.delta(key, stream_id, second, "going")
    message = await hub.end_stream(key, stream_id, second, usage={"completion_tokens": 2})
    assert message["content"] == "kept going" and message["status"] == "complete"
    assert not hub.in_use(key)
