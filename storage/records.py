"""What crosses the layers: a session's key and a stored message, each defined once.

Both halves of ``actors/`` (the write path and live streaming) and ``server/`` speak
of a session by :data:`SessionKey` and of a message as Postgres returned it by
:class:`StoredMessage`; the columns every message query selects are its fields.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, TypedDict

SessionKey = tuple[uuid.UUID, uuid.UUID]
"""``(tenant_id, session_id)``: a session is never named without its tenant."""


class StoredMessage(TypedDict):
    """A message as stored: the API's message object (``docs/api.md``), before JSON encoding."""

    id: uuid.UUID
    session_id: uuid.UUID
    seq: int
    parent_id: uuid.UUID | None
    role: str
    content: str
    sender_id: str | None
    context: list[dict[str, Any]] | None
    metadata: dict[str, Any]
    usage: dict[str, Any] | None
    feedback: dict[str, Any] | None
    status: str
    created_at: dt.datetime
    completed_at: dt.datetime | None
    # the linked files, in link order: each {id, name, mime, size, sha256, status}
    attachments: list[dict[str, Any]]
    # an assistant message's tool calls, each {id, name, arguments}, or None
    tool_calls: list[dict[str, Any]] | None
    # a tool message's answer names the call it answers; None on other roles
    tool_call_id: str | None


MESSAGE_FIELDS: tuple[str, ...] = tuple(StoredMessage.__annotations__)
"""The fields of :class:`StoredMessage`, in order: also what message queries select
(``attachments`` is aggregated from the attachments table, see ``storage.messages``)."""
