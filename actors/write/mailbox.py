"""One mailbox per active session: a bounded queue of writes and its group-commit cycle.

The cycle takes the first write, then whatever else is queued (up to ``max_batch``
messages), hands all of it to the committer as one batch and, when that batch has
landed, answers its waiters in mailbox order and takes the next: one batch in
flight per session, so seq follows arrival. A write is never answered as stored
unless its transaction is known to have committed.

The cycle is driven by its two events, a write arriving at an idle mailbox and a
batch landing, rather than by a task of its own (so it is not an actor): a task
would cost two task switches per batch (wake on the write, wake on the landing) on
the path of every write, and a mailbox with no task cannot die on its own and strand
its writes.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging

from chat_storage import tracing
from chat_storage.actors.write import metrics
from chat_storage.actors.write.config import WriteConfig
from chat_storage.actors.write.errors import Overloaded, ShuttingDown
from chat_storage.actors.write.protocols import BatchSink, CommitListener
from chat_storage.storage.messages import WriteGroup
from chat_storage.storage.records import SessionKey
from chat_storage.storage.writes import SessionBatch, Stored

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True, eq=False)
class QueuedWrite:
    """A queued write and the future its sender awaits."""

    group: WriteGroup
    future: asyncio.Future[Stored]
    deadline: float  # loop time; a write not started by then is rejected, never stored
    started: bool = False
    link: object = None  # the sender's span (tracing on): the commit's span links to it

    def withdraw(self, error: BaseException) -> bool:
        """Answer ``error`` if the write has not started; ``False`` if it is committing."""
        if self.started or self.future.done():
            return False
        self.future.set_exception(error)
        return True


class SessionMailbox:
    """Owns one session's queue of writes and its commit cycle."""

    def __init__(self, key: SessionKey, sink: BatchSink, config: WriteConfig,
                 listener: CommitListener) -> None:
        self.key = key
        self._sink = sink
        self._config = config
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque[QueuedWrite] = collections.deque()
        self._landing: list[QueuedWrite] | None = None  # the batch being committed
        self._pumping = False
        self._drained: asyncio.Future[None] | None = None  # what stop() waits for
        self._closing = False
        self.last_active = self._loop.time()

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being committed."""
        return not self._queue and self._landing is None

    @property
    def depth(self) -> int:
        """Writes waiting in the mailbox."""
        return len(self._queue)

    def submit(self, group: WriteGroup, deadline: float) -> QueuedWrite:
        """Queue ``group``; its future resolves after its commit. Never blocks."""
        if self._closing:
            metrics.REJECTED.labels("shutting_down").inc()
            raise ShuttingDown("session actor is stopping")  # the wording clients know
        if len(self._queue) >= self._config.mailbox_size:
            metrics.REJECTED.labels("mailbox_full").inc()
            raise Overloaded("session write queue is full")
        write = QueuedWrite(group, self._loop.create_future(), deadline)
        if tracing.ON:
            write.link = tracing.here()
        self._queue.append(write)
        self.last_active = self._loop.time()
        if self._landing is None:
            self._pump()
        return write

    async def stop(self) -> None:
        """Take no more writes; return once what is queued is committed and answered."""
        self._closing = True
        if self.idle:
            return
        if self._drained is None:
            self._drained = self._loop.create_future()
        await asyncio.shield(self._drained)

    def terminate(self) -> None:
        """Stop now: queued writes are answered :class:`ShuttingDown` (not stored).

        A batch already handed to the committer is answered by the committer.
        """
        self._closing = True
        self._fail_queued(ShuttingDown("server stopped before the write"))

    def expire(self, now: float) -> int:
        """Answer the queued writes whose deadline passed (not stored); return how many."""
        expired = 0
        # one timeout for all writes: the oldest are at the front
        while self._queue and self._queue[0].deadline <= now:
            write = self._queue.popleft()
            if write.withdraw(Overloaded("write waited too long in the queue")):
                expired += 1
        if expired:
            metrics.REJECTED.labels("deadline").inc(expired)
        self._check_drained()
        return expired

    def _pump(self) -> None:
        """Hand the next batch to the committer unless one is in flight.

        Not re-entrant: a sink that answers at once (it is stopping) calls
        :meth:`_landed` from inside ``submit``, and this loop then takes the next batch
        instead of recursing once per batch.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._landing is None and self._queue:
                batch = self._take(self._loop.time())
                if not batch:
                    continue
                # one batch in flight per session: the next one gets the next seq numbers
                self._landing = batch
                links = [w.link for w in batch if w.link is not None] if tracing.ON else ()
                self._sink.submit(
                    SessionBatch(self.key[0], self.key[1], [w.group for w in batch], links),
                    functools.partial(self._landed, batch),
                )
        finally:
            self._pumping = False
        self._check_drained()

    def _take(self, now: float) -> list[QueuedWrite]:
        """Writes for one transaction: up to ``max_batch`` messages, expired ones refused."""
        batch: list[QueuedWrite] = []
        size = 0
        while self._queue:
            write = self._queue[0]
            n = len(write.group.messages)
            if batch and size + n > self._config.max_batch:
                break
            self._queue.popleft()
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

    def _landed(self, batch: list[QueuedWrite], outcome: list[Stored | Exception] | BaseException,
                ) -> None:
        """Answer every write of a committed (or failed) batch, announce it, go on."""
        self._landing = None
        self.last_active = self._loop.time()
        try:
            self._answer(batch, outcome)
        finally:
            self._pump()

    def _answer(self, batch: list[QueuedWrite],
                outcome: list[Stored | Exception] | BaseException) -> None:
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
        if committed:
            committed.sort(key=lambda m: int(m["seq"]))
            try:
                self._listener.on_commit(self.key, committed)
            except Exception:
                log.exception("commit listener failed", extra={"session_id": str(self.key[1])})

    def _check_drained(self) -> None:
        if self._drained is not None and self.idle and not self._drained.done():
            self._drained.set_result(None)

    def _fail_queued(self, error: BaseException) -> None:
        while self._queue:
            self._queue.popleft().withdraw(error)
        self._check_drained()


def _fail(write: QueuedWrite, error: BaseException) -> None:
    if not write.future.done():
        write.future.set_exception(error)

