"""Where session actors send their batches: a committer shared by all sessions.

Each session actor hands over one batch at a time (so its seq order is its mailbox
order) with a callback. :class:`SharedCommitter` lets a few workers take whatever
batches are waiting, from any sessions, up to ``max_batch`` messages, and commit
them in ONE transaction: two thousand quiet sessions with one message each cost a
few dozen commits instead of two thousand. Measured with ``loadtest/bench_writes.py``
(2000 quiet sessions, 64 and 256 clients) it stores about 2.7 times as many messages
per second as :class:`DirectCommitter` (one transaction per session batch), which is
kept for that comparison (``loadtest/serve_direct.py``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from chat_storage.actors.committer import ActorConfig, Committer, Lease, Results
from chat_storage.actors.errors import OutcomeUnknown, ShuttingDown
from chat_storage.storage.writes import SessionBatch, Stored

log = logging.getLogger(__name__)

# Told the outcome of one session batch: each group's result, or the error of all.
Done = Callable[[list[Stored | Exception] | BaseException], None]
_Item = tuple[SessionBatch, Done]


def _size(batch: SessionBatch) -> int:
    return sum(len(g.messages) for g in batch.groups)


def _tell(done: Done, outcome: list[Stored | Exception] | BaseException) -> None:
    try:
        done(outcome)
    except Exception:  # a bug in the receiver must not stop the committer
        log.exception("commit callback failed")


class SharedCommitter:
    """Commits the batches of many sessions together, ``committers`` at a time."""

    def __init__(self, committer: Committer, config: ActorConfig,
                 *, lease_idle_s: float = 1.0) -> None:
        self._committer = committer
        self._config = config
        self._lease_idle_s = lease_idle_s
        self._queue: collections.deque[_Item] = collections.deque()
        self._wakeup = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False

    def start(self) -> None:
        """Start the worker tasks."""
        self._workers = [asyncio.create_task(self._work(), name=f"shared-committer-{i}")
                         for i in range(self._config.committers)]

    def submit(self, batch: SessionBatch, done: Done) -> None:
        """Queue ``batch``; ``done`` is called with its outcome after its transaction."""
        if self._closing:
            _tell(done, ShuttingDown("committer is stopped"))
            return
        self._queue.append((batch, done))
        self._wakeup.set()

    async def close(self) -> None:
        """Commit what is queued, then end the workers. Call after the actors stopped."""
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
            _tell(self._queue.popleft()[1], ShuttingDown("server stopped before the write"))
        for task in self._workers:
            task.cancel()

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
                taken: list[_Item] = []
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


class DirectCommitter:
    """One transaction per session batch, on a connection from the pool each time."""

    def __init__(self, committer: Committer) -> None:
        self._committer = committer
        self._inflight: set[asyncio.Task[None]] = set()
        self._closing = False

    def start(self) -> None:
        """Nothing to start: each batch gets its own task."""

    def submit(self, batch: SessionBatch, done: Done) -> None:
        """Commit ``batch`` now, in a task of its own; ``done`` is told the outcome."""
        if self._closing:
            _tell(done, ShuttingDown("committer is stopped"))
            return
        task = asyncio.create_task(self._one(batch, done))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _one(self, batch: SessionBatch, done: Done) -> None:
        lease = self._committer.lease()
        try:
            await commit_and_tell(self._committer, lease, [(batch, done)])
        except asyncio.CancelledError:
            await lease.discard()  # maybe mid-transaction: never reuse that connection
            raise
        finally:
            await lease.release()

    async def close(self) -> None:
        """Wait for the transactions under way."""
        self._closing = True
        if self._inflight:
            await asyncio.wait(self._inflight)

    def terminate(self) -> None:
        """Take no more batches; abandon those under way (:class:`OutcomeUnknown`)."""
        self._closing = True
        for task in self._inflight:
            task.cancel()


async def commit_and_tell(committer: Committer, lease: Lease, taken: list[_Item]) -> None:
    """Commit ``taken`` in one transaction and tell each sender its outcome."""
    try:
        results: Results = await committer.commit([b for b, _ in taken], lease)
    except Exception as exc:
        for _, done in taken:
            _tell(done, exc)
    except BaseException:
        # cancelled mid-transaction (the loop is being torn down): it may have committed
        for _, done in taken:
            _tell(done, OutcomeUnknown("server stopped during the write"))
        raise
    else:
        for (_, done), result in zip(taken, results, strict=True):
            _tell(done, result)
