"""The Redis streams broker: the :class:`storage.broker.base.Broker` shared by replicas.

One stream per channel (an active session), ``XADD … MAXLEN ~ max_len`` and an
``EXPIRE`` refreshed on every publish, so an idle session's stream vanishes by itself.
Listening is :class:`storage.broker.redis_reader.StreamReader`'s: one reader task per
process for every channel.

Outages: ``publish`` and ``read`` raise :class:`BrokerUnavailable` within
``op_timeout_s`` (Postgres stays the source of truth; callers log and go on); the
reader reconnects by itself. ``healthy`` is for ``/readyz``.
Needs Redis >= 7.0 (``XINFO STREAM`` fields used for gap detection); not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from chat_storage.storage.broker.base import BrokerMessage, BrokerUnavailable, Gap, Listener
from chat_storage.storage.broker.redis_reader import (
    DATA_FIELD,
    ERRORS,
    REDIS_ERRORS,
    StreamReader,
    text,
)
from chat_storage.storage.redis_client import connect
from chat_storage.storage.redis_keys import RedisKeys
from chat_storage.supervisor import Supervisor

log = logging.getLogger(__name__)

OPS_HEALTH_WINDOW_S = 10.0
SCRUB_PAGE = 500


def parse_id(value: str) -> tuple[int, int]:
    """``"ms-seq"`` (or ``"ms"``) as a tuple; :class:`ValueError` if it is not a stream id."""
    ms, _, seq = value.partition("-")
    seq = seq or "0"
    if not (ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        raise ValueError(f"not a stream id: {value!r}")
    parts = (int(ms), int(seq))
    if max(parts) >= 2**64:
        raise ValueError(f"not a stream id: {value!r}")
    return parts


class RedisBroker:
    """The :class:`storage.broker.base.Broker` on Redis streams (see the module docstring)."""

    def __init__(self, client: Redis, *, tasks: Supervisor, prefix: str = "chat",
                 max_len: int = 10_000,
                 ttl_s: int = 3600, block_ms: int = 1000, read_count: int = 512,
                 op_timeout_s: float = 2.0, backoff_max_s: float = 5.0,
                 owns_client: bool = False) -> None:
        socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        if socket_timeout is not None and block_ms >= socket_timeout * 1000:
            raise ValueError("block_ms must be below the client's socket timeout")
        self.max_len = max_len
        self.ttl_s = ttl_s
        self.op_timeout_s = op_timeout_s
        self.keys = RedisKeys(prefix)
        self.node = uuid.uuid4().hex
        self.reader_name = f"{prefix}:reader:{self.node}"  # CLIENT LIST name of the reader
        self._client = client
        self._owns_client = owns_client
        self._reader = StreamReader(
            client, self.keys, tasks=tasks, node=self.node, name=self.reader_name,
            block_ms=block_ms,
            read_count=read_count, op_timeout_s=op_timeout_s, backoff_max_s=backoff_max_s)
        self._ops_failed_at: float | None = None  # monotonic time of the last failure
        self._erase = client.register_script(ERASE_SCRIPT)

    @classmethod
    def from_url(cls, url: str, *, tasks: Supervisor, **options: Any) -> RedisBroker:
        """A broker with its own client for ``url`` (closed by :meth:`close`)."""
        return cls(connect(url), tasks=tasks, owns_client=True, **options)

    @property
    def healthy(self) -> bool:
        """False while Redis fails: the reader is reconnecting, or the last publish or
        read failed (and none worked since) within the last ``OPS_HEALTH_WINDOW_S``."""
        failed_at = self._ops_failed_at
        recent = failed_at is not None and time.monotonic() - failed_at < OPS_HEALTH_WINDOW_S
        return self._reader.ok and not recent

    async def publish(self, channel: str, data: bytes) -> str:
        """Append ``data`` to ``channel``'s stream; raise :class:`BrokerUnavailable` on outage."""
        key = self.keys.session_stream(channel)
        try:
            async with asyncio.timeout(self.op_timeout_s):
                pipe = self._client.pipeline(transaction=False)
                pipe.xadd(key, {DATA_FIELD: data}, maxlen=self.max_len, approximate=True)
                pipe.expire(key, self.ttl_s)
                message_id, _ = await pipe.execute()
        except REDIS_ERRORS as exc:
            self._ops_failed("publish", exc)
            raise BrokerUnavailable(f"publish to channel {channel} failed") from exc
        self._ops_worked()
        return text(message_id)

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """:meth:`publish` of each item, in order, all in one pipeline (one round trip).

        Under load this is what keeps cross-replica latency flat: a busy event loop
        gives the publisher one turn per iteration, not one per message. On failure some
        items may be in and others not (like separate publishes that fail midway).
        """
        if not items:
            return
        keys: dict[str, None] = {}
        try:
            async with asyncio.timeout(self.op_timeout_s):
                pipe = self._client.pipeline(transaction=False)
                for channel, data in items:
                    key = self.keys.session_stream(channel)
                    keys[key] = None  # each stream's EXPIRE once, after its entries
                    pipe.xadd(key, {DATA_FIELD: data}, maxlen=self.max_len, approximate=True)
                for key in keys:
                    pipe.expire(key, self.ttl_s)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            self._ops_failed("publish", exc)
            raise BrokerUnavailable(f"publish of {len(items)} events failed") from exc
        self._ops_worked()

    async def read(self, channel: str, after_id: str | None,
                   limit: int = 1000) -> list[BrokerMessage]:
        """Kept messages after ``after_id``; :class:`Gap` if some were trimmed or expired.

        At the trim boundary this is conservative: a consumer whose ``after_id`` is the
        very last trimmed message also gets :class:`Gap` (a needless reload, never a loss).
        :class:`ValueError` if ``after_id`` is not a stream id.
        """
        after = None if after_id is None else parse_id(after_id)
        key = self.keys.session_stream(channel)
        start = "-" if after is None else f"({after[0]}-{after[1]}"
        try:
            async with asyncio.timeout(self.op_timeout_s):
                pipe = self._client.pipeline(transaction=True)  # info and entries agree
                pipe.xinfo_stream(key)
                pipe.xrange(key, start, "+", count=limit)
                info, entries = await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            self._ops_failed("read", exc)
            raise BrokerUnavailable(f"read of channel {channel} failed") from exc
        self._ops_worked()
        if isinstance(info, ResponseError):  # no such stream: never written, expired or lost
            if after is not None and after != (0, 0):
                raise Gap(f"the stream of {channel} is gone (expired or lost)")
            return []
        if isinstance(entries, Exception):
            raise entries
        first = info.get("recorded-first-entry-id") or (info.get("first-entry") or ("0-0",))[0]
        trimmed = int(info.get("entries-added", 0)) > int(info.get("length", 0))
        if after is not None and trimmed and after < parse_id(text(first)):
            raise Gap(f"events after {after_id} in {channel} were trimmed")
        return [BrokerMessage(channel, text(i), fields.get(DATA_FIELD, b""))
                for i, fields in entries]

    async def scrub(self, channel: str, drop: Callable[[bytes], bool]) -> int:
        """``XDEL`` the entries of ``channel``'s stream that ``drop`` picks (at most the
        stream's ``max_len``, read in pages of ``SCRUB_PAGE``); raise
        :class:`BrokerUnavailable` on outage (the entries then expire with the stream)."""
        key = self.keys.session_stream(channel)
        dropped, start = 0, "-"
        try:
            async with asyncio.timeout(self.op_timeout_s * 4):
                for _ in range(self.max_len // SCRUB_PAGE + 2):
                    entries: list[Any] = await self._client.xrange(
                        key, start, "+", count=SCRUB_PAGE) or []
                    doomed = [i for i, fields in entries if drop(fields.get(DATA_FIELD, b""))]
                    if doomed:
                        dropped += int(await self._client.xdel(key, *doomed))
                    if len(entries) < SCRUB_PAGE:
                        break
                    start = f"({text(entries[-1][0])}"
        except REDIS_ERRORS as exc:
            self._ops_failed("scrub", exc)
            raise BrokerUnavailable(f"scrub of channel {channel} failed") from exc
        self._ops_worked()
        return dropped

    def wanted(self, channel: str) -> bool:
        """Always: other processes may read the stream, now or to catch up later."""
        return True

    async def drop(self, channels: Sequence[str]) -> None:
        """``DEL`` the streams of ``channels`` (1000 per command); :class:`BrokerUnavailable`
        on outage."""
        keys = [self.keys.session_stream(c) for c in channels]
        try:
            for i in range(0, len(keys), 1000):
                async with asyncio.timeout(self.op_timeout_s):
                    await self._client.delete(*keys[i:i + 1000])
        except REDIS_ERRORS as exc:
            self._ops_failed("drop", exc)
            raise BrokerUnavailable(f"drop of {len(channels)} channels failed") from exc
        self._ops_worked()

    async def erase(self, channel: str, needle: str) -> int:
        """Rewrite ``channel``'s stream without the entries whose data holds ``needle``.

        One script, so atomic: no publish lands in between. Rewritten (``DEL``, then each
        kept entry again under its own id, and the TTL), not ``XDEL``: Redis keeps an
        ``XDEL``-ed entry's bytes in its node (and in snapshots) until the whole node goes.
        At most ``max_len`` (approximately) entries: bounded work.
        """
        try:
            async with asyncio.timeout(self.op_timeout_s):
                removed = await self._erase(keys=[self.keys.session_stream(channel)],
                                            args=[needle])
        except REDIS_ERRORS as exc:
            self._ops_failed("erase", exc)
            raise BrokerUnavailable(f"erase in channel {channel} failed") from exc
        self._ops_worked()
        return int(removed)

    def on_resume(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the reader reconnects after an outage."""
        self._reader.resumed.append(callback)

    def listen(self, channel: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for each message of ``channel`` appended after this call."""
        return self._reader.listen(channel, listener)

    async def close(self) -> None:
        """Stop the reader, forget every listener, and close the client if it is ours."""
        await self._reader.close()
        if self._owns_client:
            await self._client.aclose()

    def _ops_failed(self, op: str, exc: BaseException) -> None:
        ERRORS.labels(op).inc()
        if self._ops_failed_at is None:
            log.warning("redis broker operation failed", extra={"op": op, "error": repr(exc)})
        self._ops_failed_at = time.monotonic()

    def _ops_worked(self) -> None:
        if self._ops_failed_at is not None:
            log.info("redis broker operations work again")
        self._ops_failed_at = None


# KEYS[1] a session stream, ARGV[1] what a removed entry holds; returns how many went
ERASE_SCRIPT = """
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
local kept, removed = {}, 0
for _, entry in ipairs(entries) do
  local hit = false
  for i = 2, #entry[2], 2 do
    if string.find(entry[2][i], ARGV[1], 1, true) then hit = true end
  end
  if hit then removed = removed + 1 else kept[#kept + 1] = entry end
end
if removed == 0 then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
for _, entry in ipairs(kept) do
  redis.call('XADD', KEYS[1], entry[1], unpack(entry[2]))
end
if #kept > 0 and ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return removed
"""
