"""The hub: the one face of live streaming that the edge talks to.

A facade over the parts, each built by the composition root and handed in:
the fan-out (feeds, subscribers, the broker link; built first, since the write
path tells it of commits), the producers' streams (built after the write path,
through which they store their first row) and the sweeper (the ticker of held
streams, and the sweeper of orphans). It adds no state of its own; its job is the
start and the shutdown order of those parts, and one place for the routes to call.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from chat_storage.actors.live.fanout import Fanout
from chat_storage.actors.live.outbox import Outbox
from chat_storage.actors.live.stream_state import Owner
from chat_storage.actors.live.streams import Streams
from chat_storage.actors.live.subscription import Render, Subscription
from chat_storage.actors.live.sweeper import Sweeper
from chat_storage.storage.messages import NewMessage
from chat_storage.storage.records import SessionKey, StoredMessage
from chat_storage.storage.redaction import Redactor

log = logging.getLogger(__name__)


class Hub:
    """Subscriptions, producers' streams and their housekeeping, behind one face."""

    def __init__(self, fanout: Fanout, streams: Streams, sweeper: Sweeper) -> None:
        self._fanout = fanout
        self._streams = streams
        self._sweeper = sweeper

    def start(self) -> None:
        """Start the relay to the broker and the ticker."""
        self._fanout.start()
        self._sweeper.start()

    # ------------------------------------------------------------ readers
    async def subscribe(self, key: SessionKey, outbox: Outbox, *, after_seq: int = 0,
                        known: Mapping[int, int] | None = None, render: Render | None = None,
                        own: set[str] | None = None) -> Subscription:
        """Catch the client up from ``after_seq`` and keep it live (``Fanout.subscribe``)."""
        return await self._fanout.subscribe(key, outbox, after_seq=after_seq, known=known,
                                            render=render, own=own)

    def unsubscribe(self, key: SessionKey, sub: Subscription) -> None:
        """Stop delivering to ``sub``; the last one out closes the session's feed."""
        self._fanout.unsubscribe(key, sub)

    def in_use(self, key: SessionKey) -> bool:
        """Whether the session has subscribers or streams here."""
        return self._fanout.in_use(key)

    def live_content(self, key: SessionKey, message_id: uuid.UUID) -> str | None:
        """Content so far of a message being streamed, if this process knows it."""
        return self._fanout.live_content(key, message_id)

    # ------------------------------------------------------------ producers
    async def start_stream(self, key: SessionKey, owner: Owner, message: NewMessage, *,
                           redactor: Redactor | None = None) -> StoredMessage:
        """Insert ``message`` (status streaming) and hold it for ``owner``; with
        ``redactor``, redact its content when it ends (``Streams.start``)."""
        return await self._streams.start(key, owner, message, redactor=redactor)

    def delta(self, key: SessionKey, stream_id: str, owner: Owner, text: str) -> None:
        """Append ``text`` to a stream ``owner`` produces and announce it (never waits)."""
        self._streams.delta(key, stream_id, owner, text)

    async def end_stream(self, key: SessionKey, stream_id: str, owner: Owner, *,
                         metadata: Mapping[str, Any] | None = None,
                         usage: Mapping[str, Any] | None = None,
                         tool_calls: Sequence[Mapping[str, Any]] | None = None,
                         ) -> StoredMessage:
        """Store the stream complete (with the answer's ``tool_calls``, if it made any);
        returns the final message."""
        return await self._streams.end(key, stream_id, owner, metadata=metadata, usage=usage,
                                       tool_calls=tool_calls)

    async def abort_stream(self, key: SessionKey, stream_id: str, owner: Owner,
                           reason: str | None = None) -> StoredMessage:
        """Store the stream aborted with what it has."""
        return await self._streams.abort(key, stream_id, owner, reason)

    def resume_stream(self, key: SessionKey, stream_id: str, owner: Owner) -> int:
        """Hand the stream to ``owner``; returns the offset to continue from."""
        return self._streams.resume(key, stream_id, owner)

    def release(self, owner: Owner) -> None:
        """``owner`` went away: its streams wait out their grace period for a resume."""
        self._streams.release(owner)

    # ------------------------------------------------------------ housekeeping
    async def sweep(self) -> int:
        """Interrupt streams whose replica died now; returns how many."""
        return await self._sweeper.sweep()

    async def close(self, timeout_s: float) -> None:
        """Shutdown, in steps: store every held stream ``interrupted``, flush the broker
        queue (other replicas learn what is left), stop the ticker, close the feeds."""
        try:
            await asyncio.wait_for(self._streams.close(), timeout_s)
        except TimeoutError:
            log.warning("streams not all stored before the deadline")
        await self._fanout.flush(min(timeout_s, 5.0))
        await self._sweeper.stop()
        await self._fanout.close()
