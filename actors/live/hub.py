"""The hub: this process's streaming — session feeds, answers in progress, the broker link.

Every event of a session (a commit, a delta, the end of a stream) is handed to the
session's local feed at once, and queued for the broker (one channel per session),
from which the feeds of other replicas take it. Events that come back from the broker
with this process's own origin are ignored: they were delivered locally already.
If the broker is down, local delivery goes on and other replicas' readers catch up
from Postgres (the feed fills any hole in ``seq`` from there).

Background work (one task each): the relay (broker writes, in order, ``actors.relay``)
and the ticker (checkpoints due by time, heartbeats of held streams, and the sweeper
that interrupts streams whose replica died, on one replica at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import asyncpg

from chat_storage.actors import events, relay, stream_metrics
from chat_storage.actors.events import Event
from chat_storage.actors.feed import Feed, FeedKey
from chat_storage.actors.stream_state import StreamConfig
from chat_storage.actors.streams import Streams, Write
from chat_storage.actors.subscriber import Outbox, Subscription
from chat_storage.storage import broker as broker_mod
from chat_storage.storage import db
from chat_storage.storage import streams as store

log = logging.getLogger(__name__)
T = TypeVar("T")
PAGE = 500


@dataclasses.dataclass(frozen=True, slots=True)
class HubConfig:
    send_queue: int = 1024
    publish_queue: int = 100_000
    sweep: bool = True
    stream: StreamConfig = dataclasses.field(default_factory=StreamConfig)

    @property
    def heartbeat_s(self) -> float:
        """How often a held stream's row is touched when nothing else touches it."""
        return min(10.0, max(1.0, self.stream.grace_s / 3))

    @property
    def orphan_after_s(self) -> float:
        """A streaming row untouched this long has lost its replica."""
        return self.stream.grace_s + 3 * self.heartbeat_s + 5.0


class Hub:
    """Feeds, streams and the broker link of one process."""

    def __init__(self, pool: asyncpg.Pool, broker: broker_mod.Broker, write: Write,
                 config: HubConfig) -> None:
        self.config = config
        self.origin = uuid.uuid4().hex[:16].encode()
        self.streams = Streams(pool, config.stream, self.emit, write)
        self._pool = pool
        self._broker = broker
        self._feeds: dict[FeedKey, Feed] = {}
        self._unlisten: dict[FeedKey, Callable[[], None]] = {}
        self._relay = relay.Relay(broker, self.in_use, config.publish_queue)
        self._ticker_task: asyncio.Task[None] | None = None
        self._closers: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start the relay to the broker and the ticker."""
        self._relay.start()
        self._ticker_task = asyncio.create_task(self._ticker(), name="hub-ticker")

    # ------------------------------------------------------------ events in
    def emit(self, tenant_id: uuid.UUID, session_id: uuid.UUID, event: Event) -> None:
        """Deliver a session event here and publish it to the other replicas."""
        key = (tenant_id, session_id)
        feed = self._feeds.get(key)
        if feed is not None:
            feed.ingest(event)
        self._relay.send(key, events.envelope(self.origin, event))

    def on_commit(self, tenant_id: uuid.UUID, session_id: uuid.UUID,
                  stored: list[dict[str, Any]]) -> None:
        """The registry's commit hook: announce the stored messages (in seq order).

        Nothing is built when nobody can receive it: no feed or stream here, and a
        broker with no reader for the channel (the memory broker of one process).
        A feed opened later reads these messages from Postgres.
        """
        key = (tenant_id, session_id)
        if not (self.in_use(key) or self._broker.wanted(relay.channel(key))):
            return
        for message in stored:
            self.emit(tenant_id, session_id, events.from_row(message))

    def in_use(self, key: FeedKey) -> bool:
        """Whether the session has subscribers or streams here (its actor must stay)."""
        return key in self._feeds or self.streams.active(key)

    def live_content(self, key: FeedKey, message_id: uuid.UUID) -> str | None:
        """Content so far of a message being streamed, if this process knows it."""
        sid = str(message_id)
        content = self.streams.content(key, sid)
        if content is None and (feed := self._feeds.get(key)) is not None:
            mirror = feed.mirrors.get(sid)
            content = mirror.text() if mirror is not None else None
        return content

    # ------------------------------------------------------------ subscribers
    async def subscribe(self, key: FeedKey, outbox: Outbox, *, after_seq: int = 0,
                        known: Mapping[int, int] | None = None, sse: bool = False,
                        own: set[str] | None = None) -> Subscription:
        """Catch the client up from ``after_seq`` and keep it live; see ``docs/streaming.md``.

        ``known`` maps the seq of streams the client saw in progress (at or below
        ``after_seq``) to the content length it has: it gets the rest as one delta, or
        the stream's final event. The subscription is registered before anything is read,
        so nothing that happens meanwhile is missed; duplicates are dropped by the cursor.
        """
        feed = self._feeds.get(key)
        if feed is None or feed.broken:
            feed = self._open_feed(key)
        sub = Subscription(outbox, after_seq=after_seq, sse=sse,
                           pending_limit=max(1000, 4 * self.config.send_queue))
        if own is not None:
            sub.own = own
        feed.subs.append(sub)
        try:
            await feed.wait_ready()
            await self._catch_up(key, feed, sub, after_seq, known or {})
        except BaseException:
            self.unsubscribe(key, sub)
            raise
        return sub

    def unsubscribe(self, key: FeedKey, sub: Subscription) -> None:
        """Stop delivering to ``sub``; the last one out closes the session's feed."""
        feed = self._feeds.get(key)
        if feed is None or sub not in feed.subs:
            return
        feed.subs.remove(sub)
        if not feed.subs:
            self._close_feed(key)

    async def _catch_up(self, key: FeedKey, feed: Feed, sub: Subscription, after_seq: int,
                        known: Mapping[int, int]) -> None:
        streaming: dict[str, dict[str, Any]] = {}
        seqs = [s for s in known if s <= after_seq]
        rows = await self._db(lambda c: store.at_seqs(c, key[0], key[1], seqs)) if seqs else []
        for row in rows:
            await sub.outbox.room()
            sub.knows(row, known[int(row["seq"])])
            if row["status"] == "streaming":
                streaming[str(row["id"])] = row
        cursor = after_seq
        while True:
            rows = await self._after(key, cursor)
            for row in rows:
                await sub.outbox.room()
                sub.offer(events.from_row(row), force=True)
                if row["status"] == "streaming":
                    streaming[str(row["id"])] = row
            if len(rows) < PAGE:
                break
            cursor = int(rows[-1]["seq"])
        # no await from here on: the snapshots and the waiting live events meet exactly
        for sid, mirror in list(feed.mirrors.items()):
            sub.catch_up(sid, mirror.seq, mirror.text())
        for sid, row in streaming.items():
            if sid not in feed.mirrors:  # not yet announced here (another replica's)
                sub.catch_up(sid, int(row["seq"]), str(row["content"]))
        sub.go_live()

    def _open_feed(self, key: FeedKey) -> Feed:
        if key in self._feeds:
            self._close_feed(key)
        feed = Feed(key, self)
        self._feeds[key] = feed
        # listen before the feed reads Postgres: nothing published after that is missed
        self._unlisten[key] = self._broker.listen(relay.channel(key), self._listener(key))
        feed.start()
        return feed

    def _close_feed(self, key: FeedKey) -> None:
        feed = self._feeds.pop(key)
        unlisten = self._unlisten.pop(key, None)
        if unlisten is not None:
            unlisten()
        task = asyncio.create_task(feed.close())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _listener(self, key: FeedKey) -> Callable[[broker_mod.Event], None]:
        def on_event(message: broker_mod.Event) -> None:
            _, event = events.open_envelope(message.data, skip_origin=self.origin)
            if event is None:
                return
            if event.kind in events.FINALS:
                self.streams.forget(event.stream_id)  # swept elsewhere: stop holding it
            feed = self._feeds.get(key)
            if feed is not None:
                feed.ingest(event)

        return on_event

    # ------------------------------------------------------------ FeedSource
    async def load(self, key: FeedKey) -> tuple[int, list[dict[str, Any]]]:
        return await self._db(lambda c: store.live_state(c, key[0], key[1]))

    async def between(self, key: FeedKey, after_seq: int, upto: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while after_seq < upto:
            page = await self._after(key, after_seq, upto)
            rows.extend(page)
            if len(page) < PAGE:
                break
            after_seq = int(page[-1]["seq"])
        return rows

    async def history(self, key: FeedKey) -> list[Event]:
        out: list[Event] = []
        after: str | None = None
        for _ in range(100):
            try:
                page = await self._broker.read(relay.channel(key), after, 1000)
            except broker_mod.Gap:
                break
            for message in page:
                _, event = events.open_envelope(message.data)
                if event is not None:
                    out.append(event)
            if len(page) < 1000:
                break
            after = page[-1].id
        return out

    def local_streams(self, key: FeedKey) -> dict[str, str]:
        return self.streams.local(key)

    # ------------------------------------------------------------ background
    async def _ticker(self) -> None:
        interval = min(1.0, self.config.stream.checkpoint_interval_s / 2)
        next_beat = next_sweep = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            self.streams.tick(now)
            try:
                if now >= next_beat:
                    next_beat = now + self.config.heartbeat_s
                    await self.streams.heartbeat(self.config.heartbeat_s)
                if self.config.sweep and now >= next_sweep:
                    next_sweep = now + max(5.0, self.config.heartbeat_s)
                    await self.sweep()
            except Exception as exc:
                log.warning("stream housekeeping failed", extra={"error": repr(exc)})

    async def sweep(self) -> int:
        """Interrupt streams whose replica stopped touching them; returns how many."""
        async def run(conn: asyncpg.Connection) -> list[tuple[uuid.UUID, dict[str, Any]]]:
            async with conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)",
                                           store.SWEEP_LOCK):
                    return []
                swept = await store.sweep_orphans(conn, self.config.orphan_after_s)
                # in the same transaction, so no reader sees the content without it: what
                # the dead owner streamed past its last checkpoint, if the broker has it
                # (Redis reads are bounded by the broker's op timeout, tried once per sweep)
                return await self._recover(conn, swept)

        swept = await self._db(run)
        for tenant_id, message in swept:
            log.warning("interrupted a stream whose owner died",
                        extra={"session_id": str(message["session_id"]),
                               "message_id": str(message["id"])})
            self.streams.forget(str(message["id"]))
            self.emit(tenant_id, message["session_id"], events.final(message))
        stream_metrics.SWEPT.inc(len(swept))
        return len(swept)

    async def _recover(self, conn: asyncpg.Connection,
                       swept: list[tuple[uuid.UUID, dict[str, Any]]],
                       ) -> list[tuple[uuid.UUID, dict[str, Any]]]:
        out: list[tuple[uuid.UUID, dict[str, Any]]] = []
        for i, (tenant_id, message) in enumerate(swept):
            try:
                history = await self.history((tenant_id, message["session_id"]))
            except Exception as exc:  # broker down: keep what Postgres has
                log.warning("cannot recover swept streams from the broker",
                            extra={"error": repr(exc)})
                return out + swept[i:]
            have = len(message["content"])
            lost = events.tail(history, str(message["id"]), have)
            if lost:
                message = await store.append_recovered(
                    conn, tenant_id, message["id"], have, lost) or message
            out.append((tenant_id, message))
        return out

    async def close(self, timeout_s: float) -> None:
        """Store every held stream interrupted, flush the broker queue, stop."""
        try:
            await asyncio.wait_for(self.streams.close(), timeout_s)
        except TimeoutError:
            log.warning("streams not all stored before the deadline")
        await self._relay.close(min(timeout_s, 5.0))  # tell other replicas what is left
        if self._ticker_task is not None:
            self._ticker_task.cancel()
        for key in list(self._feeds):
            self._close_feed(key)
        for task in [self._ticker_task, *self._closers]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _after(self, key: FeedKey, after_seq: int,
                     upto: int | None = None) -> list[dict[str, Any]]:
        return await self._db(lambda c: store.after(c, key[0], key[1], after_seq, upto=upto,
                                                    limit=PAGE))

    async def _db(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        return await db.call(self._pool, fn,
                             acquire_timeout_s=self.config.stream.acquire_timeout_s)
