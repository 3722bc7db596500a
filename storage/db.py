"""The asyncpg pool: JSON codecs, durability check, and errors mapped to the layer's own."""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar, cast

import asyncpg
import asyncpg.pool
import orjson

from chat_storage.storage import dbmetrics, jsoncodec
from chat_storage.storage.errors import Unavailable, UnsafeDatabase

log = logging.getLogger(__name__)
T = TypeVar("T")

Pool = asyncpg.Pool
Connection = asyncpg.Connection
# A connection or what ``pool.acquire()`` yields (a proxy that behaves like one).
Conn: TypeAlias = "asyncpg.Connection | asyncpg.pool.PoolConnectionProxy"
# Names this service's connections in pg_stat_activity (and lets it end only its own).
APPLICATION_NAME = "chat-storage"

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
    # the server ended an idle connection and its FATAL arrived before the socket closed:
    # asyncpg's next operation on it fails with "another operation is in progress"
    asyncpg.exceptions.InternalClientError,
)


def dumps_json(value: Any) -> str:
    """Encode JSON for Postgres (``jsonb`` text format)."""
    return jsoncodec.dumps(value).decode()


class ServiceConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection that may skip the reset query on its next release.

    asyncpg's pool resets every connection it takes back with one more round trip
    (advisory unlock, ``CLOSE ALL``, ``UNLISTEN *``, ``RESET ALL``). A plain read leaves
    none of that state, so :func:`read` marks its connection to skip that query once.
    """

    __slots__ = ("_skip_reset",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._skip_reset = False

    def skip_next_reset(self) -> None:
        """Let the next release keep the session state: only after a plain read."""
        self._skip_reset = True

    def take_skip_reset(self) -> bool:
        """Whether the release may skip the reset query; clears the mark either way."""
        skip, self._skip_reset = self._skip_reset, False
        return skip


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """The pool's reset: asyncpg's reset query unless a plain read just used ``conn``.

    asyncpg has already rolled back an open transaction and dropped listeners before
    calling this (``Connection._reset``), whatever the mark says.
    """
    if isinstance(conn, ServiceConnection) and conn.take_skip_reset():
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)


async def _init_metered_connection(conn: asyncpg.Connection) -> None:
    dbmetrics.instrument(conn)
    await _init_connection(conn)


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
    application_name: str = APPLICATION_NAME,
    query_metrics: bool = False,
) -> asyncpg.Pool:
    """Open a pool whose connections decode ``json``/``jsonb`` with orjson.

    Connections are named ``application_name`` unless the DSN names them itself. With
    ``query_metrics`` every statement is timed by kind (:mod:`.dbmetrics`): asyncpg's
    query logger costs about 8% more server CPU per durable write
    (loadtest/RESULTS.md), so it is off unless ``CHAT_DB_QUERY_METRICS`` asks for it.
    """
    named = "application_name" in urllib.parse.parse_qs(urllib.parse.urlsplit(dsn).query)
    try:
        # asyncpg.create_pool with the pool class that times acquires (same defaults)
        pool = await dbmetrics.MeteredPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            max_queries=50_000,
            loop=None,
            connection_class=ServiceConnection,
            record_class=asyncpg.Record,
            timeout=connect_timeout_s,
            init=_init_metered_connection if query_metrics else _init_connection,
            reset=_reset_connection,
            server_settings=None if named else {"application_name": application_name},
            # prepared statements survive; a dead connection is replaced by the pool
            max_inactive_connection_lifetime=300.0,
        )
    except CONNECTION_ERRORS as exc:
        raise Unavailable(f"cannot connect to Postgres: {exc}") from exc
    assert pool is not None  # noqa: S101 - narrows the type: create_pool is awaited
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


def as_connection(conn: Conn) -> asyncpg.Connection:
    """``conn`` typed as a Connection (a pool's proxy forwards everything to one)."""
    return cast(asyncpg.Connection, conn)


async def terminate_backend(conn: Conn, pid: int) -> bool:
    """End the server process ``pid`` if it serves one of this service's own connections.

    Used after a connection broke mid-transaction: until its server process notices,
    it may hold locks and its transaction's outcome is not final. Only a process of
    the same database, role and application name is touched (never another client).
    Returns whether one was signalled; lacking the privilege is not an error.
    """
    try:
        return bool(await conn.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 "
            "AND datname = current_database() AND usename = current_user "
            "AND application_name = current_setting('application_name')",
            pid,
        ))
    except asyncpg.PostgresError as exc:
        log.warning("could not end a lost connection's server process",
                    extra={"pid": pid, "error": str(exc)})
        return False


async def call(pool: asyncpg.Pool, fn: Callable[[asyncpg.Connection], Awaitable[T]],
               *, acquire_timeout_s: float = 2.0) -> T:
    """Run ``fn`` on a pooled connection; connection failures become :class:`Unavailable`."""
    try:
        async with pool.acquire(timeout=acquire_timeout_s) as conn:
            try:
                return await fn(as_connection(conn))
            except (asyncio.CancelledError, TimeoutError):
                # cut off mid-statement (a request's deadline): the connection's state is
                # unknown, and releasing it would wait on a server that may not answer
                conn.terminate()
                raise
    except CONNECTION_ERRORS as exc:
        raise Unavailable(str(exc) or type(exc).__name__) from exc


async def read(pool: asyncpg.Pool, fn: Callable[[asyncpg.Connection], Awaitable[T]],
               *, acquire_timeout_s: float = 2.0) -> T:
    """:func:`call` for ``fn`` that only runs ``SELECT`` statements outside a transaction.

    Such a read leaves no session state behind (no ``SET``, advisory lock, cursor or
    ``LISTEN``), so its connection goes back to the pool without asyncpg's reset query:
    one round trip less per read. Only when ``fn`` returned and no transaction is open;
    a failed or cancelled read is reset as usual.
    """
    try:
        async with pool.acquire(timeout=acquire_timeout_s) as conn:
            try:
                result = await fn(as_connection(conn))
            except (asyncio.CancelledError, TimeoutError):
                conn.terminate()  # cut off mid-statement: as in call()
                raise
            mark = getattr(conn, "skip_next_reset", None)  # a ServiceConnection's
            if mark is not None and not conn.is_in_transaction():
                mark()
            return result
    except CONNECTION_ERRORS as exc:
        raise Unavailable(str(exc) or type(exc).__name__) from exc
