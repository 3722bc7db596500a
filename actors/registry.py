"""The registry: creates a session's actor on first use, evicts idle ones, stops all.

Shutdown order: refuse new writes (503) → let every actor commit its mailbox and
answer its waiters → end the janitor. ``close(timeout_s)`` bounds the whole of it;
past the deadline remaining writes are answered with :class:`ShuttingDown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

import asyncpg

from actors import metrics
from actors.errors import ShuttingDown
from actors.session_actor import ActorConfig, OnCommit, SessionActor, Stored
from storage.messages import WriteGroup

log = logging.getLogger(__name__)

ActorKey = tuple[uuid.UUID, uuid.UUID]


class Registry:
    """All live session actors of this process."""

    def __init__(
        self, pool: asyncpg.Pool, config: ActorConfig, *, idle_s: float = 60.0,
        write_timeout_s: float = 10.0,
    ) -> None:
        self._pool = pool
        self._config = config
        self._idle_s = idle_s
        self._write_timeout_s = write_timeout_s
        self._actors: dict[ActorKey, SessionActor] = {}
        self._closing = False
        self._janitor: asyncio.Task[None] | None = None
        # asks the layers above whether a session still has subscribers (issue: streaming)
        self.in_use: Callable[[ActorKey], bool] = lambda key: False
        # told of every commit (fan-out of message.created); set by the streaming layer
        self.on_commit: OnCommit | None = None

    def __len__(self) -> int:
        return len(self._actors)

    def start(self) -> None:
        """Start the idle-eviction task."""
        self._janitor = asyncio.create_task(self._evict_loop(), name="registry-janitor")

    def actor(self, tenant_id: uuid.UUID, session_id: uuid.UUID) -> SessionActor:
        """The session's actor, created and started on first use."""
        if self._closing:
            metrics.REJECTED.labels("shutting_down").inc()
            raise ShuttingDown("server is shutting down")
        key = (tenant_id, session_id)
        actor = self._actors.get(key)
        if actor is None:
            actor = SessionActor(
                tenant_id, session_id, self._pool, self._config, on_commit=self._committed
            )
            actor.start()
            self._actors[key] = actor
            metrics.ACTIVE_ACTORS.set(len(self._actors))
        return actor

    def _committed(self, tenant_id: uuid.UUID, session_id: uuid.UUID, stored: Stored) -> None:
        if self.on_commit is not None:
            self.on_commit(tenant_id, session_id, stored)

    async def write(
        self, tenant_id: uuid.UUID, session_id: uuid.UUID, group: WriteGroup
    ) -> Stored:
        """Store ``group`` through the session's actor; returns after COMMIT."""
        future = self.actor(tenant_id, session_id).submit(group, self._write_timeout_s)
        # the caller going away must not cancel a write that may already be committing
        return await asyncio.shield(future)

    def evict_idle(self, now: float | None = None) -> int:
        """Stop actors idle for ``idle_s`` with no subscribers; return how many."""
        now = time.monotonic() if now is None else now
        stale = [
            key for key, actor in self._actors.items()
            if actor.idle and now - actor.last_active >= self._idle_s and not self.in_use(key)
        ]
        for key in stale:
            # removal and the idle check happen without an await in between, so no
            # write can slip into an actor that is being dropped
            actor = self._actors.pop(key)
            actor.terminate()
        if stale:
            metrics.ACTIVE_ACTORS.set(len(self._actors))
            log.debug("evicted idle actors", extra={"evicted": len(stale),
                                                    "active": len(self._actors)})
        return len(stale)

    async def _evict_loop(self) -> None:
        interval = max(0.05, min(self._idle_s / 2, 10.0))
        while True:
            await asyncio.sleep(interval)
            self.evict_idle()

    async def close(self, timeout_s: float) -> None:
        """Refuse new writes, flush every mailbox and answer every waiter."""
        self._closing = True
        actors = list(self._actors.values())
        log.info("flushing session actors", extra={"actors": len(actors)})
        try:
            await asyncio.wait_for(
                asyncio.gather(*(a.stop() for a in actors)), timeout=timeout_s
            )
        except TimeoutError:
            log.warning("flush deadline passed; failing remaining writes")
        for actor in actors:
            actor.terminate()
        self._actors.clear()
        metrics.ACTIVE_ACTORS.set(0)
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
