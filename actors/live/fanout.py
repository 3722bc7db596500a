"""The fan-out: this process's session feeds, and the broker link between replicas.

Every event of a session (a commit, a delta, the end of a stream) is handed to the
session's local feed at once, and queued for the broker (one channel per session,
``actors.live.relay``), from which the feeds of other replicas take it. Events that
come back from the broker with this process's own origin are ignored: they were
delivered locally already. If the broker is down, local delivery goes on and other
replicas' readers catch up from Postgres (the feed fills any hole in ``seq`` from there;
events lost without a hole to show it are reconciled: ``actors.live.reconcile``).
With a KEK configured and Redis, an encrypted tenant's events are sealed on their way
to the broker and opened, in order, on their way back (``actors.live.sealing``).

It is the write path's commit listener (``on_commit``, ``in_use``), so it is built
before the registry and needs nothing that writes: the producers' streams it reads
are in :class:`~chat_storage.actors.live.stream_state.HeldStreams`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping

from chat_storage.actors.live import events, relay
from chat_storage.actors.live.catchup import catch_up
from chat_storage.actors.live.config import HubConfig
from chat_storage.actors.live.events import SessionEvent
from chat_storage.actors.live.feed import Feed
from chat_storage.actors.live.outbox import Outbox
from chat_storage.actors.live.reconcile import Reconciler
from chat_storage.actors.live.source import SessionSource
from chat_storage.actors.live.stream_state import HeldStreams
from chat_storage.actors.live.subscription import Render, Subscription
from chat_storage.storage import broker as broker_mod
from chat_storage.storage.records import SessionKey, StoredMessage
from chat_storage.supervisor import Supervisor


class Fanout:
    """Feeds by session, their subscribers, and the relay to and from the broker."""

    def __init__(self, broker: broker_mod.Broker, source: SessionSource, held: HeldStreams,
                 config: HubConfig, *, tasks: Supervisor) -> None:
        self.config = config
        self.origin = uuid.uuid4().hex[:16].encode()
        self._broker = broker
        self._source = source
        self._held = held
        self._feeds: dict[SessionKey, Feed] = {}
        self._unlisten: dict[SessionKey, Callable[[], None]] = {}
        # encrypted tenants' events are sealed for the broker and opened from it
        self._sealing = source.sealing
        self._relay = relay.Relay(broker, self.in_use, tasks=tasks, origin=self.origin,
                                  max_queue=config.publish_queue, sealing=self._sealing)
        self._reconciler = Reconciler(source, tasks=tasks)
        self._tasks = tasks
        self._closers: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start the relay to the broker; reconcile every feed whenever the broker is back."""
        self._relay.start()
        self._broker.on_resume(self.reconcile)

    def reconcile(self) -> None:
        """Check every feed here against Postgres (events may have been lost)."""
        for feed in list(self._feeds.values()):
            self._reconciler.request(feed)

    # ------------------------------------------------------------ events in
    def emit(self, key: SessionKey, event: SessionEvent) -> None:
        """Deliver a session event here and publish it to the other replicas."""
        feed = self._feeds.get(key)
        if feed is not None:
            feed.ingest(event)
        self._relay.send(key, event)

    def scrub(self, key: SessionKey, drop: Callable[[bytes], bool]) -> None:
        """Delete the session's broker messages that ``drop`` picks, once every event
        emitted before this call is published."""
        self._relay.scrub(key, drop)

    def on_commit(self, key: SessionKey, stored: list[StoredMessage]) -> None:
        """The write path's commit listener: announce the stored messages (in seq order).

        Nothing is built when nobody can receive it: no feed or stream here, and a
        broker with no reader for the channel (the memory broker of one process).
        A feed opened later reads these messages from Postgres.
        """
        if not (self.in_use(key) or self._broker.wanted(relay.channel(key))):
            return
        for message in stored:
            self.emit(key, events.from_row(message))

    def in_use(self, key: SessionKey) -> bool:
        """Whether the session has subscribers or streams here (its mailbox must stay)."""
        return key in self._feeds or self._held.active(key)

    def live_content(self, key: SessionKey, message_id: uuid.UUID) -> str | None:
        """Content so far of a message being streamed, if this process knows it."""
        sid = str(message_id)
        content = self._held.content(key, sid)
        if content is None and (feed := self._feeds.get(key)) is not None:
            mirror = feed.mirrors.get(sid)
            content = mirror.text() if mirror is not None else None
        return content

    # ------------------------------------------------------------ subscribers
    async def subscribe(self, key: SessionKey, outbox: Outbox, *, after_seq: int = 0,
                        known: Mapping[int, int] | None = None, render: Render | None = None,
                        own: set[str] | None = None) -> Subscription:
        """Catch the client up from ``after_seq`` and keep it live; see ``docs/streaming.md``.

        ``known``: see :func:`~chat_storage.actors.live.catchup.catch_up`; ``render``
        frames each event for the connection's transport (default: the JSON body). The
        subscription is registered before anything is read, so nothing that happens
        meanwhile is missed; duplicates are dropped by the cursor.
        """
        feed = self._feeds.get(key)
        if feed is None or feed.broken:
            feed = self._open_feed(key)
        sub = Subscription(outbox, after_seq=after_seq, render=render,
                           pending_limit=max(1000, 4 * self.config.send_queue))
        if own is not None:
            sub.own = own
        feed.subs.append(sub)
        try:
            await feed.wait_ready()
            await catch_up(self._source, key, feed, sub, after_seq, known or {})
        except BaseException:
            self.unsubscribe(key, sub)
            raise
        return sub

    def unsubscribe(self, key: SessionKey, sub: Subscription) -> None:
        """Stop delivering to ``sub``; the last one out closes the session's feed."""
        feed = self._feeds.get(key)
        if feed is None or sub not in feed.subs:
            return
        feed.subs.remove(sub)
        if not feed.subs:
            self._close_feed(key)

    def _open_feed(self, key: SessionKey) -> Feed:
        if key in self._feeds:
            self._close_feed(key)
        feed = Feed(key, self._source, tasks=self._tasks)
        self._feeds[key] = feed
        # listen before the feed reads Postgres: nothing published after that is missed
        self._unlisten[key] = self._broker.listen(relay.channel(key), self._listener(key))
        feed.start()
        return feed

    def _close_feed(self, key: SessionKey) -> None:
        feed = self._feeds.pop(key)
        self._reconciler.cancel(feed)
        if self._sealing is not None:
            self._sealing.forget(key)
        unlisten = self._unlisten.pop(key, None)
        if unlisten is not None:
            unlisten()
        task = self._tasks.spawn(feed.close(), name=f"feed-close:{key[1]}")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _listener(self, key: SessionKey) -> Callable[[broker_mod.BrokerMessage], None]:
        def on_event(event: SessionEvent) -> None:
            if event.kind == events.RECONCILE:  # another replica lost events of this session
                lost()
                return
            if event.kind in events.FINALS:
                self._held.drop(event.stream_id)  # swept elsewhere: stop holding it
            feed = self._feeds.get(key)
            if feed is not None:
                feed.ingest(event)

        def lost() -> None:
            if (feed := self._feeds.get(key)) is not None:
                self._reconciler.request(feed)

        sealing = self._sealing

        def on_message(message: broker_mod.BrokerMessage) -> None:
            origin, body = events.split(message.data)
            if origin == self.origin:
                return  # delivered here already
            if sealing is not None:
                sealing.take(key, body, on_event, lost)
                return
            event = events.parse_body(body)
            if event is not None:
                on_event(event)

        return on_message

    # ------------------------------------------------------------ shutdown
    async def flush(self, timeout_s: float) -> None:
        """Publish what is queued for the broker (at most ``timeout_s``), stop the relay."""
        await self._relay.close(timeout_s)

    async def close(self) -> None:
        """Close every feed (their subscriptions are the connections' to end)."""
        for key in list(self._feeds):
            self._close_feed(key)
        if self._closers:
            await asyncio.wait(list(self._closers))
