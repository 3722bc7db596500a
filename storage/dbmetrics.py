"""Prometheus metrics of the database: time per query kind, errors, and the pool's wait.

A query's kind is its statement's first keyword (``select``, ``insert``, ``update``,
``delete``, ``with``, ``copy``, ``begin``, ``commit``, ``rollback``, else ``other``): a
fixed, small set of label values whatever SQL runs, never a table, a parameter or a
tenant. asyncpg times every statement of a connection that has a query logger
(:func:`observe_query`, added by :func:`instrument`) and calls it soon after.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from asyncpg.connection import LoggedQuery
from prometheus_client import Counter, Histogram

QUERY_SECONDS = Histogram(
    "chat_db_query_duration_seconds", "Time of one database statement, by kind", ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
QUERY_ERRORS = Counter("chat_db_query_errors_total",
                       "Database statements that failed, by kind", ["kind"])
POOL_WAIT_SECONDS = Histogram(
    "chat_db_pool_wait_seconds", "Time spent waiting for a connection from the pool",
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

KINDS = frozenset({"select", "insert", "update", "delete", "with", "copy", "begin",
                   "commit", "rollback"})
_MAX_REMEMBERED = 4096  # statements are the code's few hundred; stay bounded anyway
_kinds: dict[str, tuple[Histogram, Counter]] = {}


def query_kind(sql: str) -> str:
    """The kind of ``sql``: its first keyword if it is one of :data:`KINDS`, else ``other``."""
    words = sql.lstrip(" \t\r\n(").split(None, 1)
    word = words[0].lower().rstrip(";") if words else ""
    return word if word in KINDS else "other"


def observe_query(record: LoggedQuery) -> None:
    """Count one statement that asyncpg timed (a connection's query logger)."""
    children = _kinds.get(record.query)
    if children is None:
        if len(_kinds) >= _MAX_REMEMBERED:
            _kinds.clear()
        kind = query_kind(record.query)
        children = _kinds[record.query] = (QUERY_SECONDS.labels(kind), QUERY_ERRORS.labels(kind))
    children[0].observe(record.elapsed)
    if record.exception is not None:
        children[1].inc()


def instrument(conn: asyncpg.Connection) -> None:
    """Time every statement of ``conn`` from now on."""
    conn.add_query_logger(observe_query)


class MeteredPool(asyncpg.Pool):  # type: ignore[misc]
    """An asyncpg pool that times how long each acquire waits for a connection.

    ``_acquire`` is the one path of ``acquire()`` (context manager or awaited); asyncpg
    has no public hook for it. tests/storage/test_dbmetrics.py fails if that changes.
    """

    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109 (asyncpg's)
        start = time.perf_counter()
        try:
            return await super()._acquire(timeout)
        finally:
            POOL_WAIT_SECONDS.observe(time.perf_counter() - start)
