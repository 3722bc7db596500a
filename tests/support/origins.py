"""A tenant's own CORS origins for one test, set and reset (tenants share the test
database, and the union of every tenant's list answers preflights)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

import asyncpg

from chat_storage.storage import tenants
from tests.conftest import Tenant


def unique_origin() -> str:
    """An origin no other test lists."""
    return f"https://app-{secrets.token_hex(4)}.example"


@contextlib.asynccontextmanager
async def listed(pool: asyncpg.Pool, tenant: Tenant, *origins: str) -> AsyncIterator[None]:
    """``tenant`` lists ``origins`` (``tenants update --cors-origins``) while inside."""
    async with pool.acquire() as conn:
        await tenants.update_tenant(conn, tenant.name, cors_origins=origins)
    try:
        yield
    finally:
        async with pool.acquire() as conn:
            await tenants.update_tenant(conn, tenant.name, cors_origins=())
