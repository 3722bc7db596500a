"""The client's WebSocket frames, parsed here without raising past here.

A frame that is not JSON, not an object, of an unknown ``type`` or with bad fields is
a *bad frame*: the client gets ``error {code, message, ref?, errors?}`` and the
connection stays open. Its ``code`` is one of the REST error codes
(:data:`~chat_storage.server.errors.ErrorCode`); ``errors`` is left out when empty.
``stream.delta``, by far the most frequent frame, is checked by hand (a few
``isinstance``) instead of through pydantic; :class:`StreamDelta` describes it, and
its fields are the keys the hand check wants.

The frames the server sends are described in :mod:`chat_storage.server.frames_sent`.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Annotated, Any, Literal

import orjson
import pydantic
from pydantic import Field

from chat_storage.server.errors import ApiError, ErrorCode
from chat_storage.server.field_errors import field_errors
from chat_storage.server.limits import check_decoded
from chat_storage.server.schemas import (
    ContextItem,
    JsonObject,
    MessageCreate,
    MessageUsage,
    Role,
    Strict,
    Text,
    ToolCallId,
    ToolCalls,
)

Ref = Annotated[str, Field(min_length=1, max_length=128)]
StreamId = Annotated[str, Field(min_length=1, max_length=64)]


class StreamPosition(Strict):
    """How much of a stream in progress the client already has."""

    seq: Annotated[int, Field(ge=1)]
    offset: Annotated[int, Field(ge=0)]


class Subscribe(Strict):
    """Send every committed message after ``after_seq``, answers in progress, then live events."""

    type: Literal["subscribe"]
    ref: Ref | None = None
    after_seq: Annotated[int, Field(ge=0)] = 0
    # extension for exact resume: streams the client saw in progress, at or below after_seq
    streams: Annotated[list[StreamPosition], Field(max_length=64)] = Field(default_factory=list)


class MessageCreateFrame(MessageCreate):
    """Store a message; ``ack`` after it is committed (creates are pipelined)."""

    type: Literal["message.create"]
    ref: Ref | None = None

    def message(self) -> MessageCreate:
        """The message fields alone."""
        return MessageCreate.model_validate(self.model_dump(exclude={"type", "ref"}))


class StreamStart(Strict):
    """Start an answer: its row is committed with ``status: streaming``, its seq fixed."""

    type: Literal["stream.start"]
    ref: Ref | None = None
    role: Role = "assistant"
    sender_id: Annotated[Text, Field(min_length=1, max_length=128)] | None = None
    parent_id: uuid.UUID | None = None
    context: list[ContextItem] | None = None
    metadata: JsonObject = Field(default_factory=dict)
    tool_call_id: ToolCallId | None = None  # required when ``role`` is ``tool``


class StreamEnd(Strict):
    """Store the answer complete (merging ``metadata``, adding ``usage`` and, for an
    assistant's answer, the ``tool_calls`` it made)."""

    type: Literal["stream.end"]
    ref: Ref | None = None
    stream_id: StreamId
    metadata: JsonObject | None = None
    usage: MessageUsage | None = None
    tool_calls: ToolCalls | None = None


class StreamAbort(Strict):
    """Store the answer so far with ``status: aborted``."""

    type: Literal["stream.abort"]
    ref: Ref | None = None
    stream_id: StreamId
    reason: Annotated[Text, Field(max_length=1000)] | None = None


class StreamResume(Strict):
    """Take over a stream whose producer went away (within the grace period)."""

    type: Literal["stream.resume"]
    ref: Ref | None = None
    stream_id: StreamId


class Ping(Strict):
    """Answered with ``pong`` (frames are answered in order: a way to wait for the rest)."""

    type: Literal["ping"]
    ref: Ref | None = None


class StreamDelta(Strict):
    """Append text to a stream this connection produces; no reply unless refused.

    Parsed by hand (see :func:`parse`), not through this model: exactly these keys.
    """

    type: Literal["stream.delta"]
    stream_id: str
    delta: str


Frame = Subscribe | MessageCreateFrame | StreamStart | StreamEnd | StreamAbort | StreamResume | Ping
MODELS: dict[str, type[pydantic.BaseModel]] = {
    "subscribe": Subscribe,
    "message.create": MessageCreateFrame,
    "stream.start": StreamStart,
    "stream.end": StreamEnd,
    "stream.abort": StreamAbort,
    "stream.resume": StreamResume,
    "ping": Ping,
}
_DELTA_KEYS = frozenset(StreamDelta.model_fields)
# every frame a client may send, by type
CLIENT_FRAMES: dict[str, type[pydantic.BaseModel]] = {**MODELS, "stream.delta": StreamDelta}


@dataclasses.dataclass(frozen=True, slots=True)
class Delta:
    """A parsed ``stream.delta``."""

    stream_id: str
    delta: str


class BadFrame(Exception):
    """A frame the server cannot act on; becomes an ``error`` frame."""

    def __init__(self, code: ErrorCode, message: str, ref: str | None = None,
                 errors: list[dict[str, str]] | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.ref = ref
        self.errors = errors or []
        self.retry_after = retry_after

    def fields(self) -> dict[str, Any]:
        """The ``error`` frame's fields."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.ref is not None:
            out["ref"] = self.ref
        if self.errors:
            out["errors"] = self.errors
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        return out


def parse(raw: str) -> Frame | Delta:
    """The frame in ``raw``, or :class:`BadFrame`."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadFrame("validation_failed", "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadFrame("validation_failed", "frame must be a JSON object")
    kind = data.get("type")
    if kind == "stream.delta" and data.keys() == _DELTA_KEYS:
        sid, text = data["stream_id"], data["delta"]
        if isinstance(sid, str) and isinstance(text, str):
            return Delta(sid, text)
    ref = data.get("ref") if isinstance(data.get("ref"), str) else None
    if kind == "stream.delta":
        raise BadFrame("validation_failed", "stream.delta takes exactly a string stream_id "
                       "and a string delta", ref)
    model = MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise BadFrame("validation_failed", f"unknown frame type {kind!r}", ref,
                       [{"field": "type", "message": "is not a known frame type"}])
    try:
        check_decoded(data, "frame")  # the limits of every request body (server.limits)
        frame: Frame = model.model_validate(data)  # type: ignore[assignment]
    except pydantic.ValidationError as exc:
        errors = field_errors(exc, "frame")
        raise BadFrame("validation_failed", "frame is invalid", ref, errors) from None
    except ApiError as err:
        raise from_api_error(err, ref) from None
    return frame


def from_api_error(err: ApiError, ref: str | None) -> BadFrame:
    """An HTTP-shaped error of a shared check (size limits, a 503, the rate limit) as an
    error frame, with the same code; its ``Retry-After`` as ``retry_after`` (seconds)."""
    retry = err.headers.get("Retry-After", "")
    return BadFrame(err.code, err.message, ref, err.errors,
                    int(retry) if retry.isdigit() else None)
