"""Postgres advisory locks: one holder at a time across every replica.

Each key is a constant unique to this service (its name in ASCII), listed here so
two uses never share one by accident. Locks are session-level: they belong to the
connection, so they are always released on the connection that took them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

MIGRATIONS_LOCK = 0x636861746D696772  # "chatmigr": one migrating process at a time
MAINTENANCE_LOCK = 0x63686174_6D61696E  # "chatmain": one maintenance run at a time
# the first key of the two-key locks (a key space apart from the one-key locks above)
# that each live process holds with its own second key (storage.liveness)
HOLDER_LOCKS = 0x63686F6C  # "chol"


@contextlib.asynccontextmanager
async def advisory_lock(conn: asyncpg.Connection, key: int) -> AsyncIterator[None]:
    """Hold lock ``key`` on ``conn`` for the block, waiting for it if it is taken."""
    await conn.execute("SELECT pg_advisory_lock($1)", key)
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)


@contextlib.asynccontextmanager
async def try_advisory_lock(conn: asyncpg.Connection, key: int) -> AsyncIterator[bool]:
    """Take lock ``key`` on ``conn`` if it is free; yield whether it was taken.

    A lock taken here is released when the block ends.
    """
    taken = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
    try:
        yield taken
    finally:
        if taken:
            await conn.execute("SELECT pg_advisory_unlock($1)", key)
