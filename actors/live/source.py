"""Where the feeds read a session: Postgres, the broker's recent log, the streams held here.

One object for every feed of the process (it is the feeds' ``FeedSource``), also read
by the catch-up of a new subscriber and by the sweeper's recovery. Postgres reads go
in pages of :data:`PAGE` rows, each bounded by the pool's acquire timeout.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg

from chat_storage.actors.live import events, relay
from chat_storage.actors.live.events import SessionEvent
from chat_storage.actors.live.sealing import Sealing
from chat_storage.actors.live.stream_state import HeldStreams
from chat_storage.storage import broker as broker_mod
from chat_storage.storage import db
from chat_storage.storage import streams as stream_rows
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.records import SessionKey, StoredMessage

T = TypeVar("T")
PAGE = 500


class SessionSource:
    """Reads of a session's state for feeds, catch-ups and the sweeper."""

    def __init__(self, pool: asyncpg.Pool, broker: broker_mod.Broker, held: HeldStreams, *,
                 acquire_timeout_s: float = 2.0, keyring: Keyring | None = None,
                 sealing: Sealing | None = None) -> None:
        self._pool = pool
        # opens the sealed rows of encrypted tenants (None: no KEK configured)
        self.keyring = keyring
        # seals encrypted tenants' live events for the broker, opens them from it
        self.sealing = sealing
        self._broker = broker
        self._held = held
        self._acquire_timeout_s = acquire_timeout_s

    async def load(self, key: SessionKey) -> tuple[int, list[StoredMessage]]:
        """The session's ``last_seq`` and its rows still streaming."""
        return await self.db(lambda c: stream_rows.live_state(c, key[0], key[1],
                                                                 self.keyring))

    async def between(self, key: SessionKey, after_seq: int, upto: int) -> list[StoredMessage]:
        """Rows with ``after_seq < seq <= upto``, in order."""
        rows: list[StoredMessage] = []
        while after_seq < upto:
            page = await self.after(key, after_seq, upto)
            rows.extend(page)
            if len(page) < PAGE:
                break
            after_seq = int(page[-1]["seq"])
        return rows

    async def after(self, key: SessionKey, after_seq: int,
                    upto: int | None = None) -> list[StoredMessage]:
        """One page of rows with ``after_seq < seq`` (``<= upto``), in order."""
        return await self.db(lambda c: stream_rows.after(c, key[0], key[1], after_seq, upto=upto,
                                                   limit=PAGE, keyring=self.keyring))

    async def at_seqs(self, key: SessionKey, seqs: Sequence[int]) -> list[StoredMessage]:
        """The rows at ``seqs``, in order."""
        return await self.db(lambda c: stream_rows.at_seqs(c, key[0], key[1], seqs,
                                                              self.keyring))

    async def history(self, key: SessionKey) -> list[SessionEvent]:
        """The session's recent events kept by the broker, oldest first."""
        out: list[SessionEvent] = []
        after: str | None = None
        for _ in range(100):
            try:
                page = await self._broker.read(relay.channel(key), after, 1000)
            except broker_mod.Gap:
                break
            for message in page:
                _, body = events.split(message.data)
                event = (events.parse_body(body) if self.sealing is None
                         else await self.sealing.open(key, body))
                if event is not None:
                    out.append(event)
            if len(page) < 1000:
                break
            after = page[-1].id
        return out

    def local_streams(self, key: SessionKey) -> dict[str, str]:
        """Content so far of the answers this process produces, by stream id."""
        return self._held.local(key)

    async def db(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` on a pooled connection, waiting at most the acquire timeout for one."""
        return await db.call(self._pool, fn, acquire_timeout_s=self._acquire_timeout_s)
