"""This process's liveness, as Postgres sees it: an advisory lock held while it lives.

Work that other processes must not repeat while this one does it (an Idempotency-Key's
claim, :mod:`.idempotency`) records :attr:`Liveness.holder`, the second key of a
two-key advisory lock (first key :data:`~.locks.HOLDER_LOCKS`) that this process holds
on one of its pooled connections. When the process dies — ``kill -9`` included — the
kernel closes its sockets, Postgres ends the connection and the lock is free at once:
``pg_try_advisory_xact_lock(HOLDER_LOCKS, holder)`` succeeding means the holder is gone.

Why a lock rather than a heartbeat row: it needs no writes and no clock, and it is
released exactly when the process's connection ends, not some interval later.

The connection is pinged every :data:`PING_S`; one that fails is dropped and the lock
taken again on a new one (``holder`` is ``None`` meanwhile: claims made then fall
back to their expiry). A lock taken over by another process would need the same
random 31-bit key while this one's connection was down: the key is re-taken if free,
else a new one is drawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import asyncpg

from chat_storage.storage.db import CONNECTION_ERRORS
from chat_storage.storage.locks import HOLDER_LOCKS
from chat_storage.supervisor import Supervisor

log = logging.getLogger(__name__)

PING_S = 5.0
RETRY_S = 1.0


class Liveness:
    """Holds this process's liveness lock on a connection of ``pool`` while running."""

    def __init__(self, pool: asyncpg.Pool, *, tasks: Supervisor,
                 timeout_s: float = 2.0) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self.holder: int | None = None  # the lock's second key while it is held
        self.held = asyncio.Event()  # set while the lock is held
        self._key = 1 + secrets.randbelow(2**31 - 1)
        self._tasks = tasks
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Take the lock and keep it (a supervised task)."""
        self._task = self._tasks.spawn(self._run(), name="liveness")

    async def close(self) -> None:
        """Let the lock go (with its connection, back to the pool)."""
        self.holder = None
        if self._task is not None:
            await self._tasks.stop(self._task)

    async def _run(self) -> None:
        while True:
            try:
                await self._hold()
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                log.warning("liveness lock lost; taking it again",
                            extra={"error": str(exc) or type(exc).__name__})
            self.holder = None
            self.held.clear()
            await asyncio.sleep(RETRY_S)

    async def _hold(self) -> None:
        conn = await self.pool.acquire(timeout=self.timeout_s)
        try:
            async with asyncio.timeout(self.timeout_s):
                while not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)",
                                              HOLDER_LOCKS, self._key):
                    self._key = 1 + secrets.randbelow(2**31 - 1)
            self.holder = self._key
            self.held.set()
            while True:
                await asyncio.sleep(PING_S)
                async with asyncio.timeout(self.timeout_s):
                    await conn.fetchval("SELECT 1")
        finally:
            self.holder = None
            self.held.clear()
            # the lock goes with the connection: never hand it back to the pool holding it
            with contextlib.suppress(Exception):
                conn.terminate()
            await self.pool.release(conn)
