"""One batch of ingest entries: handed to the session mailboxes, then settled.

:class:`BatchSettler` is the bookkeeping half of the ingest consumer
(:mod:`.ingest` is the read loop): it opens sealed entries, skips the ones already
stored, submits the rest in stream order and, once they have committed, acknowledges,
dead-letters or leaves pending each one.

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
import functools
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

import asyncpg

from chat_storage import tracing
from chat_storage.actors.write.errors import WriteError
from chat_storage.actors.write.ingest_metrics import DEAD_LETTERS, ENTRIES, PERSISTED
from chat_storage.actors.write.registry import Registry
from chat_storage.storage import db
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.errors import InvalidReference, NotFound, Unavailable
from chat_storage.storage.ingest import Delivery, IngestStream, opened, stored_ids
from chat_storage.storage.messages import WriteGroup
from chat_storage.storage.writes import Stored

log = logging.getLogger(__name__)


class BatchSettler:
    """Stores batches of ``stream``'s entries through ``registry``; see the module doc.

    ``name`` is the consumer's, for logs. ``holding`` is the stream ids of the entries
    in batches under way: ``XAUTOCLAIM`` finds them too once their commit takes longer
    than the claim idle time, and the read loop must not take them again.
    """

    def __init__(self, stream: IngestStream, registry: Registry, pool: asyncpg.Pool, *,
                 name: str, keyring: Keyring | None = None) -> None:
        self.stream = stream
        self.name = name
        self.holding: set[str] = set()
        self._registry = registry
        self._pool = pool
        self._keyring = keyring  # opens encrypted tenants' sealed entries

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
        self.holding.update(ids)
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
            self.holding.difference_update(ids)

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
