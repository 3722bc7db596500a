"""One connection's side of the fan-out: its cursor, and the filter that keeps it exact.

The session's feed hands every event to each subscription synchronously; the
subscription drops what its client already has (by ``seq`` and ``offset``) and puts
the event's body in the connection's :class:`~chat_storage.actors.live.outbox.Outbox`,
framed by the connection's :data:`Render` when its transport needs more than the body
(SSE's ``id:`` and ``event:`` lines, rendered in ``server/``).
"""

from __future__ import annotations

from collections.abc import Callable, Set

from chat_storage.actors.live import events
from chat_storage.actors.live.events import SessionEvent
from chat_storage.actors.live.outbox import Outbox
from chat_storage.storage.records import StoredMessage

FINAL_MEMORY = 4096  # streams over, remembered per subscription to drop late duplicates
_NONE: frozenset[str] = frozenset()

# Frames an event for one connection's transport, given its subscription (its cursor
# after the event); without one, the outbox gets the event's body as is.
Render = Callable[[SessionEvent, "Subscription"], bytes]


class Subscription:
    """What one client has of a session: a cursor, and the filter that keeps it exact.

    The cursor is ``seq_hi`` (every message up to it was delivered) and, per stream in
    progress, the content length the client has. SessionEvents the client already has are
    dropped; an overlapping delta is trimmed. SessionEvents of streams this connection
    produces itself (``own``) are not echoed as broadcasts when it got them as replies.
    """

    __slots__ = ("_final", "_pending_limit", "outbox", "own", "pending", "render", "seq_hi",
                 "streams", "syncing")

    def __init__(self, outbox: Outbox, *, after_seq: int = 0, render: Render | None = None,
                 pending_limit: int = 10_000) -> None:
        self.outbox = outbox
        self.render = render
        self.seq_hi = after_seq
        self.streams: dict[str, list[int]] = {}  # stream_id -> [seq, offset the client has]
        self.own: Set[str] = _NONE  # the connection's own set, when it produces streams
        self.syncing = True  # catching up: live events wait in ``pending``
        self.pending: list[SessionEvent] = []
        self._pending_limit = pending_limit
        # streams known to be over, oldest first (a dict: ordered, and smaller idle than
        # a set and a deque; thousands of idle subscriptions each hold one)
        self._final: dict[str, None] = {}

    # ------------------------------------------------------------ live side
    def deliver(self, event: SessionEvent) -> None:
        """Take a live event from the feed (never waits)."""
        if self.syncing:
            self.pending.append(event)
            if len(self.pending) > self._pending_limit:
                self.outbox.overflow()
            return
        self.offer(event)

    def offer(self, event: SessionEvent, *, force: bool = False) -> None:
        """Send ``event`` unless the client has it already."""
        if event.kind in events.FINALS:
            tail = self._tail(event)
            if tail is not None:
                self.outbox.put(self._render(tail), force=force)
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
    def knows(self, message: StoredMessage, offset: int) -> None:
        """The client says it has ``offset`` code points of the stream at ``message``."""
        sid = str(message["id"])
        if message["status"] == "streaming":
            self.streams[sid] = [int(message["seq"]), offset]
        elif message["status"] in events.FINAL_BY_STATUS:
            self.streams[sid] = [int(message["seq"]), offset]  # its final event sends the rest
            self.offer(events.final(message), force=True)

    def catch_up(self, stream_id: str, seq: int, content: str) -> None:
        """Bring the client to ``content`` of a stream in progress: a tail or a snapshot.

        Never backwards: when the client has more than this replica's ``content`` (its
        feed lags the producer's replica), nothing is sent now; the feed's deltas
        beyond the client's offset follow as they come (the filter trims the rest).
        """
        state = self.streams.get(stream_id)
        if state is None:
            if seq > self.seq_hi or stream_id in self._final:
                return  # announced later by its own stream.started, or already over
            self._snapshot(stream_id, seq, content)
        elif state[1] == 0:
            if content:
                self._snapshot(stream_id, seq, content)
        elif state[1] < len(content):
            self.offer(events.delta(stream_id, state[1], content[state[1]:]), force=True)

    def _snapshot(self, stream_id: str, seq: int, content: str) -> None:
        self.streams[stream_id] = [seq, len(content)]
        self.outbox.put(self._render(events.snapshot(stream_id, seq, content)), force=True)

    # ------------------------------------------------------------ the filter
    def _filter(self, ev: SessionEvent) -> SessionEvent | None:
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

    def _tail(self, final: SessionEvent) -> SessionEvent | None:
        """What the client lacks of a stream that ended, as one delta before its final
        event: a client that was away (a resume, or a catch-up that met the end) still
        gets every character as a delta, as it would have live."""
        state = self.streams.get(final.stream_id)
        content = final.message.get("content") if final.message is not None else None
        if (state is None or final.stream_id in self._final or final.stream_id in self.own
                or not isinstance(content, str) or len(content) <= state[1]):
            return None
        tail = events.delta(final.stream_id, state[1], content[state[1]:])
        state[1] = tail.end
        return tail

    def _mark_final(self, stream_id: str) -> None:
        # only needed to drop late duplicates, so a bounded memory is enough
        self._final[stream_id] = None
        if len(self._final) > FINAL_MEMORY:
            del self._final[next(iter(self._final))]

    def _render(self, ev: SessionEvent) -> bytes:
        return ev.body if self.render is None else self.render(ev, self)
