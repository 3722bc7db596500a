"""Single-use WebSocket tickets: a browser trades its API key for one (it cannot set headers).

A ticket is random, shown once, stored as its SHA-256, bound to one tenant, one
session and the credential that asked for it (an API key, or a user token's user and
scopes), and expires after ``ttl_s``. Consuming it
deletes the row in the same statement that checks it, so two replicas racing to use
one ticket cannot both succeed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid

import asyncpg

from chat_storage.storage.apikeys import EFFECTIVE_LIMITS, limits_of
from chat_storage.storage.errors import NotFound
from chat_storage.storage.principal import Principal, user_principal

PREFIX = "wst_"
TOKEN_CREDENTIAL = "token:"  # noqa: S105 - a key-id prefix, not a credential


def _hash(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode()).digest()


async def create(
    conn: asyncpg.Connection, principal: Principal, session_id: uuid.UUID,
    ttl_s: float = 60.0,
) -> tuple[str, dt.datetime]:
    """A new ticket for ``session_id`` standing for ``principal`` (its key, or its user
    and that user's scopes) and when it expires; :class:`NotFound` for no session."""
    ticket = PREFIX + secrets.token_urlsafe(32)
    user_scopes = sorted(principal.user_scopes) if principal.is_user else None
    async with conn.transaction():
        # expired tickets are useless: clear them as new ones are made (indexed, cheap)
        await conn.execute(
            "DELETE FROM ws_tickets WHERE expires_at < now() - interval '1 minute'"
        )
        expires_at = await conn.fetchval(
            """
            INSERT INTO ws_tickets (ticket_hash, tenant_id, session_id, key_id, expires_at,
                                    user_id, user_scopes)
            SELECT $1, s.tenant_id, s.id, $4, now() + make_interval(secs => $5), $6, $7
            FROM sessions s WHERE s.id = $2 AND s.tenant_id = $3
              AND ($6::text IS NULL OR s.user_id = $6)
            RETURNING expires_at
            """,
            _hash(ticket), session_id, principal.tenant_id,
            principal.credential_id if principal.is_user else principal.key_id, ttl_s,
            principal.user_id, user_scopes,
        )
    if expires_at is None:
        raise NotFound("session not found")
    return ticket, expires_at


async def consume(
    conn: asyncpg.Connection, ticket: str, session_id: uuid.UUID
) -> Principal | None:
    """Use ``ticket`` for ``session_id``: the principal it stands for, or ``None``.

    ``None`` when it is unknown, expired, already used, made for another session, or the
    key it stands for was revoked (or the signing key of the user token that asked for it
    retired) since; a ticket shown for the wrong session is not used up.
    """
    if not ticket.startswith(PREFIX) or len(ticket) > 128:
        return None
    row = await conn.fetchrow(
        """
        WITH used AS (
            DELETE FROM ws_tickets w
            WHERE w.ticket_hash = $1 AND w.session_id = $2 AND w.expires_at > now()
            RETURNING w.tenant_id, w.key_id, w.user_id, w.user_scopes
        )
        SELECT u.tenant_id, t.name, u.key_id, u.user_id, u.user_scopes, k.scope,
               k.id IS NOT NULL AS key_active, s.id IS NOT NULL AS signer_active,
        """ + EFFECTIVE_LIMITS + """
        FROM used u JOIN tenants t ON t.id = u.tenant_id
        LEFT JOIN api_keys k ON k.id = u.key_id AND k.tenant_id = u.tenant_id
                            AND k.revoked_at IS NULL AND u.user_id IS NULL
        LEFT JOIN signing_keys s ON u.key_id = 'token:' || s.id AND s.retired_at IS NULL
        """,
        _hash(ticket), session_id,
    )
    if row is None:
        return None
    if row["user_id"] is None:
        if not row["key_active"]:
            return None
        return Principal(tenant_id=row["tenant_id"], tenant_name=row["name"],
                         key_id=row["key_id"], scope=row["scope"], limits=limits_of(row))
    if row["key_id"].startswith(TOKEN_CREDENTIAL) and not row["signer_active"]:
        return None
    return user_principal(
        row["tenant_id"], row["name"], row["user_id"], frozenset(row["user_scopes"]),
        session_ids=frozenset({session_id}), limits=limits_of(row),
        credential="token" if row["key_id"].startswith(TOKEN_CREDENTIAL) else "oidc",
        credential_id=row["key_id"])
