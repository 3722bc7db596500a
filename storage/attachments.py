"""Attachment rows: announced (``pending``), then ``ready`` once the upload is verified.

The file itself is in the object store (:mod:`storage.objects`) under ``object_key``,
which is ``tenant/session/attachment`` and never shown to clients. A ready attachment
is linked to at most one message, when that message is stored
(:mod:`storage.writes`); deleting the message or the session deletes the rows, and
the caller deletes the objects after the commit.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from chat_storage.storage.errors import NotFound
from chat_storage.storage.ids import parse_uuid
from chat_storage.storage.sqlparams import Params

COLUMNS = "id, session_id, message_id, name, mime, size, sha256, status, created_at, object_key"


def to_json(row: Mapping[str, Any] | asyncpg.Record) -> dict[str, Any]:
    """The API's attachment object (without the internal ``object_key``)."""
    return {k: row[k] for k in ("id", "session_id", "message_id", "name", "mime", "size",
                                "sha256", "status", "created_at")}


def tenant_prefix(tenant_id: uuid.UUID) -> str:
    """Where every attachment file of a tenant is kept."""
    return f"{tenant_id}/"


def object_key(tenant_id: uuid.UUID, session_id: uuid.UUID, attachment_id: uuid.UUID) -> str:
    """Where an attachment's file is kept in the object store."""
    return f"{tenant_prefix(tenant_id)}{session_id}/{attachment_id}"


def tenant_of(key: str) -> uuid.UUID | None:
    """The tenant an attachment's object key names (its first part)."""
    return parse_uuid(key.split("/", 1)[0])


async def create(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    attachment_id: uuid.UUID, *, name: str, mime: str, size: int, sha256: str,
) -> asyncpg.Record:
    """Announce a file for ``session_id``; :class:`NotFound` if there is no such session."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO attachments (id, tenant_id, session_id, name, mime, size, sha256, object_key)
        SELECT $1, s.tenant_id, s.id, $3, $4, $5, $6, $8
        FROM sessions s WHERE s.id = $2 AND s.tenant_id = $7
        RETURNING {COLUMNS}
        """,
        attachment_id, session_id, name, mime, size, sha256, tenant_id,
        object_key(tenant_id, session_id, attachment_id),
    )
    if row is None:
        raise NotFound("session not found")
    return row


async def get(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    attachment_id: uuid.UUID,
) -> asyncpg.Record:
    return _found(await conn.fetchrow(
        f"SELECT {COLUMNS} FROM attachments "
        "WHERE id = $1 AND session_id = $2 AND tenant_id = $3",
        attachment_id, session_id, tenant_id,
    ))


async def mark_ready(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    attachment_id: uuid.UUID,
) -> asyncpg.Record:
    """Set ``ready`` (it may already be); :class:`NotFound` if it was deleted meanwhile."""
    return _found(await conn.fetchrow(
        "UPDATE attachments SET status = 'ready' "
        f"WHERE id = $1 AND session_id = $2 AND tenant_id = $3 RETURNING {COLUMNS}",
        attachment_id, session_id, tenant_id,
    ))


async def list_for_session(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID, *,
    limit: int, status: str | None = None,
    after: tuple[dt.datetime, uuid.UUID] | None = None,
) -> list[asyncpg.Record]:
    """Up to ``limit`` attachments of a session of this tenant, oldest first.

    A keyset page: ``after`` is the ``(created_at, id)`` of the last item served.
    :class:`NotFound` if the tenant has no such session (checked only on an empty page).
    """
    p = Params(session_id, tenant_id, limit)
    where = ["session_id = $1", "tenant_id = $2"]
    if status is not None:
        where.append(p.fill("status = {}", status))
    if after is not None:
        where.append(p.fill("(created_at, id) > ({}, {})", *after))
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {COLUMNS} FROM attachments WHERE {' AND '.join(where)} "
        "ORDER BY created_at, id LIMIT $3",
        *p.values,
    )
    if not rows and not await conn.fetchval(
        "SELECT true FROM sessions WHERE id = $1 AND tenant_id = $2", session_id, tenant_id
    ):
        raise NotFound("session not found")
    return rows


def _found(row: asyncpg.Record | None) -> asyncpg.Record:
    if row is None:
        raise NotFound("attachment not found")
    return row


async def owner_of(conn: asyncpg.Connection,
                   key: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The (tenant, session) of the attachment row that still has the object ``key``
    (found by the id in it); ``None`` if no row has it."""
    attachment_id = parse_uuid(key.rsplit("/", 1)[-1])
    if attachment_id is None:
        return None
    row = await conn.fetchrow(
        "SELECT tenant_id, session_id FROM attachments WHERE id = $1 AND object_key = $2",
        attachment_id, key)
    return None if row is None else (row["tenant_id"], row["session_id"])


async def delete_stale(conn: asyncpg.Connection, older_than: dt.datetime,
                       limit: int = 1000) -> list[str]:
    """Delete up to ``limit`` attachments still pending since before ``older_than``.

    Their uploads never completed (or never happened); returns the object keys, for
    the caller to delete after this commits. All tenants: a maintenance job.
    """
    rows = await conn.fetch(
        """
        DELETE FROM attachments WHERE id IN (
            SELECT id FROM attachments WHERE status = 'pending' AND created_at < $1
            ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
        RETURNING object_key
        """,
        older_than, limit,
    )
    return [r["object_key"] for r in rows]
