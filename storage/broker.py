"""The broker: ordered per-session event logs shared between processes.

Interface only here, plus the in-memory implementation for one process. The Redis
streams implementation (``storage.broker_redis``) has the same shape. Pick one with
:func:`from_url`.

An event is opaque bytes (JSON made by the layers above). Each published event gets
an id that orders it within its channel; ``read(channel, after_id)`` returns what came
after an id, so a consumer that fell behind catches up without gaps. Delivery is
best effort: Postgres stays the source of truth, and a consumer that finds a gap
(``Gap``) reloads from it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    channel: str
    id: str
    data: bytes


class Gap(Exception):
    """Events after the requested id were dropped (capped log); reload from Postgres."""


Listener = Callable[[Event], None]


class Broker(Protocol):
    """Publish to a channel; listen to channels; read a channel's recent past."""

    async def publish(self, channel: str, data: bytes) -> str:
        """Append ``data`` to ``channel``; return its id."""
        ...

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Append each ``(channel, data)``, in order, in one round trip where possible."""
        ...

    async def read(self, channel: str, after_id: str | None, limit: int = 1000) -> list[Event]:
        """Events of ``channel`` after ``after_id`` (all kept ones if ``None``).

        Raises :class:`Gap` if some events after ``after_id`` are no longer kept.
        """
        ...

    def listen(self, channel: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` (synchronously, in order) for each new event of ``channel``.

        Returns a function that stops listening. Listeners must not block: they only
        enqueue. One listener per process and channel is the expected use.
        """
        ...

    def wanted(self, channel: str) -> bool:
        """Whether an event published to ``channel`` now could reach any listener.

        ``False`` lets a publisher skip building the event at all.
        """
        ...

    async def close(self) -> None: ...


class MemoryBroker:
    """Per-channel capped deques in this process; listeners called on publish."""

    def __init__(self, max_len: int = 10_000) -> None:
        self.max_len = max_len
        self._logs: dict[str, collections.deque[Event]] = {}
        self._seq: dict[str, int] = {}
        self._listeners: dict[str, list[Listener]] = {}

    async def publish(self, channel: str, data: bytes) -> str:
        n = self._seq.get(channel, 0) + 1
        self._seq[channel] = n
        event = Event(channel, f"{n}-0", data)
        log = self._logs.setdefault(channel, collections.deque(maxlen=self.max_len))
        log.append(event)
        for listener in list(self._listeners.get(channel, ())):
            listener(event)
        return event.id

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for channel, data in items:
            await self.publish(channel, data)

    async def read(self, channel: str, after_id: str | None, limit: int = 1000) -> list[Event]:
        log = self._logs.get(channel)
        if not log:
            return []
        after = 0 if after_id is None else int(after_id.split("-")[0])
        first = int(log[0].id.split("-")[0])
        if after_id is not None and after + 1 < first:
            raise Gap(f"events after {after_id} in {channel} were dropped")
        out = [e for e in log if int(e.id.split("-")[0]) > after]
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

    def wanted(self, channel: str) -> bool:
        """Only listeners of this process can read it: is one listening?"""
        return channel in self._listeners

    def forget(self, channel: str) -> None:
        """Drop a channel's log (the session went idle)."""
        self._logs.pop(channel, None)

    async def close(self) -> None:
        self._listeners.clear()
        await asyncio.sleep(0)


def from_url(redis_url: str | None, *, prefix: str = "chat") -> Broker:
    """The broker for ``redis_url``: Redis streams under ``prefix``, or memory if ``None``."""
    if redis_url is None:
        return MemoryBroker()
    from chat_storage.storage.broker_redis import RedisBroker  # imports this module: import it late

    return RedisBroker.from_url(redis_url, prefix=prefix)
