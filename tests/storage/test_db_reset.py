"""The pool's reset query is skipped once after a plain read, and only then.

A session setting (``set_config(..., false)``) or advisory lock stands for the state
asyncpg's reset query (``RESET ALL``, ``pg_advisory_unlock_all()`` and the rest) clears:
on a pool of one connection, whether the next user still sees it tells whether the
reset ran.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from chat_storage.storage import db

PROBE = "chat_test.probe"


@pytest.fixture
async def one(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url, min_size=1, max_size=1)
    yield p
    await p.close()


async def _leave_probe(conn: asyncpg.Connection) -> int:
    await conn.execute(f"SELECT set_config('{PROBE}', 'left', false)")
    return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def _probe(pool: asyncpg.Pool) -> tuple[str | None, int]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            f"SELECT current_setting('{PROBE}', true) AS v, pg_backend_pid() AS pid")
        assert row is not None
        return row["v"] or None, int(row["pid"])


async def test_a_plain_read_skips_the_reset_once(one: asyncpg.Pool) -> None:
    pid = await db.read(one, _leave_probe)
    # the same connection, not reset: what the read left is still there
    assert await _probe(one) == ("left", pid)
    # the mark is used up: that acquire's release did reset
    assert await _probe(one) == (None, pid)


async def test_a_call_is_reset(one: asyncpg.Pool) -> None:
    pid = await db.call(one, _leave_probe)
    assert await _probe(one) == (None, pid)


async def test_a_failed_read_is_reset(one: asyncpg.Pool) -> None:
    async def fails(conn: asyncpg.Connection) -> None:
        await _leave_probe(conn)
        raise RuntimeError("read failed")

    with pytest.raises(RuntimeError):
        await db.read(one, fails)
    assert (await _probe(one))[0] is None


async def test_a_read_left_in_a_transaction_is_reset(one: asyncpg.Pool) -> None:
    # a session advisory lock outlives the transaction's rollback: only the reset
    # query (pg_advisory_unlock_all) lets it go
    async def opens(conn: asyncpg.Connection) -> None:
        await conn.execute("BEGIN")
        await conn.execute("SELECT pg_advisory_lock(4242)")

    await db.read(one, opens)
    async with one.acquire() as conn:
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND pid = pg_backend_pid() AND objid = 4242")
    assert held == 0
