"""Pause points for race tests: hold a replica's next Postgres read; count a broker's deliveries.

A race test has to put a live event *inside* a read (a subscriber's catch-up, a feed's
start-up) on every run, not now and then, and without sleeping. ``HeldPool`` wraps the
real pool: a :class:`Hold` stops the next ``acquire`` either before its query runs
(``before``) or after it ran but before its caller sees the rows (``after``), until the
test releases it. Nothing is faked: the read runs on the real database. The wrapped
pool must see only the reads the test expects, so it is given to the replica's
``SessionSource`` alone (the reads of its feeds and of its subscribers' catch-ups),
and a hub whose source reads through it is never started (no sweeper, no heartbeats).

``CountingBroker`` is the memory broker (listeners are called within ``publish``) that
lets a test await "n events have been handed to the listeners", i.e. reached the other
replica's feed, and hold a publish (the broker lagging behind Postgres).

``Recorder`` is a subscription that keeps what a feed hands it, unfiltered: it shows
what the feed passed on, before any subscription's own duplicate drops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Literal, cast

import asyncpg

from chat_storage.actors.live import events
from chat_storage.actors.live.events import SessionEvent
from chat_storage.actors.live.outbox import Outbox
from chat_storage.actors.live.subscription import Subscription
from chat_storage.storage.broker import MemoryBroker

When = Literal["before", "after"]
WAIT_S = 5.0


class Hold:
    """One paused ``acquire``: ``reached`` is set when it stops, ``release`` lets it go."""

    def __init__(self, when: When) -> None:
        self.when = when
        self._reached = asyncio.Event()
        self._go = asyncio.Event()

    async def reached(self) -> None:
        """Wait (at most a few seconds) until the read stopped at this hold."""
        async with asyncio.timeout(WAIT_S):
            await self._reached.wait()

    def release(self) -> None:
        self._go.set()

    async def pause(self) -> None:
        """(The held side) stop here until released."""
        self._reached.set()
        await self._go.wait()


class HeldPool:
    """A real pool whose next reads can be held, in the order the holds were made."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._holds: collections.deque[Hold] = collections.deque()

    def hold(self, when: When = "before") -> Hold:
        """Hold the next ``acquire`` not yet claimed by an earlier hold."""
        h = Hold(when)
        self._holds.append(h)
        return h

    def skip(self) -> None:
        """Let the next ``acquire`` through (it is not the read the test is after)."""
        self.hold().release()

    def as_pool(self) -> asyncpg.Pool:
        """This wrapper where an ``asyncpg.Pool`` is expected (only ``acquire`` is used)."""
        return cast(asyncpg.Pool, self)

    @contextlib.asynccontextmanager
    async def acquire(  # asyncpg's signature: storage.db.call passes timeout=
        self, *, timeout: float | None = None,  # noqa: ASYNC109
    ) -> AsyncIterator[Any]:
        h = self._holds.popleft() if self._holds else None
        if h is not None and h.when == "before":
            await h.pause()
        async with self._pool.acquire(timeout=timeout) as conn:
            yield conn
        if h is not None and h.when == "after":
            await h.pause()


class CountingBroker(MemoryBroker):
    """The memory broker, counting what it handed to listeners; a publish can be held."""

    def __init__(self) -> None:
        super().__init__()
        self.published = 0
        self._bump = asyncio.Event()
        self._holds: collections.deque[Hold] = collections.deque()

    def hold(self) -> Hold:
        """Hold the next ``publish`` before anyone sees it (a broker lagging behind Postgres)."""
        h = Hold("before")
        self._holds.append(h)
        return h

    async def publish(self, channel: str, data: bytes) -> str:
        if self._holds:
            await self._holds.popleft().pause()
        event_id = await super().publish(channel, data)
        self.published += 1
        self._bump.set()
        return event_id

    async def until(self, n: int) -> None:
        """Wait (at most a few seconds) until ``n`` events in all were published."""
        async with asyncio.timeout(WAIT_S):
            while self.published < n:
                self._bump.clear()
                await self._bump.wait()


class Recorder(Subscription):
    """A subscription that keeps what the feed hands it, unfiltered."""

    def __init__(self) -> None:
        super().__init__(Outbox(1000))
        self.seen: list[SessionEvent] = []
        self._more = asyncio.Event()

    def deliver(self, event: SessionEvent) -> None:
        self.seen.append(event)
        self._more.set()

    async def until(self, n: int) -> None:
        """Wait (a few seconds at most) until the feed handed over ``n`` events."""
        async with asyncio.timeout(WAIT_S):
            while len(self.seen) < n:
                self._more.clear()
                await self._more.wait()

    def brief(self) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for ev in self.seen:
            if ev.kind == events.DELTA:
                out.append(("delta", ev.offset, ev.text))
            elif ev.kind == events.SNAPSHOT:
                out.append(("snapshot", ev.seq, ev.text))
            else:
                out.append((ev.kind, ev.seq))
        return out
