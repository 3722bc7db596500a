"""Reconciling feeds with Postgres after events were lost, against the real Postgres.

The fan-out is told of commits through a switch (as in test_hub.py): muted, the
commits are made as another replica whose events never arrived would make them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

from chat_storage.actors.live.config import HubConfig
from chat_storage.actors.live.fanout import Fanout
from chat_storage.actors.live.outbox import Outbox
from chat_storage.actors.live.source import SessionSource
from chat_storage.actors.live.stream_state import HeldStreams
from chat_storage.actors.write.registry import Registry
from chat_storage.storage import db
from chat_storage.storage.broker import MemoryBroker
from chat_storage.storage.ids import new_id
from chat_storage.storage.messages import NewMessage, WriteGroup
from chat_storage.supervisor import Supervisor
from tests.actors.conftest import MakeRegistry, metric, new_session
from tests.actors.live.test_hub import Muted
from tests.conftest import Tenant

CONFIG = HubConfig(send_queue=64, sweep=False)


@pytest.fixture
async def fanout(pool: asyncpg.Pool, tasks: Supervisor) -> AsyncIterator[Fanout]:
    broker, held = MemoryBroker(), HeldStreams()
    f = Fanout(broker, SessionSource(pool, broker, held), held, CONFIG, tasks=tasks)
    f.start()
    yield f
    await f.flush(1.0)
    await f.close()


@pytest.fixture
async def listener(fanout: Fanout) -> Muted:
    return Muted(fanout)


@pytest.fixture
async def registry(make_registry: MakeRegistry, listener: Muted) -> Registry:
    return await make_registry(listener=listener)


async def frames_until(outbox: Outbox, done: Any) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while not done(got):
            got += [orjson.loads(f) for f in await outbox.take()]
    return got


async def test_a_feed_learns_from_postgres_what_it_was_never_told(
    fanout: Fanout, registry: Registry, listener: Muted, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    session_id = await new_session(pool, tenant)
    outbox = Outbox(64)
    await fanout.subscribe((tenant.id, session_id), outbox)
    answer = new_id()
    await registry.write(tenant.id, session_id, WriteGroup([NewMessage(
        id=answer, role="assistant", content="", status="streaming")]))
    got = await frames_until(outbox, lambda fs: len(fs) == 1)
    assert got[0]["type"] == "stream.started"
    listener.muted = True  # another replica ends the answer and adds a message; unheard
    await pool.execute("UPDATE messages SET status = 'complete', content = 'the answer' "
                       "WHERE id = $1", answer)
    await registry.write(tenant.id, session_id, WriteGroup(
        [NewMessage(id=new_id(), role="user", content="thanks")]))
    assert await outbox.take(0.3) == []  # nothing comes by itself
    before = metric("chat_feed_reconciles_total", what="feed")
    fanout.reconcile()
    got = await frames_until(outbox, lambda fs: len(fs) == 3)
    # the answer's text it never had comes as a delta before the answer's end
    assert got[0] == {"type": "stream.delta", "stream_id": str(answer), "offset": 0,
                      "delta": "the answer"}
    assert [(f["type"], f["message"]["seq"], f["message"]["content"]) for f in got[1:]] == [
        ("stream.completed", 1, "the answer"), ("message.created", 2, "thanks")]
    assert metric("chat_feed_reconciles_total", what="feed") == before + 1
    fanout.reconcile()  # once more: nothing new, nothing twice
    assert await outbox.take(0.3) == []


async def test_a_feed_that_cannot_reconcile_cuts_its_subscribers(
    database_url: str, tasks: Supervisor, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    """Postgres is gone for this fan-out (its own pool, closed): the subscribers are cut
    (they resume on a fresh feed) instead of staying stale."""
    own = await db.create_pool(database_url, min_size=1, max_size=2)
    broker, held = MemoryBroker(), HeldStreams()
    fanout = Fanout(broker, SessionSource(own, broker, held, acquire_timeout_s=0.5), held,
                    CONFIG, tasks=tasks)
    session_id = await new_session(pool, tenant)
    outbox = Outbox(64)
    await fanout.subscribe((tenant.id, session_id), outbox)
    await own.close()
    before = metric("chat_feed_reconciles_total", what="failed")
    fanout.reconcile()
    async with asyncio.timeout(10):  # four attempts, 0.2 + 0.4 + 0.8 + 1.6 s apart
        while not outbox.closed:
            await outbox.take(0.5)
    assert outbox.overflowed
    assert metric("chat_feed_reconciles_total", what="failed") == before + 1
    await fanout.close()
