"""The database: embedded or external Postgres, pool, migrations, seeded keys.

Start order: (embedded server) → pool → durability check → migrations → seeded keys.
Shutdown closes the pool with a deadline, then stops an embedded server.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from chat_storage.runtime.settings import Settings
from chat_storage.storage import apikeys, db, embedded, migrations, tenants

log = logging.getLogger(__name__)


async def open_database(settings: Settings, *, migrate: bool = True) -> asyncpg.Pool:
    """Open the pool for ``settings`` (starting the embedded server if needed) and migrate."""
    dsn = settings.database_url
    if dsn is None:
        dsn = await asyncio.to_thread(embedded.start, settings.data_dir)
    # one more than CHAT_DB_POOL_MAX: the process's liveness lock keeps one for itself
    # (storage.liveness), the others serve requests as before
    pool = await db.create_pool(
        dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max + 1,
        connect_timeout_s=settings.db_connect_timeout_s,
        query_metrics=settings.db_query_metrics,
    )
    try:
        await db.check_durability(pool, allow_unsafe=settings.allow_unsafe_db)
        if migrate:
            async with pool.acquire() as conn:
                await migrations.migrate(conn, settings.migrations_dir)
        await seed_keys(pool, settings.api_keys, settings.new_tenant_retention)
    except BaseException:
        await pool.close()
        raise
    return pool


async def seed_keys(pool: asyncpg.Pool, pairs: tuple[tuple[str, str], ...],
                    retention_days: int | None = None) -> None:
    """Create the tenants (new ones with ``retention_days``) and keys of
    ``CHAT_API_KEYS`` if they do not exist; what exists is neither touched nor audited."""
    async with pool.acquire() as conn:
        for tenant, key in pairs:
            await tenants.ensure_tenant(conn, tenant, retention_days)
            await apikeys.create_key(conn, tenant, name="seeded", key=key)


async def close_pool(pool: asyncpg.Pool, timeout_s: float) -> None:
    """Close the pool, waiting at most ``timeout_s`` for connections in use."""
    try:
        await asyncio.wait_for(pool.close(), timeout=timeout_s)
    except TimeoutError:
        log.warning("pool did not close in time; terminating connections")
        pool.terminate()
