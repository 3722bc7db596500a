"""One transaction per session batch: the committer the shared one is measured against.

Benchmark-only (``serve_direct.py``, ``bench_writes.py --serve-cmd``): the service
commits through :class:`chat_storage.actors.write.shared.SharedCommitter`, which
stores about 2.7 times as many messages per second with many quiet sessions.
"""

from __future__ import annotations

import asyncio

from chat_storage.actors.write.committer import Committer
from chat_storage.actors.write.config import WriteConfig
from chat_storage.actors.write.errors import ShuttingDown
from chat_storage.actors.write.protocols import Done
from chat_storage.actors.write.shared import commit_and_tell, tell
from chat_storage.storage.writes import SessionBatch
from chat_storage.supervisor import Supervisor


class DirectCommitter:
    """One transaction per session batch, on a connection from the pool each time."""

    def __init__(self, committer: Committer, tasks: Supervisor) -> None:
        self._committer = committer
        self._tasks = tasks
        self._inflight: set[asyncio.Task[None]] = set()
        self._closing = False

    def start(self) -> None:
        """Nothing to start: each batch gets its own task."""

    def submit(self, batch: SessionBatch, done: Done) -> None:
        """Commit ``batch`` now, in a task of its own; ``done`` is told the outcome."""
        if self._closing:
            tell(done, ShuttingDown("committer is stopped"))
            return
        task = self._tasks.spawn(self._one(batch, done), name="direct-commit")
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
            self._tasks.cancel(task)


def direct_committer(committer: Committer, config: WriteConfig,
                     tasks: Supervisor) -> DirectCommitter:
    """A :data:`~chat_storage.actors.write.shared.SinkFactory` for ``create_app``."""
    return DirectCommitter(committer, tasks)
