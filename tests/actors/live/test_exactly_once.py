"""Exactly-once delivery in the catch-up race, on one replica and across two.

A subscriber is registered before its catch-up reads Postgres; whatever happens while
that read runs reaches it twice: live (queued in the subscription) and in the rows it
reads. These tests put the live event inside the read on every run (``HeldPool``
stops the read at a chosen point; the database is real) and check that the client
gets every message, and every character of an answer in progress, exactly once and
in order. ``before``: the event is committed before the catch-up reads, so the read
returns it too (the duplicate must be dropped); ``after``: it is committed once the
read has run (it must still arrive, once).

Across replicas, two hubs share one memory broker and one Postgres: replica A takes
the writes and produces the answers, replica B serves the subscriber, so an event
reaches B through the broker and through B's own reads (its feed's start-up, its
subscriber's catch-up, its feed's hole filling).

Two guards drop each duplicate: the feed's (``seq <= last_seq``, for what its start-up
read already counts) and the subscription's (``seq <= seq_hi``, for what its catch-up
read already sent). The subscription's hides a slip of the feed's from the client, so
the ``test_feed_start_up_*`` tests also check what the feed itself passed on
(``Recorder``); ``test_feed_once.py`` pins the rest of the feed's contract.

Each replica is built as the composition root builds it (``runtime/services.py``):
its ``SessionSource`` (the reads of its feeds and catch-ups; on the ``HeldPool`` for
the replica under test), its ``Fanout``, its producers' ``Streams`` and the ``Hub``
over them. One registry serves both replicas; its commit listener is the fan-out of
the replica that takes the writes, once the test says so (:class:`Listener`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
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
from chat_storage.actors.live.subscription import Subscription
from chat_storage.actors.live.sweeper import Sweeper
from chat_storage.actors.write.registry import Registry
from chat_storage.storage import sessions
from chat_storage.storage.broker import MemoryBroker
from chat_storage.storage.ids import new_id
from chat_storage.storage.messages import NewMessage, WriteGroup
from chat_storage.storage.records import SessionKey
from chat_storage.storage.writes import Stored
from chat_storage.supervisor import Supervisor
from tests.actors.conftest import MakeRegistry, metric
from tests.conftest import Tenant
from tests.support.interleave import CountingBroker, HeldPool, Recorder, When

CONFIG = HubConfig(send_queue=64, sweep=False, stream=StreamConfig(grace_s=60.0))
WAIT_S = 5.0


class Producer:
    """The connection that produces an answer (streams only ask whether it is closed)."""

    closed = False


class Listener:
    """The registry's commit listener: the fan-out of the replica that takes the writes.

    Unset, commits are announced to nobody (as if their events were lost on the way);
    a test sets ``fanout`` when the writing replica is to announce them (the way
    ``test_hub.py``'s ``Muted`` switches a fan-out's notifications off and on).
    """

    def __init__(self) -> None:
        self.fanout: Fanout | None = None

    def on_commit(self, key: SessionKey, stored: Stored) -> None:
        if self.fanout is not None:
            self.fanout.on_commit(key, stored)

    def in_use(self, key: SessionKey) -> bool:
        return self.fanout is not None and self.fanout.in_use(key)


@dataclasses.dataclass
class Replica:
    """One process's live side: the hub, and its fan-out (a commit listener)."""

    hub: Hub
    fanout: Fanout


MakeReplica = Callable[..., Replica]


@pytest.fixture
def listener() -> Listener:
    return Listener()


@pytest.fixture
async def registry(make_registry: MakeRegistry, listener: Listener) -> Registry:
    return await make_registry(listener=listener)


@pytest.fixture
async def make_replica(pool: asyncpg.Pool, registry: Registry,
                       tasks: Supervisor) -> AsyncIterator[MakeReplica]:
    """Build replicas on ``registry``'s write path; each hub is closed at the end.

    ``reads`` is the pool of the replica's ``SessionSource`` (its feeds' and its
    subscribers' reads: a ``HeldPool`` for the replica under test); its producers'
    streams store through ``registry`` and ``pool``, never through a held read.
    """
    made: list[Hub] = []

    def make(reads: asyncpg.Pool, broker: MemoryBroker, *, started: bool) -> Replica:
        held = HeldStreams()
        source = SessionSource(reads, broker, held)
        fanout = Fanout(broker, source, held, CONFIG, tasks=tasks)
        streams = Streams(pool, CONFIG.stream, held, fanout.emit, writer=registry, tasks=tasks)
        hub = Hub(fanout, streams,
                  Sweeper(streams, source, held, fanout.emit, CONFIG, tasks=tasks))
        if started:
            hub.start()
        made.append(hub)
        return Replica(hub, fanout)

    yield make
    for hub in made:
        await hub.close(5.0)


async def _session(pool: asyncpg.Pool, tenant: Tenant) -> SessionKey:
    async with pool.acquire() as conn:
        session = await sessions.create(conn, tenant.id, user_id="u")
    return tenant.id, uuid.UUID(str(session["id"]))


@dataclasses.dataclass
class Alone:
    """One replica whose reads can be held, heard by the registry, and a new session."""

    held: HeldPool
    hub: Hub
    key: SessionKey


@pytest.fixture
async def alone(pool: asyncpg.Pool, make_replica: MakeReplica, listener: Listener,
                tenant: Tenant) -> Alone:
    held = HeldPool(pool)
    one = make_replica(held.as_pool(), MemoryBroker(), started=False)
    listener.fanout = one.fanout
    return Alone(held, one.hub, await _session(pool, tenant))


@dataclasses.dataclass
class Pair:
    """Replica ``a``, which the registry tells of commits, and replica ``b``, whose reads
    can be held, on one broker; and a new session."""

    broker: CountingBroker
    a: Replica
    b: Hub
    held: HeldPool
    key: SessionKey


@pytest.fixture
async def pair(pool: asyncpg.Pool, make_replica: MakeReplica, listener: Listener,
               tenant: Tenant) -> Pair:
    broker = CountingBroker()
    a = make_replica(pool, broker, started=True)
    held = HeldPool(pool)
    b = make_replica(held.as_pool(), broker, started=False).hub
    listener.fanout = a.fanout
    return Pair(broker, a, b, held, await _session(pool, tenant))


async def _say(registry: Registry, key: SessionKey, text: str) -> None:
    await registry.write(key[0], key[1], WriteGroup(
        [NewMessage(id=new_id(), role="user", content=text)]))


async def _start(hub: Hub, key: SessionKey, producer: Producer) -> str:
    row = await hub.start_stream(key, producer, NewMessage(
        id=new_id(), role="assistant", content="", status="streaming"))
    return str(row["id"])


def _brief(f: dict[str, Any]) -> tuple[Any, ...]:
    """A frame as the tests compare it: (type, seq[, content]) or (delta, offset, text)."""
    kind = f["type"]
    if kind == "stream.delta":
        return ("delta", f["offset"], f["delta"])
    if kind == "stream.snapshot":
        return ("snapshot", f["seq"], f["content"])
    if kind == "stream.started":
        return ("started", f["seq"])
    if kind == "message.created":
        return ("created", f["message"]["seq"], f["message"]["content"])
    return (kind, f["message"]["seq"], f["message"]["content"])


async def _received(outbox: Outbox, *, wait: bool = False) -> list[tuple[Any, ...]]:
    """What is queued for the client (with ``wait``, at least one frame), in brief."""
    frames = await outbox.take() if wait else await outbox.take(timeout_s=0)
    return [_brief(orjson.loads(frame)) for frame in frames]


async def _collect(outbox: Outbox, n: int) -> list[tuple[Any, ...]]:
    """The next ``n`` frames for the client, waiting for them (a few seconds at most)."""
    got: list[tuple[Any, ...]] = []
    async with asyncio.timeout(WAIT_S):
        while len(got) < n:
            got += await _received(outbox, wait=True)
    return got


def _subscribing(hub: Hub, key: SessionKey, outbox: Outbox) -> asyncio.Task[Subscription]:
    """A client subscribing from the start, in a task: the test acts while it catches up."""
    return asyncio.create_task(hub.subscribe(key, outbox))


async def _done(task: Awaitable[Subscription]) -> Subscription:
    async with asyncio.timeout(WAIT_S):
        return await task


def _recording(replica: Replica, key: SessionKey) -> Recorder:
    """Record what the session's feed on ``replica`` passes on, before any subscription
    drops a duplicate of its own (the fan-out keeps its feeds to itself: reached here)."""
    rec = Recorder()
    replica.fanout._feeds[key].subs.append(rec)
    return rec


# ---------------------------------------------------------------- one replica

@pytest.mark.parametrize("when", ["before", "after"])
async def test_message_committed_during_catch_up_is_sent_once(
    when: When, pool: asyncpg.Pool, registry: Registry, alone: Alone
) -> None:
    held, hub, key = alone.held, alone.hub, alone.key
    for text in ("one", "two"):
        await _say(registry, key, text)
    held.skip()  # the feed's start-up
    catch_up = held.hold(when)
    outbox = Outbox(64)
    subscribing = _subscribing(hub, key, outbox)
    await catch_up.reached()
    await _say(registry, key, "three")  # announced live: the catch-up is under way
    catch_up.release()
    await _done(subscribing)
    assert await _received(outbox) == [
        ("created", 1, "one"), ("created", 2, "two"), ("created", 3, "three")]
    await _say(registry, key, "four")
    assert await _received(outbox) == [("created", 4, "four")]


async def test_answer_in_progress_during_catch_up_every_character_once(
    pool: asyncpg.Pool, registry: Registry, alone: Alone
) -> None:
    held, hub, key = alone.held, alone.hub, alone.key
    producer = Producer()
    sid = await _start(hub, key, producer)
    for part in ("Hel", "lo "):
        hub.delta(key, sid, producer, part)
    held.skip()
    catch_up = held.hold()
    outbox = Outbox(64)
    subscribing = _subscribing(hub, key, outbox)
    await catch_up.reached()
    for part in ("wor", "ld"):  # queued in the subscription, and in the snapshot it gets
        hub.delta(key, sid, producer, part)
    catch_up.release()
    await _done(subscribing)
    assert await _received(outbox) == [("started", 1), ("snapshot", 1, "Hello world")]
    hub.delta(key, sid, producer, "!")
    assert await _received(outbox) == [("delta", 11, "!")]


@pytest.mark.parametrize("when", ["before", "after"])
async def test_answer_started_during_catch_up_is_announced_once(
    when: When, pool: asyncpg.Pool, registry: Registry, alone: Alone
) -> None:
    held, hub, key = alone.held, alone.hub, alone.key
    await _say(registry, key, "question")
    held.skip()
    catch_up = held.hold(when)
    outbox = Outbox(64)
    subscribing = _subscribing(hub, key, outbox)
    await catch_up.reached()
    producer = Producer()
    sid = await _start(hub, key, producer)
    hub.delta(key, sid, producer, "Hi")
    catch_up.release()
    await _done(subscribing)
    got = await _received(outbox)
    if when == "before":  # the read has the row: announced by it, the text as a snapshot
        assert got == [("created", 1, "question"), ("started", 2), ("snapshot", 2, "Hi")]
    else:  # the read missed it: the live events, as they came
        assert got == [("created", 1, "question"), ("started", 2), ("delta", 0, "Hi")]
    hub.delta(key, sid, producer, " there")
    assert await _received(outbox) == [("delta", 2, " there")]


@pytest.mark.parametrize("when", ["before", "after"])
async def test_answer_ending_during_catch_up_is_reported_once(
    when: When, pool: asyncpg.Pool, registry: Registry, alone: Alone
) -> None:
    held, hub, key = alone.held, alone.hub, alone.key
    producer = Producer()
    sid = await _start(hub, key, producer)
    hub.delta(key, sid, producer, "Hello")
    held.skip()
    catch_up = held.hold(when)
    outbox = Outbox(64)
    subscribing = _subscribing(hub, key, outbox)
    await catch_up.reached()
    await hub.end_stream(key, sid, producer)
    catch_up.release()
    await _done(subscribing)
    got = await _received(outbox)
    if when == "before":  # the read has it complete: no stream.completed after it
        assert got == [("created", 1, "Hello")]
    else:  # the read saw it streaming (nothing checkpointed): its text, then its end
        assert got == [("started", 1), ("delta", 0, "Hello"), ("stream.completed", 1, "Hello")]


@pytest.mark.parametrize("when", ["before", "after"])
async def test_feed_start_up_passes_a_message_committed_during_its_read_once(
    when: When, pool: asyncpg.Pool, registry: Registry, make_replica: MakeReplica,
    listener: Listener, tenant: Tenant
) -> None:
    # the subscription drops the feed's duplicate too, so the feed's own output is
    # checked: the message waits in the feed, and (before) is in what its start-up reads
    held = HeldPool(pool)
    one = make_replica(held.as_pool(), MemoryBroker(), started=False)
    listener.fanout = one.fanout
    key = await _session(pool, tenant)
    await _say(registry, key, "one")
    start_up = held.hold(when)
    outbox = Outbox(64)
    subscribing = _subscribing(one.hub, key, outbox)
    await start_up.reached()
    rec = _recording(one, key)
    await _say(registry, key, "two")
    start_up.release()
    await _done(subscribing)
    await _say(registry, key, "three")
    if when == "before":  # the start-up counted it: only what came after passes
        assert rec.brief() == [("message.created", 3)]
    else:
        assert rec.brief() == [("message.created", 2), ("message.created", 3)]
    assert await _received(outbox) == [
        ("created", 1, "one"), ("created", 2, "two"), ("created", 3, "three")]


# ---------------------------------------------------------------- two replicas

async def test_message_reaching_a_replica_by_broker_and_by_its_reads_is_sent_once(
    pool: asyncpg.Pool, registry: Registry, pair: Pair
) -> None:
    broker, b, held, key = pair.broker, pair.b, pair.held, pair.key
    await _say(registry, key, "one")
    start_up, catch_up = held.hold(), held.hold()
    outbox = Outbox(64)
    subscribing = _subscribing(b, key, outbox)
    await start_up.reached()  # B listens to the broker; its feed has not read Postgres
    await _say(registry, key, "two")
    await broker.until(1)  # at B: waits in its feed, and is in what the feed reads
    start_up.release()
    await catch_up.reached()
    await _say(registry, key, "three")
    await broker.until(2)  # at B: queued in the subscription, and in what it reads
    catch_up.release()
    await _done(subscribing)
    assert await _received(outbox) == [
        ("created", 1, "one"), ("created", 2, "two"), ("created", 3, "three")]
    await _say(registry, key, "four")
    await broker.until(3)
    assert await _received(outbox) == [("created", 4, "four")]


async def test_answer_reaching_a_replica_by_broker_and_by_its_reads_every_character_once(
    pool: asyncpg.Pool, registry: Registry, pair: Pair
) -> None:
    broker, a, b, held, key = pair.broker, pair.a, pair.b, pair.held, pair.key
    producer = Producer()
    sid = await _start(a.hub, key, producer)  # nobody listens yet: B learns it from Postgres
    for part in ("Hel", "lo "):
        a.hub.delta(key, sid, producer, part)
    await broker.until(2)
    start_up, catch_up = held.hold(), held.hold()
    outbox = Outbox(64)
    subscribing = _subscribing(b, key, outbox)
    await start_up.reached()
    a.hub.delta(key, sid, producer, "wor")  # waits in B's feed, and in the broker's log
    await broker.until(3)
    start_up.release()
    await catch_up.reached()
    a.hub.delta(key, sid, producer, "ld")  # queued in the subscription, and in the snapshot
    await broker.until(4)
    catch_up.release()
    await _done(subscribing)
    assert await _received(outbox) == [("started", 1), ("snapshot", 1, "Hello world")]
    a.hub.delta(key, sid, producer, "!")
    await broker.until(5)
    assert await _received(outbox) == [("delta", 11, "!")]
    await a.hub.end_stream(key, sid, producer)
    await broker.until(6)
    assert await _received(outbox) == [("stream.completed", 1, "Hello world!")]


@pytest.mark.parametrize("when", ["before", "after"])
async def test_answer_started_on_a_replica_during_catch_up_on_another_is_announced_once(
    when: When, pool: asyncpg.Pool, registry: Registry, pair: Pair
) -> None:
    broker, a, b, held, key = pair.broker, pair.a, pair.b, pair.held, pair.key
    held.skip()
    catch_up = held.hold(when)
    outbox = Outbox(64)
    subscribing = _subscribing(b, key, outbox)
    await catch_up.reached()
    producer = Producer()
    sid = await _start(a.hub, key, producer)
    a.hub.delta(key, sid, producer, "Hi")
    await broker.until(2)
    catch_up.release()
    await _done(subscribing)
    got = await _received(outbox)
    if when == "before":
        assert got == [("started", 1), ("snapshot", 1, "Hi")]
    else:
        assert got == [("started", 1), ("delta", 0, "Hi")]
    a.hub.delta(key, sid, producer, " there")
    await broker.until(3)
    assert await _received(outbox) == [("delta", 2, " there")]


@pytest.mark.parametrize("ends", [False, True])
async def test_answer_filled_from_postgres_during_catch_up_on_another_replica_once(
    ends: bool, pool: asyncpg.Pool, registry: Registry, make_replica: MakeReplica,
    listener: Listener, tenant: Tenant
) -> None:
    # A's announcement of the answer is lost on the way to B (as if the broker had
    # dropped it): B's feed learns of it from Postgres, with its checkpoint, when the
    # next message shows the hole; a subscriber catching up meanwhile gets it once
    broker = CountingBroker()
    a = make_replica(pool, broker, started=True)
    held = HeldPool(pool)
    b = make_replica(held.as_pool(), broker, started=False).hub
    key = await _session(pool, tenant)
    held.skip()
    held.skip()
    watcher = Outbox(64)
    await _done(_subscribing(b, key, watcher))
    producer = Producer()
    sid = await _start(a.hub, key, producer)  # the listener is unset: not announced
    a.hub.delta(key, sid, producer, "Hello")  # B's feed does not know the stream yet
    await broker.until(1)
    await pool.execute("UPDATE messages SET content = 'Hello' WHERE id = $1",
                       uuid.UUID(sid))  # as checkpointed
    catch_up = held.hold()
    outbox = Outbox(64)
    subscribing = _subscribing(b, key, outbox)
    await catch_up.reached()
    listener.fanout = a.fanout
    await _say(registry, key, "thanks")  # seq 2 reaches B: its feed reads seq 1 (no hold)
    assert await _collect(watcher, 3) == [
        ("started", 1), ("snapshot", 1, "Hello"), ("created", 2, "thanks")]
    if ends:  # and ends before the catch-up reads: it reads the answer complete
        await a.hub.end_stream(key, sid, producer)
        assert await _collect(watcher, 1) == [("stream.completed", 1, "Hello")]
    catch_up.release()
    await _done(subscribing)
    if ends:
        assert await _received(outbox) == [("created", 1, "Hello"), ("created", 2, "thanks")]
        return
    assert await _received(outbox) == [
        ("started", 1), ("created", 2, "thanks"), ("snapshot", 1, "Hello")]
    a.hub.delta(key, sid, producer, "!")
    await broker.until(3)
    assert await _received(outbox) == [("delta", 5, "!")]
    assert await _received(watcher) == [("delta", 5, "!")]


async def test_answer_ended_before_the_broker_says_so_is_reported_once(
    pool: asyncpg.Pool, registry: Registry, listener: Listener, pair: Pair
) -> None:
    # the catch-up on B reads the answer complete while B's feed, behind the broker,
    # still holds it in progress: no snapshot of it, and its late delta and end are dropped
    failed = metric("chat_broker_errors_total", reason="error")
    broker, a, b, held, key = pair.broker, pair.a, pair.b, pair.held, pair.key
    held.skip()
    held.skip()
    watcher = Outbox(64)
    await _done(_subscribing(b, key, watcher))
    producer = Producer()
    sid = await _start(a.hub, key, producer)
    a.hub.delta(key, sid, producer, "Hello")
    assert await _collect(watcher, 2) == [("started", 1), ("delta", 0, "Hello")]
    catch_up = held.hold()
    outbox = Outbox(64)
    subscribing = _subscribing(b, key, outbox)
    await catch_up.reached()
    lagging = broker.hold()
    a.hub.delta(key, sid, producer, "!")  # not at B yet, nor what follows it
    await lagging.reached()
    await a.hub.end_stream(key, sid, producer)  # committed
    catch_up.release()
    await _done(subscribing)
    assert await _received(outbox) == [("created", 1, "Hello!")]
    lagging.release()
    assert await _collect(watcher, 2) == [
        ("delta", 5, "!"), ("stream.completed", 1, "Hello!")]
    assert await _received(outbox) == []
    # nothing broke on the way (B's listener runs inside A's publish here)
    assert metric("chat_broker_errors_total", reason="error") == failed


@pytest.mark.parametrize("when", ["before", "after"])
async def test_feed_start_up_on_a_replica_passes_a_message_from_another_once(
    when: When, pool: asyncpg.Pool, registry: Registry, make_replica: MakeReplica,
    listener: Listener, tenant: Tenant
) -> None:
    # as above, with the message from replica A: by the broker, and by B's start-up read
    broker = CountingBroker()
    a = make_replica(pool, broker, started=True)
    held = HeldPool(pool)
    b = make_replica(held.as_pool(), broker, started=False)
    listener.fanout = a.fanout
    key = await _session(pool, tenant)
    await _say(registry, key, "one")
    start_up = held.hold(when)
    outbox = Outbox(64)
    subscribing = _subscribing(b.hub, key, outbox)
    await start_up.reached()
    rec = _recording(b, key)
    await _say(registry, key, "two")
    await broker.until(1)  # at B: waits in its feed
    start_up.release()
    await _done(subscribing)
    await _say(registry, key, "three")
    await broker.until(2)
    if when == "before":
        assert rec.brief() == [("message.created", 3)]
    else:
        assert rec.brief() == [("message.created", 2), ("message.created", 3)]
    assert await _received(outbox) == [
        ("created", 1, "one"), ("created", 2, "two"), ("created", 3, "three")]
