"""Background maintenance: retention and archival, temporary chats, stale uploads,
expired idempotency keys.

Every replica runs :func:`run_once` every ``CHAT_MAINTENANCE_INTERVAL_S`` in
:func:`every` (0: never; ``chat-storage retention`` runs it once by hand); a Postgres
advisory lock makes one replica at a time do the work, so replicas never race over the
same rows. Each job
works in bounded batches, each batch its own transaction, and a run does at most
``MAX_BATCHES`` of each: a backlog drains over several runs, never in one long lock.
Object-store files of removed rows are deleted after the batch commits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import random

import asyncpg
from prometheus_client import Counter, Gauge

from chat_storage import tracing
from chat_storage.actors.live.relay import channel
from chat_storage.runtime.settings import Settings
from chat_storage.storage import attachments, idempotency, retention
from chat_storage.storage.broker import Broker, BrokerUnavailable
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.crypto.switch import EncryptionNotConfigured
from chat_storage.storage.locks import MAINTENANCE_LOCK, try_advisory_lock
from chat_storage.storage.objects import ObjectStore, discard_keys

log = logging.getLogger(__name__)

MAX_BATCHES = 50

RUNS = Counter("chat_maintenance_runs_total",
               "Maintenance runs of this process: done, skipped (another process had the "
               "lock) or failed", ["outcome"])
REMOVED = Counter("chat_maintenance_removed_total",
                  "What maintenance removed (archives: files written)", ["kind"])
LAST_DONE = Gauge("chat_maintenance_last_done_timestamp_seconds",
                  "When a maintenance run of this process last finished")


@dataclasses.dataclass(slots=True)
class Report:
    """What one run removed."""

    archived_messages: int = 0
    archived_sessions: int = 0
    archives: int = 0
    expired_sessions: int = 0
    stale_attachments: int = 0
    idempotency_keys: int = 0

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))


async def run_once(pool: asyncpg.Pool, store: ObjectStore, settings: Settings,
                   now: dt.datetime | None = None, *,
                   broker: Broker | None = None,
                   keyring: Keyring | None = None) -> Report | None:
    """Run every job once; ``None`` if another process is running them right now.

    ``broker``: the live-event logs of the temporary chats erased are dropped from it.
    ``keyring``: seals the archives of encrypted tenants (without it they are skipped).
    """
    if not tracing.ON:
        return await _run_once(pool, store, settings, now, broker, keyring)
    with tracing.span("maintenance run") as span:
        report = await _run_once(pool, store, settings, now, broker, keyring)
        span.set_attribute("chat.maintenance.outcome", "skipped" if report is None else "done")
        for kind, n in dataclasses.asdict(report or Report()).items():
            span.set_attribute(f"chat.maintenance.{kind}", n)
        return report


async def _run_once(pool: asyncpg.Pool, store: ObjectStore, settings: Settings,
                    now: dt.datetime | None, broker: Broker | None,
                    keyring: Keyring | None) -> Report | None:
    now = now or dt.datetime.now(dt.UTC)
    report = Report()
    async with pool.acquire() as conn, try_advisory_lock(conn, MAINTENANCE_LOCK) as taken:
        if not taken:
            return None
        await _expire_sessions(conn, store, broker, report)
        await _retention(conn, store, now, report, keyring)
        await _stale_uploads(conn, store, now, settings.pending_attachment_s, report)
        for _ in range(MAX_BATCHES):
            n = await idempotency.purge_expired(conn, settings.idempotency_ttl_s)
            report.idempotency_keys += n
            if n == 0:
                break
    for kind, n in dataclasses.asdict(report).items():
        REMOVED.labels(kind).inc(n)
    LAST_DONE.set_to_current_time()
    return report


async def _expire_sessions(conn: asyncpg.Connection, store: ObjectStore,
                           broker: Broker | None, report: Report) -> None:
    for _ in range(MAX_BATCHES):
        out = await retention.erase_expired(conn)
        await discard_keys(store, out.object_keys, "expired sessions")
        if broker is not None and out.erased:
            try:
                await broker.drop([channel(key) for key in out.erased])
            except BrokerUnavailable:  # they expire by themselves (CHAT_REDIS TTL)
                log.warning("expired sessions' events not dropped from the broker",
                            extra={"sessions": len(out.erased)})
        report.expired_sessions += out.sessions
        if out.sessions == 0:
            return


async def _retention(conn: asyncpg.Connection, store: ObjectStore, now: dt.datetime,
                     report: Report, keyring: Keyring | None) -> None:
    for tenant_id, days in await retention.tenants_with_retention(conn):
        cutoff = now - dt.timedelta(days=days)
        for _ in range(MAX_BATCHES):
            try:
                out = await retention.archive_batch(conn, store, tenant_id, cutoff,
                                                    keyring=keyring)
            except EncryptionNotConfigured:  # archives in plain text: not made, said why
                log.error("retention skipped: the tenant is encrypted and there is no KEK",
                          extra={"tenant_id": str(tenant_id)})
                break
            await discard_keys(store, out.object_keys, f"retention of tenant {tenant_id}")
            report.archived_messages += out.messages
            report.archived_sessions += out.sessions
            report.archives += len(out.archives)
            if out.messages == 0 and out.sessions == 0:
                break


async def _stale_uploads(conn: asyncpg.Connection, store: ObjectStore, now: dt.datetime,
                         max_age_s: int, report: Report) -> None:
    for _ in range(MAX_BATCHES):
        async with conn.transaction():
            keys = await attachments.delete_stale(conn, now - dt.timedelta(seconds=max_age_s))
        await discard_keys(store, keys, "stale uploads")
        report.stale_attachments += len(keys)
        if not keys:
            return


async def every(pool: asyncpg.Pool, store: ObjectStore, settings: Settings,
                broker: Broker | None = None, keyring: Keyring | None = None) -> None:
    """Run the jobs every ``CHAT_MAINTENANCE_INTERVAL_S``, forever (a supervised task)."""
    while True:
        # jitter: replicas started together do not all wake at once
        await asyncio.sleep(settings.maintenance_interval_s * random.uniform(0.8, 1.2))  # noqa: S311
        try:
            report = await run_once(pool, store, settings, broker=broker, keyring=keyring)
        except Exception:
            RUNS.labels("failed").inc()
            log.exception("maintenance run failed; the next one retries")
            continue
        RUNS.labels("skipped" if report is None else "done").inc()
        if report:
            log.info("maintenance done", extra=dataclasses.asdict(report))
