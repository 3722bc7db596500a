"""The registry: creates a session's mailbox on first use, evicts idle ones, stops all.

Shutdown order (:meth:`Registry.close`): refuse new writes (503) → every mailbox
commits what it holds and answers its waiters → the sink (the shared committer)
commits what it holds → the janitor ends. Past the deadline, writes that have not started are
answered :class:`ShuttingDown` (not stored) and a transaction still under way is
abandoned: its writes are answered :class:`OutcomeUnknown`, never as stored.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from typing import Any

from chat_storage.actors.write import metrics
from chat_storage.actors.write.config import WriteConfig
from chat_storage.actors.write.errors import Overloaded, ShuttingDown
from chat_storage.actors.write.mailbox import SessionMailbox
from chat_storage.actors.write.protocols import BatchSink, CommitListener, NoListener
from chat_storage.storage.messages import WriteGroup
from chat_storage.storage.records import SessionKey
from chat_storage.storage.writes import Stored
from chat_storage.supervisor import Supervisor

log = logging.getLogger(__name__)


class Registry:
    """All live session mailboxes of this process, and the sink they commit through.

    ``sink`` commits the mailboxes' batches (a
    :class:`~chat_storage.actors.write.shared.SharedCommitter`); ``listener`` is told of
    every commit (the fan-out of ``message.created``) and keeps a session's mailbox
    while it says the session is in use (it has subscribers or streams). The registry
    owns the sink: :meth:`start` starts it and :meth:`close` stops it, last.
    """

    def __init__(
        self, sink: BatchSink, config: WriteConfig, *, tasks: Supervisor,
        listener: CommitListener | None = None, idle_s: float = 60.0,
        write_timeout_s: float = 10.0,
    ) -> None:
        self._config = config
        self._tasks = tasks
        self._idle_s = idle_s
        self._write_timeout_s = write_timeout_s
        self._sink = sink
        self._listener: CommitListener = listener or NoListener()
        self._mailboxes: dict[SessionKey, SessionMailbox] = {}
        self._pending = 0  # writes accepted and not yet answered, in all mailboxes
        self._closing = False
        self._janitor: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # cached: see _now

    def __len__(self) -> int:
        return len(self._mailboxes)

    @property
    def pending(self) -> int:
        """Writes accepted and not yet answered."""
        return self._pending

    @property
    def queued(self) -> int:
        """Writes waiting in all mailboxes."""
        return sum(m.depth for m in self._mailboxes.values())

    def start(self) -> None:
        """Start the sink (the committer) and the janitor (deadlines, idle eviction)."""
        self._sink.start()
        metrics.watch(self)
        self._janitor = self._tasks.spawn(self._janitor_loop(), name="registry-janitor")

    def mailbox(self, tenant_id: uuid.UUID, session_id: uuid.UUID) -> SessionMailbox:
        """The session's mailbox, created on first use."""
        if self._closing:
            metrics.REJECTED.labels("shutting_down").inc()
            raise ShuttingDown("server is shutting down")
        key = (tenant_id, session_id)
        mailbox = self._mailboxes.get(key)
        if mailbox is None:
            mailbox = SessionMailbox(key, self._sink, self._config, self._listener)
            self._mailboxes[key] = mailbox
        return mailbox

    def submit(
        self, tenant_id: uuid.UUID, session_id: uuid.UUID, group: WriteGroup
    ) -> asyncio.Future[Stored]:
        """Queue ``group`` in the session's mailbox; the future resolves after COMMIT.

        Raises :class:`Overloaded` or :class:`ShuttingDown` at once (not stored). The
        future fails with :class:`~storage.errors.Unavailable` (not stored),
        :class:`OutcomeUnknown`, or the storage error of this write (not found, bad
        reference). Writes submitted in order to one session commit in that order.
        """
        if self._pending >= self._config.max_pending:
            metrics.REJECTED.labels("queue_full").inc()
            raise Overloaded("server write queue is full")
        mailbox = self.mailbox(tenant_id, session_id)
        write = mailbox.submit(group, self._now() + self._write_timeout_s)
        self._pending += 1
        write.future.add_done_callback(self._answered)
        return write.future

    async def write(
        self, tenant_id: uuid.UUID, session_id: uuid.UUID, group: WriteGroup
    ) -> Stored:
        """Store ``group`` through the session's mailbox; returns after COMMIT (see submit)."""
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
        """Drop mailboxes idle for ``idle_s`` of sessions not in use; return how many."""
        now = asyncio.get_running_loop().time() if now is None else now
        in_use = self._listener.in_use
        stale = [
            key for key, mailbox in self._mailboxes.items()
            if mailbox.idle and now - mailbox.last_active >= self._idle_s and not in_use(key)
        ]
        for key in stale:
            # the idle check and the removal happen without an await in between, so no
            # write can slip into a mailbox that is being dropped
            self._mailboxes.pop(key).terminate()
        if stale:
            log.debug("evicted idle mailboxes", extra={"evicted": len(stale),
                                                       "active": len(self._mailboxes)})
        return len(stale)

    def expire(self, now: float | None = None) -> int:
        """Answer every queued write past its deadline (503, not stored); return how many."""
        now = asyncio.get_running_loop().time() if now is None else now
        return sum(m.expire(now) for m in self._mailboxes.values() if m.depth)

    async def _janitor_loop(self) -> None:
        # deadlines are enforced to within a tenth of the write timeout (at most 0.25 s)
        interval = max(0.01, min(self._write_timeout_s / 10, 0.25))
        evict_every = max(interval, min(self._idle_s / 2, 10.0))
        loop = asyncio.get_running_loop()
        last_evict = loop.time()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            try:
                self.expire(now)
                if now - last_evict >= evict_every:
                    last_evict = now
                    self.evict_idle(now)
            except Exception:
                # a dead janitor would let queued writes outlive their deadline: log,
                # count, and go on with the next round
                metrics.JANITOR_FAILURES.inc()
                log.exception("registry janitor round failed")

    def begin_shutdown(self) -> None:
        """Refuse new writes from now on (503); queued ones are still committed."""
        self._closing = True

    async def close(self, timeout_s: float) -> None:
        """Refuse new writes, flush every mailbox and answer every waiter, in ``timeout_s``."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        mailboxes = list(self._mailboxes.values())
        log.info("shutdown: flushing session mailboxes",
                 extra={"mailboxes": len(mailboxes), "pending": self._pending})
        flushed = await self._within(deadline, *(m.stop() for m in mailboxes))
        if not flushed:
            log.warning("shutdown: flush deadline passed; failing writes not started",
                        extra={"pending": self._pending})
        for mailbox in mailboxes:
            mailbox.terminate()
        self._mailboxes.clear()
        if not (flushed and await self._within(deadline, self._sink.close())):
            self._sink.terminate()
        if self._janitor is not None:
            await self._tasks.stop(self._janitor)
        log.info("shutdown: session mailboxes stopped", extra={"pending": self._pending})


    async def _within(self, deadline: float, *aws: Coroutine[Any, Any, None]) -> bool:
        """Wait for ``aws`` until the loop time ``deadline``; whether they all finished."""
        if not aws:
            return True
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        running = [self._tasks.spawn(a, name="registry-flush") for a in aws]
        done, _ = await asyncio.wait(running, timeout=timeout)
        return len(done) == len(aws)

