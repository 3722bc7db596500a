"""Async ingestion's storage: the Redis ingest stream, its consumer group, dead letters.

With ``CHAT_INGEST_MODE=async`` a validated write is appended to ONE stream
(``{prefix}:ingest``) as one entry per request (a batch request stays one entry, so it
is still stored all or nothing with consecutive seq). Its message ids are chosen
before the append, so storing an entry twice is refused by the primary key: a
redelivered entry can never be stored twice.

Entry lifecycle: ``append`` (``XADD``, refused past ``max_backlog`` entries, atomically
in one script) → ``read`` / ``claim`` (``XREADGROUP`` / ``XAUTOCLAIM``: the entry is now
pending for one consumer) → ``ack`` after the commit (``XACK`` and ``XDEL`` together),
or ``dead_letter`` (copied to ``{prefix}:ingest:dead`` with the reason, then acked and
deleted, in one ``MULTI``). Acked entries are deleted rather than trimmed by length,
because ``MAXLEN`` could drop entries not stored yet; so ``XLEN`` of the stream is
exactly what still has to be stored (pending + never delivered).

Appends made in the same turn of the event loop (concurrent requests) are sent in one
pipeline: one round trip and one pool connection for all of them instead of one each.
Each is still its own atomic script call, and each caller is answered only once Redis
has answered its own command (figures: loadtest/RESULTS.md,
#pipelined-appends-and-batches-in-flight-branch-ingest).

What an entry holds (plain, or sealed for an encrypted tenant) is
:mod:`storage.ingest_entries`'s, re-exported here. Redis errors and timeouts become
:class:`IngestUnavailable`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from chat_storage.storage.crypto.keyring import DataKey
from chat_storage.storage.errors import StorageError
from chat_storage.storage.ingest_entries import (
    DATA_FIELD,
    Delivery,
    Entry,
    decode,
    delivery,
    encode,
    opened,
    text,
)
from chat_storage.storage.redis_keys import RedisKeys
from chat_storage.supervisor import Supervisor

__all__ = ["DATA_FIELD", "Delivery", "Entry", "IngestFull", "IngestStream",
           "IngestUnavailable", "Stats", "decode", "encode", "opened", "stored_ids"]

REDIS_ERRORS = (RedisError, OSError, TimeoutError)

# XLEN counts exactly the entries not stored yet (acked ones are deleted), so the
# backlog check and the append are one atomic step.
_APPEND = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
    return false
end
return redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[3])
"""


class IngestUnavailable(StorageError):
    """Redis did not answer (in time): nothing was appended, read or acknowledged."""


class IngestFull(StorageError):
    """The ingest stream holds ``max_backlog`` entries not stored yet: not appended."""


@dataclasses.dataclass(frozen=True, slots=True)
class Stats:
    """The figures of the stream that the lag gauges show."""

    lag: int  # entries never delivered to a consumer
    pending: int  # delivered, not acknowledged yet
    backlog: int  # all entries not stored yet (lag + pending)
    dead: int  # entries in the dead-letter stream


class IngestStream:
    """The ingest stream and its consumer group, on one Redis client (see module doc)."""

    def __init__(self, client: Redis, *, prefix: str, max_backlog: int = 100_000,
                 dead_max_len: int = 100_000, op_timeout_s: float = 2.0,
                 tasks: Supervisor | None = None) -> None:
        self.keys = RedisKeys(prefix)
        self.max_backlog = max_backlog
        self.dead_max_len = dead_max_len
        self.op_timeout_s = op_timeout_s
        self._client = client
        self._stream_key = self.keys.ingest_stream
        self._append_sha = client.register_script(_APPEND).sha
        # appends of this loop turn, sent together at its end (see the module doc)
        self._queued: list[tuple[bytes, asyncio.Future[str]]] = []
        self._tasks = tasks or Supervisor()  # owns the tasks that send them
        self._loop: asyncio.AbstractEventLoop | None = None

    async def append(self, entry: Entry, key: DataKey | None = None) -> str:
        """Append ``entry`` (its messages sealed under ``key``, if given) and return its
        stream id, once Redis has answered.

        Raises :class:`IngestFull` or :class:`IngestUnavailable` (not appended).
        """
        if self._loop is None:  # get_running_loop() costs a getpid() per call on 3.11
            self._loop = asyncio.get_running_loop()
        appended: asyncio.Future[str] = self._loop.create_future()
        if not self._queued:
            self._loop.call_soon(self._flush)
        self._queued.append((encode(entry, key), appended))
        return await appended

    def _flush(self) -> None:
        """Send the appends queued in this loop turn, in one pipeline."""
        batch, self._queued = self._queued, []
        try:
            self._tasks.spawn(self._send(batch), name="ingest:append")
        except RuntimeError as exc:  # shutting down: nothing was sent
            for _, appended in batch:
                if not appended.done():
                    appended.set_exception(IngestUnavailable(f"not sent: {exc}"))

    async def _send(self, batch: list[tuple[bytes, asyncio.Future[str]]]) -> None:
        replies: list[Any]
        try:
            async with asyncio.timeout(self.op_timeout_s):
                replies = await self._appends([payload for payload, _ in batch])
        except REDIS_ERRORS as exc:
            # a timeout leaves it unknown whether the entries went in; the clients are
            # told 503 and may retry: at worst a message is stored twice under two ids
            replies = [exc] * len(batch)
        except BaseException as exc:  # cancelled (the loop is closing): answer everyone
            for _, appended in batch:
                if not appended.done():
                    appended.set_exception(IngestUnavailable(f"redis: {exc!r}"))
            raise
        for (_, appended), reply in zip(batch, replies, strict=True):
            if appended.done():
                continue  # its request went away
            if isinstance(reply, Exception):
                appended.set_exception(IngestUnavailable(f"redis: {reply!r}"))
            elif reply is None:
                appended.set_exception(IngestFull(
                    f"ingest backlog is at its limit ({self.max_backlog} entries)"))
            else:
                appended.set_result(text(reply))

    async def _appends(self, payloads: Sequence[bytes]) -> list[Any]:
        """Run the append script once per payload, in one pipeline; each reply or error."""
        replies = await self._pipelined(payloads)
        missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # Redis restarted or flushed its scripts: nothing of those ran
            await self._client.script_load(_APPEND)
            again = await self._pipelined([payloads[n] for n in missing])
            for n, reply in zip(missing, again, strict=True):
                replies[n] = reply
        return replies

    async def _pipelined(self, payloads: Sequence[bytes]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for payload in payloads:
            pipe.evalsha(self._append_sha, 1, self._stream_key, self.max_backlog, DATA_FIELD,
                         payload)
        return list(await pipe.execute(raise_on_error=False))

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) unless they exist."""
        try:
            async with asyncio.timeout(self.op_timeout_s):
                await self._client.xgroup_create(self.keys.ingest_stream, self.keys.ingest_group,
                                                 id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise IngestUnavailable(f"redis: {exc}") from exc
        except REDIS_ERRORS as exc:
            raise IngestUnavailable(f"redis: {exc!r}") from exc

    async def read(self, consumer: str, *, count: int, block_ms: int) -> list[Delivery]:
        """Up to ``count`` entries never delivered before, waiting up to ``block_ms``."""
        try:
            async with asyncio.timeout(self.op_timeout_s + block_ms / 1000):
                reply: Any = await self._client.xreadgroup(
                    self.keys.ingest_group, consumer, {self.keys.ingest_stream: ">"},
                    count=count, block=block_ms)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream was deleted (or Redis lost its data)
                await self.ensure_group()
                return []
            raise IngestUnavailable(f"redis: {exc}") from exc
        except REDIS_ERRORS as exc:
            raise IngestUnavailable(f"redis: {exc!r}") from exc
        if not reply:
            return []
        return [delivery(entry_id, fields) for entry_id, fields in reply[0][1]]

    async def claim(self, consumer: str, *, min_idle_ms: int, start: str,
                    count: int) -> tuple[str, list[Delivery]]:
        """Take over entries pending longer than ``min_idle_ms`` (their consumer died).

        Scans the pending list from ``start``; returns the id to continue from
        (``"0-0"``: the scan is complete) and the entries now owned by ``consumer``.
        """
        try:
            async with asyncio.timeout(self.op_timeout_s):
                reply: Any = await self._client.xautoclaim(
                    self.keys.ingest_stream, self.keys.ingest_group, consumer,
                    min_idle_time=min_idle_ms, start_id=start, count=count)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                await self.ensure_group()
                return "0-0", []
            raise IngestUnavailable(f"redis: {exc}") from exc
        except REDIS_ERRORS as exc:
            raise IngestUnavailable(f"redis: {exc!r}") from exc
        entries = [delivery(entry_id, fields) for entry_id, fields in reply[1]
                   if fields is not None]  # (Redis 6.2 lists deleted entries as nil)
        return text(reply[0]), entries

    async def ack(self, ids: Sequence[str]) -> None:
        """Mark ``ids`` stored: acknowledge and delete them, together."""
        if not ids:
            return
        try:
            async with asyncio.timeout(self.op_timeout_s):
                pipe = self._client.pipeline(transaction=True)
                pipe.xack(self.keys.ingest_stream, self.keys.ingest_group, *ids)
                pipe.xdel(self.keys.ingest_stream, *ids)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise IngestUnavailable(f"redis: {exc!r}") from exc

    async def dead_letter(self, dead: Sequence[tuple[Delivery, str, str]]) -> None:
        """Move ``(delivery, reason, error)``s to the dead-letter stream, in one MULTI."""
        if not dead:
            return
        ids = [d.id for d, _, _ in dead]
        try:
            async with asyncio.timeout(self.op_timeout_s):
                pipe = self._client.pipeline(transaction=True)
                for delivery, reason, error in dead:
                    fields: dict[Any, Any] = {**delivery.fields, b"entry": delivery.id,
                                              b"reason": reason, b"error": error[:1000]}
                    pipe.xadd(self.keys.ingest_dead, fields, maxlen=self.dead_max_len,
                              approximate=True)
                pipe.xack(self.keys.ingest_stream, self.keys.ingest_group, *ids)
                pipe.xdel(self.keys.ingest_stream, *ids)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise IngestUnavailable(f"redis: {exc!r}") from exc

    async def stats(self) -> Stats:
        """Lag, pending, backlog and dead-letter counts, read in one round trip."""
        try:
            async with asyncio.timeout(self.op_timeout_s):
                pipe = self._client.pipeline(transaction=False)
                pipe.xinfo_groups(self.keys.ingest_stream)
                pipe.xlen(self.keys.ingest_stream)
                pipe.xlen(self.keys.ingest_dead)
                groups, backlog, dead = await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            raise IngestUnavailable(f"redis: {exc!r}") from exc
        if isinstance(backlog, Exception) or isinstance(dead, Exception):
            raise IngestUnavailable(f"redis: {backlog!r} {dead!r}")
        group_name = self.keys.ingest_group.encode()
        ours = [] if isinstance(groups, Exception) else [
            g for g in groups if g.get("name") in (group_name, self.keys.ingest_group)]
        pending = int(ours[0]["pending"]) if ours else 0
        lag = ours[0].get("lag") if ours else None
        # lag is unknown to Redis after some deletions: every entry not pending is undelivered
        lag = int(lag) if lag is not None else max(0, int(backlog) - pending)
        return Stats(lag=lag, pending=pending, backlog=int(backlog), dead=int(dead))


async def stored_ids(
    conn: asyncpg.Connection, tenant_ids: Sequence[uuid.UUID], ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """The ids among ``ids`` already stored as messages of the tenants ``tenant_ids``."""
    rows = await conn.fetch(
        "SELECT id FROM messages WHERE id = ANY($1::uuid[]) AND tenant_id = ANY($2::uuid[])",
        list(ids), list(set(tenant_ids)),
    )
    return {r["id"] for r in rows}
