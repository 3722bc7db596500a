"""A session's feed on this replica: its events in order, its answers in progress, its readers.

Events reach a feed from this process (commits, producers) and from other replicas
(the broker), in whatever order they arrive. The feed passes them on to its
subscriptions in one order: messages by ``seq`` with no hole, and each stream's
deltas by ``offset`` with no overlap. A ``seq`` that arrives ahead of its
predecessors holds everything behind it while the missing messages are read from
Postgres (the source of truth: a message is committed before it is announced, so
every lower ``seq`` is readable). A mirror of each answer in progress gives late
joiners their ``stream.snapshot``.

Start-up (``start``): the caller listens to the broker first, then the feed reads the
session's ``last_seq`` and streaming rows, brings remote answers up to date from the
broker's recent log, and only then lets the events that came meanwhile through.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Protocol

from chat_storage.actors.live import events, metrics
from chat_storage.actors.live.events import SessionEvent
from chat_storage.actors.live.mirror import Mirror
from chat_storage.actors.live.subscription import Subscription
from chat_storage.storage.records import SessionKey, StoredMessage
from chat_storage.supervisor import Supervisor

log = logging.getLogger(__name__)

_SEQ_KINDS = frozenset({events.CREATED, events.STARTED})


class FeedSource(Protocol):
    """What a feed reads: Postgres, the broker's log, this process's own streams.

    A separate object from the fan-out that owns the feeds
    (:class:`~chat_storage.actors.live.source.SessionSource`), so a feed depends on
    what it reads and nothing else.
    """

    async def load(self, key: SessionKey) -> tuple[int, list[StoredMessage]]:
        """The session's ``last_seq`` and its rows still streaming."""
        ...

    async def between(self, key: SessionKey, after_seq: int, upto: int) -> list[StoredMessage]:
        """Rows with ``after_seq < seq <= upto``, in order."""
        ...

    async def at_seqs(self, key: SessionKey, seqs: list[int]) -> list[StoredMessage]:
        """The rows at ``seqs``, in order."""
        ...

    async def history(self, key: SessionKey) -> list[SessionEvent]:
        """The session's recent events kept by the broker, oldest first."""
        ...

    def local_streams(self, key: SessionKey) -> dict[str, str]:
        """Content so far of the answers this process produces, by stream id."""
        ...


class Feed:
    """This replica's ordered view of one session, shared by its local subscribers."""

    def __init__(self, key: SessionKey, source: FeedSource, *, tasks: Supervisor,
                 block_limit: int = 100_000) -> None:
        self.key = key
        self._tasks = tasks
        self.subs: list[Subscription] = []
        self.mirrors: dict[str, Mirror] = {}
        self.last_seq = 0
        self.broken = False
        self.error: BaseException | None = None
        self._source = source
        self._block_limit = block_limit
        # not None: events wait (start-up, a hole)
        self._blocked: list[SessionEvent] | None = []
        self._ended: set[str] = set()
        self._ended_order: collections.deque[str] = collections.deque()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # streams whose deltas skipped ahead (the broker lost some): deltas waiting
        # while their content is read again, and when each was last read
        self._resyncing: dict[str, list[SessionEvent]] = {}
        self._resynced_at: dict[str, float] = {}
        self._resyncs: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Load the session's state; events ingested meanwhile wait for it."""
        self._task = self._tasks.spawn(self._start(), name=f"feed-start:{self.key[1]}")

    async def wait_ready(self) -> None:
        """Return once started; raise what made the start fail."""
        await self._ready.wait()
        if self.error is not None:
            raise self.error

    async def close(self) -> None:
        """Stop any load in flight; the subscriptions are the connections' to end."""
        for resync in list(self._resyncs):
            self._tasks.cancel(resync)
        if self._task is not None and not self._task.done():
            await self._tasks.stop(self._task)

    def ingest(self, event: SessionEvent) -> None:
        """Take an event from this process or another replica (never waits)."""
        if self._blocked is not None:
            if len(self._blocked) >= self._block_limit:
                self.fail("too many events while catching up")
                return
            self._blocked.append(event)
            return
        self._apply(event)

    def fail(self, reason: str) -> None:
        """Give up on this feed: cut every subscriber (they resume on a fresh one)."""
        if self.broken:
            return
        log.warning("session feed broken", extra={"session_id": str(self.key[1]),
                                                   "reason": reason})
        self.broken = True
        self._blocked = None
        for sub in self.subs:
            sub.outbox.overflow()

    # ------------------------------------------------------------ start-up
    async def _start(self) -> None:
        try:
            last_seq, rows = await self._source.load(self.key)
            local = self._source.local_streams(self.key)
            remote: set[str] = set()
            for row in rows:
                sid = str(row["id"])
                content = local.get(sid)
                if content is None:
                    content = str(row["content"])
                    remote.add(sid)
                self.mirrors[sid] = Mirror(int(row["seq"]), str(row["role"]), content)
            if remote:
                # checkpoints lag; the broker's log holds the deltas since (if it is down,
                # the checkpoints for now: reconciled when it is back)
                for ev in await self._history():
                    if ev.kind == events.DELTA and ev.stream_id in remote:
                        mirror = self.mirrors[ev.stream_id]
                        if ev.offset <= mirror.length < ev.end:
                            mirror.append(ev.text[mirror.length - ev.offset:])
            self.last_seq = last_seq
        except asyncio.CancelledError:
            self.error = ConnectionAbortedError("feed closed")
            self._ready.set()
            raise
        except Exception as exc:
            self.error = exc
            self.broken = True
            self._ready.set()
            return
        self._ready.set()
        self._release()

    def _release(self) -> None:
        blocked, self._blocked = self._blocked or [], None
        for i, event in enumerate(blocked):
            if self._blocked is not None:  # another hole: the rest waits behind it
                self._blocked.extend(blocked[i:])
                return
            self._apply(event)

    # ------------------------------------------------------------ ordering
    def _apply(self, ev: SessionEvent) -> None:
        kind = ev.kind
        if kind == events.DELTA:
            mirror = self.mirrors.get(ev.stream_id)
            if mirror is None:
                return  # over, or never announced to this replica
            have = mirror.length
            if ev.end <= have:
                return
            if ev.offset > have:
                self._gap(ev)
                return
            if ev.offset < have:
                ev = events.trimmed(ev, have)
            mirror.append(ev.text)
            self._emit(ev)
            return
        if kind in events.FINALS and ev.stream_id in self._ended:
            return
        if ev.seq > self.last_seq + 1:
            self._blocked = [ev]
            self._task = self._tasks.spawn(self._fill(self.last_seq, ev.seq - 1),
                                           name=f"feed-fill:{self.key[1]}")
            return
        self._accept(ev)

    def _accept(self, ev: SessionEvent) -> None:
        """Apply an event known to be next in order (or a final of a known seq)."""
        kind = ev.kind
        if kind in _SEQ_KINDS:
            if ev.seq <= self.last_seq:
                return
            self.last_seq = ev.seq
            if kind == events.CREATED:
                self._end(ev.stream_id)
                self._emit(ev)
                return
            content = str(ev.message["content"]) if ev.message is not None else ""
            self.mirrors[ev.stream_id] = Mirror(ev.seq, ev.role, content)
            self._emit(ev)
            if content:  # announced from a checkpoint: readers need what it holds
                self._emit(events.snapshot(ev.stream_id, ev.seq, content))
            return
        if kind in events.FINALS:
            self.last_seq = max(self.last_seq, ev.seq)
            self.mirrors.pop(ev.stream_id, None)
            self._resynced_at.pop(ev.stream_id, None)
            self._end(ev.stream_id)
        self._emit(ev)

    async def _fill(self, after_seq: int, upto: int) -> None:
        rows: list[StoredMessage] = []
        for attempt in range(4):
            try:
                rows = await self._source.between(self.key, after_seq, upto)
                break
            except Exception as exc:
                log.warning("cannot read missing messages", extra={
                    "session_id": str(self.key[1]), "error": repr(exc)})
                await asyncio.sleep(0.2 * 2**attempt)
        metrics.FEED_GAPS.labels("seq").inc()
        for row in rows:
            self._accept(events.from_row(row))
        if self.last_seq < upto:
            log.error("messages missing from the session feed", extra={
                "session_id": str(self.key[1]), "after_seq": self.last_seq, "upto": upto})
            self.last_seq = upto
        self._release()

    def _gap(self, ev: SessionEvent) -> None:
        """A delta past the mirror's end: read the stream's content again, then go on."""
        waiting = self._resyncing.get(ev.stream_id)
        if waiting is not None:
            if len(waiting) < self._block_limit:
                waiting.append(ev)
            return
        metrics.FEED_GAPS.labels("delta").inc()
        self._resyncing[ev.stream_id] = [ev]
        self._spawn_resync(ev.stream_id)

    def resync(self, stream_id: str) -> None:
        """Read an answer in progress again; if longer, it goes out as a snapshot."""
        if stream_id in self.mirrors and stream_id not in self._resyncing:
            self._resyncing[stream_id] = []
            self._spawn_resync(stream_id)

    def _spawn_resync(self, stream_id: str) -> None:
        task = self._tasks.spawn(self._resync(stream_id), name=f"feed-resync:{stream_id}")
        self._resyncs.add(task)
        task.add_done_callback(self._resyncs.discard)

    async def _history(self) -> list[SessionEvent]:
        try:
            return await self._source.history(self.key)
        except Exception as exc:
            log.warning("cannot read the broker's log", extra={
                "session_id": str(self.key[1]), "error": repr(exc)})
            return []

    async def _resync(self, stream_id: str) -> None:
        # the last checkpoint in Postgres, continued by what the broker still holds; at
        # most once a second per stream (a checkpoint may be needed to bridge the hole)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._resynced_at.get(stream_id, 0.0) + 1.0 - loop.time()))
        text = ""
        try:
            _, rows = await self._source.load(self.key)
            base = next((str(r["content"]) for r in rows if str(r["id"]) == stream_id), "")
            text = base + events.tail(await self._source.history(self.key), stream_id, len(base))
        except Exception as exc:
            log.warning("cannot read a stream's content again", extra={
                "session_id": str(self.key[1]), "stream_id": stream_id, "error": repr(exc)})
        self._resynced_at[stream_id] = loop.time()
        waiting = self._resyncing.pop(stream_id, [])
        mirror = self.mirrors.get(stream_id)
        if mirror is None or self.broken:
            return  # ended meanwhile: its final event carries the whole content
        if len(text) > mirror.length:
            mirror.reset(text)
            self._emit(events.snapshot(stream_id, mirror.seq, text))
        for ev in waiting:  # those still past the end start the next round
            self.ingest(ev)

    def _emit(self, ev: SessionEvent) -> None:
        for sub in self.subs:
            if not sub.outbox.closed:
                sub.deliver(ev)

    def _end(self, stream_id: str) -> None:
        self._ended.add(stream_id)
        self._ended_order.append(stream_id)
        if len(self._ended_order) > 4096:
            self._ended.discard(self._ended_order.popleft())

