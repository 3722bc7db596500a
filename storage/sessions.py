"""Session rows: create, read, list, update, delete, user erasure. Scoped by tenant.

Lock order, kept by every writer so none deadlocks: a session row, then its messages.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import asyncpg

from chat_storage.storage.audit_log import audit
from chat_storage.storage.crypto.keyring import Keyring, shred
from chat_storage.storage.crypto.titles import open_sessions, seal_title
from chat_storage.storage.errors import Conflict, NotFound
from chat_storage.storage.idempotency import Claim, forget_sessions, record_response
from chat_storage.storage.ids import new_id
from chat_storage.storage.sqlparams import Params

COLUMNS = (
    "id, user_id, title, favorite, metadata, message_count, last_seq, prompt_tokens, "
    "completion_tokens, total_tokens, expires_at, last_message_at, activity_at, "
    "created_at, updated_at, sealed_title, data_key_id"
)


def to_json(row: Mapping[str, Any] | asyncpg.Record) -> dict[str, Any]:
    """The API's session object from a row of :data:`COLUMNS`; a sealed one also carries
    ``sealed_title`` and ``data_key_id``, for
    :func:`chat_storage.storage.crypto.titles.open_sessions` to open."""
    session = {
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
    if row.get("sealed_title") is not None:
        session["sealed_title"], session["data_key_id"] = row["sealed_title"], row["data_key_id"]
    return session


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
    keyring: Keyring | None = None,
    actor: str = "system",
    request_id: str | None = None,
) -> dict[str, Any]:
    """Create a session; with ``idem``, its response is recorded in the same transaction,
    as is its audit record (``session.create``: who, for which user; never the title).
    With ``keyring``, an encrypted tenant's title is stored sealed."""
    session_id = new_id()
    key = None if keyring is None else await keyring.for_new_session(conn, tenant_id, user_id)
    sealed = None if key is None else seal_title(key, tenant_id, session_id, title)
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""
            INSERT INTO sessions (id, tenant_id, user_id, title, metadata, expires_at,
                                  sealed_title, data_key_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            RETURNING {COLUMNS}
            """,
            session_id, tenant_id, user_id, "" if key else title, dict(metadata or {}),
            _expires(ttl_s), sealed, None if key is None else key.id,
        )
        # S101: narrows the type: INSERT ... RETURNING returns the row
        assert row is not None  # noqa: S101
        [session] = await open_sessions(conn, keyring, tenant_id, [to_json(row)])
        await audit(conn, tenant_id, actor, "session.create", str(row["id"]),
                    {"user_id": user_id}, request_id)
        if idem is not None:
            await record_response(conn, idem, 201, session, key, session_id=row["id"])
    return session


async def get(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    keyring: Keyring | None = None,
) -> dict[str, Any]:
    """The session, or :class:`NotFound` (also for another tenant's session)."""
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM sessions WHERE id = $1 AND tenant_id = $2",
        session_id, tenant_id,
    )
    if row is None:
        raise NotFound("session not found")
    [session] = await open_sessions(conn, keyring, tenant_id, [to_json(row)])
    return session


async def check_exists(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                       session_id: uuid.UUID) -> None:
    """:class:`NotFound` unless the tenant has this session (nothing is opened)."""
    if not await conn.fetchval("SELECT true FROM sessions WHERE id = $1 AND tenant_id = $2",
                               session_id, tenant_id):
        raise NotFound("session not found")


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
    keyring: Keyring | None = None,
    actor: str = "system",
    request_id: str | None = None,
) -> dict[str, Any]:
    """Change the given fields; ``ttl_s=None`` clears ``expires_at``. An encrypted
    tenant's new title is sealed.

    A new ``title`` is audited (``session.rename``, without the title itself), in the
    same transaction as the change.
    """
    p = Params(session_id, tenant_id)
    sets = ["updated_at = now()"]
    key = (None if keyring is None or title is None
           else await keyring.for_session(conn, tenant_id, session_id))
    if key is not None and title is not None:
        sets.append(p.fill("sealed_title = {}", seal_title(key, tenant_id, session_id, title)))
        sets.append(p.fill("data_key_id = {}", key.id))
        title = ""
    elif title is not None:
        sets.append("sealed_title = NULL")  # stored plain again: the old sealed one goes
    for column, value in (("title", title), ("favorite", favorite),
                          ("metadata", None if metadata is None else dict(metadata))):
        if value is not None:
            sets.append(p.fill(f"{column} = {{}}", value))
    if ttl_s is not _UNSET:
        sets.append(p.fill("expires_at = {}", _expires(ttl_s)))
    async with conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE sessions SET {', '.join(sets)} WHERE id = $1 AND tenant_id = $2 "
            f"RETURNING {COLUMNS}",
            *p.values,
        )
        if row is None:
            raise NotFound("session not found")
        if title is not None:
            await audit(conn, tenant_id, actor, "session.rename", str(session_id), None,
                        request_id)
    [session] = await open_sessions(conn, keyring, tenant_id, [to_json(row)])
    return session


class Listed(NamedTuple):
    """A listed session and its sort key ``(activity_at, id)``, which a cursor encodes."""

    session: dict[str, Any]
    key: tuple[dt.datetime, uuid.UUID]


def like_pattern(text: str) -> str:
    """A ``LIKE`` pattern matching ``text`` anywhere, its wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_sessions(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    *,
    user_id: str | None = None,
    favorite: bool | None = None,
    q: str | None = None,
    after: tuple[dt.datetime, uuid.UUID] | None = None,
    limit: int = 50,
    keyring: Keyring | None = None,
) -> list[Listed]:
    """Up to ``limit`` sessions, most recent activity first, after the key ``after``.

    Keyset order ``(activity_at, id) DESC`` never repeats a session across pages; a
    session that gets a new message meanwhile moves to the top, so a client already
    past its old place does not see it again in this walk. ``q`` (a title filter) is a
    :class:`Conflict` for an encrypted tenant: its titles are not stored in plain text.
    """
    p = Params(tenant_id)
    where = ["tenant_id = $1"]
    if user_id is not None:
        where.append(p.fill("user_id = {}", user_id))
    if favorite is not None:
        where.append(p.fill("favorite = {}", favorite))
    if q is not None:
        if await conn.fetchval("SELECT encrypted FROM tenants WHERE id = $1", tenant_id):
            raise Conflict("q is off for this tenant: its session titles are encrypted at "
                           "rest (docs/security.md)")
        where.append(p.fill("title ILIKE {} ESCAPE '\\'", like_pattern(q)))
    if after is not None:
        where.append(p.fill("(activity_at, id) < ({}, {})", *after))
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM sessions WHERE {' AND '.join(where)} "
        f"ORDER BY activity_at DESC, id DESC LIMIT {p(limit)}",
        *p.values,
    )
    opened = await open_sessions(conn, keyring, tenant_id, [to_json(r) for r in rows])
    return [Listed(s, (r["activity_at"], r["id"])) for s, r in zip(opened, rows, strict=True)]


class Erased(NamedTuple):
    """What a delete removed; ``object_keys`` are stored objects the caller must delete."""

    sessions: int
    messages: int
    object_keys: list[str]
    session_ids: list[uuid.UUID]


async def delete(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    *, actor: str, request_id: str | None = None,
) -> list[str]:
    """Delete a session and everything under it; return its attachments' object keys.

    Audited. A session mailbox still open for it finds no row at its next write,
    which then fails with :class:`NotFound`.
    """
    async with conn.transaction():
        erased = await _erase(conn, tenant_id, "id = $2", session_id)
        if erased.sessions == 0:
            raise NotFound("session not found")
        await audit(conn, tenant_id, actor, "session.delete", str(session_id),
                    {"messages": erased.messages}, request_id)
    return erased.object_keys


async def erase_user(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, user_id: str,
    *, actor: str, request_id: str | None = None,
) -> Erased:
    """Erase every session and message of ``user_id`` in the tenant, in one transaction.

    One audit record carries the counts. Sessions created while this runs are not
    part of it (a new erasure request covers them). The user's data key is destroyed in
    the same transaction (crypto-shredding): copies of their sealed rows in backups and
    archives no longer open.
    """
    async with conn.transaction():
        erased = await _erase(conn, tenant_id, "user_id = $2", user_id)
        await _forget_replies(conn, tenant_id, user_id, erased.session_ids)
        shredded = await shred(conn, tenant_id, user_id)
        await audit(conn, tenant_id, actor, "user.erase", f"user:{user_id}",
                    {"sessions": erased.sessions, "messages": erased.messages,
                     "data_keys_destroyed": len(shredded)}, request_id)
    return erased


async def ids_of_user(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                      user_id: str) -> list[uuid.UUID]:
    """The ids of every session of ``user_id`` in the tenant."""
    rows = await conn.fetch("SELECT id FROM sessions WHERE tenant_id = $1 AND user_id = $2",
                            tenant_id, user_id)
    return [r["id"] for r in rows]


async def erase_ids(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                    ids: Sequence[uuid.UUID]) -> Erased:
    """Delete the tenant's sessions ``ids`` (in the caller's transaction; not audited)."""
    return await _erase(conn, tenant_id, "id = ANY($2::uuid[])", list(ids))


async def _erase(conn: asyncpg.Connection, tenant_id: uuid.UUID, match: str,
                 value: Any) -> Erased:
    """Delete the tenant's sessions matching ``match`` (``$2`` is ``value``)."""
    # Session rows first, in id order: the lock order of every writer (a message
    # insert or tombstone locks its session before its messages), so none deadlocks
    # with this; once held, no message can be added to these sessions.
    locked = await conn.fetch(
        f"SELECT id FROM sessions WHERE tenant_id = $1 AND {match} ORDER BY id FOR UPDATE",
        tenant_id, value,
    )
    ids = [r["id"] for r in locked]
    if not ids:
        return Erased(0, 0, [], [])
    messages = await conn.fetchval(
        "SELECT count(*) FROM messages WHERE tenant_id = $1 AND session_id = ANY($2::uuid[])",
        tenant_id, ids,
    )
    keys = await conn.fetch(
        "SELECT object_key FROM attachments WHERE tenant_id = $1 "
        "AND session_id = ANY($2::uuid[])",
        tenant_id, ids,
    )
    await conn.execute("DELETE FROM sessions WHERE tenant_id = $1 AND id = ANY($2::uuid[])",
                       tenant_id, ids)
    # stored replies are copies of what goes (titles, content, attachment names)
    await forget_sessions(conn, tenant_id, ids)
    return Erased(len(ids), messages, [r["object_key"] for r in keys], ids)


async def _forget_replies(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, user_id: str,
    session_ids: Sequence[uuid.UUID],
) -> None:
    """Drop stored idempotent replies of the user that name no session.

    Replies that name their session went with it (:func:`_erase`); these are the ones a
    replica without migration 0014 recorded during a rolling upgrade. This reads all
    the tenant's such keys, so only an erasure does it, not every session delete.
    """
    # the shapes of the replies recorded by create (session), message, batch, attachment
    await conn.execute(
        """
        DELETE FROM idempotency_keys WHERE tenant_id = $1 AND response IS NOT NULL
          AND session_id IS NULL AND (
            response->>'user_id' = $2
            OR response->>'session_id' = ANY($3::text[])
            OR response->'data'->0->>'session_id' = ANY($3::text[])
            OR response->'attachment'->>'session_id' = ANY($3::text[]))
        """,
        tenant_id, user_id, [str(i) for i in session_ids],
    )


async def owner(conn: asyncpg.Connection, tenant_id: uuid.UUID,
                session_id: uuid.UUID) -> str | None:
    """The user a session of the tenant belongs to; ``None`` if there is no such session."""
    user_id: str | None = await conn.fetchval(
        "SELECT user_id FROM sessions WHERE id = $1 AND tenant_id = $2", session_id, tenant_id)
    return user_id


async def owned_of(conn: asyncpg.Connection, tenant_id: uuid.UUID, user_id: str,
                   session_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``session_ids`` are sessions of ``user_id`` in the tenant."""
    rows = await conn.fetch(
        "SELECT id FROM sessions WHERE tenant_id = $1 AND user_id = $2 AND id = ANY($3)",
        tenant_id, user_id, session_ids)
    return {r["id"] for r in rows}
