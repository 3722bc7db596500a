"""Produce an answer over the WebSocket, surviving dropped connections.

``stream.delta`` frames are not acknowledged, so the stream keeps every character it
was given. When its connection drops it opens a new one, sends ``stream.resume``, and
the server answers with the ``offset`` it holds (the length of the content it has, in
code points, like Python's ``len``); the stream sends the rest from there. Deltas that
reached the old connection late are refused by the server (the stream has a new owner),
so nothing is lost and nothing is repeated. Resume works within the server's grace
period (``CHAT_STREAM_GRACE_S``, 30 s by default) and on the replica that holds the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import aiohttp

from chat_storage_client.errors import (
    ChatStorageError,
    ConnectionFailed,
    NotFound,
    StreamError,
    from_body,
)
from chat_storage_client.models import (
    ContextItem,
    Event,
    JsonObject,
    Message,
    MessageUsage,
    Role,
    ToolCall,
)
from chat_storage_client.resources import Messages
from chat_storage_client.socket import FATAL_CLOSE_CODES, Lost, Socket, refused
from chat_storage_client.transport import Transport

log = logging.getLogger(__name__)
# a resent tail is split so no frame nears the server's frame limit (1 MiB)
RESEND_CHUNK_CHARS = 64 * 1024


class AnswerStream:
    """One answer being written: ``await s.write(delta)``; ended or aborted on exit."""

    def __init__(self, transport: Transport, messages: Messages, session_id: str,
                 start: dict[str, Any], *, reply_timeout_s: float) -> None:
        self._t = transport
        self._messages = messages
        self.session_id = session_id
        self._start = start
        self._reply_timeout_s = reply_timeout_s
        self._socket: Socket | None = None
        self._parts: list[str] = []
        self._length = 0  # code points written so far
        self._refused: ChatStorageError | None = None  # an error frame for a delta
        self._generation = 0  # which connection is the current one
        self.stream_id = ""
        self.message_id = ""
        self.seq = 0
        self.reconnects = 0  # how many times the connection was replaced
        self.usage: MessageUsage | None = None  # stored by end() unless it gets its own
        self.metadata: JsonObject | None = None  # merged by end() unless it gets its own
        self.message: Message | None = None  # the stored answer, once ended or aborted

    @property
    def text(self) -> str:
        """Everything written so far."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    async def open(self) -> None:
        """Connect and start the stream: its message and ``seq`` are fixed from here."""
        self._socket = await self._connect()
        started = await self._socket.call({"type": "stream.start", **self._start},
                                          self._reply_timeout_s)
        self.stream_id = started["stream_id"]
        self.message_id = started["message_id"]
        self.seq = started["seq"]

    async def write(self, delta: str) -> None:
        """Append ``delta`` to the answer (sent at once; no round trip)."""
        if self.message is not None:
            raise StreamError(f"stream {self.stream_id} has ended ({self.message['status']})")
        self._raise_refused()
        if not delta:
            return
        self._parts.append(delta)
        self._length += len(delta)
        try:
            await self._require().send({"type": "stream.delta", "stream_id": self.stream_id,
                                        "delta": delta})
        except Lost:
            await self._recover()

    async def end(self, *, usage: MessageUsage | None = None,
                  metadata: JsonObject | None = None,
                  tool_calls: Sequence[ToolCall] | None = None) -> Message:
        """Store the answer complete (with ``usage`` and ``metadata``) and return it."""
        frame: dict[str, Any] = {"type": "stream.end", "stream_id": self.stream_id}
        usage = usage if usage is not None else self.usage
        metadata = metadata if metadata is not None else self.metadata
        if usage is not None:
            frame["usage"] = usage
        if metadata is not None:
            frame["metadata"] = metadata
        if tool_calls is not None:  # an assistant's answer only (docs/api.md, "Tool calls")
            frame["tool_calls"] = list(tool_calls)
        return await self._finish(frame, "complete")

    async def abort(self, reason: str | None = None) -> Message:
        """Store the answer so far with ``status: aborted``."""
        frame: dict[str, Any] = {"type": "stream.abort", "stream_id": self.stream_id}
        if reason is not None:
            frame["reason"] = reason[:1000]
        return await self._finish(frame, "aborted")

    async def close(self) -> None:
        """Close the connection (an unfinished stream is interrupted after the grace)."""
        if self._socket is not None:
            await self._socket.close()

    # ------------------------------------------------------------ internals
    async def _finish(self, frame: dict[str, Any], status: str) -> Message:
        self._raise_refused()
        for _ in range(self._t.retry.attempts):
            try:
                reply = await self._require().call(frame, self._reply_timeout_s)
            except Lost:
                try:
                    await self._recover()
                except StreamError:
                    # the final frame may have been stored before its reply was lost
                    return await self._stored_as(status)
                continue
            self.message = cast(Message, reply["message"])
            await self.close()
            return self.message
        raise ConnectionFailed(f"could not finish stream {self.stream_id}")

    async def _stored_as(self, status: str) -> Message:
        stored = await self._messages.get(self.session_id, self.message_id)
        if stored["status"] != status or stored["content"] != self.text:
            raise StreamError(f"stream {self.stream_id} was lost: stored as "
                              f"{stored['status']} with {len(stored['content'])} of "
                              f"{self._length} characters")
        self.message = stored
        return stored

    async def _recover(self) -> None:
        """Replace the connection, take the stream back and send what the server lacks."""
        last: Exception | None = None
        for attempt in range(self._t.retry.attempts):
            if self._socket is not None:
                close_code = self._socket.ws.close_code
                await self._socket.close()
                if close_code in FATAL_CLOSE_CODES:
                    raise StreamError(f"the server closed the stream's connection with "
                                      f"{close_code}")
            if attempt:
                await asyncio.sleep(self._t.retry.backoff_s(attempt))
            try:
                self._socket = await self._connect()
                resumed = await self._socket.call(
                    {"type": "stream.resume", "stream_id": self.stream_id},
                    self._reply_timeout_s)
                await self._resend(int(resumed["offset"]))
            except (Lost, OSError, TimeoutError, ConnectionFailed) as exc:
                last = exc
                continue
            except NotFound as exc:
                raise StreamError(f"stream {self.stream_id} cannot be resumed: it ended, or "
                                  "its grace period passed", body=exc.body,
                                  request_id=exc.request_id) from exc
            self.reconnects += 1
            log.info("stream resumed", extra={"stream_id": self.stream_id,
                                               "reconnects": self.reconnects})
            return
        raise ConnectionFailed(f"could not resume stream {self.stream_id}: {last}")

    async def _resend(self, offset: int) -> None:
        if offset > self._length:
            raise StreamError(f"the server holds {offset} characters of stream "
                              f"{self.stream_id}, more than the {self._length} written")
        tail = self.text[offset:]
        for i in range(0, len(tail), RESEND_CHUNK_CHARS):
            await self._require().send({"type": "stream.delta", "stream_id": self.stream_id,
                                        "delta": tail[i:i + RESEND_CHUNK_CHARS]})

    async def _connect(self) -> Socket:
        self._generation += 1
        on_event = functools.partial(self._on_event, self._generation)
        try:
            return await Socket.open(self._t, self.session_id, on_event, self._reply_timeout_s)
        except ChatStorageError:
            raise
        except aiohttp.WSServerHandshakeError as exc:
            raise refused(exc) or ConnectionFailed(
                f"WebSocket to session {self.session_id}: {exc}") from exc
        except Exception as exc:
            raise ConnectionFailed(f"WebSocket to session {self.session_id}: {exc}") from exc

    def _on_event(self, generation: int, event: Event) -> None:
        # without a ref, only a refused delta is addressed to a producer; a replaced
        # connection's late refusals (the stream has a new owner) are expected
        if (event.get("type") == "error" and generation == self._generation
                and self._refused is None):
            self._refused = from_body(0, event)

    def _raise_refused(self) -> None:
        if self._refused is not None:
            raise self._refused

    def _require(self) -> Socket:
        if self._socket is None:
            raise StreamError("the stream is not open")
        return self._socket


@contextlib.asynccontextmanager
async def stream_answer(transport: Transport, messages: Messages, session_id: str, *,
                        role: Role = "assistant", parent_id: str | None = None,
                        context: Sequence[ContextItem] | None = None,
                        metadata: JsonObject | None = None, sender_id: str | None = None,
                        tool_call_id: str | None = None,
                        reply_timeout_s: float = 30.0) -> AsyncIterator[AnswerStream]:
    """Start an answer; end it when the block exits, abort it if the block raises."""
    start: dict[str, Any] = {"role": role}
    for key, value in (("parent_id", parent_id), ("context", context),
                       ("metadata", metadata), ("sender_id", sender_id),
                       ("tool_call_id", tool_call_id)):
        if value is not None:
            start[key] = list(value) if key == "context" else value
    stream = AnswerStream(transport, messages, session_id, start,
                          reply_timeout_s=reply_timeout_s)
    try:
        await stream.open()
    except BaseException:
        await stream.close()
        raise
    try:
        yield stream
    except BaseException as exc:
        if stream.message is None:
            with contextlib.suppress(ChatStorageError):
                await asyncio.shield(stream.abort(f"producer raised {type(exc).__name__}"))
        await stream.close()
        raise
    try:
        if stream.message is None:
            await stream.end()
    finally:
        await stream.close()
