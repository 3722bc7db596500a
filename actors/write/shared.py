"""Where session mailboxes send their batches: a committer shared by all sessions.

Each session mailbox hands over one batch at a time (so its seq order is its mailbox
order) with a callback. :class:`SharedCommitter` lets a few workers take whatever
batches are waiting, from any sessions, up to ``max_batch`` messages, and commit
them in ONE transaction: two thousand quiet sessions with one message each cost a
few dozen commits instead of two thousand. It stores several times as many messages
per second as one transaction per session batch (``loadtest/direct.py``, kept for that
comparison and served by ``loadtest/serve_direct.py``; figures in
loadtest/RESULTS.md#shared-committer).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from chat_storage.actors.write.committer import Committer, Lease, Results
from chat_storage.actors.write.config import WriteConfig
from chat_storage.actors.write.errors import OutcomeUnknown, ShuttingDown
from chat_storage.actors.write.protocols import BatchSink, Done
from chat_storage.storage.writes import SessionBatch, Stored
from chat_storage.supervisor import Supervisor

log = logging.getLogger(__name__)

Item = tuple[SessionBatch, Done]  # a batch and whom to tell its outcome
# How the root makes the registry's sink from the committer: SharedCommitter itself.
SinkFactory = Callable[[Committer, WriteConfig, Supervisor], BatchSink]


def _size(batch: SessionBatch) -> int:
    return sum(len(g.messages) for g in batch.groups)


def tell(done: Done, outcome: list[Stored | Exception] | BaseException) -> None:
    """Call ``done`` with ``outcome``; a failing receiver is logged, never raised."""
    try:
        done(outcome)
    except Exception:  # a bug in the receiver must not stop the committer
        log.exception("commit callback failed")


class SharedCommitter:
    """Commits the batches of many sessions together, ``committers`` at a time."""

    def __init__(self, committer: Committer, config: WriteConfig, tasks: Supervisor,
                 *, lease_idle_s: float = 1.0) -> None:
        self._committer = committer
        self._tasks = tasks
        self._config = config
        self._lease_idle_s = lease_idle_s
        self._queue: collections.deque[Item] = collections.deque()
        self._wakeup = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False

    def start(self) -> None:
        """Start the worker tasks."""
        self._workers = [self._tasks.spawn(self._work(), name=f"shared-committer:{i}")
                         for i in range(self._config.committers)]

    def submit(self, batch: SessionBatch, done: Done) -> None:
        """Queue ``batch``; ``done`` is called with its outcome after its transaction."""
        if self._closing:
            tell(done, ShuttingDown("committer is stopped"))
            return
        self._queue.append((batch, done))
        self._wakeup.set()

    async def close(self) -> None:
        """Commit what is queued, then end the workers. Call after the mailboxes stopped."""
        self._closing = True
        self._wakeup.set()
        if self._workers:
            await asyncio.wait(self._workers)

    def terminate(self) -> None:
        """Stop now: queued batches are answered :class:`ShuttingDown` (not stored);
        a transaction under way is abandoned and its senders told :class:`OutcomeUnknown`.
        """
        self._closing = True
        while self._queue:
            tell(self._queue.popleft()[1], ShuttingDown("server stopped before the write"))
        for task in self._workers:
            self._tasks.cancel(task)

    async def _work(self) -> None:
        lease = self._committer.lease()
        try:
            while True:
                while not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    try:
                        async with asyncio.timeout(self._lease_idle_s):
                            await self._wakeup.wait()
                    except TimeoutError:
                        await lease.release()  # idle: let others use the connection
                taken: list[Item] = []
                size = 0
                while self._queue and (
                    not taken or size + _size(self._queue[0][0]) <= self._config.max_batch
                ):
                    item = self._queue.popleft()
                    taken.append(item)
                    size += _size(item[0])
                if self._queue:
                    self._wakeup.set()  # another worker takes the rest now
                await commit_and_tell(self._committer, lease, taken)
        except asyncio.CancelledError:
            await lease.discard()  # maybe mid-transaction: never reuse that connection
            raise
        finally:
            await lease.release()


async def commit_and_tell(committer: Committer, lease: Lease, taken: list[Item]) -> None:
    """Commit ``taken`` in one transaction and tell each sender its outcome."""
    try:
        results: Results = await committer.commit([b for b, _ in taken], lease)
    except Exception as exc:
        for _, done in taken:
            tell(done, exc)
    except BaseException:
        # cancelled mid-transaction (the loop is being torn down): it may have committed
        for _, done in taken:
            tell(done, OutcomeUnknown("server stopped during the write"))
        raise
    else:
        for (_, done), result in zip(taken, results, strict=True):
            tell(done, result)
