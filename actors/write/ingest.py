"""The async-ingestion consumer: persists the ingest stream through the session mailboxes.

One consumer per process, one task reading, up to ``in_flight`` batches committing.
Each round it first takes over entries another consumer left pending for
``claim_idle_s`` (``XAUTOCLAIM``: that consumer died or is stuck), else reads new ones
(``XREADGROUP``), then hands every entry to the registry (the same mailboxes, group
commit and seq assignment as a synchronous write) and goes on to read the next batch
while this one commits. The hand-over is synchronous and in stream order, batch after
batch, so each session's mailbox holds its entries in stream order and stores them in
that order. Each batch acknowledges its entries only after their commit. A process
that dies mid-batch leaves its entries pending; another process takes them over once
they have been idle long enough. Waiting for each batch's commit before reading the
next left the shared committer idle between batches: the rate was one batch per
commit latency (figures: loadtest/RESULTS.md,
#pipelined-appends-and-batches-in-flight-branch-ingest).

What one batch goes through (sealed entries, exactly once, the outcome of each entry)
is :mod:`.ingest_batch`'s job; this module is the read loop and its lifecycle.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any

import asyncpg

from chat_storage.actors.write.ingest_batch import BatchSettler
from chat_storage.actors.write.ingest_metrics import RECLAIMED, ROUND_ERRORS, show
from chat_storage.actors.write.registry import Registry
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.ingest import Delivery, IngestStream, IngestUnavailable
from chat_storage.supervisor import Supervisor

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 5.0


class IngestConsumer:
    """Persists ingest entries through ``registry``; see the module doc."""

    def __init__(self, stream: IngestStream, registry: Registry, pool: asyncpg.Pool, *,
                 tasks: Supervisor, batch: int = 100, claim_idle_s: float = 30.0,
                 block_ms: int = 1000, stats_interval_s: float = 5.0,
                 in_flight: int = 3, name: str | None = None,
                 keyring: Keyring | None = None) -> None:
        self.stream = stream
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.batch = batch
        self.in_flight = max(1, in_flight)  # batches handed over and not yet acknowledged
        self.claim_idle_s = claim_idle_s
        self.block_ms = block_ms
        self.stats_interval_s = stats_interval_s
        self._batches = BatchSettler(stream, registry, pool, name=self.name, keyring=keyring)
        self._supervisor = tasks
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the consumer loop and the gauge refresher."""
        self._tasks = [self._supervisor.spawn(self._run(), name="ingest-consumer"),
                       self._supervisor.spawn(self._refresh_stats(), name="ingest-stats")]

    def stop_reading(self) -> None:
        """Take no new entries; the batches under way still finish and are acknowledged."""
        self._stop.set()

    async def close(self, timeout_s: float) -> None:
        """Stop reading, let the batches under way finish within ``timeout_s``, then end.

        Past the deadline they are abandoned unacknowledged: another consumer (or
        this service's next start) takes it over, and what did commit is not repeated.
        """
        self.stop_reading()
        if not self._tasks:
            return
        _, late = await asyncio.wait(self._tasks, timeout=timeout_s)
        for task in late:
            log.warning("ingest consumer did not stop in time; abandoning its batch",
                        extra={"consumer": self.name})
            await self._supervisor.stop(task)  # a failure is logged and counted there

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when stopping."""
        try:
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        except TimeoutError:
            pass

    async def _run(self) -> None:
        window: collections.deque[asyncio.Task[bool]] = collections.deque()
        try:
            await self._loop(window)
            # stopping: the batches under way still commit and are acknowledged
            for task in window:
                try:
                    await task
                except Exception:
                    log.warning("ingest batch failed while stopping; its entries stay "
                                "pending", exc_info=True, extra={"consumer": self.name})
        finally:
            for task in window:
                self._supervisor.cancel(task)  # only if _run itself is cancelled

    async def _loop(self, window: collections.deque[asyncio.Task[bool]]) -> None:
        loop = asyncio.get_running_loop()
        delay = BACKOFF_MIN_S
        claim_at = 0.0  # the first round looks for entries left by dead consumers
        cursor = "0-0"
        ready = False
        while not self._stop.is_set():
            retry = False
            try:
                if not ready:
                    await self.stream.ensure_group()
                    ready = True
                # room for one more batch; batches are collected oldest first
                while window and (len(window) >= self.in_flight or window[0].done()):
                    retry = await window.popleft() or retry
                deliveries: list[Delivery] = []
                redelivered = loop.time() >= claim_at
                if redelivered:
                    cursor, claimed = await self.stream.claim(
                        self.name, min_idle_ms=int(self.claim_idle_s * 1000), start=cursor,
                        count=self.batch)
                    # entries of our own batches still committing are ours already
                    deliveries = [d for d in claimed if d.id not in self._batches.holding]
                    RECLAIMED.inc(len(deliveries))
                    if cursor == "0-0":  # scanned the whole pending list: next scan later
                        claim_at = loop.time() + max(0.1, self.claim_idle_s / 2)
                if not deliveries:
                    redelivered = False
                    deliveries = await self.stream.read(self.name, count=self.batch,
                                                        block_ms=self.block_ms)
                settle = await self.begin(deliveries, redelivered=redelivered)
                if settle is not None:
                    window.append(self._supervisor.spawn(settle, name="ingest-batch",
                                                         awaited=True))
            except IngestUnavailable as exc:
                log.warning("ingest stream unavailable; backing off",
                            extra={"consumer": self.name, "error": str(exc), "delay_s": delay})
                retry = True
            except Exception:
                # whatever it was, the entries are still pending: retried, never dropped
                ROUND_ERRORS.inc()
                log.exception("ingest round failed; backing off",
                              extra={"consumer": self.name, "delay_s": delay})
                retry = True
            if retry:
                await self._sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
            else:
                delay = BACKOFF_MIN_S

    async def persist(self, deliveries: Sequence[Delivery], *, redelivered: bool) -> bool:
        """Store ``deliveries``, then acknowledge or dead-letter each one.

        ``redelivered``: they may have been stored already (look first). Returns
        whether any was left pending for a retry (the caller backs off).
        """
        return await self._batches.persist(deliveries, redelivered=redelivered)

    async def begin(self, deliveries: Sequence[Delivery], *, redelivered: bool
                    ) -> Coroutine[Any, Any, bool] | None:
        """Hand ``deliveries`` to the session mailboxes; see :meth:`BatchSettler.begin`."""
        return await self._batches.begin(deliveries, redelivered=redelivered)

    async def _refresh_stats(self) -> None:
        while not self._stop.is_set():
            # the loop logs Redis trouble; stale gauges beat a crashed task
            with contextlib.suppress(IngestUnavailable):
                show(await self.stream.stats())
            await self._sleep(self.stats_interval_s)


