"""The asyncpg pool: JSON codecs, durability check, and errors mapped to the layer's own."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import orjson

from storage.errors import Unavailable, UnsafeDatabase

log = logging.getLogger(__name__)
T = TypeVar("T")

Pool = asyncpg.Pool
Connection = asyncpg.Connection

# Exceptions that mean "the database is not there right now", as opposed to a bug.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionRejectionError,
)


def dumps_json(value: Any) -> str:
    """Encode JSON for Postgres (``jsonb`` text format)."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z, default=str).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=dumps_json, decoder=orjson.loads, schema="pg_catalog"
        )


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 20,
    connect_timeout_s: float = 5.0,
) -> asyncpg.Pool:
    """Open a pool whose connections decode ``json``/``jsonb`` with orjson."""
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout_s,
            init=_init_connection,
            # prepared statements survive; a dead connection is replaced by the pool
            max_inactive_connection_lifetime=300.0,
        )
    except CONNECTION_ERRORS as exc:
        raise Unavailable(f"cannot connect to Postgres: {exc}") from exc
    assert pool is not None  # create_pool only returns None when awaited lazily
    return pool


async def check_durability(pool: asyncpg.Pool, *, allow_unsafe: bool) -> None:
    """Refuse a server that acknowledges commits it may lose.

    ``fsync=off`` or ``synchronous_commit=off`` break "acknowledged after commit";
    ``allow_unsafe`` (``CHAT_ALLOW_UNSAFE_DB=1``) lets it run with a warning.
    """
    async with pool.acquire() as conn:
        fsync = await conn.fetchval("SHOW fsync")
        sync_commit = await conn.fetchval("SHOW synchronous_commit")
    problems = []
    if fsync != "on":
        problems.append(f"fsync={fsync}")
    if sync_commit == "off":
        problems.append(f"synchronous_commit={sync_commit}")
    if not problems:
        return
    text = ", ".join(problems)
    if allow_unsafe:
        log.warning("database is not durable", extra={"problems": text})
        return
    raise UnsafeDatabase(
        f"Postgres runs with {text}: acknowledged writes could be lost; "
        "fix the server or set CHAT_ALLOW_UNSAFE_DB=1"
    )


async def call(pool: asyncpg.Pool, fn: Callable[[asyncpg.Connection], Awaitable[T]],
               *, acquire_timeout_s: float = 2.0) -> T:
    """Run ``fn`` on a pooled connection; connection failures become :class:`Unavailable`."""
    try:
        async with pool.acquire(timeout=acquire_timeout_s) as conn:
            return await fn(conn)
    except CONNECTION_ERRORS as exc:
        raise Unavailable(str(exc) or type(exc).__name__) from exc
