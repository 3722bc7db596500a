"""Which pages on other origins each tenant lets call the API (``tenants update
--cors-origins``), read in one query so the edge can cache the whole picture."""

from __future__ import annotations

import uuid

import asyncpg


async def listed_origins(conn: asyncpg.Connection) -> dict[uuid.UUID, frozenset[str]]:
    """The origins of every tenant that lists any, by tenant id.

    Few tenants list origins and each lists few, so the whole map is small; the union
    of its values answers a preflight, one tenant's value an actual response.
    """
    rows = await conn.fetch(
        "SELECT id, cors_origins FROM tenants WHERE cardinality(cors_origins) > 0")
    return {row["id"]: frozenset(row["cors_origins"]) for row in rows}
