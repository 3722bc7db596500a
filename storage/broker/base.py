"""The broker's interface: ordered per-session message logs shared between processes.

A message is opaque bytes (JSON made by the layers above). Each published message gets
an id that orders it within its channel; ``read(channel, after_id)`` returns what came
after an id, so a consumer that fell behind catches up without gaps. Delivery is
best effort: Postgres stays the source of truth, and a consumer that finds a gap
(:class:`Gap`) reloads from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

from chat_storage.storage.errors import StorageError


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerMessage:
    """One message of a channel's log, as the broker stores it: its id and opaque bytes."""

    channel: str
    id: str
    data: bytes


class Gap(Exception):
    """Messages after the requested id were dropped (capped log); reload from Postgres."""


class BrokerUnavailable(StorageError):
    """The broker did not answer in time; the message was not published (or read)."""


Listener = Callable[[BrokerMessage], None]


class Broker(Protocol):
    """Publish to a channel; listen to channels; read a channel's recent past."""

    async def publish(self, channel: str, data: bytes) -> str:
        """Append ``data`` to ``channel``; return its id."""
        ...

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Append each ``(channel, data)``, in order, in one round trip where possible."""
        ...

    async def read(self, channel: str, after_id: str | None,
                   limit: int = 1000) -> list[BrokerMessage]:
        """Messages of ``channel`` after ``after_id`` (all kept ones if ``None``).

        Raises :class:`Gap` if some messages after ``after_id`` are no longer kept.
        """
        ...

    def listen(self, channel: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` (synchronously, in order) for each new message of ``channel``.

        Returns a function that stops listening. Listeners must not block: they only
        enqueue. One listener per process and channel is the expected use.
        """
        ...

    async def drop(self, channels: Sequence[str]) -> None:
        """Delete the logs of ``channels`` (their sessions were deleted or erased)."""
        ...

    async def erase(self, channel: str, needle: str) -> int:
        """Delete from ``channel``'s log every message whose data holds ``needle`` (the id
        of a message deleted: its events hold its content); return how many."""
        ...

    def on_resume(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time this process reaches the broker again after losing it.

        Messages published meanwhile may be lost to this process's listeners (a restarted
        Redis starts empty): the callback is where they reconcile with Postgres.
        """
        ...

    def wanted(self, channel: str) -> bool:
        """Whether a message published to ``channel`` now could reach any listener.

        ``False`` lets a publisher skip building the message at all.
        """
        ...

    async def scrub(self, channel: str, drop: Callable[[bytes], bool]) -> int:
        """Delete the kept messages of ``channel`` whose data ``drop`` picks; return how
        many. For text that must not outlive its use (a redacting tenant's deltas, once
        the redacted message is stored): a reader that had not read them yet skips them.
        """
        ...

    async def close(self) -> None: ...
