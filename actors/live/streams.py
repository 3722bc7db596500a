"""Answers being streamed by producers connected to this process.

Life of a stream (the id of a stream is its message's id):

- ``start``: the message is inserted with ``status: streaming`` through the
  :class:`Writer` (the write path: its ``seq`` is fixed, and ``stream.started`` goes
  out from the commit listener).
- ``delta``: appended in memory, announced at once; the content is checkpointed to
  Postgres every ``checkpoint_interval_s`` or ``checkpoint_chars`` (whichever first).
- ``end`` / ``abort``: the whole content, metadata and usage are written in one
  transaction with ``complete`` / ``aborted``; then ``stream.completed`` /
  ``stream.aborted`` goes out.
- The producer's connection goes away: after ``grace_s`` the stream is stored
  ``interrupted`` with everything received. Within the grace period a new connection
  of the same tenant and session takes it over with ``resume`` (the producer learns
  the offset to continue from). ``resume`` also takes over a stream whose old
  connection the server still believes alive (a half-open TCP connection).

Resume works on the replica that holds the stream; on another one the stream is not
found and is interrupted when its grace ends (route a session's producers to one
replica, e.g. by hashing the session id, if producers must survive reconnects).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import asyncpg

from chat_storage import tracing
from chat_storage.actors.live import events, metrics
from chat_storage.actors.live.events import Emit
from chat_storage.actors.live.stream_state import (
    HeldStreams,
    OwnedStream,
    Owner,
    StreamConfig,
    StreamError,
)
from chat_storage.storage import db
from chat_storage.storage import streams as stream_rows
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.errors import Conflict, NotFound
from chat_storage.storage.messages import NewMessage, WriteGroup
from chat_storage.storage.privacy import redact_metadata, redact_tool_calls
from chat_storage.storage.records import SessionKey, StoredMessage
from chat_storage.storage.redaction import Redactor
from chat_storage.supervisor import Supervisor

log = logging.getLogger(__name__)
T = TypeVar("T")


class Writer(Protocol):
    """How streams store their first row: the write path (the registry), as seen from here."""

    async def write(self, tenant_id: uuid.UUID, session_id: uuid.UUID,
                    group: WriteGroup) -> list[StoredMessage]:
        """Store ``group``; return its messages once committed."""
        ...


Scrub = Callable[[SessionKey, Callable[[bytes], bool]], None]  # Fanout.scrub


class Streams:
    """The streams this process's producers send: start, deltas, end, grace, checkpoints.

    They are held in ``held`` (shared with the fan-out, which reads them); every event
    goes to ``emit``; the first row of each is stored through ``writer``.
    """

    def __init__(self, pool: asyncpg.Pool, config: StreamConfig, held: HeldStreams,
                 emit: Emit, writer: Writer, *, tasks: Supervisor,
                 scrub: Scrub | None = None, keyring: Keyring | None = None) -> None:
        self.config = config
        # seals checkpoints of encrypted tenants' streams (None: no KEK configured)
        self._keyring = keyring
        self._supervisor = tasks
        self._pool = pool
        self._held = held
        self._emit = emit
        self._writer = writer
        self._scrub = scrub
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def __len__(self) -> int:
        return len(self._held)

    async def start(self, key: SessionKey, owner: Owner, message: NewMessage, *,
                    redactor: Redactor | None = None) -> StoredMessage:
        """Insert ``message`` (status streaming) and hold it; returns the stored row.

        With ``redactor`` (its tenant redacts PII) the content is redacted when the
        stream ends, and its deltas are then deleted from the broker.
        """
        stored = await self._writer.write(key[0], key[1], WriteGroup([message]))
        row = stored[0]
        st = OwnedStream(row, key, owner, redactor)
        if tracing.ON:  # a child of the producer's request (the WebSocket's span)
            st.span = tracing.start("stream", attributes={
                "chat.session_id": str(key[1]), "chat.stream_id": st.id,
                "chat.message.seq": st.seq, "chat.message.role": st.role})
        self._held.add(st)
        if owner.closed:  # the producer left while the row was being written
            self._orphan(st)
        return row

    def delta(self, key: SessionKey, stream_id: str, owner: Owner, text: str) -> None:
        """Append ``text`` to a stream this connection owns and announce it (never waits)."""
        st = self._owned(key, stream_id, owner)
        if not text:
            return
        size = len(text) if text.isascii() else len(text.encode())
        if st.size_bytes + size > self.config.max_content_bytes:
            raise StreamError("payload_too_large", f"content would exceed "
                                           f"{self.config.max_content_bytes} bytes")
        if "\x00" in text:
            raise StreamError("validation_failed", "delta must not contain NUL characters")
        offset = st.length
        st.chunks.append(text)
        st.length += len(text)
        st.size_bytes += size
        metrics.DELTAS.inc()
        self._emit(key, events.delta(st.id, offset, text))
        if st.length - st.saved_len >= self.config.checkpoint_chars:
            self._checkpoint_soon(st)

    async def end(self, key: SessionKey, stream_id: str, owner: Owner, *,
                  metadata: Mapping[str, Any] | None = None,
                  usage: Mapping[str, Any] | None = None,
                  tool_calls: Sequence[Mapping[str, Any]] | None = None) -> StoredMessage:
        """Store the stream complete, with the answer's ``tool_calls`` if it made any
        (an assistant's only); returns the final message."""
        st = self._owned(key, stream_id, owner)
        if tool_calls is not None and st.role != "assistant":
            raise StreamError("validation_failed", "only an assistant message has tool_calls")
        return await self._shielded(self._finish(st, "complete", metadata, usage, tool_calls))

    async def abort(self, key: SessionKey, stream_id: str, owner: Owner,
                    reason: str | None = None) -> StoredMessage:
        """Store the stream aborted with what it has; ``reason`` goes into its metadata."""
        st = self._owned(key, stream_id, owner)
        meta = {"abort_reason": reason} if reason else None
        return await self._shielded(self._finish(st, "aborted", meta, None))

    def resume(self, key: SessionKey, stream_id: str, owner: Owner) -> int:
        """Hand the stream to ``owner``; returns the offset to continue from."""
        st = self._live(key, stream_id, "no such stream in progress on this server")
        if st.grace is not None:
            st.grace.cancel()
            st.grace = None
        st.owner = owner
        if st.span is not None:
            st.span.add_event("resumed", {"chat.stream.offset": st.length})
        return st.length

    def release(self, owner: Owner) -> None:
        """``owner`` went away: its streams wait ``grace_s`` for a resume."""
        for st in self._held:
            if st.owner is owner and not st.ending:
                self._orphan(st)

    # ------------------------------------------------------------ background work
    def tick(self, now: float) -> None:
        """Start the checkpoints that are due by time."""
        for st in self._held:
            if (st.length > st.saved_len and not st.ending
                    and now - st.touched_at >= self.config.checkpoint_interval_s):
                self._checkpoint_soon(st)

    async def heartbeat(self, older_than_s: float) -> None:
        """Tell Postgres the streams not touched for ``older_than_s`` are still alive."""
        now = time.monotonic()
        quiet = [st for st in self._held if now - st.touched_at >= older_than_s]
        if not quiet:
            return
        touched = [(s.key[0], s.message_id) for s in quiet]
        await self._db(lambda c: stream_rows.heartbeat(c, touched))
        for st in quiet:
            st.touched_at = now

    async def close(self) -> None:
        """Shutdown: store every stream ``interrupted`` with its content."""
        self._closing = True
        for st in self._held:
            if not st.ending:
                self._spawn(self._finish(st, "interrupted", None, None))
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------ internals
    def _live(self, key: SessionKey, stream_id: str, absent: str) -> OwnedStream:
        """The stream, still open, of this session; ``absent`` explains a miss."""
        st = self._held.get(stream_id)
        if st is None or st.key != key:
            raise StreamError("not_found", absent)
        if st.ending:
            raise StreamError("conflict", "the stream has ended")
        return st

    def _owned(self, key: SessionKey, stream_id: str, owner: Owner) -> OwnedStream:
        st = self._live(key, stream_id, "no such stream in progress")
        if st.owner is not owner:
            raise StreamError("forbidden", "the stream belongs to another connection")
        return st

    def _orphan(self, st: OwnedStream) -> None:
        st.owner = None
        if st.span is not None:
            st.span.add_event("producer gone", {"chat.stream.grace_s": self.config.grace_s})
        if st.grace is None:
            st.grace = asyncio.get_running_loop().call_later(
                self.config.grace_s, self._expire, st.id)

    def _expire(self, stream_id: str, attempt: int = 0) -> None:
        st = self._held.get(stream_id)
        if st is None or st.owner is not None or st.ending:
            return
        st.grace = None
        self._spawn(self._interrupt(st, attempt))

    async def _interrupt(self, st: OwnedStream, attempt: int) -> None:
        try:
            await self._finish(st, "interrupted", None, None)
        except StreamError:
            pass
        except Exception as exc:
            # give up: once no heartbeat touches it, the sweeper ends it
            if attempt >= 30 or self._closing:
                log.error("cannot store interrupted stream", extra={"stream_id": st.id})
                self._drop(st, "not_stored")
                return
            log.warning("cannot store interrupted stream yet; retrying",
                        extra={"stream_id": st.id, "error": repr(exc)})
            st.grace = asyncio.get_running_loop().call_later(
                1.0, self._expire, st.id, attempt + 1)

    async def _finish(self, st: OwnedStream, status: str, metadata: Mapping[str, Any] | None,
                      usage: Mapping[str, Any] | None,
                      tool_calls: Sequence[Mapping[str, Any]] | None = None) -> StoredMessage:
        if st.ending:
            raise StreamError("conflict", "the stream is already ending")
        st.ending = True
        if st.grace is not None:
            st.grace.cancel()
            st.grace = None
        if st.saving is not None:
            await asyncio.gather(st.saving, return_exceptions=True)
        content = st.text()
        if st.redactor is not None:  # off the event loop: a long answer takes a while
            content = await asyncio.to_thread(st.redactor.redact, content)
            if tool_calls is not None:
                tool_calls = redact_tool_calls(tool_calls, st.redactor)
            metadata = redact_metadata(dict(metadata), st.redactor) if metadata else metadata
        try:
            message = await self._db(lambda c: stream_rows.finish(
                c, st.key[0], st.key[1], st.message_id, content=content, status=status,
                metadata=metadata, usage=usage, tool_calls=tool_calls, keyring=self._keyring))
        except (Conflict, NotFound):
            self._drop(st)  # ended elsewhere (the sweeper) or erased: its final went out there
            self._scrub_deltas(st)  # and so did a scrub, maybe before deltas sent from here
            raise StreamError("conflict", "the stream had already ended") from None
        except BaseException:
            st.ending = False
            if st.owner is None or st.owner.closed:
                self._orphan(st)
            raise
        self._drop(st, status)
        metrics.STREAMS_ENDED.labels(status).inc()
        self._emit(st.key, events.final(message))
        self._scrub_deltas(st)
        return message

    def _scrub_deltas(self, st: OwnedStream) -> None:
        """A redacting tenant's stream ended: its deltas (unredacted) leave the broker."""
        if st.redactor is not None and self._scrub is not None:
            self._scrub(st.key, events.deltas_of(st.id))

    def _checkpoint_soon(self, st: OwnedStream) -> None:
        if st.saving is None and not st.ending:
            st.saving = self._spawn(self._checkpoint(st))

    async def _checkpoint(self, st: OwnedStream) -> None:
        content = st.text()
        try:
            kept = await self._db(lambda c: stream_rows.checkpoint(
                c, st.key[0], st.key[1], st.message_id, stored_len=st.saved_len,
                tail=content[st.saved_len:], content=content, keyring=self._keyring))
            st.saved_len = len(content)
            if not kept and not st.ending:
                log.warning("streamed message ended elsewhere", extra={"stream_id": st.id})
                self._drop(st)
                self._scrub_deltas(st)
        except Exception as exc:
            metrics.CHECKPOINT_ERRORS.inc()
            log.warning("checkpoint failed", extra={"stream_id": st.id, "error": repr(exc)})
        finally:
            st.touched_at = time.monotonic()
            st.saving = None

    def _drop(self, st: OwnedStream, status: str = "ended_elsewhere") -> None:
        """Forget ``st``; its span ends with ``status`` (complete, aborted, interrupted,
        or: stored elsewhere, e.g. by the sweeper, or given up)."""
        self._held.drop(st.id)
        if st.span is not None:
            st.span.set_attributes({"chat.stream.status": status,
                                    "chat.stream.chars": st.length})
            if status == "not_stored":
                tracing.fail(st.span, status)
            st.span.end()
            st.span = None

    async def _db(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        return await db.call(self._pool, fn, acquire_timeout_s=self.config.acquire_timeout_s)

    async def _shielded(self, coro: Coroutine[Any, Any, T]) -> T:
        # a producer that hangs up mid-write must not cancel the write itself
        return await asyncio.shield(self._spawn(coro))

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        # awaited through a shield by the producer that asked, or waited for by close()
        task = self._supervisor.spawn(coro, name="stream-write", awaited=True)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None and not isinstance(
                exc, StreamError):
            log.debug("stream task failed", extra={"error": repr(exc)})
