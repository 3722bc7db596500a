"""The Redis streams broker against the real Redis (``TEST_REDIS_URL``).

Every test uses a prefix of its own and deletes its keys afterwards. The outage test
runs a private ``redis-server`` on a free loopback port, because killing the shared
Redis would break everyone else's tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from chat_storage.storage.broker import (
    BrokerMessage,
    BrokerUnavailable,
    Gap,
    MemoryBroker,
    RedisBroker,
    open_broker,
)
from chat_storage.storage.redis_client import connect
from chat_storage.supervisor import Supervisor
from tests.conftest import REDIS_URL
from tests.support.procs import RedisServer

DEADLINE_S = 20.0


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` (no event to await) until it holds, or fail at the deadline."""
    for _ in range(int(DEADLINE_S / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    assert predicate(), what


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def broker(prefix: str) -> AsyncIterator[RedisBroker]:
    b = RedisBroker.from_url(REDIS_URL, tasks=Supervisor(), prefix=prefix)
    yield b
    await b.close()


class Collector:
    """A listener per channel that records events and wakes the test at a count."""

    def __init__(self) -> None:
        self.events: dict[str, list[BrokerMessage]] = {}
        self.total = 0
        self._target = 0
        self._reached = asyncio.Event()

    def listener(self, channel: str) -> Callable[[BrokerMessage], None]:
        self.events.setdefault(channel, [])

        def on_event(event: BrokerMessage) -> None:
            assert event.channel == channel
            self.events[channel].append(event)
            self.total += 1
            if self.total >= self._target:
                self._reached.set()

        return on_event

    async def wait_for(self, total: int) -> None:
        self._target = total
        if self.total < total:
            self._reached.clear()
            await asyncio.wait_for(self._reached.wait(), DEADLINE_S)

    def data(self, channel: str) -> list[bytes]:
        return [e.data for e in self.events.get(channel, [])]


async def test_publish_then_read_in_order(broker: RedisBroker) -> None:
    ids = [await broker.publish("s1", b"e%d" % i) for i in range(20)]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    events = await broker.read("s1", None)
    assert [e.data for e in events] == [b"e%d" % i for i in range(20)]
    assert [e.id for e in events] == ids
    later = await broker.read("s1", ids[9])
    assert [e.data for e in later] == [b"e%d" % i for i in range(10, 20)]
    assert [e.data for e in await broker.read("s1", ids[9], limit=3)] == [b"e10", b"e11", b"e12"]
    assert await broker.read("s1", ids[-1]) == []
    assert await broker.read("other", None) == []


async def test_read_raises_gap_after_trimming(prefix: str) -> None:
    broker = RedisBroker.from_url(REDIS_URL, tasks=Supervisor(), prefix=prefix, max_len=50)
    try:
        ids = [await broker.publish("s1", b"%d" % i) for i in range(600)]
        kept = await broker.read("s1", None, limit=10_000)
        assert 50 <= len(kept) < 600  # MAXLEN ~ trims whole nodes: at least 50 stay
        assert [e.data for e in kept] == [b"%d" % i for i in range(600 - len(kept), 600)]
        with pytest.raises(Gap):
            await broker.read("s1", ids[0])
        with pytest.raises(Gap):
            await broker.read("s1", "0-0")
        after_first_kept = await broker.read("s1", kept[0].id)
        assert len(after_first_kept) == len(kept) - 1
    finally:
        await broker.close()


async def test_read_of_a_vanished_stream_is_a_gap(broker: RedisBroker, prefix: str,
                                                  redis_client: Redis) -> None:
    event_id = await broker.publish("s1", b"x")
    await redis_client.delete(f"{prefix}:s:s1")  # as if it expired, or Redis lost it
    with pytest.raises(Gap):
        await broker.read("s1", event_id)
    assert await broker.read("s1", None) == []
    assert await broker.read("never", "0-0") == []
    with pytest.raises(ValueError):
        await broker.read("s1", "not-an-id")


async def test_publish_sets_and_refreshes_expiry(prefix: str, redis_client: Redis) -> None:
    broker = RedisBroker.from_url(REDIS_URL, tasks=Supervisor(), prefix=prefix, ttl_s=300)
    try:
        await broker.publish("s1", b"a")
        key = f"{prefix}:s:s1"
        assert 0 < await redis_client.ttl(key) <= 300
        await redis_client.expire(key, 5)
        await broker.publish("s1", b"b")
        assert await redis_client.ttl(key) > 5
    finally:
        await broker.close()


def reader_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "redis-broker-reader"]


async def test_one_reader_for_many_channels(broker: RedisBroker, prefix: str,
                                            redis_client: Redis) -> None:
    got = Collector()
    channels = [f"c{i}" for i in range(100)]
    stops = [broker.listen(c, got.listener(c)) for c in channels]

    async def produce(channel: str) -> None:
        for n in range(5):
            await broker.publish(channel, b"%d" % n)

    await asyncio.gather(*(produce(c) for c in channels))
    await got.wait_for(500)
    for c in channels:
        assert got.data(c) == [b"0", b"1", b"2", b"3", b"4"], c
    assert len(reader_tasks()) == 1
    readers = [c for c in await redis_client.client_list()
               if c.get("name", "").startswith(f"{prefix}:reader:")]
    assert [c["name"] for c in readers] == [broker.reader_name]
    for stop in stops:
        stop()
    await broker.publish("c0", b"after stop")
    await broker.publish("fresh", b"x")  # nobody listens: nothing may arrive
    assert got.total == 500


async def test_listener_added_late_gets_everything_after_listen(prefix: str) -> None:
    # a block timeout far beyond the deadline: only the wake-up can make the reader
    # include the new channel in time
    client = connect(REDIS_URL, socket_timeout_s=120.0)
    broker = RedisBroker(client, tasks=Supervisor(), prefix=prefix, block_ms=60_000,
                         owns_client=True)
    try:
        got = Collector()
        broker.listen("first", got.listener("first"))
        await broker.publish("first", b"go")
        await got.wait_for(1)  # the reader now runs, blocked in XREAD without "late"
        for n in range(3):
            await broker.publish("late", b"old%d" % n)
        await asyncio.sleep(0.3)  # Redis's clock must move past the start margin (50 ms)
        broker.listen("late", got.listener("late"))
        for n in range(3):
            await broker.publish("late", b"new%d" % n)
        await got.wait_for(4)  # 1 on "first" + 3 on "late"
        assert got.data("late") == [b"new0", b"new1", b"new2"]
        # a second listener on a channel that is read already starts at its listen too
        second = Collector()
        broker.listen("late", second.listener("late"))
        await broker.publish("late", b"new3")
        await second.wait_for(1)
        assert second.data("late") == [b"new3"]
    finally:
        await broker.close()


async def test_another_replica_sees_the_events(broker: RedisBroker, prefix: str) -> None:
    other = RedisBroker.from_url(REDIS_URL, tasks=Supervisor(), prefix=prefix)
    try:
        got = Collector()
        other.listen("s1", got.listener("s1"))
        ids = [await broker.publish("s1", b"%d" % n) for n in range(10)]
        await got.wait_for(10)
        assert got.data("s1") == [b"%d" % n for n in range(10)]
        assert [e.id for e in got.events["s1"]] == ids
        assert [e.id for e in await other.read("s1", None)] == ids
    finally:
        await other.close()


async def test_open_broker_picks_the_implementation(prefix: str) -> None:
    memory = open_broker(None, tasks=Supervisor())
    assert isinstance(memory, MemoryBroker)
    client = connect(REDIS_URL)
    redis_broker = open_broker(client, tasks=Supervisor(), prefix=prefix)
    try:
        assert isinstance(redis_broker, RedisBroker)
        assert redis_broker.keys.prefix == prefix
    finally:
        await redis_broker.close()
        await memory.close()
        await client.aclose()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis.log")
    await server.start()
    yield server
    await server.kill()


async def test_reader_recovers_after_redis_restart(private_redis: RedisServer) -> None:
    broker = RedisBroker.from_url(private_redis.url, tasks=Supervisor(), prefix="chat-test",
                                  op_timeout_s=2.0, backoff_max_s=0.5)
    try:
        got = Collector()
        resumed = asyncio.Event()  # what the fan-out reconciles its feeds on
        broker.on_resume(resumed.set)
        broker.listen("s1", got.listener("s1"))
        await broker.publish("s1", b"before")
        await got.wait_for(1)
        assert broker.healthy and not resumed.is_set()

        await private_redis.kill()
        with pytest.raises(BrokerUnavailable):  # fails, and fails within a bound
            await asyncio.wait_for(broker.publish("s1", b"lost"), timeout=DEADLINE_S)
        await wait_until(lambda: not broker.healthy, "broker reports the outage")
        broker.listen("s2", got.listener("s2"))  # a listener that joins during the outage

        await private_redis.start()
        await asyncio.wait_for(resumed.wait(), DEADLINE_S)
        await broker.publish("s1", b"after")
        await broker.publish("s2", b"joined")
        await got.wait_for(3)
        assert got.data("s1") == [b"before", b"after"]
        assert got.data("s2") == [b"joined"]
        await wait_until(lambda: broker.healthy, "broker healthy again")
        assert len(reader_tasks()) == 1
    finally:
        await broker.close()
