"""One actor per active session: a bounded mailbox and one group-commit task.

The loop waits for a write, takes whatever else is queued (up to ``max_batch``
messages), hands all of it to the committer as one batch and only then resolves the
waiters, in mailbox order, so seq follows arrival. A write is never answered as
stored unless its transaction is known to have committed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import uuid
from collections.abc import Callable
from typing import Protocol

from actors import metrics
from actors.committer import ActorConfig
from actors.errors import Overloaded, ShuttingDown
from actors.shared import Done
from storage.messages import WriteGroup
from storage.writes import SessionBatch, Stored

log = logging.getLogger(__name__)

# Called after each commit with the messages it stored, in seq order; must not block.
OnCommit = Callable[[uuid.UUID, uuid.UUID, Stored], None]


class Sink(Protocol):
    """Where an actor sends its batches (:mod:`actors.shared`)."""

    def submit(self, batch: SessionBatch, done: Done) -> None: ...


@dataclasses.dataclass(slots=True, eq=False)
class Write:
    """A queued write and the future its sender awaits."""

    group: WriteGroup
    future: asyncio.Future[Stored]
    deadline: float  # loop time; a write not started by then is rejected, never stored
    started: bool = False

    def withdraw(self, error: BaseException) -> bool:
        """Answer ``error`` if the write has not started; ``False`` if it is committing."""
        if self.started or self.future.done():
            return False
        self.future.set_exception(error)
        return True


class SessionActor:
    """Owns one session's write mailbox and its commit loop."""

    def __init__(
        self, tenant_id: uuid.UUID, session_id: uuid.UUID, sink: Sink,
        config: ActorConfig, on_commit: OnCommit | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.session_id = session_id
        self._sink = sink
        self._config = config
        self._on_commit = on_commit
        self._mailbox: collections.deque[Write] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._landing: asyncio.Future[None] | None = None  # the batch being committed
        self._closing = False
        self.last_active = asyncio.get_running_loop().time()

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being committed."""
        return not self._mailbox and self._landing is None

    @property
    def depth(self) -> int:
        """Writes waiting in the mailbox."""
        return len(self._mailbox)

    def start(self) -> None:
        """Start the commit loop."""
        self._task = asyncio.create_task(self._run(), name=f"session-actor:{self.session_id}")
        self._task.add_done_callback(self._ended)

    def submit(self, group: WriteGroup, deadline: float) -> Write:
        """Queue ``group``; its future resolves after its commit. Never blocks."""
        if self._closing:
            metrics.REJECTED.labels("shutting_down").inc()
            raise ShuttingDown("session actor is stopping")
        if len(self._mailbox) >= self._config.mailbox_size:
            metrics.REJECTED.labels("mailbox_full").inc()
            raise Overloaded("session write queue is full")
        loop = asyncio.get_running_loop()
        write = Write(group, loop.create_future(), deadline)
        self._mailbox.append(write)
        self._wakeup.set()
        self.last_active = loop.time()
        return write

    async def stop(self) -> None:
        """Take no more writes, commit what is queued, answer everyone, then end."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await asyncio.wait([self._task])  # never raises; never cancels the loop

    def terminate(self) -> None:
        """Stop now: queued writes are answered :class:`ShuttingDown` (not stored).

        A batch already handed to the committer is answered by the committer.
        """
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        self._fail_queued(ShuttingDown("server stopped before the write"))

    def expire(self, now: float) -> int:
        """Answer the queued writes whose deadline passed (not stored); return how many."""
        expired = 0
        # one timeout for all writes: the oldest are at the front
        while self._mailbox and self._mailbox[0].deadline <= now:
            write = self._mailbox.popleft()
            if write.withdraw(Overloaded("write waited too long in the queue")):
                expired += 1
        if expired:
            metrics.REJECTED.labels("deadline").inc(expired)
        return expired

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._mailbox:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._take(loop.time())
            if not batch:
                continue
            # one batch in flight per session: the next one gets the next seq numbers
            self._landing = landing = loop.create_future()
            self._sink.submit(
                SessionBatch(self.tenant_id, self.session_id, [w.group for w in batch]),
                functools.partial(self._landed, batch, landing),
            )
            try:
                await landing
            finally:
                self._landing = None
            self.last_active = loop.time()

    def _take(self, now: float) -> list[Write]:
        """Writes for one transaction: up to ``max_batch`` messages, expired ones refused."""
        batch: list[Write] = []
        size = 0
        while self._mailbox:
            write = self._mailbox[0]
            n = len(write.group.messages)
            if batch and size + n > self._config.max_batch:
                break
            self._mailbox.popleft()
            if write.future.done():
                continue  # its sender went away
            if write.deadline <= now:
                metrics.REJECTED.labels("deadline").inc()
                write.withdraw(Overloaded("write waited too long in the queue"))
                continue
            write.started = True
            batch.append(write)
            size += n
        return batch

    def _landed(self, batch: list[Write], landing: asyncio.Future[None],
                outcome: list[Stored | Exception] | BaseException) -> None:
        """Answer every write of a committed (or failed) batch, then announce it."""
        if not landing.done():
            landing.set_result(None)
        if isinstance(outcome, BaseException):
            for write in batch:
                _fail(write, outcome)
            return
        committed: Stored = []
        for write, result in zip(batch, outcome, strict=True):
            if isinstance(result, Exception):
                _fail(write, result)
                continue
            committed.extend(result)
            if not write.future.done():
                write.future.set_result(result)
        if committed and self._on_commit is not None:
            committed.sort(key=lambda m: int(m["seq"]))
            try:
                self._on_commit(self.tenant_id, self.session_id, committed)
            except Exception:
                log.exception("on_commit hook failed", extra={"session_id": str(self.session_id)})

    def _fail_queued(self, error: BaseException) -> None:
        while self._mailbox:
            self._mailbox.popleft().withdraw(error)

    def _ended(self, task: asyncio.Task[None]) -> None:
        # the loop only ends by stop/terminate; anything else is a bug: fail loudly, and
        # answer the queue so nobody waits for a loop that is gone
        self._closing = True
        if not task.cancelled() and task.exception() is not None:
            log.error("session actor crashed", exc_info=task.exception(),
                      extra={"session_id": str(self.session_id)})
        self._fail_queued(ShuttingDown("session actor stopped"))


def _fail(write: Write, error: BaseException) -> None:
    if not write.future.done():
        write.future.set_exception(error)

