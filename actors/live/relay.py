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
predicate picks (a redacting tenant's deltas, after its redacted final message); a
scrub that fails is tried again until it is done (the text must not outlive its use).
Events are queued as :class:`SessionEvent` objects and turned into broker messages by the
task, just before they are published: with ``sealing``, encrypted tenants' events are
sealed then (``actors.live.sealing``), and an event that cannot be sealed now is
dropped like one the broker refused, never published in plain text.
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
from chat_storage.actors.live import events, metrics
from chat_storage.actors.live.events import SessionEvent
from chat_storage.actors.live.sealing import Sealing
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
    """A bounded queue of (session, event) and the task that publishes it."""

    def __init__(self, broker: Broker, active: Callable[[SessionKey], bool], *,
                 tasks: Supervisor, origin: bytes, max_queue: int = 100_000,
                 sealing: Sealing | None = None) -> None:
        self._broker = broker
        self._origin = origin
        self._sealing = sealing
        self._marker = events.envelope(origin, events.reconcile())
        self._dirty: set[SessionKey] = set()  # sessions whose events were dropped
        self._tasks = tasks
        self._active = active
        self._max_queue = max_queue
        self._queue: collections.deque[tuple[SessionKey, SessionEvent | Scrub]] = (
            collections.deque())
        self._scrubs: list[tuple[SessionKey, Scrub]] = []  # failed: tried again
        self._scrub_failing = False
        self._wake = asyncio.Event()
        self._flushed: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = self._tasks.spawn(self._run(), name="broker-relay")

    def send(self, key: SessionKey, event: SessionEvent) -> None:
        """Queue ``event`` for the session's channel (never waits)."""
        if len(self._queue) >= self._max_queue:
            metrics.BROKER_ERRORS.labels("queue_full").inc()
            self._dropped([key])
            self._wake.set()
            return
        self._queue.append((key, event))
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
            if self._dirty or self._scrubs:  # still to do: try again even if nothing comes
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(MARK_RETRY_S):
                        await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake.clear()
            touched: set[SessionKey] = set()
            while self._queue:
                batch: list[tuple[SessionKey, SessionEvent]] = []
                scrub: tuple[SessionKey, Scrub] | None = None
                while self._queue and len(batch) < BATCH:
                    key, item = self._queue.popleft()
                    if isinstance(item, Scrub):
                        scrub = key, item  # after the events queued before it
                        break
                    batch.append((key, item))
                touched.update(key for key, _ in batch)
                try:
                    items = await self._encoded(batch)
                    if tracing.ON and items:
                        with tracing.span("relay publish", span_kind="PRODUCER", attributes={
                                "messaging.batch.message_count": len(items)}):
                            await self._broker.publish_many(items)
                    elif items:
                        await self._broker.publish_many(items)
                    failing_since = 0.0
                except Exception as exc:
                    metrics.BROKER_ERRORS.labels("error").inc(len(batch))
                    self._dropped([key for key, _ in batch])
                    failing_since = self._failed(failing_since, exc)
                if scrub is not None:
                    if len(self._scrubs) >= self._max_queue:  # the oldest expire with
                        self._scrubs.pop(0)  # their stream (the broker's TTL)
                    self._scrubs.append(scrub)
            if self._scrubs and await self._scrub():
                failing_since = 0.0
            if self._dirty and await self._mark():  # also when nothing else was published
                failing_since = 0.0
            if forget is not None:
                for key in touched:
                    if not self._active(key):
                        forget(channel(key))
            if self._flushed is not None and not self._flushed.done():
                self._flushed.set_result(None)

    async def _encoded(self, batch: list[tuple[SessionKey, SessionEvent]],
                       ) -> list[tuple[str, bytes]]:
        """The broker messages of ``batch``; an event that cannot be sealed is left out
        (counted, and its session reconciled like one the broker refused)."""
        if self._sealing is None:
            return [(channel(k), events.envelope(self._origin, ev)) for k, ev in batch]
        sealed = await self._sealing.envelopes(self._origin, batch)
        out = [(channel(k), data) for (k, _), data in zip(batch, sealed, strict=True)
               if data is not None]
        if len(out) < len(batch):
            unsealed = [k for (k, _), data in zip(batch, sealed, strict=True) if data is None]
            metrics.BROKER_ERRORS.labels("no_key").inc(len(unsealed))
            self._dropped(unsealed)
        return out

    async def _scrub(self) -> bool:
        """Run the scrubs still to do, in order; ``False`` if one failed (kept for later)."""
        while self._scrubs:
            key, scrub = self._scrubs[0]
            try:
                await self._broker.scrub(channel(key), scrub.drop)
            except Exception as exc:
                metrics.BROKER_ERRORS.labels("scrub").inc()
                if not self._scrub_failing:
                    log.warning("broker scrub failed; will retry", extra={"error": repr(exc)})
                self._scrub_failing = True
                return False
            self._scrub_failing = False
            self._scrubs.pop(0)
        return True

    @staticmethod
    def _failed(failing_since: float, exc: Exception) -> float:
        now = time.monotonic()
        if not failing_since or now - failing_since > 10.0:
            log.warning("broker publish failed", extra={"error": repr(exc)})
            return now
        return failing_since

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
