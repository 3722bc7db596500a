"""The audit log: who did what to a tenant's data, appended in the same transaction."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg


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
    conn: asyncpg.Connection, tenant_id: uuid.UUID | None, since: datetime | None = None,
    *, limit: int | None = None,
) -> list[dict[str, Any]]:
    """The audit records of a tenant (``None``: those of no tenant, e.g. failed
    authentications of unknown keys), oldest first; with ``limit``, the newest ``limit``."""
    rows = await conn.fetch(
        "SELECT * FROM (SELECT id, actor, action, target, details, request_id, created_at "
        "FROM audit_log WHERE tenant_id IS NOT DISTINCT FROM $1 "
        "AND ($2::timestamptz IS NULL OR created_at >= $2) "
        "ORDER BY id DESC LIMIT $3) AS newest ORDER BY id",
        tenant_id, since, limit,
    )
    return [dict(r) for r in rows]
