"""A connection's bounded outbox: what the fan-out queues and the connection's writer sends.

Nothing here ever waits on a socket: the fan-out only appends, and when the outbox is
full the connection is cut (the client resumes from where it was, see
``docs/streaming.md``). The writer that empties it is the transport's
(``server/transport``): either a task that awaits :meth:`Outbox.take`, or a callback
(``on_ready``) told when the outbox stops being empty, which takes what is queued with
:meth:`Outbox.take_now`.

An idle connection's outbox holds no event, queue or future: one is made only while
someone waits (the writer for a frame, a catch-up for room). With 10,000 idle
subscribers that is what keeps the memory per connection down (loadtest/RESULTS.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class ConnectionCut(Exception):
    """The connection's outbox overflowed or was closed; stop working for it."""


class Outbox:
    """A connection's bounded queue of encoded frames, emptied by its writer."""

    __slots__ = ("_items", "_waiter", "closed", "limit", "on_overflow", "on_ready",
                 "overflowed")

    def __init__(self, limit: int, on_overflow: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.on_overflow = on_overflow
        # called (never awaited) when a frame lands in an empty outbox, and on close
        self.on_ready: Callable[[], None] | None = None
        self.overflowed = False
        self.closed = False
        self._items: list[bytes] = []
        # made by whoever waits (take: frames or close; room: below the limit or close),
        # resolved by the next change; each waiter checks its own condition again
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, frame: bytes, *, force: bool = False) -> bool:
        """Queue ``frame`` without waiting; past the limit, cut the connection instead.

        ``force`` lets a bounded burst (a subscriber's catch-up) pass the limit.
        """
        if self.closed:
            return False
        items = self._items
        if len(items) >= self.limit and not force:
            self.overflow()
            return False
        items.append(frame)
        if len(items) == 1:
            self._changed()
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
        if self.closed:
            return
        self.closed = True
        self._items = []
        self._changed()

    def take_now(self) -> list[bytes]:
        """Everything queued, without waiting (``[]`` when empty or closed)."""
        items = self._items
        if not items or self.closed:
            return []
        self._items = []
        if len(items) >= self.limit:
            self._changed(writer=False)  # a catch-up may wait for room
        return items

    async def room(self) -> None:
        """Wait until the outbox is below its limit (only a catch-up may wait)."""
        while not self.closed and len(self._items) >= self.limit:
            await self._wait()
        if self.closed:
            raise ConnectionCut("connection cut")

    async def take(self, timeout_s: float | None = None) -> list[bytes]:
        """Everything queued, waiting for at least one frame (``[]`` on timeout or close)."""
        if not self._items and not self.closed:
            if timeout_s is not None and timeout_s <= 0:
                return []
            try:
                async with asyncio.timeout(timeout_s):
                    while not self._items and not self.closed:
                        await self._wait()
            except TimeoutError:
                return []
        return self.take_now()

    async def _wait(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(waiter)  # one waiter's cancellation leaves the others'

    def _changed(self, *, writer: bool = True) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if writer and self.on_ready is not None:
            self.on_ready()
