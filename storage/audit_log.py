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
    conn: asyncpg.Connection, tenant_id: uuid.UUID, since: datetime | None = None
) -> list[dict[str, Any]]:
    """The audit records of a tenant, oldest first (used by tests and operators)."""
    rows = await conn.fetch(
        "SELECT actor, action, target, details, request_id, created_at FROM audit_log "
        "WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR created_at >= $2) ORDER BY id",
        tenant_id, since,
    )
    return [dict(r) for r in rows]
