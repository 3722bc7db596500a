"""Single-use WebSocket tickets: a browser trades its API key for one (it cannot set headers).

A ticket is random, shown once, stored as its SHA-256, bound to one tenant, one
session and the key that asked for it, and expires after ``ttl_s``. Consuming it
deletes the row in the same statement that checks it, so two replicas racing to use
one ticket cannot both succeed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid

import asyncpg

from chat_storage.storage.apikeys import EFFECTIVE_LIMITS, Principal, limits_of
from chat_storage.storage.errors import NotFound

PREFIX = "wst_"


def _hash(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode()).digest()


async def create(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID, key_id: str,
    ttl_s: float = 60.0,
) -> tuple[str, dt.datetime]:
    """A new ticket for ``session_id`` and when it expires; :class:`NotFound` for no session."""
    ticket = PREFIX + secrets.token_urlsafe(32)
    async with conn.transaction():
        # expired tickets are useless: clear them as new ones are made (indexed, cheap)
        await conn.execute(
            "DELETE FROM ws_tickets WHERE expires_at < now() - interval '1 minute'"
        )
        expires_at = await conn.fetchval(
            """
            INSERT INTO ws_tickets (ticket_hash, tenant_id, session_id, key_id, expires_at)
            SELECT $1, s.tenant_id, s.id, $4, now() + make_interval(secs => $5)
            FROM sessions s WHERE s.id = $2 AND s.tenant_id = $3
            RETURNING expires_at
            """,
            _hash(ticket), session_id, tenant_id, key_id, ttl_s,
        )
    if expires_at is None:
        raise NotFound("session not found")
    return ticket, expires_at


async def consume(
    conn: asyncpg.Connection, ticket: str, session_id: uuid.UUID
) -> Principal | None:
    """Use ``ticket`` for ``session_id``: the principal it stands for, or ``None``.

    ``None`` when it is unknown, expired, already used, made for another session or
    its key was revoked since; a ticket shown for the wrong session is not used up.
    """
    if not ticket.startswith(PREFIX) or len(ticket) > 128:
        return None
    row = await conn.fetchrow(
        """
        DELETE FROM ws_tickets w USING tenants t, api_keys k
        WHERE w.ticket_hash = $1 AND w.session_id = $2 AND w.expires_at > now()
          AND t.id = w.tenant_id
          AND k.id = w.key_id AND k.tenant_id = w.tenant_id AND k.revoked_at IS NULL
        RETURNING w.tenant_id, t.name, w.key_id, k.scope,
        """ + EFFECTIVE_LIMITS + """
        """,
        _hash(ticket), session_id,
    )
    if row is None:
        return None
    return Principal(tenant_id=row["tenant_id"], tenant_name=row["name"], key_id=row["key_id"],
                     scope=row["scope"], limits=limits_of(row))
