"""Message rows: what a new message is, reads of one message, edits and tombstones.

New messages are stored by the group-commit insert in :mod:`storage.writes`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

import asyncpg

from chat_storage.storage.audit_log import audit
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.crypto.rows import open_messages
from chat_storage.storage.errors import Conflict, NotFound
from chat_storage.storage.idempotency import Claim, forget_message
from chat_storage.storage.records import MESSAGE_FIELDS, StoredMessage
from chat_storage.storage.sqlparams import Params

# what a message object says of each linked attachment
LINKED_FIELDS: tuple[str, ...] = ("id", "name", "mime", "size", "sha256", "status")


def columns(table: str = "messages") -> str:
    """The select list of a message row of ``table`` (a name or alias): its columns and
    its ``attachments``, aggregated in the same statement.

    The attachments are a correlated subquery (one index probe of
    ``attachments_message`` per row), so a page of messages stays one query.
    """
    pairs = ", ".join(f"'{f}', a.{f}" for f in LINKED_FIELDS)
    linked = (
        f"(SELECT coalesce(json_agg(json_build_object({pairs}) ORDER BY a.link_pos, a.id), "
        f"'[]'::json) FROM attachments a "
        f"WHERE a.message_id = {table}.id AND a.tenant_id = {table}.tenant_id) AS attachments"
    )
    plain = ", ".join(linked if f == "attachments" else f"{table}.{f}" for f in MESSAGE_FIELDS)
    return f"{plain}, {table}.sealed, {table}.data_key_id"


COLUMNS = columns()


@dataclasses.dataclass(frozen=True, slots=True)
class NewMessage:
    """A validated message about to be stored; its id is chosen before the commit."""

    id: uuid.UUID
    role: str
    content: str
    sender_id: str | None = None
    parent_id: uuid.UUID | None = None
    context: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    usage: dict[str, Any] | None = None
    status: str = "complete"
    # ready attachments of the session, linked to this message in its transaction
    attachment_ids: tuple[uuid.UUID, ...] = ()
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's, [{id, name, arguments}]
    tool_call_id: str | None = None  # a tool message's: the call it answers


@dataclasses.dataclass(frozen=True, slots=True)
class WriteGroup:
    """One request's messages: stored all or nothing, with consecutive seq.

    With ``idem``, the response (``{"data": [...]}`` when ``wrap`` else the single
    message) is recorded for the Idempotency-Key in the same transaction.
    """

    messages: Sequence[NewMessage]
    idem: Claim | None = None
    wrap: bool = False


Stored = list[StoredMessage]  # one write group's messages, in seq order


@dataclasses.dataclass(frozen=True, slots=True)
class SessionBatch:
    """The write groups of one session that go into one transaction, in this order."""

    tenant_id: uuid.UUID
    session_id: uuid.UUID
    groups: Sequence[WriteGroup]
    # the trace spans of the writes (OpenTelemetry span contexts, opaque here): the
    # group commit's span links to them (chat_storage.tracing); empty when tracing is off
    links: Sequence[object] = ()


def to_json(row: Mapping[str, Any] | asyncpg.Record) -> dict[str, Any]:
    """The API's message object from a row of :data:`COLUMNS`, for REST reads, with the
    row's ``sealed`` and ``data_key_id`` when it is sealed (for
    :func:`chat_storage.storage.crypto.rows.open_messages` to open)."""
    message = {field: row[field] for field in MESSAGE_FIELDS}
    if row.get("sealed") is not None:
        message["sealed"], message["data_key_id"] = row["sealed"], row["data_key_id"]
    return message


def to_stored(row: Mapping[str, Any] | asyncpg.Record) -> StoredMessage:
    """:func:`to_json` typed as a :class:`StoredMessage`, for what goes on to ``actors/``."""
    return cast(StoredMessage, {field: row[field] for field in MESSAGE_FIELDS})


async def get(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    message_id: uuid.UUID, keyring: Keyring | None = None,
) -> dict[str, Any]:
    """One message of a session of this tenant, opened, or :class:`NotFound`."""
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM messages "
        "WHERE id = $1 AND session_id = $2 AND tenant_id = $3",
        message_id, session_id, tenant_id,
    )
    if row is None:
        raise NotFound("message not found")
    [message] = await open_messages(conn, keyring, tenant_id, [to_json(row)])
    return message


_UNSET: Any = object()


async def update(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    message_id: uuid.UUID, *, metadata: Mapping[str, Any] | None = None,
    feedback: Mapping[str, Any] | Any | None = _UNSET, keyring: Keyring | None = None,
) -> dict[str, Any]:
    """Replace ``metadata`` and/or ``feedback`` (``None`` clears feedback).

    :class:`NotFound` if there is no such message; :class:`Conflict` for a tombstone,
    whose erased fields must stay erased.
    """
    p = Params(message_id, session_id, tenant_id)
    sets = []
    if metadata is not None:
        # a sealed row's metadata is in `sealed`: replacing it needs the data key
        # (not done yet: docs/security.md, "what is not covered")
        sealed = await conn.fetchval(
            "SELECT sealed IS NOT NULL FROM messages "
            "WHERE id = $1 AND session_id = $2 AND tenant_id = $3",
            message_id, session_id, tenant_id)
        if sealed:
            raise Conflict("the metadata of an encrypted message cannot be changed")
        sets.append(p.fill("metadata = {}", dict(metadata)))
    if feedback is not _UNSET:
        given = p(None if feedback is None else dict(feedback))
        sets.append(f"feedback = {given}")
        sets.append(f"feedback_at = CASE WHEN {given}::jsonb IS NULL THEN NULL ELSE now() END")
    row = None
    if sets:
        row = await conn.fetchrow(
            f"UPDATE messages SET {', '.join(sets)} "
            "WHERE id = $1 AND session_id = $2 AND tenant_id = $3 AND status <> 'deleted' "
            f"RETURNING {COLUMNS}",
            *p.values,
        )
    if row is not None:
        [message] = await open_messages(conn, keyring, tenant_id, [to_json(row)])
        return message
    current = await get(conn, tenant_id, session_id, message_id, keyring)  # NotFound if absent
    if current["status"] == "deleted":
        raise Conflict("message is deleted and cannot be changed")
    return current


async def tombstone(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    message_id: uuid.UUID, *, actor: str, request_id: str | None = None,
) -> list[str]:
    """Erase content, context, metadata, tool calls, feedback and attachments; keep the
    seq. Audited.

    Stored idempotent replies that hold the message show the tombstone instead.
    Deleting a tombstone again changes nothing (but scrubs those replies once more).
    A message still being streamed is a :class:`Conflict`: its producer would write
    the content back when it ends. Returns the object keys of the message's
    attachments, for the caller to delete.
    """
    async with conn.transaction():
        # lock the session first, as writers and session deletes do (no deadlock);
        # the message's row lock makes concurrent deletes count it out only once
        await conn.execute(
            "SELECT 1 FROM sessions WHERE id = $1 AND tenant_id = $2 FOR NO KEY UPDATE",
            session_id, tenant_id,
        )
        row = await conn.fetchrow(
            "SELECT status, seq FROM messages "
            "WHERE id = $1 AND session_id = $2 AND tenant_id = $3 FOR UPDATE",
            message_id, session_id, tenant_id,
        )
        if row is None:
            raise NotFound("message not found")
        status = row["status"]
        if status == "deleted":
            await forget_message(conn, tenant_id, session_id,
                                 await get(conn, tenant_id, session_id, message_id))
            return []
        if status == "streaming":
            raise Conflict("message is being streamed; end or abort the stream first")
        await conn.execute(
            """
            UPDATE messages SET content = '', context = NULL, metadata = '{}'::jsonb, sealed = NULL,
                tool_calls = NULL, tool_call_id = NULL,
                feedback = NULL, feedback_at = NULL, status = 'deleted'
            WHERE id = $1 AND tenant_id = $2
            """,
            message_id, tenant_id,
        )
        await conn.execute(
            "UPDATE sessions SET message_count = message_count - 1, updated_at = now() "
            "WHERE id = $1 AND tenant_id = $2",
            session_id, tenant_id,
        )
        keys = await conn.fetch(
            "DELETE FROM attachments WHERE message_id = $1 AND tenant_id = $2 "
            "RETURNING object_key",
            message_id, tenant_id,
        )
        await forget_message(conn, tenant_id, session_id,
                             await get(conn, tenant_id, session_id, message_id))
        await audit(conn, tenant_id, actor, "message.delete", str(message_id),
                    {"session_id": str(session_id), "seq": row["seq"]}, request_id)
    return [r["object_key"] for r in keys]
