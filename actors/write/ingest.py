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

Exactly once: the message ids were chosen when the entry was accepted. Before a
redelivered entry is written, its ids are looked up and an entry already stored is
only acknowledged; an entry stored concurrently by a consumer that was slow rather
than dead is refused by the primary key (its whole transaction rolls back, seq
included) and then found stored.

An encrypted tenant's entry is sealed (``storage.crypto.ingest``): it is opened here,
with the keyring, before anything else; one whose key is gone (its user was erased)
is dead-lettered still sealed (``unreadable``).

Outcomes per entry: stored → ack; already stored → ack (``duplicate``); session not
found, bad ``parent_id``, a payload we cannot decode or a row Postgres refuses →
dead-lettered (never retried forever); anything else (overload, shutdown, database
unavailable, an unknown commit outcome) → left pending, retried after
``claim_idle_s``, and the consumer backs off before reading more.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import socket
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any

import asyncpg

from chat_storage import tracing
from chat_storage.actors.write.errors import WriteError
from chat_storage.actors.write.ingest_metrics import (
    DEAD_LETTERS,
    ENTRIES,
    PERSISTED,
    RECLAIMED,
    ROUND_ERRORS,
    show,
)
from chat_storage.actors.write.registry import Registry
from chat_storage.storage import db
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.errors import InvalidReference, NotFound, Unavailable
from chat_storage.storage.ingest import (
    Delivery,
    IngestStream,
    IngestUnavailable,
    opened,
    stored_ids,
)
from chat_storage.storage.messages import WriteGroup
from chat_storage.storage.writes import Stored
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
        self._keyring = keyring  # opens encrypted tenants' sealed entries
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.batch = batch
        self.in_flight = max(1, in_flight)  # batches handed over and not yet acknowledged
        self.claim_idle_s = claim_idle_s
        self.block_ms = block_ms
        self.stats_interval_s = stats_interval_s
        self._registry = registry
        self._pool = pool
        self._supervisor = tasks
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # stream ids of the entries in this consumer's batches under way: XAUTOCLAIM
        # finds them too once their commit takes longer than claim_idle_s
        self._holding: set[str] = set()

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
                    deliveries = [d for d in claimed if d.id not in self._holding]
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
        settle = await self.begin(deliveries, redelivered=redelivered)
        return False if settle is None else await settle

    async def begin(self, deliveries: Sequence[Delivery], *, redelivered: bool
                    ) -> Coroutine[Any, Any, bool] | None:
        """Hand ``deliveries`` to the session mailboxes, in order, before returning.

        Returns what settles them (awaits their commits, then acknowledges or
        dead-letters each one, and says whether any was left pending for a retry);
        ``None`` if there were none. See :meth:`persist`.
        """
        if not deliveries:
            return None
        deliveries, retry = await self._opened(deliveries)
        dead = [(d, "unreadable" if (d.error or "").startswith("unreadable") else "malformed",
                 d.error or "") for d in deliveries if d.entry is None]
        todo = [d for d in deliveries if d.entry is not None]
        done: list[str] = []
        if redelivered and todo:
            try:
                stored, todo = await self._split_stored(todo)
            except Unavailable:
                stored, retry, todo = [], retry + len(todo), []
            done += [d.id for d in stored]
            ENTRIES.labels("duplicate").inc(len(stored))
        # no await from here to the last submit: the next batch is handed over after this
        # one, so every session's mailbox holds its entries in stream order
        writes = [self._submit(d) for d in todo]
        ids = [d.id for d in deliveries]
        self._holding.update(ids)
        return self._settle(ids, todo, writes, dead, done, retry)

    async def _opened(self, deliveries: Sequence[Delivery]) -> tuple[list[Delivery], int]:
        """``deliveries`` with the sealed ones opened, and how many are left pending
        (their keys could not be read now, or this process has no KEK)."""
        sealed = {d.key_id for d in deliveries if d.key_id is not None}
        if not sealed:
            return list(deliveries), 0
        keyring = self._keyring
        try:
            if keyring is None:
                raise Unavailable("no CHAT_ENCRYPTION_KEK to open sealed entries")
            keys = await db.call(self._pool, lambda conn: keyring.by_ids(conn, sealed))
        except Exception as exc:
            log.warning("cannot open sealed ingest entries now; will retry",
                        extra={"consumer": self.name, "error": repr(exc)})
            return [d for d in deliveries if d.key_id is None], sum(
                1 for d in deliveries if d.key_id is not None)
        return [d if d.key_id is None else opened(d, keys.get(d.key_id))
                for d in deliveries], 0

    async def _settle(self, ids: list[str], todo: list[Delivery],
                      writes: list[asyncio.Future[Stored]],
                      dead: list[tuple[Delivery, str, str]], done: list[str],
                      retry: int) -> bool:
        try:
            results = await asyncio.gather(*writes, return_exceptions=True)
            collided: list[Delivery] = []
            for delivery, result in zip(todo, results, strict=True):
                if isinstance(result, list):
                    done.append(delivery.id)
                    ENTRIES.labels("stored").inc()
                    PERSISTED.inc(len(result))
                elif isinstance(result, asyncpg.UniqueViolationError):
                    collided.append(delivery)  # stored meanwhile by a slow consumer, presumably
                elif (reason := _dead_reason(result)) is not None:
                    dead.append((delivery, reason, repr(result)))
                else:
                    retry += 1
                    if not isinstance(result, WriteError | Unavailable):
                        log.warning("ingest write failed; will retry", extra={
                            "entry": delivery.id, "error": repr(result)})
            if collided:
                try:
                    stored, unsure = await self._split_stored(collided)
                except Unavailable:
                    stored, unsure = [], collided
                done += [d.id for d in stored]
                ENTRIES.labels("duplicate").inc(len(stored))
                retry += len(unsure)
            ENTRIES.labels("retry").inc(retry)
            await self._dead_letter(dead)
            await self.stream.ack(done)
            return retry > 0
        finally:
            self._holding.difference_update(ids)

    def _submit(self, delivery: Delivery) -> asyncio.Future[Stored]:
        """Queue the entry in its session's mailbox; the future resolves after COMMIT."""
        entry = delivery.entry
        # S101: narrows the type: begin() passes decoded entries only
        assert entry is not None  # noqa: S101
        group = WriteGroup(entry.messages, wrap=entry.wrap)
        span = None
        if tracing.ON and entry.trace:
            # the accepting request's trace goes on here: this span is its child, lasts
            # until the commit, and the commit's span links to it (the mailbox takes the
            # current span)
            span = tracing.start("ingest consume", parent=tracing.extract(entry.trace),
                                 span_kind="CONSUMER", attributes={
                                     "messaging.system": "redis",
                                     "messaging.message.id": delivery.id,
                                     "chat.session_id": str(entry.session_id),
                                     "chat.messages": len(entry.messages)})
            token = tracing.activate(span)
        try:
            write = self._registry.submit(entry.tenant_id, entry.session_id, group)
        except Exception as exc:  # overloaded or shutting down: not stored, retried later
            write = asyncio.get_running_loop().create_future()
            write.set_exception(exc)
        finally:
            if span is not None:
                tracing.deactivate(token)
        if span is not None:
            write.add_done_callback(functools.partial(_end_span, span))
        return write

    async def _split_stored(
        self, deliveries: Sequence[Delivery]
    ) -> tuple[list[Delivery], list[Delivery]]:
        """(already stored, not stored); an entry is all or nothing, so one id tells."""
        entries = [d.entry for d in deliveries if d.entry is not None]
        found = await db.call(self._pool, lambda conn: stored_ids(
            conn, [e.tenant_id for e in entries], [e.messages[0].id for e in entries]))
        stored = [d for d in deliveries if d.entry is not None
                  and d.entry.messages[0].id in found]
        kept = {d.id for d in stored}
        return stored, [d for d in deliveries if d.id not in kept]

    async def _dead_letter(self, dead: Sequence[tuple[Delivery, str, str]]) -> None:
        if not dead:
            return
        await self.stream.dead_letter(dead)
        for delivery, reason, error in dead:
            entry = delivery.entry
            DEAD_LETTERS.labels(reason).inc()
            ENTRIES.labels("dead").inc()
            log.warning("ingest entry dead-lettered", extra={
                "entry": delivery.id, "reason": reason, "error": error,
                "tenant_id": None if entry is None else str(entry.tenant_id),
                "session_id": None if entry is None else str(entry.session_id),
            })

    async def _refresh_stats(self) -> None:
        while not self._stop.is_set():
            # the loop logs Redis trouble; stale gauges beat a crashed task
            with contextlib.suppress(IngestUnavailable):
                show(await self.stream.stats())
            await self._sleep(self.stats_interval_s)


def _end_span(span: Any, write: asyncio.Future[Stored]) -> None:
    if write.cancelled():
        tracing.fail(span, "cancelled")
    elif (error := write.exception()) is not None:
        tracing.fail(span, error)
    span.end()


# Errors about the entry itself: writing it again would fail again.
_BAD_DATA = (asyncpg.exceptions.DataError, asyncpg.exceptions.IntegrityConstraintViolationError,
             asyncpg.exceptions._base.DataError)


def _dead_reason(error: BaseException) -> str | None:
    """Why ``error`` makes the entry unstorable for good; ``None``: retry it later."""
    if isinstance(error, NotFound):
        return "session_not_found"
    if isinstance(error, InvalidReference):
        return "invalid_reference"
    if isinstance(error, _BAD_DATA):
        return "rejected"
    return None  # overload, shutdown, database down, unknown outcome, anything unexpected
