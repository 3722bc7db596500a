"""The Redis broker's listening side: ONE reader task per process for every channel.

The reader reads every channel that has a listener with one multiplexed ``XREAD
BLOCK`` on one dedicated connection. A new channel must join the read at once, not
after the block times out, so the reader's XREAD also always includes a private
wake-up stream of this process; ``listen`` on a new channel appends to it, which ends
the blocking read, and the next XREAD includes the channel. (Cancelling and
restarting the XREAD instead would drop the connection each time, since redis-py
cannot abandon a half-read reply.) The block timeout (``block_ms``) stays as a safety
net should a wake-up itself fail.

Where a listener starts: ``listen`` is synchronous, and Redis before 7.4 has no "last
entry" id for XREAD, so the reader turns the moment of ``listen`` into a stream id by
Redis's own clock (``TIME`` at every (re)connect, then the local monotonic clock): a
lower bound of Redis's time at the call, minus a small margin. Stream ids are Redis
milliseconds, so nothing appended after ``listen`` is missed; a few messages appended
just before it may come too (consumers drop duplicates by ``seq``/``offset``). Each
channel then continues from the last id it delivered, also across reconnects.

Outages: the reader reconnects with jittered exponential back-off and resumes from its
last ids; :attr:`StreamReader.ok` is false meanwhile. Messages trimmed or lost meanwhile
(a restarted Redis starts empty) are not signalled one by one: the ``resumed``
callbacks run once the reader has Redis again, and consumers reconcile there with
Postgres.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError
from redis.typing import KeyT, StreamIdT

from chat_storage.storage.broker.base import BrokerMessage, Listener
from chat_storage.storage.redis_keys import RedisKeys
from chat_storage.supervisor import Supervisor

log = logging.getLogger(__name__)

ERRORS = Counter("chat_broker_redis_errors_total", "Redis broker operations that failed", ["op"])
LISTENER_ERRORS = Counter("chat_broker_listener_errors_total", "Broker listeners that raised")
CHANNELS = Gauge("chat_broker_redis_channels", "Channels this process reads from Redis")

DATA_FIELD = b"d"
CLOCK_MARGIN_MS = 50  # covers clock-rate drift between resyncs and small Redis clock steps
CLOCK_RESYNC_S = 30.0
BACKOFF_MIN_S = 0.05
WAKE_TTL_S = 60
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


def text(value: Any) -> str:
    """A Redis reply value (bytes or not) as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(eq=False, slots=True)
class _Channel:
    name: str
    listen_at: float  # monotonic time of the first listen(): where reading starts
    listeners: list[Listener] = dataclasses.field(default_factory=list)
    cursor: str | None = None  # last id delivered (None: not resolved yet)

    def deliver(self, message: BrokerMessage) -> None:
        for listener in list(self.listeners):
            try:
                listener(message)
            except Exception:
                LISTENER_ERRORS.inc()
                log.exception("broker listener failed", extra={"channel": self.name})


class StreamReader:
    """Delivers new messages of the listened channels (see the module docstring).

    ``client`` is only the template of the reader's own connection (same server and
    options, named ``name`` in ``CLIENT LIST``) and sends the wake-ups.
    """

    def __init__(self, client: Redis, keys: RedisKeys, *, tasks: Supervisor, node: str,
                 name: str,
                 block_ms: int, read_count: int, op_timeout_s: float,
                 backoff_max_s: float) -> None:
        self.keys = keys
        self.name = name
        self._tasks = tasks
        self.block_ms = block_ms
        self.read_count = read_count
        self.op_timeout_s = op_timeout_s
        self.backoff_max_s = backoff_max_s
        self.ok = True  # False while the reader has lost Redis
        self.resumed: list[Callable[[], None]] = []  # called when it has Redis again
        self._client = client
        self._wake_key = keys.reader_wake(node)
        self._wake_id = "0-0"
        self._wake_wanted = False
        self._channels: dict[str, _Channel] = {}
        self._clock: tuple[float, float] | None = None  # (Redis ms, local monotonic s)
        self._reader_task: asyncio.Task[None] | None = None
        self._wake_task: asyncio.Task[None] | None = None
        self._closed = False

    def listen(self, channel: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for each message of ``channel`` appended after this call."""
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
        """Stop the reader and forget every listener."""
        self._closed = True
        tasks = [t for t in (self._reader_task, self._wake_task) if t is not None]
        # redis-py can swallow a cancel that lands at the wrong moment of a blocking read
        # (redis/redis-py#2028): cancel again until done; the reader also checks _closed,
        # so this ends at the latest when the current XREAD's block times out
        while pending := [t for t in tasks if not t.done()]:
            for task in pending:
                self._tasks.cancel(task)
            await asyncio.wait(pending, timeout=0.1)
        CHANNELS.dec(len(self._channels))
        self._channels.clear()

    def _start_reading(self) -> None:
        if self._closed:
            return
        if self._reader_task is None:
            self._reader_task = self._tasks.spawn(self._read_loop(), name="redis-broker-reader")
            return
        # the reader may be blocked in an XREAD without this channel: interrupt it
        self._wake_wanted = True
        if self._wake_task is None or self._wake_task.done():
            self._wake_task = self._tasks.spawn(self._send_wakes(), name="redis-broker-wake")

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
        kwargs = {**pool.connection_kwargs, "client_name": self.name}
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
                    self._failed(exc)
                except Exception:  # a bug: log it, but keep every subscriber served
                    ERRORS.labels("reader").inc()
                    log.exception("broker reader failed unexpectedly")
                    self._failed(None)
                if not self.ok:
                    delay = min(self.backoff_max_s, max(BACKOFF_MIN_S, delay * 2))
                    # jitter: replicas must not reconnect in lockstep after an outage
                    # S311: back-off jitter, not a secret
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311
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
        if not self.ok:
            self.ok = True
            log.info("broker reader reconnected", extra={"channels": len(self._channels)})
            for callback in list(self.resumed):  # what was published meanwhile may be lost
                try:
                    callback()
                except Exception:
                    LISTENER_ERRORS.inc()
                    log.exception("broker resume callback failed")
        items = reply.items() if isinstance(reply, dict) else (reply or [])
        for raw_key, entries in items:
            key = text(raw_key)
            if key == self._wake_key:
                self._wake_id = text(entries[-1][0])
                continue
            target = sent.get(key)
            if target is None or self._channels.get(target.name) is not target:
                continue  # stopped (or re-added, and then it starts at its own listen time)
            for raw_id, fields in entries:
                target.cursor = text(raw_id)
                target.deliver(BrokerMessage(target.name, target.cursor,
                                             fields.get(DATA_FIELD, b"")))

    def _start_id(self, listen_at: float) -> str:
        """A stream id no later than Redis's clock at the monotonic instant ``listen_at``."""
        if self._clock is None:
            return "0-0"
        redis_ms, synced_at = self._clock
        ms = redis_ms + (listen_at - synced_at) * 1000 - CLOCK_MARGIN_MS
        return f"{max(0, int(ms))}-0"

    def _failed(self, exc: BaseException | None) -> None:
        self._clock = None  # Redis may come back as a new server with another clock
        ERRORS.labels("xread").inc()
        if self.ok:
            log.warning("broker reader lost Redis; reconnecting",
                        extra={"error": repr(exc), "channels": len(self._channels)})
        self.ok = False
