"""Database metrics against the real test Postgres: statement time by kind, pool wait."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from prometheus_client import REGISTRY

from chat_storage.storage import db, dbmetrics


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(("sql", "kind"), [
    ("SELECT 1", "select"), ("  (select 1)", "select"), ("\n insert into t values (1)", "insert"),
    ("WITH x AS (SELECT 1) SELECT * FROM x", "with"), ("COMMIT;", "commit"),
    ("RESET ALL", "other"), ("", "other"), ("vacuum", "other"),
])
def test_query_kind_is_the_first_keyword_of_a_fixed_set(sql: str, kind: str) -> None:
    assert dbmetrics.query_kind(sql) == kind


async def test_statements_are_timed_by_kind_and_failures_counted(database_url: str) -> None:
    pool = await db.create_pool(database_url, min_size=1, max_size=1, query_metrics=True)
    try:
        before = sample("chat_db_query_duration_seconds_count", kind="select")
        errors = sample("chat_db_query_errors_total", kind="select")
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
            with pytest.raises(asyncpg.exceptions.UndefinedTableError):
                await conn.fetchval("SELECT * FROM no_such_table_here")
        for _ in range(100):  # asyncpg calls the logger soon after the statement, not in it
            if sample("chat_db_query_duration_seconds_count", kind="select") >= before + 2:
                break
            await asyncio.sleep(0.01)
        # >=: the pool's reset on release (SELECT pg_advisory_unlock_all() ...) counts too
        assert sample("chat_db_query_duration_seconds_count", kind="select") >= before + 2
        assert sample("chat_db_query_errors_total", kind="select") == errors + 1
    finally:
        await pool.close()


async def test_statements_are_not_timed_unless_asked(database_url: str) -> None:
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            assert not conn._query_loggers  # asyncpg's list: nothing added per statement
            await conn.fetchval("SELECT 1")
    finally:
        await pool.close()


async def test_pool_wait_is_timed_including_a_wait_for_a_busy_connection(
        database_url: str) -> None:
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        count = sample("chat_db_pool_wait_seconds_count")
        total = sample("chat_db_pool_wait_seconds_sum")
        conn = await pool.acquire()  # awaited form
        waiter = asyncio.ensure_future(pool.acquire())  # waits: the one connection is out
        await asyncio.sleep(0.2)
        await pool.release(conn)
        await pool.release(await asyncio.wait_for(waiter, 5))
        async with pool.acquire():  # context-manager form
            pass
        assert sample("chat_db_pool_wait_seconds_count") == count + 3
        assert sample("chat_db_pool_wait_seconds_sum") - total >= 0.2
    finally:
        await pool.close()
