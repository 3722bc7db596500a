"""Streamed messages in Postgres: checkpoints, the final write, and reads for subscribers.

A streamed answer is inserted with ``status = 'streaming'`` by the write path (its
``seq`` is fixed then). While tokens arrive its content is checkpointed here; the
end (``complete``, ``aborted`` or ``interrupted``) writes the whole content, usage and
metadata in one transaction. Every query is scoped by tenant, except the sweeper's,
which is a maintenance job over all tenants (like retention).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

import asyncpg

from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.crypto.rows import open_messages
from chat_storage.storage.crypto.streaming import appended, finished, reseal, with_content
from chat_storage.storage.errors import Conflict, NotFound
from chat_storage.storage.messages import COLUMNS, to_json, to_stored
from chat_storage.storage.records import StoredMessage
from chat_storage.storage.usage import add_sql, tokens

FINAL_STATUSES = ("complete", "aborted", "interrupted")
_ADD_USAGE = f"""
UPDATE sessions SET prompt_tokens = {add_sql("prompt_tokens", "$3")},
    completion_tokens = {add_sql("completion_tokens", "$4")},
    total_tokens = {add_sql("total_tokens", "$5")}, updated_at = now()
WHERE id = $1 AND tenant_id = $2
"""


async def checkpoint(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    message_id: uuid.UUID, *, stored_len: int, tail: str, content: str,
    keyring: Keyring | None = None,
) -> bool:
    """Store the content of a message still streaming; ``False`` if it is no longer so.

    The stored content is normally ``content[:stored_len]``, so only ``tail`` is
    appended; if the row holds something else (a checkpoint was lost) it is rewritten
    whole. Both refresh ``stream_seen_at``, the owner's heartbeat. A sealed row (an
    encrypted tenant's) is sealed again whole (:mod:`storage.crypto.streaming`).
    """
    if await _sealed_session(conn, keyring, tenant_id, session_id):
        assert keyring is not None  # noqa: S101 - narrows the type: _sealed_session said so
        if await reseal(conn, keyring, tenant_id, message_id, session_id=session_id,
                        status="streaming", change=with_content(content),
                        sets="stream_seen_at = now()") is not None:
            return True
    done = await conn.fetchval(
        """
        UPDATE messages SET content = content || $4, stream_seen_at = now()
        WHERE id = $1 AND session_id = $2 AND tenant_id = $3 AND status = 'streaming'
          AND char_length(content) = $5 AND sealed IS NULL
        RETURNING true
        """,
        message_id, session_id, tenant_id, tail, stored_len,
    )
    if done:
        return True
    done = await conn.fetchval(
        """
        UPDATE messages SET content = $4, stream_seen_at = now()
        WHERE id = $1 AND session_id = $2 AND tenant_id = $3 AND status = 'streaming'
          AND sealed IS NULL
        RETURNING true
        """,
        message_id, session_id, tenant_id, content,
    )
    return bool(done)


async def finish(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    message_id: uuid.UUID, *, content: str, status: str,
    metadata: Mapping[str, Any] | None = None, usage: Mapping[str, Any] | None = None,
    tool_calls: Sequence[Mapping[str, Any]] | None = None, keyring: Keyring | None = None,
) -> StoredMessage:
    """End a stream: final content, status, metadata (merged), usage and tool calls (when
    given: the answer's, replacing none) in one transaction.

    The session's token totals grow by ``usage``. :class:`Conflict` if the message is
    no longer streaming (someone else ended it), :class:`NotFound` if it is gone.
    """
    if status not in FINAL_STATUSES:
        raise ValueError(f"not a final status: {status}")
    async with conn.transaction():
        row = None
        if await _sealed_session(conn, keyring, tenant_id, session_id):
            assert keyring is not None  # noqa: S101 - narrows the type
            row = await reseal(
                conn, keyring, tenant_id, message_id, session_id=session_id,
                status="streaming", change=finished(content, metadata, tool_calls),
                sets="status = $5, usage = coalesce($6, usage), completed_at = now(), "
                     "stream_seen_at = NULL",
                args=(status, None if usage is None else dict(usage)), returning=COLUMNS)
        if row is None:
            row = await conn.fetchrow(
                f"""
                UPDATE messages SET content = $4, status = $5, metadata = metadata || $6,
                    usage = coalesce($7, usage), tool_calls = coalesce($8, tool_calls),
                    completed_at = now(), stream_seen_at = NULL
                WHERE id = $1 AND session_id = $2 AND tenant_id = $3 AND status = 'streaming'
                  AND sealed IS NULL
                RETURNING {COLUMNS}
                """,
                message_id, session_id, tenant_id, content, status, dict(metadata or {}),
                None if usage is None else dict(usage),
                None if tool_calls is None else [dict(c) for c in tool_calls],
            )
        if row is None:
            exists = await conn.fetchval(
                "SELECT status FROM messages WHERE id = $1 AND session_id = $2 "
                "AND tenant_id = $3", message_id, session_id, tenant_id,
            )
            if exists is None:
                raise NotFound("message not found")
            raise Conflict("the stream has already ended")
        if usage:
            await conn.execute(_ADD_USAGE, session_id, tenant_id, *tokens(usage))
    [message] = await _opened(conn, keyring, tenant_id, [row])
    return message


async def heartbeat(
    conn: asyncpg.Connection, owned: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> None:
    """Mark the streams ``(tenant_id, message_id)`` held by this replica as alive."""
    if not owned:
        return
    await conn.execute(
        """
        UPDATE messages m SET stream_seen_at = now()
        FROM unnest($1::uuid[], $2::uuid[]) AS o(tenant_id, id)
        WHERE m.tenant_id = o.tenant_id AND m.id = o.id AND m.status = 'streaming'
        """,
        [t for t, _ in owned], [m for _, m in owned],
    )


async def sweep_orphans(
    conn: asyncpg.Connection, older_than_s: float, limit: int = 500,
    keyring: Keyring | None = None,
) -> list[tuple[uuid.UUID, StoredMessage]]:
    """Interrupt streaming messages nobody has touched for ``older_than_s`` (owner died).

    Returns ``(tenant_id, message)`` for each, so their subscribers can be told.
    Runs on one replica at a time: the caller holds :data:`SWEEP_LOCK`.
    """
    rows = await conn.fetch(
        f"""
        UPDATE messages SET status = 'interrupted', completed_at = now(), stream_seen_at = NULL
        WHERE id IN (
            SELECT id FROM messages
            WHERE status = 'streaming'
              AND coalesce(stream_seen_at, created_at) < now() - make_interval(secs => $1)
            LIMIT $2
        ) AND status = 'streaming'
        RETURNING tenant_id, {COLUMNS}
        """,
        older_than_s, limit,
    )
    return [(r["tenant_id"], (await _opened(conn, keyring, r["tenant_id"], [r]))[0])
            for r in rows]


async def append_recovered(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, message_id: uuid.UUID,
    stored_len: int, tail: str, keyring: Keyring | None = None,
) -> StoredMessage | None:
    """Append ``tail`` to a just-interrupted message whose content is ``stored_len`` long.

    The sweeper's recovery of what its dead owner had streamed past the last
    checkpoint; ``None`` if the row is not in that state any more.
    """
    row = await conn.fetchrow(
        f"""
        UPDATE messages SET content = content || $4
        WHERE tenant_id = $1 AND id = $2 AND status = 'interrupted'
          AND char_length(content) = $3 AND sealed IS NULL
        RETURNING {COLUMNS}
        """,
        tenant_id, message_id, stored_len, tail,
    )
    if row is None and keyring is not None:
        row = await reseal(conn, keyring, tenant_id, message_id, status="interrupted",
                           change=appended(stored_len, tail), returning=COLUMNS)
    return None if row is None else (await _opened(conn, keyring, tenant_id, [row]))[0]


async def redact_swept(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, message_id: uuid.UUID, content: str,
    keyring: Keyring | None = None,
) -> StoredMessage | None:
    """Store ``content`` (its redacted form) as a just-swept message's content.

    The sweeper's last step for a tenant that redacts PII; ``None`` if the row is no
    longer ``interrupted``. A sealed row is resealed with the new content.
    """
    row = await conn.fetchrow(
        f"""
        UPDATE messages SET content = $3
        WHERE tenant_id = $1 AND id = $2 AND status = 'interrupted' AND sealed IS NULL
        RETURNING {COLUMNS}
        """,
        tenant_id, message_id, content,
    )
    if row is None and keyring is not None:
        row = await reseal(conn, keyring, tenant_id, message_id, status="interrupted",
                           change=lambda fields: {**fields, "content": content},
                           returning=COLUMNS)
    return None if row is None else (await _opened(conn, keyring, tenant_id, [row]))[0]


# pg_try_advisory_lock key of the stream sweeper ("chatswep" in ASCII)
SWEEP_LOCK = 0x6368617473776570


async def try_sweep_lock(conn: asyncpg.Connection) -> bool:
    """Take the sweeper's lock until the end of the caller's transaction, if free.

    ``False``: another replica is sweeping now.
    """
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SWEEP_LOCK))


async def live_state(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    keyring: Keyring | None = None,
) -> tuple[int, list[StoredMessage]]:
    """The session's ``last_seq`` and its messages still streaming (as last checkpointed)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        last_seq = await conn.fetchval(
            "SELECT last_seq FROM sessions WHERE id = $1 AND tenant_id = $2",
            session_id, tenant_id,
        )
        if last_seq is None:
            raise NotFound("session not found")
        rows = await conn.fetch(
            f"SELECT {COLUMNS} FROM messages WHERE session_id = $1 AND tenant_id = $2 "
            "AND status = 'streaming' ORDER BY seq",
            session_id, tenant_id,
        )
    return int(last_seq), await _opened(conn, keyring, tenant_id, rows)


async def after(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    after_seq: int, *, upto: int | None = None, limit: int = 500,
    keyring: Keyring | None = None,
) -> list[StoredMessage]:
    """Messages with ``after_seq < seq <= upto`` in seq order, at most ``limit``."""
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM messages WHERE session_id = $1 AND tenant_id = $2 "
        "AND seq > $3 AND ($4::int8 IS NULL OR seq <= $4) ORDER BY seq LIMIT $5",
        session_id, tenant_id, after_seq, upto, limit,
    )
    return await _opened(conn, keyring, tenant_id, rows)


async def at_seqs(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    seqs: Sequence[int], keyring: Keyring | None = None,
) -> list[StoredMessage]:
    """The messages at ``seqs``, in seq order."""
    if not seqs:
        return []
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM messages WHERE session_id = $1 AND tenant_id = $2 "
        "AND seq = ANY($3::int8[]) ORDER BY seq",
        session_id, tenant_id, list(seqs),
    )
    return await _opened(conn, keyring, tenant_id, rows)


async def _sealed_session(conn: asyncpg.Connection, keyring: Keyring | None,
                          tenant_id: uuid.UUID, session_id: uuid.UUID) -> bool:
    """Whether the session's new content is sealed (cached by the keyring)."""
    return keyring is not None and (
        await keyring.for_session(conn, tenant_id, session_id)) is not None


async def _opened(conn: asyncpg.Connection, keyring: Keyring | None, tenant_id: uuid.UUID,
                  rows: Sequence[asyncpg.Record]) -> list[StoredMessage]:
    """Rows of :data:`COLUMNS` as stored messages, sealed fields opened."""
    if all(r["sealed"] is None for r in rows):  # the plain path pays nothing more
        return [to_stored(r) for r in rows]
    opened = await open_messages(conn, keyring, tenant_id, [to_json(r) for r in rows])
    return [cast(StoredMessage, m) for m in opened]
