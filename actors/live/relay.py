"""The relay: this process's events to the broker, in order, without ever blocking.

``send`` only appends to a bounded queue; one task publishes what is queued, in
order, up to ``BATCH`` events per broker round trip (a busy event loop gives the task
one turn per iteration: one event per turn would fall behind under load), so each
session's channel gets its events in the order they happened here. When the
broker fails, events are dropped (counted, logged at most every 10 s): Postgres is
the source of truth and other replicas fill their gaps from it: the sessions whose
events were dropped are remembered, and once the broker takes a publish again each of
them gets a ``marker`` (``events.reconcile``) that makes every replica's feed of that
session read it again from Postgres (retried every :data:`MARK_RETRY_S` until it is
in, even when nothing else is published). With the memory
broker, the log of a session that is no longer active here is dropped after its
events are published (``forget``), so memory follows the active sessions.
``scrub`` queues, in the same order, the deletion of a channel's past messages that a
predicate picks (a redacting tenant's deltas, after its redacted final message).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from chat_storage import tracing
from chat_storage.actors.live import metrics
from chat_storage.storage.broker import Broker
from chat_storage.storage.records import SessionKey
from chat_storage.supervisor import Supervisor

log = logging.getLogger(__name__)
BATCH = 512
MARK_RETRY_S = 1.0


class Scrub(NamedTuple):
    """A queued deletion: the channel's messages that ``drop`` picks."""

    drop: Callable[[bytes], bool]


@functools.lru_cache(maxsize=4096)
def channel(key: SessionKey) -> str:
    """The broker channel of a session."""
    return f"session:{key[0]}:{key[1]}"


class Relay:
    """A bounded queue of (session, event bytes) and the task that publishes it."""

    def __init__(self, broker: Broker, active: Callable[[SessionKey], bool], *,
                 tasks: Supervisor, max_queue: int = 100_000, marker: bytes = b"") -> None:
        self._broker = broker
        self._marker = marker
        self._dirty: set[SessionKey] = set()  # sessions whose events were dropped
        self._tasks = tasks
        self._active = active
        self._max_queue = max_queue
        self._queue: collections.deque[tuple[SessionKey, bytes | Scrub]] = collections.deque()
        self._wake = asyncio.Event()
        self._flushed: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = self._tasks.spawn(self._run(), name="broker-relay")

    def send(self, key: SessionKey, data: bytes) -> None:
        """Queue ``data`` for the session's channel (never waits)."""
        if len(self._queue) >= self._max_queue:
            metrics.BROKER_ERRORS.labels("queue_full").inc()
            self._dropped([key])
            self._wake.set()
            return
        self._queue.append((key, data))
        self._wake.set()

    def scrub(self, key: SessionKey, drop: Callable[[bytes], bool]) -> None:
        """Once what is queued before it is published, delete the session's broker
        messages that ``drop`` picks. Queued even past ``max_queue``: skipping it would
        leave text that must go (one per ended stream of a redacting tenant)."""
        self._queue.append((key, Scrub(drop)))
        self._wake.set()

    async def close(self, timeout_s: float) -> None:
        """Publish what is queued (for at most ``timeout_s``), then stop."""
        if self._queue and self._task is not None and not self._task.done():
            self._flushed = asyncio.get_running_loop().create_future()
            self._wake.set()
            try:
                await asyncio.wait_for(self._flushed, timeout_s)
            except TimeoutError:
                log.warning("broker queue not flushed before the deadline",
                            extra={"left": len(self._queue)})
        if self._task is not None:
            await self._tasks.stop(self._task)

    async def _run(self) -> None:
        failing_since = 0.0
        forget = getattr(self._broker, "forget", None)  # the memory broker's
        while True:
            if self._dirty:  # markers still to publish: try again even if nothing comes
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(MARK_RETRY_S):
                        await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake.clear()
            touched: set[SessionKey] = set()
            while self._queue:
                batch: list[tuple[SessionKey, bytes]] = []
                scrub: tuple[SessionKey, Scrub] | None = None
                while self._queue and len(batch) < BATCH:
                    key, item = self._queue.popleft()
                    if isinstance(item, Scrub):
                        scrub = key, item  # after the events queued before it
                        break
                    batch.append((key, item))
                touched.update(key for key, _ in batch)
                try:
                    if tracing.ON and batch:
                        with tracing.span("relay publish", span_kind="PRODUCER", attributes={
                                "messaging.batch.message_count": len(batch)}):
                            await self._broker.publish_many([(channel(k), d) for k, d in batch])
                    elif batch:
                        await self._broker.publish_many([(channel(k), d) for k, d in batch])
                    if scrub is not None:
                        await self._broker.scrub(channel(scrub[0]), scrub[1].drop)
                    failing_since = 0.0
                except Exception as exc:
                    metrics.BROKER_ERRORS.labels("error").inc(len(batch))
                    self._dropped([key for key, _ in batch])
                    now = time.monotonic()
                    if not failing_since or now - failing_since > 10.0:
                        failing_since = now
                        log.warning("broker publish failed", extra={"error": repr(exc)})
            if self._dirty and await self._mark():  # also when nothing else was published
                failing_since = 0.0
            if forget is not None:
                for key in touched:
                    if not self._active(key):
                        forget(channel(key))
            if self._flushed is not None and not self._flushed.done():
                self._flushed.set_result(None)

    def _dropped(self, keys: list[SessionKey]) -> None:
        for key in keys:
            if len(self._dirty) < self._max_queue:
                self._dirty.add(key)

    async def _mark(self) -> bool:
        """Tell every replica to reconcile the sessions whose events were dropped."""
        keys = list(self._dirty)
        try:
            await self._broker.publish_many([(channel(k), self._marker) for k in keys])
        except Exception:
            return False  # still failing: the next turn tries again
        self._dirty.difference_update(keys)
        metrics.BROKER_RECONCILES.labels("marked").inc(len(keys))
        return True
