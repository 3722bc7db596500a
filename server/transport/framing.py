"""Wire formats of the streaming transports, applied to events encoded once below.

A session event is a JSON body (``actors.live.events``). On a WebSocket it is one
text frame as is; on SSE it gets ``id:`` (the client's position after it) and
``event:`` lines around a ``data:`` line. A reply (``ack``, ``error``, ``pong``, ...)
belongs to one connection and never goes through the fan-out.
"""

from __future__ import annotations

from typing import Any

from chat_storage.actors.live.events import SessionEvent
from chat_storage.actors.live.subscription import Subscription
from chat_storage.storage.jsoncodec import dumps

SSE_RETRY = b"retry: 1000\n\n"  # first thing sent: how soon an EventSource reconnects
SSE_KEEP_ALIVE = b": keep-alive\n\n"


def reply(kind: str, **fields: Any) -> bytes:
    """A frame for one connection only (``ack``, ``error``, ``pong``, ...)."""
    return dumps({"type": kind, **fields})


def event_id(sub: Subscription) -> str:
    """The cursor as an SSE event id: ``seq_hi`` then ``,seq:offset`` per open stream."""
    if not sub.streams:
        return str(sub.seq_hi)
    return str(sub.seq_hi) + "".join(f",{s}:{o}" for s, o in sub.streams.values())


def sse_event(ev: SessionEvent, sub: Subscription) -> bytes:
    """``ev`` as one SSE event, its id the position of ``sub`` after it (a ``Render``)."""
    return b"".join((b"id: ", event_id(sub).encode(), b"\nevent: ", ev.kind.encode(),
                     b"\ndata: ", ev.body, b"\n\n"))


def sse_error(code: str, message: str) -> bytes:
    """An ``error`` event for an SSE stream whose headers are sent already."""
    return b"event: error\ndata: " + dumps(
        {"type": "error", "code": code, "message": message}) + b"\n\n"


def ws_text_header(frame: bytes) -> bytes:
    """The header of a final, unmasked text frame of ``frame``'s length (RFC 6455 5.2)."""
    size = len(frame)
    if size < 126:
        return bytes((0x81, size))
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big")
    return b"\x81\x7f" + size.to_bytes(8, "big")
