"""The in-memory broker: the :class:`storage.broker.base.Broker` of one process."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence

from chat_storage.storage.broker.base import BrokerMessage, Gap, Listener


class MemoryBroker:
    """Per-channel capped deques in this process; listeners called on publish."""

    def __init__(self, max_len: int = 10_000) -> None:
        self.max_len = max_len
        self._logs: dict[str, collections.deque[BrokerMessage]] = {}
        self._seq: dict[str, int] = {}
        self._listeners: dict[str, list[Listener]] = {}

    async def publish(self, channel: str, data: bytes) -> str:
        n = self._seq.get(channel, 0) + 1
        self._seq[channel] = n
        message = BrokerMessage(channel, f"{n}-0", data)
        log = self._logs.setdefault(channel, collections.deque(maxlen=self.max_len))
        log.append(message)
        for listener in list(self._listeners.get(channel, ())):
            listener(message)
        return message.id

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for channel, data in items:
            await self.publish(channel, data)

    async def read(self, channel: str, after_id: str | None,
                   limit: int = 1000) -> list[BrokerMessage]:
        log = self._logs.get(channel)
        if not log:
            return []
        after = 0 if after_id is None else int(after_id.split("-")[0])
        first = int(log[0].id.split("-")[0])
        if after_id is not None and after + 1 < first:
            raise Gap(f"events after {after_id} in {channel} were dropped")
        out = [m for m in log if int(m.id.split("-")[0]) > after]
        return out[:limit]

    def listen(self, channel: str, listener: Listener) -> Callable[[], None]:
        self._listeners.setdefault(channel, []).append(listener)

        def stop() -> None:
            listeners = self._listeners.get(channel, [])
            if listener in listeners:
                listeners.remove(listener)
            if not listeners:
                self._listeners.pop(channel, None)

        return stop

    async def drop(self, channels: Sequence[str]) -> None:
        for channel in channels:
            self._logs.pop(channel, None)

    async def erase(self, channel: str, needle: str) -> int:
        log = self._logs.get(channel)
        if not log:
            return 0
        raw = needle.encode()
        kept = [m for m in log if raw not in m.data]
        removed = len(log) - len(kept)
        log.clear()
        log.extend(kept)
        return removed

    def on_resume(self, callback: Callable[[], None]) -> None:
        """Never called: a broker in this process is never lost."""

    def wanted(self, channel: str) -> bool:
        """Only listeners of this process can read it: is one listening?"""
        return channel in self._listeners

    async def scrub(self, channel: str, drop: Callable[[bytes], bool]) -> int:
        log = self._logs.get(channel)
        if not log:
            return 0
        kept = [m for m in log if not drop(m.data)]
        dropped = len(log) - len(kept)
        if dropped:
            log.clear()
            log.extend(kept)
        return dropped

    def forget(self, channel: str) -> None:
        """Drop a channel's log (the session went idle)."""
        self._logs.pop(channel, None)

    async def close(self) -> None:
        self._listeners.clear()
        await asyncio.sleep(0)
