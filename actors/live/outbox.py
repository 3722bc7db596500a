"""A connection's bounded outbox: what the fan-out queues and the connection's writer sends.

Nothing here ever waits on a socket: the fan-out only appends, and when the outbox is
full the connection is cut (the client resumes from where it was, see
``docs/streaming.md``). The writer task that empties it is the transport's
(``server/transport``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable


class ConnectionCut(Exception):
    """The connection's outbox overflowed or was closed; stop working for it."""


class Outbox:
    """A connection's bounded queue of encoded frames, emptied by its writer task."""

    def __init__(self, limit: int, on_overflow: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.on_overflow = on_overflow
        self.overflowed = False
        self.closed = False
        self._items: collections.deque[bytes] = collections.deque()
        self._ready = asyncio.Event()  # items to send, or closed
        self._room = asyncio.Event()  # below the limit again
        self._room.set()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, frame: bytes, *, force: bool = False) -> bool:
        """Queue ``frame`` without waiting; past the limit, cut the connection instead.

        ``force`` lets a bounded burst (a subscriber's catch-up) pass the limit.
        """
        if self.closed:
            return False
        if len(self._items) >= self.limit and not force:
            self.overflow()
            return False
        self._items.append(frame)
        self._ready.set()
        if len(self._items) >= self.limit:
            self._room.clear()
        return True

    def overflow(self) -> None:
        """Give up on this connection: drop what is queued and wake its writer."""
        if self.closed:
            return
        self.overflowed = True
        self.close()
        if self.on_overflow is not None:
            self.on_overflow()

    def close(self) -> None:
        """No more frames; the writer drains nothing more and ends."""
        self.closed = True
        self._items.clear()
        self._ready.set()
        self._room.set()

    async def room(self) -> None:
        """Wait until the outbox is below its limit (only a catch-up may wait)."""
        while not self.closed and len(self._items) >= self.limit:
            self._room.clear()
            await self._room.wait()
        if self.closed:
            raise ConnectionCut("connection cut")

    async def take(self, timeout_s: float | None = None) -> list[bytes]:
        """Everything queued, waiting for at least one frame (``[]`` on timeout or close)."""
        if not self._items and not self.closed:
            self._ready.clear()
            if timeout_s is None:
                await self._ready.wait()
            else:
                try:
                    await asyncio.wait_for(self._ready.wait(), timeout_s)
                except TimeoutError:
                    return []
        if self.closed:
            return []
        batch = list(self._items)
        self._items.clear()
        self._room.set()
        return batch
