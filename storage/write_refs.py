"""The references a write makes, checked and linked inside the writing transaction.

A message may name a parent (``parent_id``: a message of the same session) and
attachments (``attachment_ids``: uploaded to the same session and not linked yet).
:func:`chat_storage.storage.writes.insert_batches` calls these with the per-group
outcome lists it fills in: a group whose references fail is marked with
:class:`InvalidReference` and left out, so it cannot fail the others.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

import asyncpg

from chat_storage.storage.errors import InvalidReference
from chat_storage.storage.messages import SessionBatch, Stored, WriteGroup


async def check_parents(
    conn: asyncpg.Connection,
    batches: Sequence[SessionBatch],
    results: list[list[Stored | Exception]],
) -> None:
    """Mark the groups whose ``parent_id``s are not messages of their session."""
    wanted = {m.parent_id for b in batches for g in b.groups for m in g.messages
              if m.parent_id is not None}
    if not wanted:
        return
    rows = await conn.fetch(
        "SELECT id, session_id FROM messages "
        "WHERE id = ANY($1::uuid[]) AND tenant_id = ANY($2::uuid[])",
        list(wanted), list({b.tenant_id for b in batches}),
    )
    session_of = {r["id"]: r["session_id"] for r in rows}
    for bi, batch in enumerate(batches):
        for gi, group in enumerate(batch.groups):
            bad = next((j for j, m in enumerate(group.messages) if m.parent_id is not None
                        and session_of.get(m.parent_id) != batch.session_id), None)
            if bad is not None:
                field = f"messages.{bad}.parent_id" if group.wrap else "parent_id"
                results[bi][gi] = InvalidReference(field, "is not a message of this session")


async def claim_attachments(
    conn: asyncpg.Connection,
    batches: Sequence[SessionBatch],
    results: list[list[Stored | Exception]],
) -> dict[uuid.UUID, asyncpg.Record]:
    """Lock the attachments the groups name; refuse the groups that cannot have them.

    An attachment can be linked if it belongs to the group's session, is ``ready`` and
    is not linked yet, nor named twice. The batch's sessions are locked first, in id
    order, as every writer and session delete does; then no other transaction can link
    the locked attachments before this one ends. Returns the locked rows, by id.
    """
    await conn.execute(
        "SELECT 1 FROM sessions WHERE id = ANY($1::uuid[]) AND tenant_id = ANY($2::uuid[]) "
        "ORDER BY id FOR NO KEY UPDATE",
        [b.session_id for b in batches], list({b.tenant_id for b in batches}),
    )
    wanted = [a for b in batches for g in b.groups for m in g.messages for a in m.attachment_ids]
    rows = await conn.fetch(
        "SELECT id, session_id, status, message_id, name, mime, size, sha256 FROM attachments "
        "WHERE id = ANY($1::uuid[]) AND tenant_id = ANY($2::uuid[]) ORDER BY id FOR UPDATE",
        wanted, list({b.tenant_id for b in batches}),
    )
    found = {r["id"]: r for r in rows}
    taken: set[uuid.UUID] = set()
    for bi, batch in enumerate(batches):
        for gi, group in enumerate(batch.groups):
            if isinstance(results[bi][gi], Exception):
                continue
            problem = _attachment_problem(group, batch.session_id, found, taken)
            if problem is not None:
                results[bi][gi] = InvalidReference(*problem)
    return found


def _attachment_problem(
    group: WriteGroup, session_id: uuid.UUID, found: Mapping[uuid.UUID, asyncpg.Record],
    taken: set[uuid.UUID],
) -> tuple[str, str] | None:
    """(field, message) for the first attachment ``group`` cannot link, else None.

    The group's attachments join ``taken`` only if it can link them all.
    """
    mine: set[uuid.UUID] = set()
    for j, m in enumerate(group.messages):
        prefix = f"messages.{j}." if group.wrap else ""
        for k, aid in enumerate(m.attachment_ids):
            field, row = f"{prefix}attachment_ids.{k}", found.get(aid)
            if row is None or row["session_id"] != session_id:
                return field, "is not an attachment of this session"
            if row["status"] != "ready":
                return field, "is not uploaded yet: complete the upload first"
            if row["message_id"] is not None or aid in taken or aid in mine:
                return field, "is already attached to a message"
            mine.add(aid)
    taken |= mine
    return None


async def link_attachments(
    conn: asyncpg.Connection, batches: Sequence[SessionBatch],
    keep: Sequence[tuple[int, int]], results: list[list[Stored | Exception]],
) -> None:
    """Point the claimed attachments at the messages just stored, keeping their order."""
    links = [(aid, m.id, pos) for bi, gi in keep if not isinstance(results[bi][gi], Exception)
             for m in batches[bi].groups[gi].messages
             for pos, aid in enumerate(m.attachment_ids)]
    if links:
        await conn.execute(
            "UPDATE attachments AS a SET message_id = p.message_id, link_pos = p.pos "
            "FROM unnest($1::uuid[], $2::uuid[], $3::int4[]) AS p(id, message_id, pos) "
            "WHERE a.id = p.id",
            [a for a, _, _ in links], [m for _, m, _ in links], [p for _, _, p in links],
        )
