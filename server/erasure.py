"""Deletes and erasures at the edge: the live-event log forgets what Postgres forgot.

The broker keeps each session's recent events (in Redis, up to ``CHAT_REDIS_STREAM_TTL``
after its last one) so late joiners get answers in progress; those events are copies of
messages' content. A deleted message is scrubbed from its session's log; a deleted
session's log is dropped, before the rows go (a broker that cannot be reached then
refuses the delete: nothing is half-done) and again after (what was published
meanwhile). A failure after the rows went is a 503: a retry of the same request
finishes the job.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from aiohttp import web

from chat_storage.actors.live.relay import channel
from chat_storage.server.errors import ApiError
from chat_storage.server.state import BROKER_KEY
from chat_storage.storage.broker import BrokerUnavailable

log = logging.getLogger(__name__)
RETRY_AFTER_S = "5"


def _unavailable(what: str) -> ApiError:
    return ApiError(503, f"the live-event log could not be cleared of the {what}; retry the "
                         "request", headers={"Retry-After": RETRY_AFTER_S})


async def scrub_message(app: web.Application, tenant_id: uuid.UUID, session_id: uuid.UUID,
                        message_id: uuid.UUID) -> None:
    """Remove the events of a deleted message from its session's log; 503 if it fails."""
    try:
        await app[BROKER_KEY].erase(channel((tenant_id, session_id)), str(message_id))
    except BrokerUnavailable:
        log.warning("deleted message not scrubbed from the broker",
                    extra={"message_id": str(message_id)})
        raise _unavailable("deleted message") from None


async def drop_sessions(app: web.Application, tenant_id: uuid.UUID,
                        session_ids: Sequence[uuid.UUID]) -> None:
    """Drop the logs of sessions being deleted; 503 if the broker fails."""
    try:
        await app[BROKER_KEY].drop([channel((tenant_id, s)) for s in session_ids])
    except BrokerUnavailable:
        log.warning("deleted sessions' events not dropped from the broker",
                    extra={"sessions": len(session_ids)})
        raise _unavailable("deleted sessions") from None
