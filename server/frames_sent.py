"""The frames the server sends, described for the AsyncAPI document.

The server builds these frames as dicts (``actors/live/events.py`` and
``server/transport/framing.py``), encoded once, never through a model. The models here
describe them for ``server/asyncapi.py``, and the tests check what a running server
sends against that document. ``ref`` is left out, not null, when a frame answers none.
"""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic
from pydantic import Field

from chat_storage.server.errors import ErrorCode
from chat_storage.server.schemas import FieldError, Message, Role

SeqNo = Annotated[int, Field(ge=1)]
Offset = Annotated[int, Field(ge=0, description="Unicode code points, not bytes nor "
                                                "UTF-16 units")]


class Ack(pydantic.BaseModel):
    """A ``message.create`` is committed: the stored message."""

    type: Literal["ack"]
    ref: str | None = None
    message: Message


class ErrorFrame(pydantic.BaseModel):
    """A frame was refused (the connection stays open), or an SSE subscription failed."""

    type: Literal["error"]
    code: ErrorCode = Field(description="the code of the REST error body (docs/api.md)")
    message: str
    ref: str | None = None
    errors: list[FieldError] | None = None
    retry_after: int | None = Field(
        None, description="seconds to wait before sending the frame again (with "
                          "rate_limited or unavailable), as HTTP's Retry-After")


class Pong(pydantic.BaseModel):
    """The answer to ``ping``."""

    type: Literal["pong"]
    ref: str | None = None


class StreamResumed(pydantic.BaseModel):
    """This connection owns the stream now; send the rest from ``offset``."""

    type: Literal["stream.resumed"]
    ref: str | None = None
    stream_id: str
    offset: Offset


class MessageCreated(pydantic.BaseModel):
    """A message was committed (in any final status)."""

    type: Literal["message.created"]
    message: Message


class StreamStarted(pydantic.BaseModel):
    """An answer took its place in the session; ``ref`` only in the reply to its producer."""

    type: Literal["stream.started"]
    ref: str | None = None
    stream_id: str = Field(description="the message's id")
    message_id: str
    seq: SeqNo
    role: Role


class StreamSnapshot(pydantic.BaseModel):
    """Everything streamed so far, to a subscriber that joins mid-stream."""

    type: Literal["stream.snapshot"]
    stream_id: str
    message_id: str
    seq: SeqNo
    content: str
    offset: Offset = Field(description="the length of content, in code points")


class StreamDeltaEvent(pydantic.BaseModel):
    """Text appended to a stream at ``offset`` (the content's length before it)."""

    type: Literal["stream.delta"]
    stream_id: str
    offset: Offset
    delta: str


class StreamCompleted(pydantic.BaseModel):
    """The answer is stored complete; ``ref`` only in the reply to its ``stream.end``."""

    type: Literal["stream.completed"]
    ref: str | None = None
    message: Message


class StreamAborted(pydantic.BaseModel):
    """The answer is stored aborted; ``ref`` only in the reply to its ``stream.abort``."""

    type: Literal["stream.aborted"]
    ref: str | None = None
    message: Message


class StreamInterrupted(pydantic.BaseModel):
    """The producer went away past the grace period: stored with what was received."""

    type: Literal["stream.interrupted"]
    message: Message


SERVER_FRAMES: dict[str, type[pydantic.BaseModel]] = {
    "ack": Ack,
    "error": ErrorFrame,
    "pong": Pong,
    "stream.resumed": StreamResumed,
    "message.created": MessageCreated,
    "stream.started": StreamStarted,
    "stream.snapshot": StreamSnapshot,
    "stream.delta": StreamDeltaEvent,
    "stream.completed": StreamCompleted,
    "stream.aborted": StreamAborted,
    "stream.interrupted": StreamInterrupted,
}
# what every subscriber of the session receives, over the WebSocket and over SSE; the
# other frames answer one connection's frame
SESSION_EVENTS = ("message.created", "stream.started", "stream.snapshot", "stream.delta",
                  "stream.completed", "stream.aborted", "stream.interrupted")
