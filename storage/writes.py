"""Message writes: the group-commit insert and the read that settles a lost commit.

Sequence numbers are assigned inside the inserting transaction by bumping
``sessions.last_seq`` under that row's lock, so concurrent writers on any replica
get consecutive, gap-free numbers in commit order. One statement can store the
batches of many sessions; message ids are chosen before the commit, so a retry can
never store a message twice (the primary key refuses it). The references a message
makes (its parent, its attachments) are checked and linked by :mod:`.write_refs`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from chat_storage.storage import usage
from chat_storage.storage.crypto.keyring import DataKey, Keyring
from chat_storage.storage.crypto.rows import PLAIN_OF_SEALED, seal_message
from chat_storage.storage.db import dumps_json
from chat_storage.storage.errors import NotFound
from chat_storage.storage.idempotency import record_response
from chat_storage.storage.messages import (
    COLUMNS,
    LINKED_FIELDS,
    NewMessage,
    SessionBatch,
    Stored,
    to_stored,
)
from chat_storage.storage.records import StoredMessage
from chat_storage.storage.write_refs import check_parents, claim_attachments, link_attachments

# SessionBatch and Stored live with WriteGroup; the write path imports them from here
__all__ = ["SessionBatch", "Stored", "fetch_by_ids", "fetch_settled", "insert_batches",
           "prefer_generic_plans"]

async def prefer_generic_plans(conn: asyncpg.Connection) -> None:
    """Plan the group-commit statement once per connection, for every batch size.

    For a connection a committer keeps; the pool's reset (``RESET ALL``) undoes it.
    """
    await conn.execute("SET plan_cache_mode = force_generic_plan")


# One statement bumps each session's last_seq under its row lock and inserts the rows
# numbered after it. Without idempotency records it is its own transaction: one round trip.
# It returns one row per session found (its seq base and the commit's timestamp): the
# stored messages are built from what was sent, so nothing big travels back.
_INSERT = f"""
WITH b AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int8[], $4::int8[], $5::int8[],
                         $6::int8[], $7::int8[])
        AS b(session_id, tenant_id, n, live, prompt, completion, total)
), s AS (
    UPDATE sessions AS s SET last_seq = s.last_seq + b.n,
        message_count = s.message_count + b.live, last_message_at = now(),
        activity_at = now(), updated_at = now(),
        prompt_tokens = {usage.add_sql("s.prompt_tokens", "b.prompt")},
        completion_tokens = {usage.add_sql("s.completion_tokens", "b.completion")},
        total_tokens = {usage.add_sql("s.total_tokens", "b.total")}
    FROM b WHERE s.id = b.session_id AND s.tenant_id = b.tenant_id
    RETURNING s.id, s.last_seq - b.n AS base
), m AS (
    INSERT INTO messages (id, tenant_id, session_id, seq, parent_id, role, content,
        sender_id, context, metadata, usage, status, completed_at, sealed, data_key_id,
        tool_calls, tool_call_id)
    SELECT u.id, u.tenant_id, u.session_id, s.base + u.pos, u.parent_id, u.role, u.content,
        u.sender_id, u.context::jsonb, u.metadata::jsonb, u.usage::jsonb, u.status,
        CASE WHEN u.status = 'streaming' THEN NULL ELSE now() END, u.sealed, u.data_key_id,
        u.tool_calls::jsonb, u.tool_call_id
    FROM unnest($8::uuid[], $9::uuid[], $10::uuid[], $11::int8[], $12::uuid[], $13::text[],
                $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[],
                $20::bytea[], $21::uuid[], $22::text[], $23::text[])
        AS u(id, tenant_id, session_id, pos, parent_id, role, content, sender_id, context,
             metadata, usage, status, sealed, data_key_id, tool_calls, tool_call_id)
    JOIN s ON s.id = u.session_id
)
SELECT s.id, s.base, now() AS at FROM s
"""


async def insert_batches(
    conn: asyncpg.Connection, batches: Sequence[SessionBatch], keyring: Keyring | None = None,
) -> list[list[Stored | Exception]]:
    """Store the groups of every batch in ONE transaction; return each group's outcome.

    Per batch, per group: its stored messages (consecutive seq, in group order), or
    :class:`NotFound` (no such session for that tenant), or :class:`InvalidReference`
    (a ``parent_id`` that is not a message of the session, or an attachment it cannot
    link; the group is left out so it cannot fail the others). Any other error aborts
    the whole transaction and is raised. Attachments are linked, and idempotent replies
    recorded, in the same transaction as the messages. With ``keyring``, the messages
    of an encrypted tenant's session are stored sealed under their user's data key
    (what is returned is plain, as the writer sent it).
    """
    results: list[list[Stored | Exception]] = [[[] for _ in b.groups] for b in batches]
    keys = [None if keyring is None else
            await keyring.for_session(conn, b.tenant_id, b.session_id) for b in batches]
    await check_parents(conn, batches, results)
    linking = any(m.attachment_ids for b in batches for g in b.groups for m in g.messages)
    if not linking and not any(g.idem is not None for b in batches for g in b.groups):
        keep = _kept(batches, results)
        if keep:  # one statement, its own transaction: one round trip
            _fill(batches, keep, await conn.fetch(_INSERT, *_insert_args(batches, keep, keys)),
                  results)
        return results
    async with conn.transaction():
        claimed = await claim_attachments(conn, batches, results) if linking else {}
        keep = _kept(batches, results)
        if not keep:
            return results
        _fill(batches, keep, await conn.fetch(_INSERT, *_insert_args(batches, keep, keys)), results,
              claimed)
        if linking:
            await link_attachments(conn, batches, keep, results)
        for bi, gi in keep:
            group, stored = batches[bi].groups[gi], results[bi][gi]
            if group.idem is None or isinstance(stored, Exception):
                continue  # none asked, or its session is gone: the route releases the key
            await record_response(conn, group.idem, 201,
                                  {"data": stored} if group.wrap else stored[0], keys[bi])
    return results


def _kept(batches: Sequence[SessionBatch],
          results: list[list[Stored | Exception]]) -> list[tuple[int, int]]:
    """The groups not refused yet, as (batch, group) indexes."""
    return [(bi, gi) for bi, b in enumerate(batches) for gi in range(len(b.groups))
            if not isinstance(results[bi][gi], Exception)]


def _fill(batches: Sequence[SessionBatch], keep: Sequence[tuple[int, int]],
          rows: Sequence[asyncpg.Record], results: list[list[Stored | Exception]],
          claimed: Mapping[uuid.UUID, asyncpg.Record] | None = None) -> None:
    """Each kept group's stored messages, as a read would return them.

    ``claimed``: the attachment rows locked for linking, by id; each message lists
    its own in the order of its ``attachment_ids``, as reads do.
    """
    claimed = claimed or {}
    found = {r["id"]: (r["base"], r["at"]) for r in rows}
    pos: dict[int, int] = {}
    for bi, gi in keep:
        batch = batches[bi]
        if batch.session_id not in found:
            results[bi][gi] = NotFound("session not found")
            continue
        base, at = found[batch.session_id]
        stored = []
        for m in batch.groups[gi].messages:
            pos[bi] = pos.get(bi, 0) + 1
            stored.append(to_stored({
                "id": m.id, "session_id": batch.session_id, "seq": base + pos[bi],
                "parent_id": m.parent_id, "role": m.role, "content": m.content,
                "sender_id": m.sender_id, "context": m.context, "metadata": m.metadata,
                "usage": m.usage, "feedback": None, "status": m.status, "created_at": at,
                "completed_at": None if m.status == "streaming" else at,
                "attachments": [_linked(claimed[aid]) for aid in m.attachment_ids],
                "tool_calls": m.tool_calls, "tool_call_id": m.tool_call_id,
            }))
        results[bi][gi] = stored


def _linked(row: asyncpg.Record) -> dict[str, Any]:
    """A linked attachment as a message object lists it (as the JSON of a read)."""
    return {f: str(row[f]) if f == "id" else row[f] for f in LINKED_FIELDS}


def _insert_args(batches: Sequence[SessionBatch], keep: Sequence[tuple[int, int]],
                 keys: Sequence[DataKey | None]) -> list[Any]:
    """The 23 array parameters of :data:`_INSERT` for the kept groups."""
    per_session: dict[int, list[NewMessage]] = {}
    for bi, gi in keep:
        per_session.setdefault(bi, []).extend(batches[bi].groups[gi].messages)
    b: list[list[Any]] = [[] for _ in range(7)]
    rows: list[tuple[SessionBatch, int, NewMessage]] = []
    sealed: list[bytes | None] = []
    key_ids: list[uuid.UUID | None] = []
    for bi, msgs in per_session.items():
        batch, key = batches[bi], keys[bi]
        for pos, m in enumerate(msgs, start=1):
            if key is None:
                rows.append((batch, pos, m))
                sealed.append(None)
                key_ids.append(None)
                continue
            sealed.append(seal_message(key, batch.tenant_id, batch.session_id, m.id,
                                       {"content": m.content, "context": m.context,
                                        "metadata": m.metadata, "tool_calls": m.tool_calls,
                                        "tool_call_id": m.tool_call_id}))
            key_ids.append(key.id)
            rows.append((batch, pos, dataclasses.replace(m, **PLAIN_OF_SEALED)))
        tokens = [usage.tokens(m.usage) for m in msgs]
        live = sum(1 for m in msgs if m.status != "deleted")
        for column, v in zip(b, (
            batch.session_id, batch.tenant_id, len(msgs), live,
            usage.summed(t[0] for t in tokens), usage.summed(t[1] for t in tokens),
            usage.summed(t[2] for t in tokens),
        ), strict=True):
            column.append(v)
    return [
        *b,
        [m.id for _, _, m in rows], [s.tenant_id for s, _, _ in rows],
        [s.session_id for s, _, _ in rows], [pos for _, pos, _ in rows],
        [m.parent_id for _, _, m in rows], [m.role for _, _, m in rows],
        [m.content for _, _, m in rows], [m.sender_id for _, _, m in rows],
        # JSON goes as text: asyncpg would take a list value for a nested array
        [_json(m.context) for _, _, m in rows], [_json(m.metadata) for _, _, m in rows],
        [_json(m.usage) for _, _, m in rows], [m.status for _, _, m in rows],
        sealed, key_ids,
        [_json(m.tool_calls) for _, _, m in rows], [m.tool_call_id for _, _, m in rows],
    ]


def _json(value: Any) -> str | None:
    return None if value is None else dumps_json(value)


async def fetch_settled(
    conn: asyncpg.Connection,
    sessions: Sequence[tuple[uuid.UUID, uuid.UUID]],
    ids: Sequence[uuid.UUID],
    *,
    lock_timeout_s: float,
) -> dict[uuid.UUID, StoredMessage]:
    """The stored messages among ``ids``, read once no transaction can still store them.

    A transaction that inserts into a session holds that session's row lock until it
    ends, so taking the locks of ``sessions`` (``(tenant_id, session_id)`` pairs) waits
    for a writer whose connection was lost to commit or roll back; the read after
    that sees its final outcome. Raises ``LockNotAvailableError`` after ``lock_timeout_s``.
    """
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {max(1, int(lock_timeout_s * 1000))}")
        await conn.execute(
            "SELECT 1 FROM sessions WHERE id = ANY($1::uuid[]) AND tenant_id = ANY($2::uuid[]) "
            "ORDER BY id FOR UPDATE",
            [s for _, s in sessions], list({t for t, _ in sessions}),
        )
        return await fetch_by_ids(conn, [t for t, _ in sessions], ids)


async def fetch_by_ids(
    conn: asyncpg.Connection, tenant_ids: Sequence[uuid.UUID], ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, StoredMessage]:
    """Stored messages among ``ids`` of the tenants ``tenant_ids``, by id."""
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM messages "
        "WHERE id = ANY($1::uuid[]) AND tenant_id = ANY($2::uuid[])",
        list(ids), list(set(tenant_ids)),
    )
    return {r["id"]: to_stored(r) for r in rows}
