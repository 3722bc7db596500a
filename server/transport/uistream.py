"""The Vercel AI SDK's UI message stream protocol (v1): one answer as its parts, over SSE.

What ``useChat`` (``DefaultChatTransport``) and ``readUIMessageStream`` of the ``ai``
npm package read: Server-Sent Events whose ``data:`` is one JSON part each, ending
with ``data: [DONE]``, under ``x-vercel-ai-ui-message-stream: v1``. An answer is
``start`` (its ``messageId`` the stored message's id), ``text-start``, ``text-delta``
per piece of text, ``text-end``, then ``finish``; an answer stored ``aborted`` ends
with ``abort`` (its reason) instead, one ``interrupted`` (its producer went away) with
``error``. Keep-alives are SSE comments, which the SDK's parser skips.

:class:`Follower` renders the session events of one stream (a subscription's
``Render``): the text its client lacks, and the closing parts once the stream ends;
the events of every other message render as nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chat_storage.actors.live import events
from chat_storage.actors.live.events import SessionEvent
from chat_storage.actors.live.subscription import Subscription
from chat_storage.storage.jsoncodec import dumps

HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each part on as it comes
    "x-vercel-ai-ui-message-stream": "v1",
}
DONE = b"data: [DONE]\n\n"
INTERRUPTED = "the answer was interrupted: its producer went away"


def part(kind: str, **fields: Any) -> bytes:
    """One part of the stream as an SSE event."""
    return b"data: " + dumps({"type": kind, **fields}) + b"\n\n"


def error(text: str) -> bytes:
    """An ``error`` part and the end of the stream (after the headers, nothing else can
    tell the client)."""
    return part("error", errorText=text) + DONE


def _text_id(message_id: str) -> str:
    return f"{message_id}-text"


def opening(message_id: str) -> bytes:
    """``start`` and ``text-start`` of the answer ``message_id``."""
    return (part("start", messageId=message_id)
            + part("text-start", id=_text_id(message_id)))


def closing(message: Mapping[str, Any]) -> bytes:
    """``text-end``, the part that says how the stored ``message`` ended, and ``[DONE]``."""
    message_id = str(message["id"])
    status = message["status"]
    if status == "aborted":
        reason = (message.get("metadata") or {}).get("abort_reason")
        end = part("abort", reason=reason) if isinstance(reason, str) else part("abort")
    elif status == "interrupted":
        end = part("error", errorText=INTERRUPTED)
    else:  # complete, or a tombstone (deleted: no text left)
        end = part("finish", finishReason="stop")
    return part("text-end", id=_text_id(message_id)) + end + DONE


def whole(message: Mapping[str, Any]) -> bytes:
    """The stream of a message that is no longer streaming: its stored text at once."""
    message_id = str(message["id"])
    content = str(message.get("content") or "")
    text = part("text-delta", id=_text_id(message_id), delta=content) if content else b""
    return opening(message_id) + text + closing(message)


class Follower:
    """Renders one stream's session events as parts, from the beginning of its text.

    Its subscription is opened as a client that knows the stream's ``seq`` with nothing
    of its text (``known={seq: 0}``), so the fan-out hands it a snapshot of the text so
    far, then every later delta exactly once (trimmed to what is lacking), then the
    stream's final event; :attr:`sent` counts the code points rendered, so the final
    event adds only what no delta carried.
    """

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.sent = 0  # code points of the text rendered so far
        self.over = False  # the closing parts are rendered

    def render(self, ev: SessionEvent, sub: Subscription) -> bytes:
        """``ev`` as parts for this answer's client (a ``Render``); ``b""`` if none."""
        if self.over or ev.stream_id != self.message_id:
            return b""
        if ev.kind in (events.DELTA, events.SNAPSHOT):
            start = ev.offset - len(ev.text) if ev.kind == events.SNAPSHOT else ev.offset
            return self._text(ev.text[self.sent - start:] if self.sent >= start else "")
        if ev.kind in events.FINALS and ev.message is not None:
            content = str(ev.message.get("content") or "")
            self.over = True
            return self._text(content[self.sent:]) + closing(ev.message)
        return b""

    def _text(self, text: str) -> bytes:
        if not text:
            return b""
        self.sent += len(text)
        return part("text-delta", id=_text_id(self.message_id), delta=text)


def ends(frame: bytes) -> bool:
    """Whether ``frame`` (rendered by a :class:`Follower`) is the last of its stream."""
    return frame.endswith(DONE)
