"""Reading a whole history for export: a consistent snapshot, read in bounded pages.

An export runs inside :func:`snapshot` (``REPEATABLE READ``, read only), so every
page sees the database as it was when the first one was read: messages committed
mid-export are not half in it, and a session deleted meanwhile is still whole.
Pages are keyset reads (by ``seq``; by ``(created_at, id)`` for sessions), so memory
stays bounded by one page whatever the size of the history.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import asyncpg

from chat_storage.storage import attachments, messages, sessions
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.crypto.rows import open_messages
from chat_storage.storage.crypto.titles import open_sessions

MESSAGE_PAGE = 500
SESSION_PAGE = 100


@contextlib.asynccontextmanager
async def snapshot(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """A read-only transaction whose reads all see one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        yield


async def message_pages(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    *, page_size: int = MESSAGE_PAGE, keyring: Keyring | None = None,
) -> AsyncGenerator[list[dict[str, Any]], None]:
    """The session's messages in ``seq`` order, ``page_size`` at a time, opened."""
    after = 0
    while True:
        rows = await conn.fetch(
            f"SELECT {messages.COLUMNS} FROM messages "
            "WHERE session_id = $1 AND tenant_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            session_id, tenant_id, after, page_size,
        )
        if rows:
            yield await open_messages(conn, keyring, tenant_id,
                                      [messages.to_json(r) for r in rows])
        if len(rows) < page_size:
            return
        after = rows[-1]["seq"]


async def user_sessions(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, user_id: str,
    *, page_size: int = SESSION_PAGE, keyring: Keyring | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """The user's sessions, oldest first, titles opened."""
    after: tuple[dt.datetime, uuid.UUID] | None = None
    while True:
        rows = await conn.fetch(
            f"SELECT {sessions.COLUMNS} FROM sessions WHERE tenant_id = $1 AND user_id = $2 "
            "AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid)) "
            "ORDER BY created_at, id LIMIT $5",
            tenant_id, user_id, None if after is None else after[0],
            None if after is None else after[1], page_size,
        )
        for session in await open_sessions(conn, keyring, tenant_id,
                                           [sessions.to_json(r) for r in rows]):
            yield session
        if len(rows) < page_size:
            return
        after = (rows[-1]["created_at"], rows[-1]["id"])


async def session_attachments(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
) -> list[dict[str, Any]]:
    """The session's attachments (their descriptions; the files stay in the store)."""
    rows = await conn.fetch(
        f"SELECT {attachments.COLUMNS} FROM attachments WHERE tenant_id = $1 "
        "AND session_id = $2 ORDER BY created_at, id",
        tenant_id, session_id,
    )
    return [attachments.to_json(r) for r in rows]
