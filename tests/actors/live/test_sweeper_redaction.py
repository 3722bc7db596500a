"""A stream of a redacting tenant whose replica died: the sweeper stores it redacted,
with what it recovered from Redis, and deletes its deltas from the Redis stream."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from chat_storage.actors.live import events, relay
from chat_storage.actors.live.config import HubConfig
from chat_storage.actors.live.fanout import Fanout
from chat_storage.actors.live.source import SessionSource
from chat_storage.actors.live.stream_state import HeldStreams, StreamConfig
from chat_storage.actors.live.streams import Streams
from chat_storage.actors.live.sweeper import Sweeper
from chat_storage.actors.write.registry import Registry
from chat_storage.storage import sessions, tenants
from chat_storage.storage.broker import RedisBroker
from chat_storage.storage.ids import new_id
from chat_storage.storage.messages import NewMessage, WriteGroup
from chat_storage.storage.privacy import Policies
from chat_storage.supervisor import Supervisor
from tests.actors.conftest import MakeRegistry
from tests.conftest import REDIS_URL, Tenant

CONFIG = HubConfig(send_queue=64, sweep=False, stream=StreamConfig(grace_s=60.0))


async def test_a_swept_stream_is_stored_redacted_and_its_deltas_leave_redis(
        make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant,
        tasks: Supervisor, prefix: str) -> None:
    async with pool.acquire() as conn:
        await tenants.update_tenant(conn, tenant.name, redact_pii=True)
        session_id = uuid.UUID(str((await sessions.create(conn, tenant.id, user_id="u"))["id"]))
    broker, held = RedisBroker.from_url(REDIS_URL, tasks=tasks, prefix=prefix), HeldStreams()
    source = SessionSource(pool, broker, held)
    fanout = Fanout(broker, source, held, CONFIG, tasks=tasks)
    registry: Registry = await make_registry()
    streams = Streams(pool, CONFIG.stream, held, fanout.emit, writer=registry, tasks=tasks)
    policies = Policies(pool, phone_region="US", ttl_s=60.0)
    sweeper = Sweeper(streams, source, held, fanout.emit, CONFIG, tasks=tasks,
                      redactors=policies.redactor, scrub=fanout.scrub)
    fanout.start()
    key = (tenant.id, session_id)
    message_id = new_id()
    stream_id = str(message_id)
    # a streaming row no process holds, last touched long ago: its replica died after a
    # checkpoint that cut an address in two; the broker has the rest of it
    await registry.write(tenant.id, session_id, WriteGroup([NewMessage(
        id=message_id, role="assistant", content="", status="streaming")]))
    head, tail = "write to jane.roe@exa", "mple.org now"
    async with pool.acquire() as conn:
        await conn.execute("UPDATE messages SET content = $2, stream_seen_at = now() - "
                           "interval '1 hour' WHERE id = $1", message_id, head)
    channel = relay.channel(key)
    for offset, text in ((0, head), (len(head), tail)):
        await broker.publish(channel, events.envelope(b"dead", events.delta(
            stream_id, offset, text)))
    assert await sweeper.sweep() == 1
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT status, content FROM messages WHERE id = $1",
                                  message_id)
    assert (row["status"], row["content"]) == ("interrupted", "write to <EMAIL> now")
    # the scrub runs after the relay has published the final event: bounded wait for it
    for _ in range(100):
        kept = await broker.read(channel, None)
        if not any(b'"stream.delta"' in m.data for m in kept):
            break
        await asyncio.sleep(0.02)
    assert not any(b"jane.roe" in m.data for m in kept)
    assert any(b'"stream.interrupted"' in m.data for m in kept)
    await fanout.close()
    await broker.close()
