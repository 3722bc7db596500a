"""Encrypted tenants' live events in the broker: sealed on the way in, opened on the way out.

The broker (Redis) keeps every event of a session for an hour after its last one, and
other replicas read it from there. For a session of an encrypted tenant the relay
seals each event under the session's user's data key before it is published
(``storage.crypto.events``), and each replica opens it once, in its listener, before
its feed fans it out to any number of local subscribers: the cost is one AES-GCM
open per event and replica, not per subscriber. Events delivered inside one process
never leave its memory and are not sealed.

Sealing needs to know a session's key: from the keyring's cache, else one read of
Postgres (per session and ``CHAT_DATA_KEY_CACHE_S``). When that read fails, the
session's events are not published at all (never in plain text): the relay counts
them dropped, and other replicas reconcile from Postgres as for a broker outage.

Opening runs in the broker's listener, which must not wait. A key in the keyring's
cache opens at once; otherwise the session's events queue (sealed, in order, at most
``max_waiting``) while one task reads the key, and go on once it is there. A key
that is gone (the user was erased) or a read that fails drops what waited and asks
the session's feed to reconcile from Postgres.
"""

from __future__ import annotations

import collections
import logging
import uuid
from collections.abc import Callable, Sequence

import asyncpg

from chat_storage.actors.live import events, metrics
from chat_storage.actors.live.events import SessionEvent
from chat_storage.storage import db
from chat_storage.storage.crypto import events as sealed_events
from chat_storage.storage.crypto.envelope import Unreadable
from chat_storage.storage.crypto.keyring import DataKey, Keyring
from chat_storage.storage.errors import NotFound
from chat_storage.storage.records import SessionKey
from chat_storage.supervisor import Supervisor

log = logging.getLogger(__name__)

Handle = Callable[[SessionEvent], None]  # takes an opened event, in order
Lost = Callable[[], None]  # events of the session were dropped: reconcile it
_DROP = object()  # a session whose events cannot be published now


class Sealing:
    """Seals events of encrypted tenants' sessions for the broker and opens them."""

    def __init__(self, keyring: Keyring, pool: asyncpg.Pool, *, tasks: Supervisor,
                 acquire_timeout_s: float = 2.0, max_waiting: int = 10_000) -> None:
        self.keyring = keyring
        self._pool = pool
        self._tasks = tasks
        self._acquire_timeout_s = acquire_timeout_s
        self._max_waiting = max_waiting
        # sessions whose events wait for a key being read, their sealed bodies in order
        self._waiting: dict[SessionKey, collections.deque[bytes]] = {}

    # ------------------------------------------------------------ sealing
    async def envelopes(self, origin: bytes, batch: Sequence[tuple[SessionKey, SessionEvent]],
                        ) -> list[bytes | None]:
        """The broker form of each event: sealed for an encrypted tenant, plain otherwise;
        ``None`` for an event that cannot be published now (its key could not be read)."""
        keys = await self._session_keys({key for key, _ in batch})
        out: list[bytes | None] = []
        for key, event in batch:
            data_key = keys[key]
            if data_key is None:
                out.append(events.envelope(origin, event))
            elif isinstance(data_key, DataKey):
                out.append(origin + b" " + sealed_events.seal_event(
                    data_key, key[0], key[1], events.header(event), event.body))
            else:
                out.append(None)
        return out

    async def _session_keys(self, sessions: set[SessionKey]) -> dict[SessionKey, object]:
        out: dict[SessionKey, object] = {}
        missing = []
        for key in sessions:
            known, data_key = self.keyring.cached_session(key[1])
            if known:
                out[key] = data_key
            else:
                missing.append(key)
        if not missing:
            return out

        async def read(conn: asyncpg.Connection) -> dict[SessionKey, object]:
            found: dict[SessionKey, object] = {}
            for key in missing:
                try:
                    found[key] = await self.keyring.for_copies(conn, key[0], key[1])
                except NotFound:  # an encrypted tenant's session, deleted meanwhile
                    found[key] = _DROP
            return found

        try:
            out.update(await db.call(self._pool, read,
                                     acquire_timeout_s=self._acquire_timeout_s))
        except Exception as exc:
            log.warning("cannot tell how to seal live events; not publishing them",
                        extra={"sessions": len(missing), "error": repr(exc)})
            out.update(dict.fromkeys(missing, _DROP))
        return out

    # ------------------------------------------------------------ opening
    def take(self, key: SessionKey, body: bytes, handle: Handle, lost: Lost) -> None:
        """Pass the event in ``body`` (plain or sealed) to ``handle``, in the order taken;
        never waits (see the module docstring)."""
        waiting = self._waiting.get(key)
        if waiting is not None:
            if len(waiting) >= self._max_waiting:
                metrics.UNREADABLE.inc(len(waiting))
                self.forget(key)
                lost()
                return
            waiting.append(body)
            return
        self._now(key, body, handle, lost)

    def forget(self, key: SessionKey) -> None:
        """Drop what waits for ``key``'s session (its feed closed)."""
        self._waiting.pop(key, None)

    async def open(self, key: SessionKey, body: bytes) -> SessionEvent | None:
        """The event in ``body``, reading its key if needed; ``None`` if it does not open."""
        sealed = sealed_events.parse(body)
        if sealed is None:
            return events.parse_body(body)
        data_key = self.keyring.cached(sealed.key_id) or await self._read_key(sealed.key_id)
        return None if data_key is None else self._opened(key, data_key, sealed)

    def _now(self, key: SessionKey, body: bytes, handle: Handle, lost: Lost) -> bool:
        """Handle ``body`` now; ``False`` if it now waits for its key instead."""
        sealed = sealed_events.parse(body)
        if sealed is None:
            event = events.parse_body(body)
        else:
            data_key = self.keyring.cached(sealed.key_id)
            if data_key is None:
                self._waiting[key] = collections.deque([body])
                self._tasks.spawn(self._fetch(key, sealed.key_id, handle, lost),
                                  name=f"event-key:{key[1]}")
                return False
            event = self._opened(key, data_key, sealed)
            if event is None:
                lost()
        if event is not None:
            handle(event)
        return True

    def _opened(self, key: SessionKey, data_key: DataKey,
                sealed: sealed_events.SealedEvent) -> SessionEvent | None:
        try:
            return events.parse_body(sealed_events.open_event(data_key, key[0], key[1], sealed))
        except Unreadable:
            metrics.UNREADABLE.inc()
            log.warning("a sealed live event does not open", extra={"session_id": str(key[1])})
            return None

    async def _fetch(self, key: SessionKey, key_id: uuid.UUID, handle: Handle,
                     lost: Lost) -> None:
        found = await self._read_key(key_id)
        waiting = self._waiting.get(key)
        if waiting is None:
            return  # forgotten meanwhile
        if found is None:
            metrics.UNREADABLE.inc(len(waiting))
            self.forget(key)
            lost()
            return
        del self._waiting[key]
        while waiting:
            if not self._now(key, waiting.popleft(), handle, lost):
                self._waiting[key].extend(waiting)  # waits for yet another key
                return

    async def _read_key(self, key_id: uuid.UUID) -> DataKey | None:
        try:
            found = await db.call(self._pool, lambda c: self.keyring.by_ids(c, {key_id}),
                                  acquire_timeout_s=self._acquire_timeout_s)
        except Exception as exc:
            log.warning("cannot read the key of live events",
                        extra={"key_id": str(key_id), "error": repr(exc)})
            return None
        if key_id not in found:
            log.warning("the key of live events is gone", extra={"key_id": str(key_id)})
        return found.get(key_id)
