"""Tenants, API keys and the audit log."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import uuid
from datetime import datetime
from typing import Any, Literal, get_args

import asyncpg

from chat_storage.storage.errors import Conflict, NotFound
from chat_storage.storage.ids import new_id

KEY_PREFIX = "cs"
_KEY_ID = re.compile(r"[0-9a-f]{16}")

Scope = Literal["read", "write", "admin"]
# weakest first: a scope reaches everything the scopes before it reach
SCOPES: tuple[Scope, ...] = get_args(Scope)
DEFAULT_SCOPE: Scope = "admin"  # keys made before scopes existed reached everything


def scope_allows(held: Scope, needed: Scope) -> bool:
    """Whether a key of scope ``held`` may do what needs ``needed``."""
    return SCOPES.index(held) >= SCOPES.index(needed)


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Overrides of the server's limits; ``None``: the setting applies."""

    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None
    max_stream_connections: int | None = None  # tenants only


def check_limits(limits: Limits) -> None:
    """``ValueError`` unless every override given is greater than 0."""
    for field in dataclasses.fields(limits):
        value = getattr(limits, field.name)
        if value is not None and not value > 0:
            raise ValueError(f"{field.name} must be greater than 0, not {value!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant, the API key used and that key's scope, and the limits
    that apply to it (key over tenant, field by field; ``None``: the setting)."""

    tenant_id: uuid.UUID
    tenant_name: str
    key_id: str
    scope: Scope = DEFAULT_SCOPE
    limits: Limits = Limits()


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
class TenantInfo:
    """A tenant as an operator sees it: its settings and how much it holds."""

    id: uuid.UUID
    name: str
    retention_days: int | None
    created_at: datetime
    sessions: int
    active_keys: int
    limits: Limits = Limits()


class TenantNotEmpty(Conflict):
    """The tenant still has sessions; deleting it would delete them too."""

    def __init__(self, name: str, sessions: int) -> None:
        super().__init__(f"tenant {name!r} still has {sessions} session(s)")
        self.sessions = sessions


@dataclasses.dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key; ``key`` is the only time the secret exists in clear."""

    id: str
    tenant: str
    name: str
    key: str
    scope: Scope = DEFAULT_SCOPE
    limits: Limits = Limits()


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


async def create_tenant(
    conn: asyncpg.Connection, name: str, retention_days: int | None = None
) -> uuid.UUID:
    """Create tenant ``name``; :class:`Conflict` if it exists."""
    try:
        tenant_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO tenants (id, name, retention_days) VALUES ($1, $2, $3) RETURNING id",
            new_id(), name, retention_days,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"tenant {name!r} already exists") from None
    await audit(conn, None, "cli", "tenant.create", name, {"retention_days": retention_days})
    return tenant_id


_TENANT_INFO = """
    SELECT t.id, t.name, t.retention_days, t.created_at,
           t.rate_limit_per_s, t.rate_limit_burst, t.max_stream_connections,
           (SELECT count(*) FROM sessions s WHERE s.tenant_id = t.id) AS sessions,
           (SELECT count(*) FROM api_keys k
            WHERE k.tenant_id = t.id AND k.revoked_at IS NULL) AS active_keys
    FROM tenants t
"""


async def list_tenants(conn: asyncpg.Connection) -> list[TenantInfo]:
    """Every tenant, by name."""
    rows = await conn.fetch(_TENANT_INFO + " ORDER BY t.name")
    return [_tenant_info(r) for r in rows]


def _tenant_info(row: asyncpg.Record) -> TenantInfo:
    fields = dict(row)
    limits = Limits(fields.pop("rate_limit_per_s"), fields.pop("rate_limit_burst"),
                    fields.pop("max_stream_connections"))
    return TenantInfo(**fields, limits=limits)


async def get_tenant(conn: asyncpg.Connection, name: str) -> TenantInfo:
    """Tenant ``name``; :class:`NotFound` if there is none."""
    row = await conn.fetchrow(_TENANT_INFO + " WHERE t.name = $1", name)
    if row is None:
        raise NotFound(f"tenant {name!r} does not exist")
    return _tenant_info(row)


UNCHANGED: Any = object()  # update_tenant: leave this setting as it is
_TENANT_COLUMNS = ("retention_days", "rate_limit_per_s", "rate_limit_burst",
                   "max_stream_connections")


async def update_tenant(
    conn: asyncpg.Connection, name: str, *, retention_days: int | None = UNCHANGED,
    rate_limit_per_s: float | None = UNCHANGED, rate_limit_burst: int | None = UNCHANGED,
    max_stream_connections: int | None = UNCHANGED,
) -> TenantInfo:
    """Change the settings of tenant ``name`` that are given; the others stay. Audited.

    ``retention_days=None``: keep messages forever; a limit ``None``: the server's
    setting again. ``ValueError`` for a limit that is not greater than 0.
    """
    given = {column: value for column, value in zip(_TENANT_COLUMNS, (
        retention_days, rate_limit_per_s, rate_limit_burst, max_stream_connections),
        strict=True) if value is not UNCHANGED}
    check_limits(Limits(
        None if rate_limit_per_s is UNCHANGED else rate_limit_per_s,
        None if rate_limit_burst is UNCHANGED else rate_limit_burst,
        None if max_stream_connections is UNCHANGED else max_stream_connections))
    if not given:
        raise ValueError("nothing to change")
    # column names come from _TENANT_COLUMNS only, never from the caller
    assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(given, start=2))
    async with conn.transaction():
        tenant_id = await conn.fetchval(
            f"UPDATE tenants SET {assignments} WHERE name = $1 RETURNING id",
            name, *given.values(),
        )
        if tenant_id is None:
            raise NotFound(f"tenant {name!r} does not exist")
        await audit(conn, tenant_id, "cli", "tenant.update", name, given)
    return await get_tenant(conn, name)


async def delete_tenant(conn: asyncpg.Connection, name: str, *, force: bool) -> TenantInfo:
    """Delete tenant ``name`` with its keys, and with ``force`` its sessions, messages and
    attachment rows too (the caller deletes its stored objects after this returns).

    :class:`TenantNotEmpty` if it has sessions and not ``force``. The audit record
    outlives the tenant (the audit log has no foreign key).
    """
    async with conn.transaction():
        # the tenant row locked first: no session can be created for it meanwhile
        tenant_id = await conn.fetchval(
            "SELECT id FROM tenants WHERE name = $1 FOR UPDATE", name)
        if tenant_id is None:
            raise NotFound(f"tenant {name!r} does not exist")
        info = await get_tenant(conn, name)
        if info.sessions and not force:
            raise TenantNotEmpty(name, info.sessions)
        await conn.execute("DELETE FROM tenants WHERE id = $1", tenant_id)
        await audit(conn, tenant_id, "cli", "tenant.delete", name,
                    {"sessions": info.sessions, "forced": force})
    return info


async def any_tenant(conn: asyncpg.Connection) -> bool:
    """Whether any tenant exists (a fresh database has none)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tenants)"))


async def ensure_tenant(conn: asyncpg.Connection, name: str) -> uuid.UUID:
    """Return the id of tenant ``name``, creating it if needed."""
    tenant_id: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO tenants (id, name) VALUES ($1, $2)
        ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
        RETURNING id
        """,
        new_id(), name,
    )
    return tenant_id


async def tenant_id_by_name(conn: asyncpg.Connection, name: str) -> uuid.UUID:
    """The id of tenant ``name``; :class:`NotFound` if there is none."""
    tenant_id: uuid.UUID | None = await conn.fetchval(
        "SELECT id FROM tenants WHERE name = $1", name
    )
    if tenant_id is None:
        raise NotFound(f"tenant {name!r} does not exist")
    return tenant_id


async def create_key(
    conn: asyncpg.Connection, tenant: str, name: str = "", key: str | None = None,
    scope: Scope = DEFAULT_SCOPE, limits: Limits = Limits(),
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
        await conn.execute(
            """
            INSERT INTO api_keys (id, tenant_id, name, key_hash, scope, rate_limit_per_s,
                                  rate_limit_burst)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (id) DO NOTHING
            """,
            key_id, tenant_id, name, hash_key(key), scope, limits.rate_limit_per_s,
            limits.rate_limit_burst,
        )
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


async def audit(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID | None,
    actor: str,
    action: str,
    target: str | None = None,
    details: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> None:
    """Append one record to the audit log (in the caller's transaction, if any)."""
    await conn.execute(
        "INSERT INTO audit_log (tenant_id, actor, action, target, details, request_id) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        tenant_id, actor, action, target, details or {}, request_id,
    )


async def audit_records(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, since: datetime | None = None
) -> list[dict[str, Any]]:
    """The audit records of a tenant, oldest first (used by tests and operators)."""
    rows = await conn.fetch(
        "SELECT actor, action, target, details, request_id, created_at FROM audit_log "
        "WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR created_at >= $2) ORDER BY id",
        tenant_id, since,
    )
    return [dict(r) for r in rows]
