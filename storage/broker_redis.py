"""The Redis streams broker: the :class:`storage.broker.Broker` shared by replicas.

One stream per channel (an active session), ``XADD … MAXLEN ~ max_len`` and an
``EXPIRE`` refreshed on every publish, so an idle session's stream vanishes by itself.

Listening: ONE reader task per process, on one dedicated connection, reads every
channel that has a listener with one multiplexed ``XREAD BLOCK``. A new channel must
join the read at once, not after the block times out, so the reader's XREAD also
always includes a private wake-up stream of this process; ``listen`` on a new channel
appends to it, which ends the blocking read, and the next XREAD includes the channel.
(Cancelling and restarting the XREAD instead would drop the connection each time,
since redis-py cannot abandon a half-read reply.) The block timeout (``block_ms``)
stays as a safety net should a wake-up itself fail.

Where a listener starts: ``listen`` is synchronous, and Redis before 7.4 has no "last
entry" id for XREAD, so the reader turns the moment of ``listen`` into a stream id by
Redis's own clock (``TIME`` at every (re)connect, then the local monotonic clock): a
lower bound of Redis's time at the call, minus a small margin. Stream ids are Redis
milliseconds, so nothing appended after ``listen`` is missed; a few events appended
just before it may come too (consumers drop duplicates by ``seq``/``offset``). Each
channel then continues from the last id it delivered, also across reconnects.

Outages: ``publish`` and ``read`` raise :class:`BrokerUnavailable` within
``op_timeout_s`` (Postgres stays the source of truth; callers log and go on); the
reader reconnects with jittered exponential back-off and resumes from its last ids
(events trimmed or lost meanwhile are not signalled to listeners: consumers notice the
jump in ``seq``/``offset`` and reload from Postgres). ``healthy`` is for ``/readyz``.
Needs Redis >= 7.0 (``XINFO STREAM`` fields used for gap detection); not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import Counter, Gauge
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError
from redis.typing import KeyT, StreamIdT

from chat_storage.storage.broker import Event, Gap, Listener
from chat_storage.storage.errors import StorageError
from chat_storage.storage.redis_keys import RedisKeys

log = logging.getLogger(__name__)

ERRORS = Counter("chat_broker_redis_errors_total", "Redis broker operations that failed", ["op"])
LISTENER_ERRORS = Counter("chat_broker_listener_errors_total", "Broker listeners that raised")
CHANNELS = Gauge("chat_broker_redis_channels", "Channels this process reads from Redis")

DATA_FIELD = b"d"
CLOCK_MARGIN_MS = 50  # covers clock-rate drift between resyncs and small Redis clock steps
CLOCK_RESYNC_S = 30.0
BACKOFF_MIN_S = 0.05
WAKE_TTL_S = 60
OPS_HEALTH_WINDOW_S = 10.0
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class BrokerUnavailable(StorageError):
    """Redis did not answer in time; the event was not published (or read)."""


def connect(url: str, *, socket_timeout_s: float = 5.0, connect_timeout_s: float = 2.0,
            max_connections: int = 64) -> Redis:
    """A client for ``url`` that fails fast instead of retrying for seconds.

    One quick retry, so a pooled connection left stale by a Redis restart costs no
    error; a bounded pool that waits (at most ``socket_timeout_s``) for a free connection
    rather than failing under a burst. No I/O happens until the first command.
    """
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=socket_timeout_s,
        socket_timeout=socket_timeout_s, socket_connect_timeout=connect_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def parse_id(text: str) -> tuple[int, int]:
    """``"ms-seq"`` (or ``"ms"``) as a tuple; :class:`ValueError` if it is not a stream id."""
    ms, _, seq = text.partition("-")
    seq = seq or "0"
    if not (ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        raise ValueError(f"not a stream id: {text!r}")
    parts = (int(ms), int(seq))
    if max(parts) >= 2**64:
        raise ValueError(f"not a stream id: {text!r}")
    return parts


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(eq=False, slots=True)
class _Channel:
    name: str
    listen_at: float  # monotonic time of the first listen(): where reading starts
    listeners: list[Listener] = dataclasses.field(default_factory=list)
    cursor: str | None = None  # last id delivered (None: not resolved yet)

    def deliver(self, event: Event) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                LISTENER_ERRORS.inc()
                log.exception("broker listener failed", extra={"channel": self.name})


class RedisBroker:
    """The :class:`storage.broker.Broker` on Redis streams (see the module docstring)."""

    def __init__(self, client: Redis, *, prefix: str = "chat", max_len: int = 10_000,
                 ttl_s: int = 3600, block_ms: int = 1000, read_count: int = 512,
                 op_timeout_s: float = 2.0, backoff_max_s: float = 5.0,
                 owns_client: bool = False) -> None:
        socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        if socket_timeout is not None and block_ms >= socket_timeout * 1000:
            raise ValueError("block_ms must be below the client's socket timeout")
        self.max_len = max_len
        self.ttl_s = ttl_s
        self.block_ms = block_ms
        self.read_count = read_count
        self.op_timeout_s = op_timeout_s
        self.backoff_max_s = backoff_max_s
        self.keys = RedisKeys(prefix)
        self.node = uuid.uuid4().hex
        self.reader_name = f"{prefix}:reader:{self.node}"  # CLIENT LIST name of the reader
        self._client = client
        self._owns_client = owns_client
        self._wake_key = self.keys.reader_wake(self.node)
        self._wake_id = "0-0"
        self._wake_wanted = False
        self._channels: dict[str, _Channel] = {}
        self._clock: tuple[float, float] | None = None  # (Redis ms, local monotonic s)
        self._reader_task: asyncio.Task[None] | None = None
        self._wake_task: asyncio.Task[None] | None = None
        self._reader_ok = True
        self._ops_failed_at: float | None = None  # monotonic time of the last failure
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBroker:
        """A broker with its own client for ``url`` (closed by :meth:`close`)."""
        return cls(connect(url), owns_client=True, **options)

    @property
    def healthy(self) -> bool:
        """False while Redis fails: the reader is reconnecting, or the last publish or
        read failed (and none worked since) within the last ``OPS_HEALTH_WINDOW_S``."""
        failed_at = self._ops_failed_at
        recent = failed_at is not None and time.monotonic() - failed_at < OPS_HEALTH_WINDOW_S
        return self._reader_ok and not recent

    async def publish(self, channel: str, data: bytes) -> str:
        """Append ``data`` to ``channel``'s stream; raise :class:`BrokerUnavailable` on outage."""
        key = self.keys.session_stream(channel)
        try:
            async with asyncio.timeout(self.op_timeout_s):
                pipe = self._client.pipeline(transaction=False)
                pipe.xadd(key, {DATA_FIELD: data}, maxlen=self.max_len, approximate=True)
                pipe.expire(key, self.ttl_s)
                event_id, _ = await pipe.execute()
        except REDIS_ERRORS as exc:
            self._ops_failed("publish", exc)
            raise BrokerUnavailable(f"publish to channel {channel} failed") from exc
        self._ops_worked()
        return _text(event_id)

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """:meth:`publish` of each item, in order, all in one pipeline (one round trip).

        Under load this is what keeps cross-replica latency flat: a busy event loop
        gives the publisher one turn per iteration, not one per event. On failure some
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

    async def read(self, channel: str, after_id: str | None, limit: int = 1000) -> list[Event]:
        """Kept events after ``after_id``; :class:`Gap` if some of them were trimmed or expired.

        At the trim boundary this is conservative: a consumer whose ``after_id`` is the
        very last trimmed event also gets :class:`Gap` (a needless reload, never a loss).
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
        if after is not None and trimmed and after < parse_id(_text(first)):
            raise Gap(f"events after {after_id} in {channel} were trimmed")
        return [Event(channel, _text(i), fields.get(DATA_FIELD, b"")) for i, fields in entries]

    def wanted(self, channel: str) -> bool:
        """Always: other processes may read the stream, now or to catch up later."""
        return True

    def listen(self, channel: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for each event of ``channel`` appended after this call."""
        ch = self._channels.get(channel)
        if ch is None:
            ch = self._channels[channel] = _Channel(channel, time.monotonic())
            CHANNELS.inc()
            self._start_reading()
        ch.listeners.append(listener)

        def stop() -> None:
            if listener in ch.listeners:
                ch.listeners.remove(listener)
            if not ch.listeners and self._channels.get(channel) is ch:
                del self._channels[channel]
                CHANNELS.dec()

        return stop

    async def close(self) -> None:
        """Stop the reader, forget every listener, and close the client if it is ours."""
        self._closed = True
        tasks = [t for t in (self._reader_task, self._wake_task) if t is not None]
        # redis-py can swallow a cancel that lands at the wrong moment of a blocking read
        # (redis/redis-py#2028): cancel again until done; the reader also checks _closed,
        # so this ends at the latest when the current XREAD's block times out
        while pending := [t for t in tasks if not t.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.1)
        CHANNELS.dec(len(self._channels))
        self._channels.clear()
        if self._owns_client:
            await self._client.aclose()

    # -- the reader ------------------------------------------------------------------

    def _start_reading(self) -> None:
        if self._closed:
            return
        if self._reader_task is None:
            self._reader_task = asyncio.get_running_loop().create_task(
                self._read_loop(), name="redis-broker-reader")
            return
        # the reader may be blocked in an XREAD without this channel: interrupt it
        self._wake_wanted = True
        if self._wake_task is None or self._wake_task.done():
            self._wake_task = asyncio.get_running_loop().create_task(
                self._send_wakes(), name="redis-broker-wake")

    async def _send_wakes(self) -> None:
        # loops so that a channel added while a wake-up is in flight gets one of its own
        while self._wake_wanted and not self._closed:
            self._wake_wanted = False
            try:
                async with asyncio.timeout(self.op_timeout_s):
                    pipe = self._client.pipeline(transaction=False)
                    pipe.xadd(self._wake_key, {b"w": b"1"}, maxlen=1, approximate=False)
                    pipe.expire(self._wake_key, WAKE_TTL_S)
                    await pipe.execute()
            except REDIS_ERRORS:
                return  # the reader's block timeout picks the channel up anyway

    def _reader_client(self) -> Redis:
        pool = self._client.connection_pool
        kwargs = {**pool.connection_kwargs, "client_name": self.reader_name}
        own_pool = ConnectionPool(connection_class=pool.connection_class, max_connections=1,
                                  **kwargs)
        return Redis(connection_pool=own_pool, single_connection_client=True)

    async def _read_loop(self) -> None:
        reader = self._reader_client()
        delay = 0.0
        try:
            while not self._closed:
                try:
                    await self._read_once(reader)
                    delay = 0.0
                except REDIS_ERRORS as exc:
                    self._reader_failed(exc)
                except Exception:  # a bug: log it, but keep every subscriber served
                    ERRORS.labels("reader").inc()
                    log.exception("broker reader failed unexpectedly")
                    self._reader_failed(None)
                if not self._reader_ok:
                    delay = min(self.backoff_max_s, max(BACKOFF_MIN_S, delay * 2))
                    # jitter: replicas must not reconnect in lockstep after an outage
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        finally:
            await reader.aclose(close_connection_pool=True)

    async def _read_once(self, reader: Redis) -> None:
        if self._clock is None or time.monotonic() - self._clock[1] > CLOCK_RESYNC_S:
            secs, usecs = await reader.time()
            self._clock = (secs * 1000 + usecs / 1000, time.monotonic())
        streams: dict[KeyT, StreamIdT] = {self._wake_key: self._wake_id}
        sent: dict[str, _Channel] = {}
        for name, ch in self._channels.items():
            if ch.cursor is None:
                ch.cursor = self._start_id(ch.listen_at)
            key = self.keys.session_stream(name)
            streams[key] = ch.cursor
            sent[key] = ch
        reply: Any = await reader.xread(streams, count=self.read_count, block=self.block_ms)
        if not self._reader_ok:
            self._reader_ok = True
            log.info("broker reader reconnected", extra={"channels": len(self._channels)})
        items = reply.items() if isinstance(reply, dict) else (reply or [])
        for raw_key, entries in items:
            key = _text(raw_key)
            if key == self._wake_key:
                self._wake_id = _text(entries[-1][0])
                continue
            target = sent.get(key)
            if target is None or self._channels.get(target.name) is not target:
                continue  # stopped (or re-added, and then it starts at its own listen time)
            for raw_id, fields in entries:
                target.cursor = _text(raw_id)
                target.deliver(Event(target.name, target.cursor, fields.get(DATA_FIELD, b"")))

    def _start_id(self, listen_at: float) -> str:
        """A stream id no later than Redis's clock at the monotonic instant ``listen_at``."""
        if self._clock is None:
            return "0-0"
        redis_ms, synced_at = self._clock
        ms = redis_ms + (listen_at - synced_at) * 1000 - CLOCK_MARGIN_MS
        return f"{max(0, int(ms))}-0"

    # -- health ----------------------------------------------------------------------

    def _reader_failed(self, exc: BaseException | None) -> None:
        self._clock = None  # Redis may come back as a new server with another clock
        ERRORS.labels("xread").inc()
        if self._reader_ok:
            log.warning("broker reader lost Redis; reconnecting",
                        extra={"error": repr(exc), "channels": len(self._channels)})
        self._reader_ok = False

    def _ops_failed(self, op: str, exc: BaseException) -> None:
        ERRORS.labels(op).inc()
        if self._ops_failed_at is None:
            log.warning("redis broker operation failed", extra={"op": op, "error": repr(exc)})
        self._ops_failed_at = time.monotonic()

    def _ops_worked(self) -> None:
        if self._ops_failed_at is not None:
            log.info("redis broker operations work again")
        self._ops_failed_at = None
