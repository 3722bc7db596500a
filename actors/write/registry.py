"""The registry: creates a session's actor on first use, evicts idle ones, stops all.

Shutdown order (:meth:`Registry.close`): refuse new writes (503) → every actor
commits its mailbox and answers its waiters → the shared committer commits what it
holds → the janitor ends. Past the deadline, writes that have not started are
answered :class:`ShuttingDown` (not stored) and a transaction still under way is
abandoned: its writes are answered :class:`OutcomeUnknown`, never as stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from chat_storage.actors import metrics
from chat_storage.actors.committer import ActorConfig, Committer
from chat_storage.actors.errors import Overloaded, ShuttingDown
from chat_storage.actors.session_actor import OnCommit, SessionActor, Write
from chat_storage.actors.shared import DirectCommitter, SharedCommitter
from chat_storage.storage.messages import WriteGroup
from chat_storage.storage.writes import Stored

log = logging.getLogger(__name__)

ActorKey = tuple[uuid.UUID, uuid.UUID]


class Registry:
    """All live session actors of this process, and the committer they share."""

    def __init__(
        self, pool: asyncpg.Pool, config: ActorConfig, *, idle_s: float = 60.0,
        write_timeout_s: float = 10.0, shared: bool = True,
    ) -> None:
        self._config = config
        self._idle_s = idle_s
        self._write_timeout_s = write_timeout_s
        committer = Committer(pool, config)
        self._sink: SharedCommitter | DirectCommitter = (
            SharedCommitter(committer, config) if shared else DirectCommitter(committer)
        )
        self._actors: dict[ActorKey, SessionActor] = {}
        self._pending = 0  # writes accepted and not yet answered, in all actors
        self._closing = False
        self._janitor: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # cached: see _now
        # asks the layers above whether a session still has subscribers (streaming)
        self.in_use: Callable[[ActorKey], bool] = lambda key: False
        # told of every commit (fan-out of message.created); set by the streaming layer
        self.on_commit: OnCommit | None = None

    def __len__(self) -> int:
        return len(self._actors)

    @property
    def pending(self) -> int:
        """Writes accepted and not yet answered."""
        return self._pending

    @property
    def queued(self) -> int:
        """Writes waiting in all mailboxes."""
        return sum(a.depth for a in self._actors.values())

    def start(self) -> None:
        """Start the committer and the janitor (deadlines, idle eviction)."""
        self._sink.start()
        metrics.watch(self)
        self._janitor = asyncio.create_task(self._janitor_loop(), name="registry-janitor")

    def actor(self, tenant_id: uuid.UUID, session_id: uuid.UUID) -> SessionActor:
        """The session's actor, created and started on first use."""
        if self._closing:
            metrics.REJECTED.labels("shutting_down").inc()
            raise ShuttingDown("server is shutting down")
        key = (tenant_id, session_id)
        actor = self._actors.get(key)
        if actor is None:
            actor = SessionActor(tenant_id, session_id, self._sink, self._config,
                                 on_commit=self._committed)
            self._actors[key] = actor
        return actor

    def _committed(self, tenant_id: uuid.UUID, session_id: uuid.UUID, stored: Stored) -> None:
        if self.on_commit is not None:
            self.on_commit(tenant_id, session_id, stored)

    def submit(
        self, tenant_id: uuid.UUID, session_id: uuid.UUID, group: WriteGroup
    ) -> asyncio.Future[Stored]:
        """Queue ``group`` on the session's actor; the future resolves after COMMIT.

        Raises :class:`Overloaded` or :class:`ShuttingDown` at once (not stored). The
        future fails with :class:`~storage.errors.Unavailable` (not stored),
        :class:`OutcomeUnknown`, or the storage error of this write (not found, bad
        reference). Writes submitted in order to one session commit in that order.
        """
        if self._pending >= self._config.max_pending:
            metrics.REJECTED.labels("queue_full").inc()
            raise Overloaded("server write queue is full")
        actor = self.actor(tenant_id, session_id)
        write = actor.submit(group, self._now() + self._write_timeout_s)
        self._pending += 1
        write.future.add_done_callback(self._answered)
        return write.future

    async def write(
        self, tenant_id: uuid.UUID, session_id: uuid.UUID, group: WriteGroup
    ) -> Stored:
        """Store ``group`` through the session's actor; returns after COMMIT (see submit)."""
        # Not shielded: a caller that goes away cancels only its future; a queued write
        # is then dropped, one being committed is committed. The janitor answers queued
        # writes at their deadline; a commit answers within commit + settle timeouts.
        return await self.submit(tenant_id, session_id, group)

    def _now(self) -> float:
        # get_running_loop() costs a getpid() system call per call on Python 3.11
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    def _answered(self, _: asyncio.Future[Stored]) -> None:
        self._pending -= 1

    def evict_idle(self, now: float | None = None) -> int:
        """Stop actors idle for ``idle_s`` with no subscribers; return how many."""
        now = asyncio.get_running_loop().time() if now is None else now
        stale = [
            key for key, actor in self._actors.items()
            if actor.idle and now - actor.last_active >= self._idle_s and not self.in_use(key)
        ]
        for key in stale:
            # the idle check and the removal happen without an await in between, so no
            # write can slip into an actor that is being dropped
            self._actors.pop(key).terminate()
        if stale:
            log.debug("evicted idle actors", extra={"evicted": len(stale),
                                                    "active": len(self._actors)})
        return len(stale)

    def expire(self, now: float | None = None) -> int:
        """Answer every queued write past its deadline (503, not stored); return how many."""
        now = asyncio.get_running_loop().time() if now is None else now
        return sum(a.expire(now) for a in self._actors.values() if a.depth)

    async def _janitor_loop(self) -> None:
        # deadlines are enforced to within a tenth of the write timeout (at most 0.25 s)
        interval = max(0.01, min(self._write_timeout_s / 10, 0.25))
        evict_every = max(interval, min(self._idle_s / 2, 10.0))
        loop = asyncio.get_running_loop()
        last_evict = loop.time()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            self.expire(now)
            if now - last_evict >= evict_every:
                last_evict = now
                self.evict_idle(now)

    def begin_shutdown(self) -> None:
        """Refuse new writes from now on (503); queued ones are still committed."""
        self._closing = True

    async def close(self, timeout_s: float) -> None:
        """Refuse new writes, flush every mailbox and answer every waiter, in ``timeout_s``."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        actors = list(self._actors.values())
        log.info("shutdown: flushing session actors",
                 extra={"actors": len(actors), "pending": self._pending})
        flushed = await _within(deadline, *(a.stop() for a in actors))
        if not flushed:
            log.warning("shutdown: flush deadline passed; failing writes not started",
                        extra={"pending": self._pending})
        for actor in actors:
            actor.terminate()
        self._actors.clear()
        if not (flushed and await _within(deadline, self._sink.close())):
            self._sink.terminate()
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        log.info("shutdown: session actors stopped", extra={"pending": self._pending})


async def _within(deadline: float, *aws: Awaitable[None]) -> bool:
    """Wait for ``aws`` until the loop time ``deadline``; whether they all finished."""
    if not aws:
        return True
    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
    done, _ = await asyncio.wait([asyncio.ensure_future(a) for a in aws], timeout=timeout)
    return len(done) == len(aws)


__all__ = ["ActorConfig", "Registry", "Write"]
