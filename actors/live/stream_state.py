"""The streamed answers held by this process: their state, their table, their vocabulary.

:class:`HeldStreams` is built before anything that uses it: the fan-out reads it (a
session with a stream held here is in use; late joiners get its content) and drops
streams other replicas ended, the producers' :class:`~chat_storage.actors.live.streams.Streams`
add and drop the streams their connections produce.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal, Protocol

from chat_storage.actors.live import metrics
from chat_storage.storage.records import SessionKey, StoredMessage
from chat_storage.storage.redaction import Redactor


class Owner(Protocol):
    """The producer's connection, as streams see it."""

    @property
    def closed(self) -> bool: ...


# the codes of the error frame (docs/api.md, "Errors") that a stream request can fail with
StreamErrorCode = Literal["not_found", "forbidden", "conflict", "payload_too_large",
                          "validation_failed"]


class StreamError(Exception):
    """A stream request that cannot be done; ``code`` goes into the error frame."""

    def __init__(self, code: StreamErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True)
class StreamConfig:
    checkpoint_interval_s: float = 1.0
    checkpoint_chars: int = 2000
    grace_s: float = 30.0
    max_content_bytes: int = 256 * 1024
    acquire_timeout_s: float = 2.0


class OwnedStream:
    """An answer in progress whose producer is (or was) connected here."""

    __slots__ = ("chunks", "ending", "grace", "id", "key", "length", "message_id", "owner",
                 "redactor", "role", "saved_len", "saving", "seq", "size_bytes", "span",
                 "touched_at")

    def __init__(self, message: StoredMessage, key: SessionKey, owner: Owner,
                 redactor: Redactor | None = None) -> None:
        self.message_id: uuid.UUID = message["id"]
        self.id = str(self.message_id)
        self.key = key
        self.seq = int(message["seq"])
        self.role = str(message["role"])
        self.chunks: list[str] = []
        self.length = 0  # code points
        self.size_bytes = 0
        self.saved_len = 0  # code points stored in Postgres
        self.touched_at = time.monotonic()  # last checkpoint or heartbeat
        self.owner: Owner | None = owner
        self.grace: asyncio.TimerHandle | None = None
        self.saving: asyncio.Task[None] | None = None
        self.ending = False
        self.span: Any = None  # the stream's life as a trace span (tracing on), ended with it
        # its tenant redacts PII: the final content is redacted, then its deltas leave the
        # broker (checkpoints stay raw until then: catch-up offsets count raw text)
        self.redactor = redactor

    def text(self) -> str:
        if len(self.chunks) > 1:
            self.chunks = ["".join(self.chunks)]
        return self.chunks[0] if self.chunks else ""


class HeldStreams:
    """The streams held by this process, by id and by session (no I/O, never waits)."""

    def __init__(self) -> None:
        self._by_id: dict[str, OwnedStream] = {}
        self._by_session: dict[SessionKey, set[str]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[OwnedStream]:
        return iter(list(self._by_id.values()))

    def get(self, stream_id: str) -> OwnedStream | None:
        """The stream ``stream_id``, if held here."""
        return self._by_id.get(stream_id)

    def active(self, key: SessionKey) -> bool:
        """Whether this process holds a stream of the session ``key``."""
        return key in self._by_session

    def local(self, key: SessionKey) -> dict[str, str]:
        """Content so far of the session's streams held here, by stream id."""
        return {sid: self._by_id[sid].text() for sid in self._by_session.get(key, ())}

    def content(self, key: SessionKey, stream_id: str) -> str | None:
        """Content so far of one stream of the session, if held here."""
        st = self._by_id.get(stream_id)
        return st.text() if st is not None and st.key == key else None

    def add(self, st: OwnedStream) -> None:
        """Hold ``st``."""
        self._by_id[st.id] = st
        self._by_session.setdefault(st.key, set()).add(st.id)
        metrics.STREAMS_OPEN.inc()

    def drop(self, stream_id: str) -> None:
        """Stop holding a stream (ended here or elsewhere); cancels its grace period."""
        st = self._by_id.pop(stream_id, None)
        if st is None:
            return
        metrics.STREAMS_OPEN.dec()
        if st.grace is not None:
            st.grace.cancel()
            st.grace = None
        ids = self._by_session.get(st.key)
        if ids is not None:
            ids.discard(st.id)
            if not ids:
                del self._by_session[st.key]
