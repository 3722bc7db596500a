"""Message rows: the group-commit insert, reads of one message, edits and tombstones.

Sequence numbers are assigned inside the inserting transaction by bumping
``sessions.last_seq`` under that row's lock, so concurrent writers on any replica
get consecutive, gap-free numbers in commit order.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from storage.errors import InvalidReference, NotFound
from storage.idempotency import Claim, record_response
from storage.tenants import audit

COLUMNS = (
    "id, session_id, seq, parent_id, role, content, sender_id, context, metadata, usage, "
    "feedback, status, created_at, completed_at"
)


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


@dataclasses.dataclass(frozen=True, slots=True)
class WriteGroup:
    """One request's messages: stored all or nothing, with consecutive seq.

    With ``idem``, the response (``{"data": [...]}`` when ``wrap`` else the single
    message) is recorded for the Idempotency-Key in the same transaction.
    """

    messages: Sequence[NewMessage]
    idem: Claim | None = None
    wrap: bool = False


def to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The API's message object from a row of :data:`COLUMNS`."""
    return {
        "id": row["id"],
        "session_id": row["session_id"],
        "seq": row["seq"],
        "parent_id": row["parent_id"],
        "role": row["role"],
        "content": row["content"],
        "sender_id": row["sender_id"],
        "context": row["context"],
        "metadata": row["metadata"],
        "usage": row["usage"],
        "feedback": row["feedback"],
        "status": row["status"],
        "created_at": row["created_at"],
        "completed_at": row["completed_at"],
    }


def _tokens(usage: Mapping[str, Any] | None) -> tuple[int, int, int]:
    if not usage:
        return 0, 0, 0
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    total = int(usage.get("total_tokens") or (prompt + completion))
    return prompt, completion, total


async def insert_groups(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    session_id: uuid.UUID,
    groups: Sequence[WriteGroup],
) -> list[list[dict[str, Any]] | Exception]:
    """Store ``groups`` in ONE transaction; return each group's messages or its error.

    A group with a bad reference is answered with :class:`InvalidReference` and left
    out, so it cannot fail the others. If the session does not exist every group gets
    :class:`NotFound`. Any other error aborts the whole transaction and is raised.
    """
    results: list[list[dict[str, Any]] | Exception] = [[] for _ in groups]
    async with conn.transaction():
        keep = await _check_parents(conn, session_id, groups, results)
        rows = [m for i in keep for m in groups[i].messages]
        n = len(rows)
        if n == 0:
            return results
        prompt = completion = total = 0
        for m in rows:
            p, c, t = _tokens(m.usage)
            prompt, completion, total = prompt + p, completion + c, total + t
        live = sum(1 for m in rows if m.status != "deleted")
        last_seq = await conn.fetchval(
            """
            UPDATE sessions SET last_seq = last_seq + $3, message_count = message_count + $4,
                last_message_at = now(), activity_at = now(), updated_at = now(),
                prompt_tokens = prompt_tokens + $5, completion_tokens = completion_tokens + $6,
                total_tokens = total_tokens + $7
            WHERE id = $1 AND tenant_id = $2
            RETURNING last_seq
            """,
            session_id, tenant_id, n, live, prompt, completion, total,
        )
        if last_seq is None:
            return [NotFound("session not found") for _ in groups]
        first = last_seq - n + 1
        inserted = await conn.fetch(
            f"""
            INSERT INTO messages (id, tenant_id, session_id, seq, parent_id, role, content,
                sender_id, context, metadata, usage, status, completed_at)
            SELECT u.id, $1, $2, u.seq, u.parent_id, u.role, u.content, u.sender_id,
                u.context, u.metadata, u.usage, u.status,
                CASE WHEN u.status = 'streaming' THEN NULL ELSE now() END
            FROM unnest($3::uuid[], $4::int8[], $5::uuid[], $6::text[], $7::text[],
                        $8::text[], $9::jsonb[], $10::jsonb[], $11::jsonb[], $12::text[])
                AS u(id, seq, parent_id, role, content, sender_id, context, metadata,
                     usage, status)
            RETURNING {COLUMNS}
            """,
            tenant_id, session_id,
            [m.id for m in rows], list(range(first, first + n)),
            [m.parent_id for m in rows], [m.role for m in rows],
            [m.content for m in rows], [m.sender_id for m in rows],
            [m.context for m in rows], [m.metadata for m in rows],
            [m.usage for m in rows], [m.status for m in rows],
        )
        by_id = {r["id"]: to_json(r) for r in inserted}
        for i in keep:
            group = groups[i]
            stored = [by_id[m.id] for m in group.messages]
            results[i] = stored
            if group.idem is not None:
                body = {"data": stored} if group.wrap else stored[0]
                await record_response(conn, group.idem, 201, body)
    return results


async def _check_parents(
    conn: asyncpg.Connection,
    session_id: uuid.UUID,
    groups: Sequence[WriteGroup],
    results: list[list[dict[str, Any]] | Exception],
) -> list[int]:
    """Indexes of the groups whose ``parent_id``s are messages of this session."""
    wanted = {m.parent_id for g in groups for m in g.messages if m.parent_id is not None}
    if not wanted:
        return list(range(len(groups)))
    found = {
        r["id"] for r in await conn.fetch(
            "SELECT id FROM messages WHERE session_id = $1 AND id = ANY($2::uuid[])",
            session_id, list(wanted),
        )
    }
    keep = []
    for i, group in enumerate(groups):
        bad = next((j for j, m in enumerate(group.messages)
                    if m.parent_id is not None and m.parent_id not in found), None)
        if bad is None:
            keep.append(i)
        else:
            field = f"messages.{bad}.parent_id" if group.wrap else "parent_id"
            results[i] = InvalidReference(field, "is not a message of this session")
    return keep


async def exists(conn: asyncpg.Connection, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``ids`` are stored (to settle a commit whose outcome is unknown)."""
    rows = await conn.fetch("SELECT id FROM messages WHERE id = ANY($1::uuid[])", list(ids))
    return {r["id"] for r in rows}


async def fetch_by_ids(
    conn: asyncpg.Connection, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Any]]:
    """Stored messages among ``ids``, by id."""
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM messages WHERE id = ANY($1::uuid[])", list(ids)
    )
    return {r["id"]: to_json(r) for r in rows}


async def get(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    message_id: uuid.UUID,
) -> dict[str, Any]:
    """One message of a session of this tenant, or :class:`NotFound`."""
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM messages "
        "WHERE id = $1 AND session_id = $2 AND tenant_id = $3",
        message_id, session_id, tenant_id,
    )
    if row is None:
        raise NotFound("message not found")
    return to_json(row)


_UNSET: Any = object()


async def update(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    message_id: uuid.UUID, *, metadata: Mapping[str, Any] | None = None,
    feedback: Mapping[str, Any] | Any | None = _UNSET,
) -> dict[str, Any]:
    """Replace ``metadata`` and/or ``feedback`` (``None`` clears feedback)."""
    sets = []
    args: list[Any] = [message_id, session_id, tenant_id]
    if metadata is not None:
        args.append(dict(metadata))
        sets.append(f"metadata = ${len(args)}")
    if feedback is not _UNSET:
        args.append(None if feedback is None else dict(feedback))
        sets.append(f"feedback = ${len(args)}")
        sets.append(f"feedback_at = CASE WHEN ${len(args)}::jsonb IS NULL THEN NULL ELSE now() END")
    if not sets:
        return await get(conn, tenant_id, session_id, message_id)
    row = await conn.fetchrow(
        f"UPDATE messages SET {', '.join(sets)} "
        "WHERE id = $1 AND session_id = $2 AND tenant_id = $3 AND status <> 'deleted' "
        f"RETURNING {COLUMNS}",
        *args,
    )
    if row is None:
        raise NotFound("message not found")
    return to_json(row)


async def tombstone(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    message_id: uuid.UUID, *, actor: str, request_id: str | None = None,
) -> list[str]:
    """Erase content, context, metadata and attachments; keep the seq. Audited.

    Returns the object keys of the message's attachments, for the caller to delete.
    """
    async with conn.transaction():
        row = await conn.fetchrow(
            """
            UPDATE messages SET content = '', context = NULL, metadata = '{}'::jsonb,
                feedback = NULL, feedback_at = NULL, status = 'deleted'
            WHERE id = $1 AND session_id = $2 AND tenant_id = $3
            RETURNING (SELECT status FROM messages WHERE id = $1) AS old_status
            """,
            message_id, session_id, tenant_id,
        )
        if row is None:
            raise NotFound("message not found")
        if row["old_status"] != "deleted":
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
        await audit(conn, tenant_id, actor, "message.delete", str(message_id),
                    {"session_id": str(session_id)}, request_id)
    return [r["object_key"] for r in keys]
