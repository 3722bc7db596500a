"""The in-memory broker: ordered ids, a capped log that reports gaps, listeners."""

from __future__ import annotations

import pytest

from chat_storage.storage.broker import BrokerMessage, Gap, MemoryBroker


async def test_read_returns_what_came_after_an_id() -> None:
    broker = MemoryBroker()
    ids = [await broker.publish("s1", b"%d" % n) for n in range(5)]
    await broker.publish("s2", b"other")
    assert [m.data for m in await broker.read("s1", None)] == [b"0", b"1", b"2", b"3", b"4"]
    assert [m.id for m in await broker.read("s1", ids[2])] == ids[3:]
    assert [m.id for m in await broker.read("s1", ids[0], limit=2)] == ids[1:3]
    assert await broker.read("nothing", None) == []


async def test_reading_past_the_cap_is_a_gap() -> None:
    broker = MemoryBroker(max_len=3)
    ids = [await broker.publish("s1", b"x") for _ in range(5)]
    assert [m.id for m in await broker.read("s1", ids[1])] == ids[2:]  # nothing lost
    with pytest.raises(Gap):
        await broker.read("s1", ids[0])  # ids[1] was dropped


async def test_listeners_get_new_messages_until_stopped() -> None:
    broker = MemoryBroker()
    got: list[BrokerMessage] = []
    assert not broker.wanted("s1")
    stop = broker.listen("s1", got.append)
    assert broker.wanted("s1")
    first = await broker.publish("s1", b"a")
    stop()
    assert not broker.wanted("s1")
    await broker.publish("s1", b"b")
    assert got == [BrokerMessage("s1", first, b"a")]
