"""A redacting tenant's deltas must leave Redis once the redacted message is stored: a
scrub that fails (Redis not answering in time) is tried again until it is done.

Against a private ``redis-server`` (``CLIENT PAUSE`` would stall every other test on
the shared one)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from redis.asyncio import Redis

from chat_storage.actors.live import events, relay
from chat_storage.storage.broker import BrokerUnavailable, RedisBroker
from chat_storage.supervisor import Supervisor
from tests.actors.conftest import metric
from tests.support.procs import RedisServer


async def kept(broker: RedisBroker, channel: str) -> int:
    """How many messages the channel keeps; -1 while Redis is paused."""
    try:
        return len(await broker.read(channel, None))
    except BrokerUnavailable:
        return -1


async def test_a_failed_scrub_is_retried_until_the_deltas_are_gone(
        tmp_path: Path, tasks: Supervisor) -> None:
    server = RedisServer(tmp_path / "redis.log")
    await server.start()
    broker = RedisBroker.from_url(server.url, tasks=tasks, prefix="scrub", op_timeout_s=0.2)
    admin = Redis.from_url(server.url)
    pusher = relay.Relay(broker, lambda key: True, tasks=tasks, origin=b"here")
    pusher.start()
    try:
        key, stream_id = (uuid.uuid4(), uuid.uuid4()), str(uuid.uuid4())
        channel = relay.channel(key)
        pusher.send(key, events.delta(stream_id, 0, "mail jane.roe@example.org"))
        async with asyncio.timeout(10):
            while not await broker.read(channel, None):  # noqa: ASYNC110 - polls Redis
                await asyncio.sleep(0.02)
        failed = metric("chat_broker_errors_total", reason="scrub")
        # every command waits 1.5 s: the scrub's read times out (0.8 s), nothing deleted
        await admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        pusher.scrub(key, events.deltas_of(stream_id))
        async with asyncio.timeout(10):
            while metric("chat_broker_errors_total", reason="scrub") == failed:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            while await kept(broker, channel):  # noqa: ASYNC110 - the retry's work
                await asyncio.sleep(0.05)
    finally:
        await pusher.close(1.0)
        await broker.close()
        await admin.aclose()
        await server.stop()
