"""Stream housekeeping: checkpoints due by time, heartbeats, and the sweeper.

One task (the ticker) per process: it starts the checkpoints that are due by time,
touches the rows of streams held here that nothing else touched (their heartbeat),
and sweeps: it interrupts streams whose replica died (their rows stopped being
touched), on one replica at a time (a Postgres advisory lock, ``storage.streams``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from chat_storage.actors.live import events, metrics
from chat_storage.actors.live.config import HubConfig
from chat_storage.actors.live.events import Emit
from chat_storage.actors.live.source import SessionSource
from chat_storage.actors.live.stream_state import HeldStreams
from chat_storage.actors.live.streams import Scrub, Streams
from chat_storage.storage import streams as stream_rows
from chat_storage.storage.records import StoredMessage
from chat_storage.storage.redaction import Redactor
from chat_storage.supervisor import Supervisor

log = logging.getLogger(__name__)
RedactorOf = Callable[[uuid.UUID], Awaitable[Redactor | None]]  # Policies.redactor
Swept = list[tuple[uuid.UUID, StoredMessage]]  # (tenant_id, message) per stream interrupted


class Sweeper:
    """The ticker of this process's streams, and the sweeper of other replicas' orphans."""

    def __init__(self, streams: Streams, source: SessionSource, held: HeldStreams,
                 emit: Emit, config: HubConfig, *, tasks: Supervisor,
                 redactors: RedactorOf | None = None, scrub: Scrub | None = None) -> None:
        self.config = config
        self._tasks = tasks
        self._streams = streams
        self._source = source
        self._held = held
        self._emit = emit
        self._redactors = redactors
        self._scrub = scrub
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the ticker."""
        self._task = self._tasks.spawn(self._ticker(), name="hub-ticker")

    async def stop(self) -> None:
        """Stop the ticker."""
        if self._task is not None:
            await self._tasks.stop(self._task)

    async def _ticker(self) -> None:
        interval = min(1.0, self.config.stream.checkpoint_interval_s / 2)
        next_beat = next_sweep = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            self._streams.tick(now)
            try:
                if now >= next_beat:
                    next_beat = now + self.config.heartbeat_s
                    await self._streams.heartbeat(self.config.heartbeat_s)
                if self.config.sweep and now >= next_sweep:
                    next_sweep = now + max(5.0, self.config.heartbeat_s)
                    await self.sweep()
            except Exception as exc:
                log.warning("stream housekeeping failed", extra={"error": repr(exc)})

    async def sweep(self) -> int:
        """Interrupt streams whose replica stopped touching them; returns how many."""
        async def run(conn: asyncpg.Connection) -> Swept:
            async with conn.transaction():
                if not await stream_rows.try_sweep_lock(conn):
                    return []
                swept = await stream_rows.sweep_orphans(conn, self.config.orphan_after_s,
                                                         keyring=self._source.keyring)
                # in the same transaction, so no reader sees the content without it: what
                # the dead owner streamed past its last checkpoint, if the broker has it
                # (Redis reads are bounded by the broker's op timeout, tried once per sweep)
                return await self._recover(conn, swept)

        swept = await self._source.db(run)
        for tenant_id, message in swept:
            log.warning("interrupted a stream whose owner died",
                        extra={"session_id": str(message["session_id"]),
                               "message_id": str(message["id"])})
            self._held.drop(str(message["id"]))
            key = (tenant_id, message["session_id"])
            self._emit(key, events.final(message))
            if self._scrub is not None and await self._redacts(tenant_id):
                self._scrub(key, events.deltas_of(str(message["id"])))
        metrics.SWEPT.inc(len(swept))
        return len(swept)

    async def _recover(self, conn: asyncpg.Connection, swept: Swept) -> Swept:
        out: Swept = []
        for i, (tenant_id, message) in enumerate(swept):
            try:
                history = await self._source.history((tenant_id, message["session_id"]))
            except Exception as exc:  # broker down: keep what Postgres has
                log.warning("cannot recover swept streams from the broker",
                            extra={"error": repr(exc)})
                return out + swept[i:]
            have = len(message["content"])
            lost = events.tail(history, str(message["id"]), have)
            if lost:
                message = await stream_rows.append_recovered(
                    conn, tenant_id, message["id"], have, lost,
                    keyring=self._source.keyring) or message
            redactor = await self._redacts(tenant_id)
            if redactor is not None:  # its tenant redacts PII: so does its last write
                content = await asyncio.to_thread(redactor.redact, message["content"])
                message = await stream_rows.redact_swept(
                    conn, tenant_id, message["id"], content,
                    keyring=self._source.keyring) or message
            out.append((tenant_id, message))
        return out

    async def _redacts(self, tenant_id: uuid.UUID) -> Redactor | None:
        return None if self._redactors is None else await self._redactors(tenant_id)
