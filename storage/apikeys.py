"""API keys: made, hashed, scoped, revoked, and the principal a key authenticates."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import uuid
from typing import Any

import asyncpg

from chat_storage.storage.audit_log import audit
from chat_storage.storage.errors import NotFound
from chat_storage.storage.overrides import NO_OVERRIDES, Limits, check_limits
from chat_storage.storage.principal import DEFAULT_SCOPE, SCOPES, Principal, Scope
from chat_storage.storage.tenants import tenant_id_by_name

KEY_PREFIX = "cs"
_KEY_ID = re.compile(r"[0-9a-f]{16}")

# a key's rate and burst win over its tenant's; the connection cap is the tenant's.
# Used with ``api_keys k`` and ``tenants t`` in the query.
EFFECTIVE_LIMITS = """
    COALESCE(k.rate_limit_per_s, t.rate_limit_per_s) AS rate_limit_per_s,
    COALESCE(k.rate_limit_burst, t.rate_limit_burst) AS rate_limit_burst,
    t.max_stream_connections
"""


def limits_of(row: asyncpg.Record) -> Limits:
    """The :class:`Limits` in the columns of :data:`EFFECTIVE_LIMITS`."""
    return Limits(row["rate_limit_per_s"], row["rate_limit_burst"],
                  row["max_stream_connections"])


@dataclasses.dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key; ``key`` is the only time the secret exists in clear."""

    id: str
    tenant: str
    name: str
    key: str
    scope: Scope = DEFAULT_SCOPE
    limits: Limits = NO_OVERRIDES


def hash_key(key: str) -> bytes:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).digest()


def make_key() -> tuple[str, str]:
    """Return ``(key_id, key)`` for a new random key ``cs_<id>_<secret>``."""
    key_id = secrets.token_hex(8)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(24)}"


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key, else ``None``."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 16 or not parts[2]:
        return None
    return parts[1]


async def create_key(
    conn: asyncpg.Connection, tenant: str, name: str = "", key: str | None = None,
    scope: Scope = DEFAULT_SCOPE, limits: Limits = NO_OVERRIDES,
) -> CreatedKey:
    """Create a key of ``scope`` for ``tenant``; with ``key`` given, store that one (seeding).

    ``limits``: the key's own rate and burst (``None``: its tenant's, else the setting).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    check_limits(limits)
    if limits.max_stream_connections is not None:
        raise ValueError("max_stream_connections is a tenant's limit, not a key's")
    tenant_id = await tenant_id_by_name(conn, tenant)
    if key is None:
        key_id, key = make_key()
    else:
        parsed = key_id_of(key)
        # a seeded key that is not in our format gets a derived, stable id
        key_id = parsed or hashlib.sha256(key.encode()).hexdigest()[:16]
    async with conn.transaction():
        inserted = await conn.fetchval(
            """
            INSERT INTO api_keys (id, tenant_id, name, key_hash, scope, rate_limit_per_s,
                                  rate_limit_burst)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (id) DO NOTHING
            RETURNING true
            """,
            key_id, tenant_id, name, hash_key(key), scope, limits.rate_limit_per_s,
            limits.rate_limit_burst,
        )
        if not inserted:  # a seeded key that exists: every start seeds it again, silently
            return CreatedKey(id=key_id, tenant=tenant, name=name, key=key, scope=scope,
                              limits=limits)
        await audit(conn, tenant_id, "cli", "key.create", key_id,
                    {"name": name, "scope": scope, "rate_limit_per_s": limits.rate_limit_per_s,
                     "rate_limit_burst": limits.rate_limit_burst})
    return CreatedKey(id=key_id, tenant=tenant, name=name, key=key, scope=scope, limits=limits)


async def revoke_key(conn: asyncpg.Connection, id_or_key: str) -> str:
    """Revoke a key given by its id or as the whole key; return its id.

    A whole key must match its stored hash (a mistyped secret revokes nothing).
    :class:`NotFound` if there is no such active key; the message never repeats a secret.
    """
    if _KEY_ID.fullmatch(id_or_key):
        key_id, key_hash = id_or_key, None
        missing = f"no active key {id_or_key!r}"
    else:
        # not our format: a seeded key (CHAT_API_KEYS), whose id is derived from it
        key_id = key_id_of(id_or_key) or hashlib.sha256(id_or_key.encode()).hexdigest()[:16]
        key_hash = hash_key(id_or_key)
        missing = "no active key matches the key given"
    async with conn.transaction():
        tenant_id = await conn.fetchval(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL "
            "AND ($2::bytea IS NULL OR key_hash = $2) RETURNING tenant_id",
            key_id, key_hash,
        )
        if tenant_id is None:
            raise NotFound(missing)
        await audit(conn, tenant_id, "cli", "key.revoke", key_id)
    return key_id


async def tenant_of_key(conn: asyncpg.Connection, key_id: str) -> uuid.UUID | None:
    """The tenant of key ``key_id`` (active or revoked), or ``None`` if there is none."""
    tenant_id: uuid.UUID | None = await conn.fetchval(
        "SELECT tenant_id FROM api_keys WHERE id = $1", key_id)
    return tenant_id


async def active_key_ids(conn: asyncpg.Connection, key_ids: list[str]) -> set[str]:
    """Those of ``key_ids`` that are keys not revoked (a revoked or deleted one is not)."""
    rows = await conn.fetch(
        "SELECT id FROM api_keys WHERE id = ANY($1::text[]) AND revoked_at IS NULL", key_ids)
    return {r["id"] for r in rows}


async def list_keys(conn: asyncpg.Connection, tenant: str) -> list[dict[str, Any]]:
    """The keys of ``tenant`` (never their secrets)."""
    tenant_id = await tenant_id_by_name(conn, tenant)
    rows = await conn.fetch(
        "SELECT id, name, scope, rate_limit_per_s, rate_limit_burst, created_at, revoked_at "
        "FROM api_keys WHERE tenant_id = $1 "
        "ORDER BY created_at",
        tenant_id,
    )
    return [dict(r) for r in rows]


async def authenticate(conn: asyncpg.Connection, key: str) -> Principal | None:
    """The principal of an active ``key``, or ``None`` (unknown, revoked, malformed).

    The key is found by its id and its hash compared in constant time.
    """
    key_id = key_id_of(key)
    candidates = [key_id] if key_id else []
    candidates.append(hashlib.sha256(key.encode()).hexdigest()[:16])
    row = await conn.fetchrow(
        """
        SELECT k.id, k.key_hash, k.tenant_id, k.scope, t.name AS tenant_name,
        """ + EFFECTIVE_LIMITS + """
        FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
        WHERE k.id = ANY($1::text[]) AND k.revoked_at IS NULL
        LIMIT 1
        """,
        candidates,
    )
    if row is None or not hmac.compare_digest(bytes(row["key_hash"]), hash_key(key)):
        return None
    return Principal(row["tenant_id"], row["tenant_name"], row["id"], row["scope"],
                     limits_of(row))
