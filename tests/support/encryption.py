"""For tests that turn a tenant's encryption on in the run's shared database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg


async def switched_off_after(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Turn every tenant's encryption off when the test ends: a server started later in
    the run without CHAT_ENCRYPTION_KEK refuses to start while any tenant has it on."""
    yield
    async with pool.acquire() as conn:
        await conn.execute("UPDATE tenants SET encrypted = false WHERE encrypted")
