"""The async-ingestion consumer: persists the ingest stream through the session mailboxes.

One consumer per process, one task, one batch at a time. Each round it first takes
over entries another consumer left pending for ``claim_idle_s`` (``XAUTOCLAIM``: that
consumer died or is stuck), else reads new ones (``XREADGROUP``), then writes every
entry through the registry (the same mailboxes, group commit and seq assignment as a
synchronous write: in stream order per session within the batch) and acknowledges
an entry only after its commit. A process that dies mid-batch leaves its entries
pending; another process takes them over once they have been idle long enough.

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
import logging
import os
import socket
import uuid
from collections.abc import Sequence

import asyncpg
from prometheus_client import Counter, Gauge

from chat_storage import tracing
from chat_storage.actors.write.errors import WriteError
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

ENTRIES = Counter("chat_ingest_entries_total", "Ingest entries handled by this process's "
                  "consumer, by outcome (stored, duplicate, dead, retry)", ["outcome"])
PERSISTED = Counter("chat_ingest_messages_persisted_total",
                    "Messages stored from the ingest stream by this process")
DEAD_LETTERS = Counter("chat_ingest_dead_letters_total",
                       "Ingest entries moved to the dead-letter stream, by reason", ["reason"])
ROUND_ERRORS = Counter("chat_ingest_round_errors_total",
                       "Consumer rounds that failed unexpectedly (entries left pending)")
RECLAIMED = Counter("chat_ingest_reclaimed_total",
                    "Pending ingest entries taken over from an idle consumer (XAUTOCLAIM)")
# Figures of the shared stream (the same from every process: aggregate with max()).
LAG = Gauge("chat_ingest_lag_entries", "Ingest entries not yet delivered to any consumer")
PENDING = Gauge("chat_ingest_pending_entries", "Ingest entries delivered, not yet stored")
BACKLOG = Gauge("chat_ingest_backlog_entries", "Ingest entries not yet stored (lag + pending)")
DEAD = Gauge("chat_ingest_dead_entries", "Entries in the ingest dead-letter stream")

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 5.0


class IngestConsumer:
    """Persists ingest entries through ``registry``; see the module doc."""

    def __init__(self, stream: IngestStream, registry: Registry, pool: asyncpg.Pool, *,
                 tasks: Supervisor, batch: int = 100, claim_idle_s: float = 30.0,
                 block_ms: int = 1000, stats_interval_s: float = 5.0,
                 name: str | None = None, keyring: Keyring | None = None) -> None:
        self.stream = stream
        self._keyring = keyring  # opens encrypted tenants' sealed entries
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.batch = batch
        self.claim_idle_s = claim_idle_s
        self.block_ms = block_ms
        self.stats_interval_s = stats_interval_s
        self._registry = registry
        self._pool = pool
        self._supervisor = tasks
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the consumer loop and the gauge refresher."""
        self._tasks = [self._supervisor.spawn(self._run(), name="ingest-consumer"),
                       self._supervisor.spawn(self._refresh_stats(), name="ingest-stats")]

    def stop_reading(self) -> None:
        """Take no new entries; the batch under way still finishes and is acknowledged."""
        self._stop.set()

    async def close(self, timeout_s: float) -> None:
        """Stop reading, let the batch under way finish within ``timeout_s``, then end.

        Past the deadline the batch is abandoned unacknowledged: another consumer (or
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
        loop = asyncio.get_running_loop()
        delay = BACKOFF_MIN_S
        claim_at = 0.0  # the first round looks for entries left by dead consumers
        cursor = "0-0"
        ready = False
        while not self._stop.is_set():
            try:
                if not ready:
                    await self.stream.ensure_group()
                    ready = True
                deliveries: list[Delivery] = []
                redelivered = loop.time() >= claim_at
                if redelivered:
                    cursor, deliveries = await self.stream.claim(
                        self.name, min_idle_ms=int(self.claim_idle_s * 1000), start=cursor,
                        count=self.batch)
                    RECLAIMED.inc(len(deliveries))
                    if cursor == "0-0":  # scanned the whole pending list: next scan later
                        claim_at = loop.time() + max(0.1, self.claim_idle_s / 2)
                if not deliveries:
                    redelivered = False
                    deliveries = await self.stream.read(self.name, count=self.batch,
                                                        block_ms=self.block_ms)
                retry = await self.persist(deliveries, redelivered=redelivered)
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
        if not deliveries:
            return False
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
        results = await asyncio.gather(*(self._store(d) for d in todo), return_exceptions=True)
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

    async def _store(self, delivery: Delivery) -> Stored:
        entry = delivery.entry
        # S101: narrows the type: persist() passes decoded entries only
        assert entry is not None  # noqa: S101
        group = WriteGroup(entry.messages, wrap=entry.wrap)
        if not (tracing.ON and entry.trace):
            return await self._registry.write(entry.tenant_id, entry.session_id, group)
        # the accepting request's trace goes on here: this span is its child, and the
        # commit's span links to this one (the mailbox takes the current span)
        with tracing.span("ingest consume", parent=tracing.extract(entry.trace),
                          span_kind="CONSUMER", attributes={
                              "messaging.system": "redis", "messaging.message.id": delivery.id,
                              "chat.session_id": str(entry.session_id),
                              "chat.messages": len(entry.messages)}):
            return await self._registry.write(entry.tenant_id, entry.session_id, group)

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
            try:
                stats = await self.stream.stats()
            except IngestUnavailable:
                pass  # the loop logs Redis trouble; stale gauges beat a crashed task
            else:
                LAG.set(stats.lag)
                PENDING.set(stats.pending)
                BACKLOG.set(stats.backlog)
                DEAD.set(stats.dead)
            await self._sleep(self.stats_interval_s)


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
