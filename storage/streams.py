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
from typing import Any

import asyncpg

from chat_storage.storage.errors import Conflict, NotFound
from chat_storage.storage.messages import COLUMNS, to_stored
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
) -> bool:
    """Store the content of a message still streaming; ``False`` if it is no longer so.

    The stored content is normally ``content[:stored_len]``, so only ``tail`` is
    appended; if the row holds something else (a checkpoint was lost) it is rewritten
    whole. Both refresh ``stream_seen_at``, the owner's heartbeat.
    """
    done = await conn.fetchval(
        """
        UPDATE messages SET content = content || $4, stream_seen_at = now()
        WHERE id = $1 AND session_id = $2 AND tenant_id = $3 AND status = 'streaming'
          AND char_length(content) = $5
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
        RETURNING true
        """,
        message_id, session_id, tenant_id, content,
    )
    return bool(done)


async def finish(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    message_id: uuid.UUID, *, content: str, status: str,
    metadata: Mapping[str, Any] | None = None, usage: Mapping[str, Any] | None = None,
) -> StoredMessage:
    """End a stream: final content, status, metadata (merged) and usage in one transaction.

    The session's token totals grow by ``usage``. :class:`Conflict` if the message is
    no longer streaming (someone else ended it), :class:`NotFound` if it is gone.
    """
    if status not in FINAL_STATUSES:
        raise ValueError(f"not a final status: {status}")
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""
            UPDATE messages SET content = $4, status = $5, metadata = metadata || $6,
                usage = coalesce($7, usage), completed_at = now(), stream_seen_at = NULL
            WHERE id = $1 AND session_id = $2 AND tenant_id = $3 AND status = 'streaming'
            RETURNING {COLUMNS}
            """,
            message_id, session_id, tenant_id, content, status, dict(metadata or {}),
            None if usage is None else dict(usage),
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
    return to_stored(row)


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
    conn: asyncpg.Connection, older_than_s: float, limit: int = 500
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
    return [(r["tenant_id"], to_stored(r)) for r in rows]


async def append_recovered(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, message_id: uuid.UUID,
    stored_len: int, tail: str,
) -> StoredMessage | None:
    """Append ``tail`` to a just-interrupted message whose content is ``stored_len`` long.

    The sweeper's recovery of what its dead owner had streamed past the last
    checkpoint; ``None`` if the row is not in that state any more.
    """
    row = await conn.fetchrow(
        f"""
        UPDATE messages SET content = content || $4
        WHERE tenant_id = $1 AND id = $2 AND status = 'interrupted'
          AND char_length(content) = $3
        RETURNING {COLUMNS}
        """,
        tenant_id, message_id, stored_len, tail,
    )
    return None if row is None else to_stored(row)


# pg_try_advisory_lock key of the stream sweeper ("chatswep" in ASCII)
SWEEP_LOCK = 0x6368617473776570


async def try_sweep_lock(conn: asyncpg.Connection) -> bool:
    """Take the sweeper's lock until the end of the caller's transaction, if free.

    ``False``: another replica is sweeping now.
    """
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SWEEP_LOCK))


async def live_state(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID
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
    return int(last_seq), [to_stored(r) for r in rows]


async def after(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    after_seq: int, *, upto: int | None = None, limit: int = 500,
) -> list[StoredMessage]:
    """Messages with ``after_seq < seq <= upto`` in seq order, at most ``limit``."""
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM messages WHERE session_id = $1 AND tenant_id = $2 "
        "AND seq > $3 AND ($4::int8 IS NULL OR seq <= $4) ORDER BY seq LIMIT $5",
        session_id, tenant_id, after_seq, upto, limit,
    )
    return [to_stored(r) for r in rows]


async def at_seqs(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    seqs: Sequence[int],
) -> list[StoredMessage]:
    """The messages at ``seqs``, in seq order."""
    if not seqs:
        return []
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM messages WHERE session_id = $1 AND tenant_id = $2 "
        "AND seq = ANY($3::int8[]) ORDER BY seq",
        session_id, tenant_id, list(seqs),
    )
    return [to_stored(r) for r in rows]
