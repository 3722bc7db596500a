"""Tenants: created, listed, updated, deleted; each holds sessions and API keys."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from chat_storage.storage.audit_log import audit
from chat_storage.storage.errors import Conflict, NotFound
from chat_storage.storage.ids import new_id
from chat_storage.storage.overrides import NO_OVERRIDES, Limits, check_limits


@dataclasses.dataclass(frozen=True, slots=True)
class TenantInfo:
    """A tenant as an operator sees it: its settings and how much it holds."""

    id: uuid.UUID
    name: str
    retention_days: int | None
    created_at: datetime
    sessions: int
    active_keys: int
    limits: Limits = NO_OVERRIDES
    # a trusted OpenID Connect issuer (docs/auth.md): its JWTs with this audience act as
    # user tokens, the user taken from oidc_user_claim
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_user_claim: str = "sub"
    # pages this tenant's callers may use, on top of CHAT_CORS_ORIGINS
    cors_origins: tuple[str, ...] = ()
    # PII redaction (storage.redaction) of what its messages store, and its own patterns
    redact_pii: bool = False
    pii_patterns: dict[str, str] = dataclasses.field(default_factory=dict)
    # encryption at rest of its new messages (storage.crypto; docs/security.md)
    encrypted: bool = False


class TenantNotEmpty(Conflict):
    """The tenant still has sessions; deleting it would delete them too."""

    def __init__(self, name: str, sessions: int) -> None:
        super().__init__(f"tenant {name!r} still has {sessions} session(s)")
        self.sessions = sessions


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
    await audit(conn, tenant_id, "cli", "tenant.create", name,
                {"retention_days": retention_days})
    return tenant_id


_TENANT_INFO = """
    SELECT t.id, t.name, t.retention_days, t.created_at,
           t.rate_limit_per_s, t.rate_limit_burst, t.max_stream_connections,
           t.oidc_issuer, t.oidc_audience, t.oidc_user_claim, t.cors_origins,
           t.redact_pii, t.pii_patterns, t.encrypted,
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
    fields["cors_origins"] = tuple(fields["cors_origins"])
    return TenantInfo(**fields, limits=limits)


async def get_tenant(conn: asyncpg.Connection, name: str) -> TenantInfo:
    """Tenant ``name``; :class:`NotFound` if there is none."""
    row = await conn.fetchrow(_TENANT_INFO + " WHERE t.name = $1", name)
    if row is None:
        raise NotFound(f"tenant {name!r} does not exist")
    return _tenant_info(row)


UNCHANGED: Any = object()  # update_tenant: leave this setting as it is
_TENANT_COLUMNS = ("retention_days", "rate_limit_per_s", "rate_limit_burst",
                   "max_stream_connections", "oidc_issuer", "oidc_audience",
                   "oidc_user_claim", "cors_origins", "redact_pii", "pii_patterns")


async def update_tenant(
    conn: asyncpg.Connection, name: str, *, retention_days: int | None = UNCHANGED,
    rate_limit_per_s: float | None = UNCHANGED, rate_limit_burst: int | None = UNCHANGED,
    max_stream_connections: int | None = UNCHANGED, oidc_issuer: str | None = UNCHANGED,
    oidc_audience: str | None = UNCHANGED, oidc_user_claim: str = UNCHANGED,
    cors_origins: tuple[str, ...] = UNCHANGED, redact_pii: bool = UNCHANGED,
    pii_patterns: dict[str, str] = UNCHANGED,
) -> TenantInfo:
    """Change the settings of tenant ``name`` that are given; the others stay. Audited.

    ``retention_days=None``: keep messages forever; a limit ``None``: the server's
    setting again; ``oidc_issuer=None``: trust no issuer. ``ValueError`` for a limit that
    is not greater than 0 or an issuer without an audience. The caller checks the URLs
    and the ``pii_patterns`` (``storage.redaction.check_patterns``).

    The audit record has what was given and, under ``"was"``, what it replaced.
    """
    given = {column: value for column, value in zip(_TENANT_COLUMNS, (
        retention_days, rate_limit_per_s, rate_limit_burst, max_stream_connections,
        oidc_issuer, oidc_audience, oidc_user_claim,
        cors_origins if cors_origins is UNCHANGED else list(cors_origins),
        redact_pii, pii_patterns), strict=True) if value is not UNCHANGED}
    check_limits(Limits(
        None if rate_limit_per_s is UNCHANGED else rate_limit_per_s,
        None if rate_limit_burst is UNCHANGED else rate_limit_burst,
        None if max_stream_connections is UNCHANGED else max_stream_connections))
    if not given:
        raise ValueError("nothing to change")
    # column names come from _TENANT_COLUMNS only, never from the caller
    assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(given, start=2))
    async with conn.transaction():
        was = await conn.fetchrow(
            f"SELECT {', '.join(given)} FROM tenants WHERE name = $1 FOR UPDATE", name)
        try:
            tenant_id = await conn.fetchval(
                f"UPDATE tenants SET {assignments} WHERE name = $1 RETURNING id",
                name, *given.values(),
            )
        except asyncpg.CheckViolationError as exc:
            if exc.constraint_name == "tenants_oidc_audience":
                raise ValueError("a trusted OIDC issuer needs an audience") from None
            raise
        if tenant_id is None:
            raise NotFound(f"tenant {name!r} does not exist")
        await audit(conn, tenant_id, "cli", "tenant.update", name,
                    {**given, "was": dict(was) if was is not None else {}})
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


async def ensure_tenant(conn: asyncpg.Connection, name: str,
                        retention_days: int | None = None) -> uuid.UUID:
    """Return the id of tenant ``name``, creating it (with ``retention_days``) if needed.

    A tenant made here is audited (``tenant.create``); one that exists is not touched.
    """
    row = await conn.fetchrow(
        """
        INSERT INTO tenants (id, name, retention_days) VALUES ($1, $2, $3)
        ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
        RETURNING id, (xmax = 0) AS created
        """,
        new_id(), name, retention_days,
    )
    tenant_id: uuid.UUID = row["id"]
    if row["created"]:
        await audit(conn, tenant_id, "system", "tenant.create", name,
                    {"retention_days": retention_days})
    return tenant_id


async def tenant_id_by_name(conn: asyncpg.Connection, name: str) -> uuid.UUID:
    """The id of tenant ``name``; :class:`NotFound` if there is none."""
    tenant_id: uuid.UUID | None = await conn.fetchval(
        "SELECT id FROM tenants WHERE name = $1", name
    )
    if tenant_id is None:
        raise NotFound(f"tenant {name!r} does not exist")
    return tenant_id
