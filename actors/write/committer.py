"""Runs group-commit transactions and learns their outcome when a connection breaks.

A transaction whose connection is lost may have committed or not. The committer
never guesses: it ends the lost server process, waits for the sessions' row locks
(held by that transaction until it ended) and reads which messages exist. Confirmed
stored → success; confirmed not stored → retried once (the message ids are fixed,
so a retry can never store twice) or answered :class:`Unavailable`; database still
unreachable → :class:`OutcomeUnknown`. Only a server-reported error proves at once
that nothing was stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence

import asyncpg
import asyncpg.pool

from chat_storage import tracing
from chat_storage.actors.write import metrics
from chat_storage.actors.write.config import WriteConfig
from chat_storage.actors.write.errors import OutcomeUnknown
from chat_storage.storage import db, writes
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.db import CONNECTION_ERRORS
from chat_storage.storage.errors import Unavailable
from chat_storage.storage.records import StoredMessage
from chat_storage.storage.writes import SessionBatch, Stored

log = logging.getLogger(__name__)

Results = list[list[Stored | Exception]]  # per batch, per group: stored messages or error
# refused by asyncpg before anything was sent (a value its codec cannot encode)
_CLIENT_DATA_ERROR = asyncpg.exceptions._base.DataError
# proof that the transaction rolled back: the server said so, or nothing was sent
_REFUSED = (asyncpg.PostgresError, _CLIENT_DATA_ERROR)


class _Lost(Exception):
    """The connection broke during the transaction; its outcome is unknown yet."""

    def __init__(self, pid: int | None, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.pid = pid
        self.cause = cause


class Lease:
    """A pool connection kept across transactions by one committer.

    Giving a connection back to the pool costs a reset round trip; a committer that
    commits back to back keeps its own instead, hands it back when idle and throws
    it away when it breaks.
    """

    def __init__(self, pool: asyncpg.Pool, acquire_timeout_s: float) -> None:
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None

    async def get(self) -> asyncpg.pool.PoolConnectionProxy:
        """The held connection, acquired first if needed; :class:`Unavailable` if none."""
        if self._conn is not None and not _usable(self._conn):
            await self.release()
        if self._conn is None:
            try:
                self._conn = await self._pool.acquire(timeout=self._acquire_timeout_s)
            except TimeoutError:
                metrics.REJECTED.labels("pool_exhausted").inc()
                raise Unavailable("no database connection free") from None
            except Exception as exc:  # cannot connect (or the pool failed): nothing was sent
                metrics.REJECTED.labels("db_unavailable").inc()
                raise Unavailable(f"cannot connect to the database: {exc!r}") from None
            try:
                # The group-commit statement is prepared once per connection. With
                # Postgres's default plan choice, a connection whose first batches were
                # small keeps re-planning it on every call, which costs Postgres CPU on
                # every message (see loadtest/RESULTS.md#generic-plan); its generic
                # plan suits every size.
                # The pool's reset (RESET ALL) undoes this when the lease ends.
                await writes.prefer_generic_plans(db.as_connection(self._conn))
            except Exception as exc:  # nothing of a write was sent yet
                await self.discard()
                metrics.REJECTED.labels("db_unavailable").inc()
                raise Unavailable(f"cannot prepare the connection: {exc!r}") from None
        return self._conn

    async def discard(self) -> None:
        """Close the held connection (it broke or is in an unknown state), give it back."""
        if self._conn is not None and _usable(self._conn):
            self._conn.terminate()
        await self.release()

    async def release(self) -> None:
        """Give the connection back to the pool."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.shield(self._pool.release(conn))


def _usable(conn: asyncpg.pool.PoolConnectionProxy) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # the pool took it back when it closed
        return False


class Committer:
    """Commits :class:`SessionBatch` lists, each list in one transaction."""

    def __init__(self, pool: asyncpg.Pool, config: WriteConfig,
                 keyring: Keyring | None = None) -> None:
        self._pool = pool
        self._config = config
        # seals the messages of encrypted tenants (None: no KEK configured)
        self._keyring = keyring

    def lease(self) -> Lease:
        """A connection holder for one caller's transactions (never shared between tasks)."""
        return Lease(self._pool, self._config.acquire_timeout_s)

    async def commit(self, batches: Sequence[SessionBatch], lease: Lease) -> Results:
        """Store ``batches`` in one transaction and return every group's outcome.

        A server-reported error (bad data in one write) never sinks the others: the
        batches, then the groups, are committed apart and only the culprit gets it.
        Raises :class:`Unavailable` (nothing stored) or :class:`OutcomeUnknown`.
        """
        for _ in range(3):
            try:
                return await self._commit_settled(batches, lease)
            except asyncpg.exceptions.TransactionRollbackError as exc:
                refused: Exception = exc  # deadlock, serialization: nothing stored
            except _REFUSED as exc:
                refused = exc
                break
        if len(batches) > 1:
            return [await self._alone(b, lease) for b in batches]
        groups = batches[0].groups
        if len(groups) > 1:
            log.warning("batch failed; storing its writes one by one",
                        extra={"session_id": str(batches[0].session_id),
                               "error": type(refused).__name__})
            return [[(await self._alone(dataclasses.replace(batches[0], groups=[g]), lease))[0]
                     for g in groups]]
        return [[refused]]

    async def _alone(self, batch: SessionBatch, lease: Lease) -> list[Stored | Exception]:
        """``batch`` in a transaction of its own; its failure is its groups' answer only."""
        try:
            return (await self.commit([batch], lease))[0]
        except Exception as exc:
            return [exc for _ in batch.groups]

    async def _commit_settled(self, batches: Sequence[SessionBatch], lease: Lease) -> Results:
        started = time.monotonic()
        for attempt in range(self._config.retries + 1):
            try:
                return await self._transaction(batches, lease)
            except _Lost as lost:
                settled = await self._settle(batches, lost)
                if settled is not None:
                    log.warning("commit confirmed after the connection was lost",
                                extra={"sessions": len(batches), "error": str(lost)})
                    return settled
                log.warning("lost transaction did not commit",
                            extra={"attempt": attempt, "error": str(lost)})
                if time.monotonic() - started > self._config.commit_timeout_s:
                    break  # a retry would keep the writers waiting far past their deadline
        metrics.REJECTED.labels("db_unavailable").inc()
        raise Unavailable("database connection lost; nothing was stored")

    async def _transaction(self, batches: Sequence[SessionBatch], lease: Lease) -> Results:
        if not tracing.ON:
            return await self._transaction_untraced(batches, lease)
        # one span per transaction (a retry is another), linked to every write's span:
        # a commit serves many requests, so it is none's child
        linked = [c for b in batches for c in b.links]
        with tracing.span("group commit", linked=linked, attributes={
                "chat.commit.sessions": len(batches),
                "chat.commit.writes": sum(len(b.groups) for b in batches),
                "chat.commit.messages": sum(len(g.messages) for b in batches
                                            for g in b.groups)}):
            return await self._transaction_untraced(batches, lease)

    async def _transaction_untraced(self, batches: Sequence[SessionBatch],
                                    lease: Lease) -> Results:
        conn = await lease.get()
        pid: int | None = conn.get_server_pid()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._config.commit_timeout_s):
                results = await writes.insert_batches(db.as_connection(conn), batches,
                                                      self._keyring)
        except _REFUSED as exc:
            if isinstance(exc, CONNECTION_ERRORS) and not isinstance(exc, _CLIENT_DATA_ERROR):
                await lease.discard()  # e.g. the server ended our backend: maybe after COMMIT
                raise _Lost(pid, exc) from exc
            raise  # reported by the server (or refused before sending): rolled back
        except Exception as exc:
            # a broken socket, a timeout, anything else: COMMIT may have happened
            await lease.discard()
            raise _Lost(pid, exc) from exc
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(sum(len(b.groups) for b in batches))
        return results

    async def _settle(self, batches: Sequence[SessionBatch], lost: _Lost) -> Results | None:
        """The outcome of a lost transaction; ``None`` if confirmed not committed."""
        sessions = sorted({(b.tenant_id, b.session_id) for b in batches}, key=lambda s: s[1])
        ids = [m.id for b in batches for g in b.groups for m in g.messages]
        deadline = time.monotonic() + self._config.settle_timeout_s
        delay = 0.05
        while True:
            try:
                stored = await self._read_settled(sessions, ids, lost.pid, deadline)
                break
            except Exception as exc:  # whatever went wrong, the outcome is still unknown
                if time.monotonic() + delay >= deadline:
                    metrics.REJECTED.labels("outcome_unknown").inc()
                    log.error("commit outcome unknown: database unreachable",
                              extra={"sessions": len(batches), "messages": len(ids),
                                     "error": str(lost), "last_error": repr(exc)})
                    raise OutcomeUnknown("database unreachable; write outcome unknown") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        if not stored:
            return None
        # one transaction: all kept groups are stored; a group left out (bad reference,
        # session gone) has no rows and is answered as not stored
        return [
            [[stored[m.id] for m in g.messages] if g.messages[0].id in stored
             else Unavailable("write was not stored") for g in b.groups]
            for b in batches
        ]

    async def _read_settled(
        self, sessions: list[tuple[uuid.UUID, uuid.UUID]], ids: list[uuid.UUID],
        pid: int | None, deadline: float,
    ) -> dict[uuid.UUID, StoredMessage]:
        remaining = max(0.05, deadline - time.monotonic())
        conn = await self._pool.acquire(timeout=min(self._config.acquire_timeout_s, remaining))
        try:
            if pid is not None:  # each attempt: it is harmless once the process is gone
                await db.terminate_backend(conn, pid)
            return await writes.fetch_settled(db.as_connection(conn), sessions, ids,
                                              lock_timeout_s=min(1.0, remaining))
        except BaseException:
            if _usable(conn):
                conn.terminate()  # in an unknown state: never hand it to anyone else
            raise
        finally:
            await asyncio.shield(self._pool.release(conn))
