"""Session rows: create, read, list, update, delete. Every query is scoped by tenant."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from storage.errors import NotFound
from storage.idempotency import Claim, record_response
from storage.ids import new_id
from storage.tenants import audit

COLUMNS = (
    "id, user_id, title, favorite, metadata, message_count, last_seq, prompt_tokens, "
    "completion_tokens, total_tokens, expires_at, last_message_at, activity_at, "
    "created_at, updated_at"
)


def to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The API's session object from a row of :data:`COLUMNS`."""
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "title": row["title"],
        "favorite": row["favorite"],
        "metadata": row["metadata"],
        "message_count": row["message_count"],
        "last_seq": row["last_seq"],
        "usage": {
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "total_tokens": row["total_tokens"],
        },
        "expires_at": row["expires_at"],
        "last_message_at": row["last_message_at"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _expires(ttl_s: int | None) -> dt.datetime | None:
    if ttl_s is None:
        return None
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl_s)


async def create(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    *,
    user_id: str,
    title: str = "",
    metadata: Mapping[str, Any] | None = None,
    ttl_s: int | None = None,
    idem: Claim | None = None,
) -> dict[str, Any]:
    """Create a session; with ``idem``, its response is recorded in the same transaction."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""
            INSERT INTO sessions (id, tenant_id, user_id, title, metadata, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6)
            RETURNING {COLUMNS}
            """,
            new_id(), tenant_id, user_id, title, dict(metadata or {}), _expires(ttl_s),
        )
        session = to_json(row)
        if idem is not None:
            await record_response(conn, idem, 201, session)
    return session


async def get(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID
) -> dict[str, Any]:
    """The session, or :class:`NotFound` (also for another tenant's session)."""
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM sessions WHERE id = $1 AND tenant_id = $2",
        session_id, tenant_id,
    )
    if row is None:
        raise NotFound("session not found")
    return to_json(row)


_UNSET: Any = object()


async def update(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    session_id: uuid.UUID,
    *,
    title: str | None = None,
    favorite: bool | None = None,
    metadata: Mapping[str, Any] | None = None,
    ttl_s: int | Any | None = _UNSET,
) -> dict[str, Any]:
    """Change the given fields; ``ttl_s=None`` clears ``expires_at``."""
    sets = ["updated_at = now()"]
    args: list[Any] = [session_id, tenant_id]
    for column, value in (("title", title), ("favorite", favorite),
                          ("metadata", None if metadata is None else dict(metadata))):
        if value is not None:
            args.append(value)
            sets.append(f"{column} = ${len(args)}")
    if ttl_s is not _UNSET:
        args.append(_expires(ttl_s))
        sets.append(f"expires_at = ${len(args)}")
    row = await conn.fetchrow(
        f"UPDATE sessions SET {', '.join(sets)} WHERE id = $1 AND tenant_id = $2 "
        f"RETURNING {COLUMNS}",
        *args,
    )
    if row is None:
        raise NotFound("session not found")
    return to_json(row)


async def delete(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    *, actor: str, request_id: str | None = None,
) -> list[str]:
    """Delete a session and everything under it; return its attachments' object keys."""
    async with conn.transaction():
        keys = await conn.fetch(
            "SELECT object_key FROM attachments WHERE session_id = $1 AND tenant_id = $2",
            session_id, tenant_id,
        )
        deleted = await conn.fetchval(
            "DELETE FROM sessions WHERE id = $1 AND tenant_id = $2 RETURNING id",
            session_id, tenant_id,
        )
        if deleted is None:
            raise NotFound("session not found")
        await audit(conn, tenant_id, actor, "session.delete", str(session_id),
                    request_id=request_id)
    return [r["object_key"] for r in keys]
