"""Session events: what subscribers receive, each encoded once, and their broker envelope.

Every event is a JSON body of docs/api.md ("Streaming over WebSocket"), built once and
handed as is to every subscriber; how it goes on the wire (a WebSocket text frame, an
SSE ``data:`` line) is the transport's business, in ``server/``. The fields the
fan-out needs to order and de-duplicate (``seq``, ``stream_id``, ``offset``) travel
beside the body so nothing is parsed twice in one process.

A stream's id is its message's id: a subscriber on any replica, or a REST reader, can
tie a stream to its row without another lookup. ``offset`` counts Unicode code points
(Python ``len``), not bytes nor UTF-16 units.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from chat_storage.storage.crypto import events as sealed_events
from chat_storage.storage.jsoncodec import dumps
from chat_storage.storage.records import SessionKey, StoredMessage

CREATED = "message.created"
STARTED = "stream.started"
SNAPSHOT = "stream.snapshot"
DELTA = "stream.delta"
COMPLETED = "stream.completed"
ABORTED = "stream.aborted"
INTERRUPTED = "stream.interrupted"
# between replicas only, never to a client: "events of this session were lost on their
# way to the broker; read it again from Postgres" (see actors.live.reconcile)
RECONCILE = "feed.reconcile"
FINAL_BY_STATUS = {"complete": COMPLETED, "aborted": ABORTED, "interrupted": INTERRUPTED}
FINALS = frozenset(FINAL_BY_STATUS.values())


@dataclasses.dataclass(frozen=True, slots=True)
class SessionEvent:
    """One event of a session, with its JSON body encoded once."""

    kind: str
    body: bytes
    seq: int = 0  # the message's seq; 0 for a delta (its stream has one)
    stream_id: str = ""
    offset: int = 0  # delta: content length before it; snapshot: content length
    text: str = ""  # delta text, or snapshot content
    role: str = ""
    message: Mapping[str, Any] | None = None  # a StoredMessage, or its JSON from the broker

    @property
    def end(self) -> int:
        """For a delta: the content length after it."""
        return self.offset + len(self.text)


# How producers and the sweeper hand an event to the fan-out (``Fanout.emit``).
Emit = Callable[[SessionKey, SessionEvent], None]


def created(message: StoredMessage) -> SessionEvent:
    """``message.created``: a committed message (any final status)."""
    return SessionEvent(CREATED, dumps({"type": CREATED, "message": message}),
                        int(message["seq"]), str(message["id"]), message=message)


def started(message: StoredMessage) -> SessionEvent:
    """``stream.started``: a streamed message took its place in the session."""
    sid = str(message["id"])
    body = {"type": STARTED, "stream_id": sid, "message_id": sid, "seq": message["seq"],
            "role": message["role"]}
    return SessionEvent(STARTED, dumps(body), int(message["seq"]), sid,
                        role=str(message["role"]), message=message)


def delta(stream_id: str, offset: int, text: str) -> SessionEvent:
    """``stream.delta``: ``text`` appended at ``offset``."""
    body = {"type": DELTA, "stream_id": stream_id, "offset": offset, "delta": text}
    return SessionEvent(DELTA, dumps(body), 0, stream_id, offset, text)


def snapshot(stream_id: str, seq: int, content: str) -> SessionEvent:
    """``stream.snapshot``: everything streamed so far, for one who joins mid-stream."""
    body = {"type": SNAPSHOT, "stream_id": stream_id, "message_id": stream_id, "seq": seq,
            "content": content, "offset": len(content)}
    return SessionEvent(SNAPSHOT, dumps(body), seq, stream_id, len(content), content)


def final(message: StoredMessage) -> SessionEvent:
    """``stream.completed`` / ``aborted`` / ``interrupted`` for a message that ended."""
    kind = FINAL_BY_STATUS[str(message["status"])]
    return SessionEvent(kind, dumps({"type": kind, "message": message}), int(message["seq"]),
                        str(message["id"]), message=message)


def from_row(message: StoredMessage) -> SessionEvent:
    """The event that announces a stored row: started if still streaming, else created."""
    return started(message) if message["status"] == "streaming" else created(message)


def reconcile() -> SessionEvent:
    """The broker-only :data:`RECONCILE` marker."""
    return SessionEvent(RECONCILE, dumps({"type": RECONCILE}))


def trimmed(event: SessionEvent, have: int) -> SessionEvent:
    """``event`` (a delta overlapping what is already there) without its first part."""
    return delta(event.stream_id, have, event.text[have - event.offset:])


def tail(history: list[SessionEvent], stream_id: str, have: int) -> str:
    """The text of ``stream_id`` that ``history`` holds beyond its first ``have`` code points."""
    parts: list[str] = []
    for ev in history:
        if ev.kind == DELTA and ev.stream_id == stream_id and ev.offset <= have < ev.end:
            parts.append(ev.text[have - ev.offset:])
            have = ev.end
    return "".join(parts)


def deltas_of(stream_id: str) -> Callable[[bytes], bool]:
    """Whether a broker message (an :func:`envelope`) is a delta or snapshot of
    ``stream_id``: what goes from the broker once a redacted stream is stored. A sealed
    event is told by its readable header (``storage.crypto.events``)."""
    needle = stream_id.encode()

    def picks(data: bytes) -> bool:
        if needle not in data:
            return False
        fields = header_of(data.partition(b" ")[2])
        return (fields is not None and fields.get("stream_id") == stream_id
                and fields.get("type") in (DELTA, SNAPSHOT))
    return picks


def header(event: SessionEvent) -> dict[str, Any]:
    """What a sealed event keeps readable: its kind and position, no content."""
    return {"type": event.kind, "stream_id": event.stream_id, "seq": event.seq,
            "offset": event.offset}


def header_of(body: bytes) -> dict[str, Any] | None:
    """The plain body's fields, or a sealed one's header; ``None`` if neither."""
    sealed = sealed_events.parse(body)
    if sealed is not None:
        return sealed.header
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return fields if isinstance(fields, dict) else None


def envelope(origin: bytes, event: SessionEvent) -> bytes:
    """The broker form of ``event``: who published it, a space, its body."""
    return origin + b" " + event.body


def split(data: bytes) -> tuple[bytes, bytes]:
    """``(origin, body)`` of an :func:`envelope` (the body plain JSON, or sealed)."""
    origin, _, body = data.partition(b" ")
    return origin, body


def open_envelope(data: bytes,
                  skip_origin: bytes | None = None) -> tuple[bytes, SessionEvent | None]:
    """``(origin, event)`` from :func:`envelope`; ``event`` is ``None`` if unreadable
    (a sealed body is: ``actors.live.sealing`` opens those).

    An event from ``skip_origin`` is not parsed (``None``): it is this process's own.
    """
    origin, body = split(data)
    if origin == skip_origin:
        return origin, None
    return origin, parse_body(body)


def parse_body(body: bytes) -> SessionEvent | None:
    """The event of a plain JSON ``body``; ``None`` if it is not one."""
    try:
        fields = orjson.loads(body)
        kind = fields["type"]
        if kind == DELTA:
            return SessionEvent(DELTA, body, 0, fields["stream_id"],
                                int(fields["offset"]), fields["delta"])
        if kind == STARTED:
            return SessionEvent(STARTED, body, int(fields["seq"]), fields["stream_id"],
                                role=fields["role"])
        if kind == RECONCILE:
            return reconcile()
        if kind == CREATED or kind in FINALS:
            message = fields["message"]
            return SessionEvent(kind, body, int(message["seq"]), message["id"],
                                message=message)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        pass
    return None
