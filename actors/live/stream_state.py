"""The state of one streamed answer held by this process, and the streams' vocabulary."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

StreamKey = tuple[uuid.UUID, uuid.UUID]


class Owner(Protocol):
    """The producer's connection, as streams see it."""

    @property
    def closed(self) -> bool: ...


class StreamError(Exception):
    """A stream request that cannot be done; ``code`` goes into the error frame."""

    def __init__(self, code: str, message: str) -> None:
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
                 "role", "saved_len", "saving", "seq", "size_bytes", "touched_at")

    def __init__(self, message: Mapping[str, Any], key: StreamKey, owner: Owner) -> None:
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

    def text(self) -> str:
        if len(self.chunks) > 1:
            self.chunks = ["".join(self.chunks)]
        return self.chunks[0] if self.chunks else ""
