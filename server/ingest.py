"""Async ingestion in the app (``CHAT_INGEST_MODE=async``): accept with 202, persist later.

Accepting: a validated ``POST …/messages`` (or ``…/batch``) becomes ONE entry of the
Redis ingest stream, its message ids chosen now, and is answered **202** with
``{"id", "session_id", "status": "accepted"}`` (``{"data": [...]}`` for a batch) as soon
as Redis has appended it. Postgres is not touched on the way (except to claim and
record an ``Idempotency-Key``, and, with a KEK configured, to learn once per session
and ``CHAT_DATA_KEY_CACHE_S`` whether the entry is sealed and under which user's key:
an encrypted tenant's entry never waits in Redis in plain text, and its session must
exist, else 404), so the session is not checked yet: an entry whose
session does not exist (or was deleted meanwhile), or whose ``parent_id`` is not a
message of the session, is dead-lettered when it is persisted. A full backlog
(``CHAT_INGEST_MAX_BACKLOG``) or an unreachable Redis is 503: nothing was accepted.

Persisting: every process runs one :class:`actors.write.ingest.IngestConsumer` (a
service of :mod:`chat_storage.runtime.services`), writing through this process's
session mailboxes (same seq and group-commit rules as a 201).

Idempotency-Key: claimed in Postgres as for a 201, and the 202 answer is recorded
right after the append. Should the process die between the two, the key's claim
expires (30 s) and a retry is accepted again: at least once, never lost.

Anything the consumer has not acknowledged at shutdown is taken over by another process.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from aiohttp import web
from prometheus_client import Counter
from pydantic import BaseModel

from chat_storage import tracing
from chat_storage.server import idempotency
from chat_storage.server.auth import principal_of
from chat_storage.server.errors import ApiError
from chat_storage.server.handlers import message_location
from chat_storage.server.jsonio import json_response
from chat_storage.server.state import INGEST_KEY, POOL_KEY, SETTINGS_KEY, keyring_of
from chat_storage.storage import db
from chat_storage.storage.crypto.keyring import DataKey
from chat_storage.storage.idempotency import Claim, record_response
from chat_storage.storage.ingest import Entry, IngestFull, IngestUnavailable
from chat_storage.storage.messages import NewMessage

log = logging.getLogger(__name__)

ACCEPTED = Counter("chat_ingest_accepted_total",
                   "Async writes answered by this process, by outcome (accepted, full, "
                   "unavailable)", ["outcome"])
RETRY_AFTER_S = "1"


class MessageAccepted(BaseModel):
    """A message accepted for storage (async ingestion): in Redis, not yet in Postgres.

    It is stored shortly after with this ``id`` (``GET`` its URL: 404 until then), or
    dead-lettered if its session no longer exists.
    """

    id: uuid.UUID
    session_id: uuid.UUID
    status: Literal["accepted"]


class MessageAcceptedList(BaseModel):
    """The messages of a batch accepted for storage: stored together, consecutive seq."""

    data: list[MessageAccepted]


def is_async(app: web.Application) -> bool:
    """Whether writes are answered 202 and persisted from the ingest stream."""
    return app[SETTINGS_KEY].ingest_mode == "async"


async def accept(request: web.Request, session_id: uuid.UUID, messages: Sequence[NewMessage],
                 *, claim: Claim | None, wrap: bool = False) -> web.Response:
    """Append the request's messages to the ingest stream and answer 202."""
    stream = request.app[INGEST_KEY]
    entry = Entry(principal_of(request).tenant_id, session_id, messages, wrap,
                  tracing.inject() if tracing.ON else {})
    key = await _sealing_key(request, entry, claim)
    try:
        await stream.append(entry, key)
    except (IngestFull, IngestUnavailable) as exc:
        await idempotency.release(request, claim)
        full = isinstance(exc, IngestFull)
        ACCEPTED.labels("full" if full else "unavailable").inc()
        if not full:
            log.warning("ingest stream unavailable", extra={"error": str(exc)})
        reason = "write backlog is full" if full else "write queue is unavailable"
        raise ApiError(503, f"{reason}; nothing was accepted, retry later",
                       headers={"Retry-After": RETRY_AFTER_S}) from None
    ACCEPTED.labels("accepted").inc()
    items = [{"id": m.id, "session_id": session_id, "status": "accepted"} for m in messages]
    body: Any = {"data": items} if wrap else items[0]
    if claim is not None:
        await _record(request, claim, body)
    headers = {} if wrap else {"Location": message_location(items[0])}
    return json_response(body, status=202, headers=headers)


async def _sealing_key(request: web.Request, entry: Entry, claim: Claim | None,
                       ) -> DataKey | None:
    """The key that seals the entry while it waits in Redis (an encrypted tenant's), read
    from Postgres once per session and ``CHAT_DATA_KEY_CACHE_S``; ``None``: kept plain.

    An encrypted tenant's session that does not exist is 404 now (there is no user's key
    to seal for); a database that does not answer is 503. Nothing was accepted.
    """
    keyring = keyring_of(request)
    if keyring is None:
        return None
    known, key = keyring.cached_session(entry.session_id)
    if known:
        return key
    settings = request.app[SETTINGS_KEY]
    try:
        return await db.call(request.app[POOL_KEY], lambda conn: keyring.for_copies(
            conn, entry.tenant_id, entry.session_id),
            acquire_timeout_s=settings.db_acquire_timeout_s)
    except BaseException:
        await idempotency.release(request, claim)
        raise


async def _record(request: web.Request, claim: Claim, body: Any) -> None:
    """Record the 202 for the Idempotency-Key; the entry is in already, so never fail."""
    try:
        await db.call(request.app[POOL_KEY], lambda conn: record_response(conn, claim, 202, body),
                      acquire_timeout_s=request.app[SETTINGS_KEY].db_acquire_timeout_s)
    except Exception:
        # the claim expires by itself; a retry after that is accepted a second time
        log.warning("could not record the answer to an Idempotency-Key", exc_info=True)
