"""Erasure in the broker's logs: a deleted message's events go, a deleted session's log goes.

Both brokers; the Redis one against the real Redis under a prefix of this test's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from chat_storage.storage.broker import Broker, MemoryBroker, RedisBroker
from chat_storage.supervisor import Supervisor
from tests.conftest import REDIS_URL


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Broker]:
    b: Broker = (MemoryBroker() if request.param == "memory"
                 else RedisBroker.from_url(REDIS_URL, tasks=Supervisor(), prefix=prefix))
    yield b
    await b.close()


async def datas(broker: Broker, channel: str) -> list[bytes]:
    return [m.data for m in await broker.read(channel, None)]


async def test_erase_removes_only_what_names_the_message(broker: Broker) -> None:
    for data in (b"a m1 hello", b"b m2 keep", b"c m1 world", b"d m3 keep"):
        await broker.publish("s", data)
    await broker.publish("t", b"m1 in another session")
    before = await broker.read("s", None)
    assert await broker.erase("s", "m1") == 2
    after = await broker.read("s", None)
    assert [m.data for m in after] == [b"b m2 keep", b"d m3 keep"]
    assert [m.id for m in after] == [before[1].id, before[3].id]  # readers' cursors hold
    assert await datas(broker, "t") == [b"m1 in another session"]
    assert await broker.erase("s", "m1") == 0
    await broker.publish("s", b"e after")  # the log goes on after its rewrite
    assert (await datas(broker, "s"))[-1] == b"e after"


async def test_drop_removes_whole_logs(broker: Broker) -> None:
    for channel in ("s", "t", "u"):
        await broker.publish(channel, channel.encode())
    await broker.drop(["s", "t"])
    await broker.drop([])
    assert await datas(broker, "s") == [] and await datas(broker, "t") == []
    assert await datas(broker, "u") == [b"u"]


async def test_an_erased_redis_stream_keeps_its_expiry(prefix: str) -> None:
    broker = RedisBroker.from_url(REDIS_URL, tasks=Supervisor(), prefix=prefix, ttl_s=600)
    client = Redis.from_url(REDIS_URL)
    try:
        await broker.publish("s", b"m1")
        await broker.publish("s", b"m2")
        assert await broker.erase("s", "m1") == 1
        ttl = await client.ttl(broker.keys.session_stream("s"))
        assert 590 <= ttl <= 600
        assert await broker.erase("s", "m2") == 1  # nothing left: no stream at all
        assert not await client.exists(broker.keys.session_stream("s"))
    finally:
        await broker.close()
        await client.aclose()
