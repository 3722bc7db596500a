"""Reads across messages: a session's history (or one branch of it), feedback, search.

Every query is scoped by tenant. Lists are keyset pages: callers pass the bounds left
by the last item they served and ask for ``limit + 1`` rows (the extra row tells
whether there is more). Keys never change once a row exists (``seq``; ``created_at``
and ``id``), so a page boundary is stable whatever is inserted meanwhile.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg

from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.crypto.rows import open_messages
from chat_storage.storage.errors import Conflict, InvalidReference, NotFound
from chat_storage.storage.messages import COLUMNS, columns, to_json
from chat_storage.storage.sqlparams import Params

MAX_SEQ = 2**63 - 1
# the message columns, qualified for queries that join
M_COLUMNS = columns("m")
# ts_headline: a short plain-text excerpt; no markup, so clients never render
# user content as HTML by accident
ENCRYPTED_SEARCH = (
    "full-text search is off for this tenant: its messages are encrypted at rest, and an "
    "index of their words would store them in plain text (docs/security.md)")
HEADLINE_OPTIONS = 'StartSel="", StopSel="", MaxWords=24, MinWords=8, MaxFragments=1'


async def session_exists(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID
) -> bool:
    """Whether the session exists for this tenant (one index probe)."""
    found = await conn.fetchval(
        "SELECT true FROM sessions WHERE id = $1 AND tenant_id = $2", session_id, tenant_id
    )
    return bool(found)


async def history(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    session_id: uuid.UUID,
    *,
    limit: int,
    descending: bool = False,
    after_seq: int | None = None,
    before_seq: int | None = None,
    leaf: uuid.UUID | None = None,
    keyring: Keyring | None = None,
) -> list[dict[str, Any]]:
    """Up to ``limit`` messages with ``after_seq < seq < before_seq``, ordered by seq.

    With ``leaf``, only the branch that ends at that message: walking back from it,
    the next message is ``parent_id`` when set, else the one with ``seq - 1``.
    Tombstones are included (their ``seq`` keeps its place). Raises :class:`NotFound`
    for a session the tenant does not have and :class:`InvalidReference` for a leaf
    that is not a message of the session.
    """
    low = 0 if after_seq is None else after_seq
    high = MAX_SEQ if before_seq is None else before_seq
    direction = "DESC" if descending else "ASC"
    if leaf is None:
        rows = await conn.fetch(
            f"""
            SELECT {COLUMNS} FROM messages
            WHERE session_id = $1 AND tenant_id = $2 AND seq > $3 AND seq < $4
            ORDER BY seq {direction} LIMIT $5
            """,
            session_id, tenant_id, low, high, limit,
        )
    else:
        rows = await conn.fetch(
            f"""
            WITH RECURSIVE branch (id, seq, parent_id) AS (
                SELECT id, seq, parent_id FROM messages
                WHERE id = $3 AND session_id = $1 AND tenant_id = $2
              UNION ALL
                SELECT m.id, m.seq, m.parent_id
                FROM branch b
                JOIN messages m ON m.session_id = $1 AND m.tenant_id = $2
                    -- strictly decreasing seq: the walk ends even on a malformed parent
                    AND m.seq < b.seq
                    AND (m.id = b.parent_id OR (b.parent_id IS NULL AND m.seq = b.seq - 1))
                -- below after_seq every ancestor is out of range too: stop walking
                WHERE b.seq > $4
            )
            SELECT {M_COLUMNS}
            FROM (SELECT id, seq FROM branch WHERE seq > $4 AND seq < $5
                  ORDER BY seq {direction} LIMIT $6) b
            JOIN messages m ON m.id = b.id
            ORDER BY b.seq {direction}
            """,
            session_id, tenant_id, leaf, low, high, limit,
        )
    if not rows:
        await _explain_empty(conn, tenant_id, session_id, leaf)
    return await open_messages(conn, keyring, tenant_id, [to_json(r) for r in rows])


async def _explain_empty(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
    leaf: uuid.UUID | None,
) -> None:
    """Raise if an empty page is due to a missing session or leaf (checked only then)."""
    if leaf is not None:
        found = await conn.fetchval(
            "SELECT true FROM messages WHERE id = $1 AND session_id = $2 AND tenant_id = $3",
            leaf, session_id, tenant_id,
        )
        if found:
            return
    if not await session_exists(conn, tenant_id, session_id):
        raise NotFound("session not found")
    if leaf is not None:
        raise InvalidReference("leaf", "is not a message of this session")


async def feedback(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    *,
    limit: int,
    rating: int | None = None,
    since: dt.datetime | None = None,
    user_id: str | None = None,
    before: tuple[dt.datetime, uuid.UUID] | None = None,
    keyring: Keyring | None = None,
) -> list[tuple[dict[str, Any], dt.datetime]]:
    """Messages that have feedback, newest feedback first, each with its ``feedback_at``.

    ``user_id`` filters by the session's user; ``before`` is the ``(feedback_at, id)``
    of the last item served.
    """
    p = Params(tenant_id, limit)
    where = ["m.tenant_id = $1", "m.feedback IS NOT NULL"]
    if rating is not None:
        where.append(p.fill("(m.feedback ->> 'rating')::int = {}", rating))
    if since is not None:
        where.append(p.fill("m.feedback_at >= {}", since))
    join = "" if user_id is None else _user_join(p, user_id)
    if before is not None:
        where.append(p.fill("(m.feedback_at, m.id) < ({}, {})", *before))
    rows = await conn.fetch(
        f"""
        SELECT {M_COLUMNS}, m.feedback_at FROM messages m {join}
        WHERE {' AND '.join(where)}
        ORDER BY m.feedback_at DESC, m.id DESC LIMIT $2
        """,
        *p.values,
    )
    opened = await open_messages(conn, keyring, tenant_id, [to_json(r) for r in rows])
    return [(m, r["feedback_at"]) for m, r in zip(opened, rows, strict=True)]


async def search(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    query: str,
    *,
    limit: int,
    user_id: str | None = None,
    session_id: uuid.UUID | None = None,
    before: tuple[dt.datetime, uuid.UUID] | None = None,
) -> list[dict[str, Any]]:
    """Full-text search over message content, newest first; tombstones are never found.

    ``query`` uses web-search syntax (``"a phrase"``, ``or``, ``-word``) with English
    stemming. The match expression is the one of the ``messages_search`` GIN index.
    :class:`Conflict` for an encrypted tenant: its content is not in the index.
    """
    if await conn.fetchval("SELECT encrypted FROM tenants WHERE id = $1", tenant_id):
        raise Conflict(ENCRYPTED_SEARCH)
    p = Params(tenant_id, query, limit)
    where = ["m.tenant_id = $1", "m.status <> 'deleted'",
             "to_tsvector('english', m.content) @@ websearch_to_tsquery('english', $2)"]
    if session_id is not None:
        where.append(p.fill("m.session_id = {}", session_id))
    join = "" if user_id is None else _user_join(p, user_id)
    if before is not None:
        where.append(p.fill("(m.created_at, m.id) < ({}, {})", *before))
    # the headline is costly: make it only for the rows of the page
    rows = await conn.fetch(
        f"""
        SELECT hit.session_id, hit.id AS message_id, hit.seq, hit.role, hit.created_at,
            ts_headline('english', hit.content, websearch_to_tsquery('english', $2),
                        '{HEADLINE_OPTIONS}') AS snippet
        FROM (
            SELECT m.session_id, m.id, m.seq, m.role, m.content, m.created_at
            FROM messages m {join}
            WHERE {' AND '.join(where)}
            ORDER BY m.created_at DESC, m.id DESC LIMIT $3
        ) hit
        ORDER BY hit.created_at DESC, hit.id DESC
        """,
        *p.values,
    )
    return [dict(r) for r in rows]


def _user_join(p: Params, user_id: str) -> str:
    """Keep only messages of sessions of ``user_id`` (in the same tenant, ``$1``)."""
    return p.fill("JOIN sessions s ON s.id = m.session_id AND s.tenant_id = $1 "
                  "AND s.user_id = {}", user_id)
