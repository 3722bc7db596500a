"""Advisory locks: one holder across connections, released when the block ends."""

from __future__ import annotations

import asyncpg

from chat_storage.storage import locks
from tests.conftest import ADMIN_URL

KEY = 0x63686174_74657374  # "chattest": no other user of this key


async def test_try_advisory_lock_has_one_holder_at_a_time() -> None:
    first = await asyncpg.connect(ADMIN_URL)
    second = await asyncpg.connect(ADMIN_URL)
    try:
        async with locks.try_advisory_lock(first, KEY) as taken:
            assert taken
            async with locks.try_advisory_lock(second, KEY) as also:
                assert not also
            # leaving a block that did not get the lock releases nothing
            async with locks.try_advisory_lock(second, KEY) as also:
                assert not also
        async with locks.try_advisory_lock(second, KEY) as taken:
            assert taken  # released when the first block ended
    finally:
        await first.close()
        await second.close()


async def test_advisory_lock_is_released_after_an_error() -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    other = await asyncpg.connect(ADMIN_URL)
    try:
        try:
            async with locks.advisory_lock(conn, KEY):
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        async with locks.try_advisory_lock(other, KEY) as taken:
            assert taken
    finally:
        await conn.close()
        await other.close()
