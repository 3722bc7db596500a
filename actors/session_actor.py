"""One actor per active session: a bounded mailbox and one group-commit task.

The loop waits for a write, takes whatever else is queued (up to ``max_batch``),
stores all of it in one transaction and only then resolves the waiters. A write is
never answered as stored unless its transaction is known to have committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from actors import metrics
from actors.errors import Overloaded, ShuttingDown
from storage import messages
from storage.db import CONNECTION_ERRORS
from storage.errors import Unavailable
from storage.messages import WriteGroup

log = logging.getLogger(__name__)

Stored = list[dict[str, Any]]
# Called after each commit with the messages it stored, in seq order; must not block.
OnCommit = Callable[[uuid.UUID, uuid.UUID, Stored], None]


@dataclasses.dataclass(slots=True)
class Write:
    """A queued write and the future its sender awaits."""

    group: WriteGroup
    future: asyncio.Future[Stored]
    deadline: float  # monotonic; a write not started by then is rejected, never stored


@dataclasses.dataclass(frozen=True, slots=True)
class ActorConfig:
    max_batch: int = 256
    mailbox_size: int = 1024
    acquire_timeout_s: float = 2.0
    settle_timeout_s: float = 10.0  # how long to try to learn an unknown commit outcome


class SessionActor:
    """Owns one session's write mailbox and its commit loop."""

    def __init__(
        self, tenant_id: uuid.UUID, session_id: uuid.UUID, pool: asyncpg.Pool,
        config: ActorConfig, on_commit: OnCommit | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self._on_commit = on_commit
        self.session_id = session_id
        self._pool = pool
        self._config = config
        self._mailbox: asyncio.Queue[Write] = asyncio.Queue(config.mailbox_size)
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._closing = False
        self.last_active = time.monotonic()

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being committed."""
        return not self._busy and self._mailbox.empty()

    def start(self) -> None:
        self._task = asyncio.create_task(
            self._run(), name=f"session-actor:{self.session_id}"
        )

    def submit(self, group: WriteGroup, timeout_s: float) -> asyncio.Future[Stored]:
        """Queue ``group``; the future resolves after its commit. Never blocks."""
        if self._closing:
            metrics.REJECTED.labels("shutting_down").inc()
            raise ShuttingDown("session actor is stopping")
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        try:
            self._mailbox.put_nowait(Write(group, future, time.monotonic() + timeout_s))
        except asyncio.QueueFull:
            metrics.REJECTED.labels("mailbox_full").inc()
            raise Overloaded("session write queue is full") from None
        metrics.MAILBOX_DEPTH.inc()
        self.last_active = time.monotonic()
        return future

    async def stop(self) -> None:
        """Take no more writes, commit what is queued, answer everyone, then end."""
        self._closing = True
        if self._task is None:
            return
        await self._mailbox.join()  # every queued write committed and answered
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def terminate(self) -> None:
        """Stop at once; queued writes are answered with :class:`ShuttingDown`."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        while not self._mailbox.empty():
            write = self._mailbox.get_nowait()
            self._mailbox.task_done()
            metrics.MAILBOX_DEPTH.dec()
            if not write.future.done():
                write.future.set_exception(ShuttingDown("server stopped before the write"))

    async def _run(self) -> None:
        while True:
            first = await self._mailbox.get()
            self._busy = True
            batch = [first]
            try:
                while len(batch) < self._config.max_batch and not self._mailbox.empty():
                    batch.append(self._mailbox.get_nowait())
                metrics.MAILBOX_DEPTH.dec(len(batch))
                # the commit must finish even if the actor is being stopped
                await asyncio.shield(self._commit(batch))
            finally:
                for _ in batch:
                    self._mailbox.task_done()
                self._busy = False
                self.last_active = time.monotonic()

    async def _commit(self, batch: list[Write]) -> None:
        now = time.monotonic()
        live: list[Write] = []
        for write in batch:
            if write.deadline < now:
                metrics.REJECTED.labels("deadline").inc()
                _fail(write, Overloaded("write waited too long in the queue"))
            else:
                live.append(write)
        if not live:
            return
        metrics.BATCH_SIZE.observe(len(live))
        started = time.perf_counter()
        try:
            results = await self._store(live)
        except Unavailable as exc:
            for write in live:
                _fail(write, exc)
            return
        except Exception as exc:
            if len(live) > 1:
                # one bad write must not sink its batch-mates: store them one by one
                log.warning("batch failed; retrying writes one by one",
                            extra={"session_id": str(self.session_id), "error": repr(exc)})
                for write in live:
                    await self._commit([write])
                return
            log.exception("write failed", extra={"session_id": str(self.session_id)})
            _fail(live[0], exc)
            return
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        committed: Stored = []
        for write, result in zip(live, results, strict=True):
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

    async def _store(self, live: list[Write]) -> list[Stored | Exception]:
        groups = [w.group for w in live]
        try:
            async with self._pool.acquire(timeout=self._config.acquire_timeout_s) as conn:
                return await messages.insert_groups(conn, self.tenant_id, self.session_id, groups)
        except TimeoutError:
            metrics.REJECTED.labels("pool_exhausted").inc()
            raise Unavailable("no database connection free") from None
        except CONNECTION_ERRORS as exc:
            # the connection broke: maybe before COMMIT, maybe after it reached the server
            return await self._settle(groups, exc)

    async def _settle(
        self, groups: list[WriteGroup], cause: BaseException
    ) -> list[Stored | Exception]:
        """Learn whether a transaction whose connection broke committed.

        The whole batch was one transaction, so its first message decides for all.
        If it is stored, answer with the stored rows; if not, nothing is stored and
        the writes fail as unavailable (the client may retry). If the database stays
        unreachable, the outcome is unknown and the writes fail with 503 too.
        """
        probe = groups[0].messages[0].id
        deadline = time.monotonic() + self._config.settle_timeout_s
        delay = 0.05
        while True:
            try:
                async with self._pool.acquire(timeout=self._config.acquire_timeout_s) as conn:
                    if not await messages.exists(conn, [probe]):
                        metrics.REJECTED.labels("db_unavailable").inc()
                        raise Unavailable(f"database connection lost: {cause}")
                    ids = [m.id for g in groups for m in g.messages]
                    rows = await messages.fetch_by_ids(conn, ids)
            except (*CONNECTION_ERRORS, TimeoutError):
                if time.monotonic() + delay > deadline:
                    metrics.REJECTED.labels("outcome_unknown").inc()
                    log.error("commit outcome unknown", extra={"session_id": str(self.session_id)})
                    raise Unavailable("database unreachable; outcome unknown") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            log.warning("commit confirmed after connection loss",
                        extra={"session_id": str(self.session_id)})
            # a group left out of the transaction (bad reference) has no rows: not stored
            return [
                [rows[m.id] for m in g.messages]
                if all(m.id in rows for m in g.messages)
                else Unavailable("write was not stored")
                for g in groups
            ]


def _fail(write: Write, exc: BaseException) -> None:
    if not write.future.done():
        write.future.set_exception(exc)
