"""One connection's side of the fan-out: a bounded outbox and a subscription cursor.

The session's feed hands every event to each subscription synchronously; the
subscription drops what its client already has (by ``seq`` and ``offset``) and puts
the frame in the connection's :class:`Outbox`. Nothing here ever waits on a socket:
the connection's own writer task empties the outbox, and when the outbox is full the
connection is cut (the client resumes from where it was, see ``docs/streaming.md``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Mapping
from typing import Any

from chat_storage.actors import events
from chat_storage.actors.events import Event


class ConnectionCut(Exception):
    """The connection's outbox overflowed or was closed; stop working for it."""


class Outbox:
    """A connection's bounded queue of encoded frames, emptied by its writer task."""

    def __init__(self, limit: int, on_overflow: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.on_overflow = on_overflow
        self.overflowed = False
        self.closed = False
        self._items: collections.deque[bytes] = collections.deque()
        self._ready = asyncio.Event()  # items to send, or closed
        self._room = asyncio.Event()  # below the limit again
        self._room.set()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, frame: bytes, *, force: bool = False) -> bool:
        """Queue ``frame`` without waiting; past the limit, cut the connection instead.

        ``force`` lets a bounded burst (a subscriber's catch-up) pass the limit.
        """
        if self.closed:
            return False
        if len(self._items) >= self.limit and not force:
            self.overflow()
            return False
        self._items.append(frame)
        self._ready.set()
        if len(self._items) >= self.limit:
            self._room.clear()
        return True

    def overflow(self) -> None:
        """Give up on this connection: drop what is queued and wake its writer."""
        if self.closed:
            return
        self.overflowed = True
        self.close()
        if self.on_overflow is not None:
            self.on_overflow()

    def close(self) -> None:
        """No more frames; the writer drains nothing more and ends."""
        self.closed = True
        self._items.clear()
        self._ready.set()
        self._room.set()

    async def room(self) -> None:
        """Wait until the outbox is below its limit (only a catch-up may wait)."""
        while not self.closed and len(self._items) >= self.limit:
            self._room.clear()
            await self._room.wait()
        if self.closed:
            raise ConnectionCut("connection cut")

    async def take(self, timeout_s: float | None = None) -> list[bytes]:
        """Everything queued, waiting for at least one frame (``[]`` on timeout or close)."""
        if not self._items and not self.closed:
            self._ready.clear()
            if timeout_s is None:
                await self._ready.wait()
            else:
                try:
                    await asyncio.wait_for(self._ready.wait(), timeout_s)
                except TimeoutError:
                    return []
        if self.closed:
            return []
        batch = list(self._items)
        self._items.clear()
        self._room.set()
        return batch


class Subscription:
    """What one client has of a session: a cursor, and the filter that keeps it exact.

    The cursor is ``seq_hi`` (every message up to it was delivered) and, per stream in
    progress, the content length the client has. Events the client already has are
    dropped; an overlapping delta is trimmed. Events of streams this connection
    produces itself (``own``) are not echoed as broadcasts when it got them as replies.
    """

    __slots__ = ("_final", "_final_order", "_pending_limit", "outbox", "own", "pending",
                 "seq_hi", "sse", "streams", "syncing")

    def __init__(self, outbox: Outbox, *, after_seq: int = 0, sse: bool = False,
                 pending_limit: int = 10_000) -> None:
        self.outbox = outbox
        self.sse = sse
        self.seq_hi = after_seq
        self.streams: dict[str, list[int]] = {}  # stream_id -> [seq, offset the client has]
        self.own: set[str] = set()
        self.syncing = True  # catching up: live events wait in ``pending``
        self.pending: list[Event] = []
        self._pending_limit = pending_limit
        self._final: set[str] = set()
        self._final_order: collections.deque[str] = collections.deque()

    # ------------------------------------------------------------ live side
    def deliver(self, event: Event) -> None:
        """Take a live event from the feed (never waits)."""
        if self.syncing:
            self.pending.append(event)
            if len(self.pending) > self._pending_limit:
                self.outbox.overflow()
            return
        self.offer(event)

    def offer(self, event: Event, *, force: bool = False) -> None:
        """Send ``event`` unless the client has it already."""
        out = self._filter(event)
        if out is not None:
            self.outbox.put(self._render(out), force=force)

    def go_live(self) -> None:
        """End the catch-up: send what came meanwhile (minus duplicates), then live."""
        pending, self.pending = self.pending, []
        for event in pending:
            self.offer(event, force=True)
        self.syncing = False

    # ------------------------------------------------------------ catch-up helpers
    def knows(self, message: Mapping[str, Any], offset: int) -> None:
        """The client says it has ``offset`` code points of the stream at ``message``."""
        sid = str(message["id"])
        if message["status"] == "streaming":
            self.streams[sid] = [int(message["seq"]), offset]
        elif message["status"] in events.FINAL_BY_STATUS:
            self.offer(events.final(message), force=True)

    def catch_up(self, stream_id: str, seq: int, content: str) -> None:
        """Bring the client to ``content`` of a stream in progress: a tail or a snapshot."""
        state = self.streams.get(stream_id)
        if state is None:
            if seq > self.seq_hi or stream_id in self._final:
                return  # announced later by its own stream.started, or already over
            self._snapshot(stream_id, seq, content)
        elif state[1] == 0:
            if content:
                self._snapshot(stream_id, seq, content)
        elif state[1] > len(content):
            self._snapshot(stream_id, seq, content)  # the client claims more: resync it
        elif state[1] < len(content):
            self.offer(events.delta(stream_id, state[1], content[state[1]:]), force=True)

    def _snapshot(self, stream_id: str, seq: int, content: str) -> None:
        self.streams[stream_id] = [seq, len(content)]
        self.outbox.put(self._render(events.snapshot(stream_id, seq, content)), force=True)

    def position(self) -> str:
        """The cursor as an SSE event id: ``seq_hi`` then ``,seq:offset`` per open stream."""
        if not self.streams:
            return str(self.seq_hi)
        return str(self.seq_hi) + "".join(f",{s}:{o}" for s, o in self.streams.values())

    # ------------------------------------------------------------ the filter
    def _filter(self, ev: Event) -> Event | None:
        kind = ev.kind
        if kind == events.DELTA:
            state = self.streams.get(ev.stream_id)
            if state is None or ev.end <= state[1] or ev.offset > state[1]:
                return None  # unknown stream, already had, or a hole the feed never makes
            if ev.offset < state[1]:
                ev = events.trimmed(ev, state[1])
            state[1] = ev.end
            return ev
        if kind == events.CREATED:
            if ev.seq <= self.seq_hi:
                return None
            self.seq_hi = ev.seq
            self._mark_final(ev.stream_id)
            return ev
        if kind == events.STARTED:
            if ev.seq <= self.seq_hi:
                return None
            self.seq_hi = ev.seq
            self.streams[ev.stream_id] = [ev.seq, 0]
            return None if ev.stream_id in self.own else ev
        if kind == events.SNAPSHOT:
            state = self.streams.get(ev.stream_id)
            if ev.stream_id in self._final or (state is not None and ev.offset <= state[1]):
                return None
            self.streams[ev.stream_id] = [ev.seq, ev.offset]
            self.seq_hi = max(self.seq_hi, ev.seq)
            return ev
        if kind in events.FINALS:
            if ev.stream_id in self._final:
                return None
            self._mark_final(ev.stream_id)
            self.streams.pop(ev.stream_id, None)
            self.seq_hi = max(self.seq_hi, ev.seq)
            return None if ev.stream_id in self.own else ev
        return ev

    def _mark_final(self, stream_id: str) -> None:
        # only needed to drop late duplicates, so a bounded memory is enough
        self._final.add(stream_id)
        self._final_order.append(stream_id)
        if len(self._final_order) > 4096:
            self._final.discard(self._final_order.popleft())

    def _render(self, ev: Event) -> bytes:
        if not self.sse:
            return ev.frame
        return b"".join((b"id: ", self.position().encode(), b"\nevent: ", ev.kind.encode(),
                         b"\ndata: ", ev.frame, b"\n\n"))
