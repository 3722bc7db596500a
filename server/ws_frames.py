"""What a session WebSocket does with each text frame: parse, check, dispatch, reply.

:class:`FrameHandlers` is the frame half of a connection; the route's ``Connection``
(:mod:`chat_storage.server.routes.ws`) derives from it and owns the socket's lifecycle
(the read loop, heartbeats, closing).
Every reply goes into the connection's outbox, never straight to the socket. Frames
and their replies: ``docs/streaming.md``.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from aiohttp import web

from chat_storage.actors.live.hub import Hub
from chat_storage.actors.live.outbox import ConnectionCut, Outbox
from chat_storage.actors.live.stream_state import StreamError
from chat_storage.actors.live.subscription import Subscription
from chat_storage.actors.write.registry import Registry
from chat_storage.runtime.settings import Settings
from chat_storage.server import frames, ratelimit
from chat_storage.server.errors import ApiError
from chat_storage.server.inputs import check_tool_fields, to_new_message
from chat_storage.server.limits import check_json
from chat_storage.server.middlewares import to_api_error
from chat_storage.server.transport.framing import reply
from chat_storage.storage.ids import new_id
from chat_storage.storage.messages import NewMessage, WriteGroup
from chat_storage.storage.principal import Principal
from chat_storage.storage.privacy import Policies, redact_message
from chat_storage.storage.records import SessionKey
from chat_storage.storage.writes import Stored

log = logging.getLogger(__name__)
MAX_STREAMS_PER_CONNECTION = 16


class FrameHandlers:
    """Handles the frames of one session WebSocket; the route's ``Connection`` sets the state.

    Slots, here and in the connection: thousands of idle connections each hold one
    (loadtest/RESULTS.md).
    """

    __slots__ = ("_delta_chars", "_in_flight", "_request", "_subscribing", "closed", "hub",
                 "key", "outbox", "own", "principal", "privacy", "registry", "settings", "sub",
                 "writes")

    key: SessionKey
    settings: Settings
    hub: Hub
    registry: Registry
    privacy: Policies
    principal: Principal
    outbox: Outbox
    sub: Subscription | None
    own: set[str]  # streams this connection produces
    closed: bool
    writes: bool  # may create messages and stream answers
    _request: web.Request
    _in_flight: asyncio.Semaphore  # bounds the creates waiting for their commit
    _subscribing: bool
    _delta_chars: int  # delta text not yet charged to the rate limit

    async def _handle(self, raw: str) -> None:
        ref: str | None = None
        try:
            frame = frames.parse(raw)
            if isinstance(frame, frames.Delta):
                await self._charge_delta(len(frame.delta))
                self.hub.delta(self.key, frame.stream_id, self, frame.delta)
                return
            ref = frame.ref
            await self._dispatch(frame)
        except frames.BadFrame as bad:
            self._reply("error", **bad.fields())
        except StreamError as err:
            self._reply("error", code=err.code, message=err.message, ref=ref)
        except ConnectionCut:
            return
        except Exception as exc:
            api = to_api_error(exc)
            if api is None:
                log.exception("websocket frame failed", extra={"session_id": str(self.key[1])})
                api = ApiError(500, "internal error")
            self._reply("error", **frames.from_api_error(api, ref).fields())

    async def _dispatch(self, frame: frames.Frame) -> None:
        if not self.writes and not isinstance(frame, frames.Subscribe | frames.Ping):
            # deltas need a stream this connection started or resumed: refused here too
            raise ApiError(403, "this token cannot write: it lacks the 'write' scope")
        if isinstance(frame, frames.MessageCreateFrame | frames.StreamStart):
            await ratelimit.take_write(self._request.app, self.principal)  # HTTP's bucket
        if isinstance(frame, frames.Subscribe):
            await self._subscribe(frame)
        elif isinstance(frame, frames.MessageCreateFrame):
            await self._create(frame)
        elif isinstance(frame, frames.StreamStart):
            await self._start(frame)
        elif isinstance(frame, frames.StreamEnd):
            check_json("metadata", frame.metadata, self.settings.max_metadata_bytes)
            usage = None if frame.usage is None else frame.usage.model_dump(exclude_none=True)
            tool_calls = None if frame.tool_calls is None else check_tool_fields(
                "assistant", frame.tool_calls, None, self.settings)  # the hub checks the role
            ended = await self.hub.end_stream(self.key, frame.stream_id, self,
                                              metadata=frame.metadata, usage=usage,
                                              tool_calls=tool_calls)
            self._reply("stream.completed", ref=frame.ref, message=ended)
            self.own.discard(frame.stream_id)
        elif isinstance(frame, frames.StreamAbort):
            aborted = await self.hub.abort_stream(self.key, frame.stream_id, self,
                                                  frame.reason)
            self._reply("stream.aborted", ref=frame.ref, message=aborted)
            self.own.discard(frame.stream_id)
        elif isinstance(frame, frames.StreamResume):
            offset = self.hub.resume_stream(self.key, frame.stream_id, self)
            self.own.add(frame.stream_id)
            self._reply("stream.resumed", ref=frame.ref, stream_id=frame.stream_id,
                        offset=offset)
        else:
            self._reply("pong", ref=frame.ref)

    async def _create(self, frame: frames.MessageCreateFrame) -> None:
        """Queue the write and go on reading: creates are pipelined, acked after COMMIT.

        Writes of one connection are queued in frame order, so they commit (and are
        acked) in that order; at most ``MAX_CREATES_IN_FLIGHT`` wait at once, which
        keeps a fast client's memory bounded without a round trip per message.
        """
        message = to_new_message(frame.message(), self.settings)
        [message] = await self.privacy.apply(self.key[0], [message])  # if its tenant asks
        await self._in_flight.acquire()
        try:
            future = self.registry.submit(self.key[0], self.key[1], WriteGroup([message]))
        except BaseException:
            self._in_flight.release()
            raise
        future.add_done_callback(functools.partial(self._acked, frame.ref))

    def _acked(self, ref: str | None, future: asyncio.Future[Stored]) -> None:
        self._in_flight.release()
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            self._reply("ack", ref=ref, message=future.result()[0])
            return
        api = to_api_error(error)
        if api is None:
            log.error("websocket write failed", exc_info=error,
                      extra={"session_id": str(self.key[1])})
            api = ApiError(500, "internal error")
        self._reply("error", **frames.from_api_error(api, ref).fields())

    async def _subscribe(self, frame: frames.Subscribe) -> None:
        if self.sub is not None or self._subscribing:
            raise frames.BadFrame("conflict", "this connection is already subscribed",
                                  frame.ref)
        self._subscribing = True
        try:
            self.sub = await self.hub.subscribe(
                self.key, self.outbox, after_seq=frame.after_seq,
                known={p.seq: p.offset for p in frame.streams}, own=self.own)
        finally:
            self._subscribing = False

    async def _start(self, frame: frames.StreamStart) -> None:
        if len(self.own) >= MAX_STREAMS_PER_CONNECTION:
            raise frames.BadFrame("rate_limited", f"at most {MAX_STREAMS_PER_CONNECTION} streams "
                                  "at once per connection", frame.ref)
        context = None if frame.context is None else [
            c.model_dump(exclude_none=True) for c in frame.context]
        check_json("context", context, self.settings.max_context_bytes)
        check_json("metadata", frame.metadata, self.settings.max_metadata_bytes)
        check_tool_fields(frame.role, None, frame.tool_call_id, self.settings)
        message_id = new_id()
        stream_id = str(message_id)
        # known before the commit, so this connection's subscription does not echo
        # the broadcast stream.started it also gets as this reply
        self.own.add(stream_id)
        try:
            redactor = await self.privacy.redactor(self.key[0])
            new = NewMessage(
                id=message_id, role=frame.role, content="", sender_id=frame.sender_id,
                parent_id=frame.parent_id, context=context, metadata=frame.metadata,
                tool_call_id=frame.tool_call_id, status="streaming")
            if redactor is not None:  # its context now, its content when it ends
                new = redact_message(new, redactor)
            row = await self.hub.start_stream(self.key, self, new, redactor=redactor)
        except BaseException:
            self.own.discard(stream_id)
            raise
        self._reply("stream.started", ref=frame.ref, stream_id=stream_id,
                    message_id=stream_id, seq=row["seq"], role=row["role"])

    async def _charge_delta(self, chars: int) -> None:
        """One token of the rate limit per ``DELTA_CHARS_PER_TOKEN`` of delta text (at
        most one per frame); a refused delta is not appended and not counted."""
        self._delta_chars += chars
        if self._delta_chars < ratelimit.DELTA_CHARS_PER_TOKEN:
            return
        try:
            await ratelimit.take_write(self._request.app, self.principal)
        except ApiError:
            self._delta_chars -= chars
            raise
        self._delta_chars = min(self._delta_chars - ratelimit.DELTA_CHARS_PER_TOKEN,
                                ratelimit.DELTA_CHARS_PER_TOKEN)

    def _reply(self, kind: str, *, ref: str | None = None, **fields: object) -> None:
        if ref is not None:
            fields["ref"] = ref
        self.outbox.put(reply(kind, **fields))
