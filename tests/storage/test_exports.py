"""storage.exports: pages cover everything once, and all pages see one snapshot."""

from __future__ import annotations

import asyncpg

from chat_storage.storage import exports, sessions
from tests.conftest import Tenant
from tests.storage.test_sessions import add_session


async def test_pages_read_one_snapshot(pool: asyncpg.Pool, tenant: Tenant) -> None:
    async with pool.acquire() as conn, pool.acquire() as writer:
        sid = await add_session(conn, tenant, messages=5)
        seqs: list[int] = []
        async with exports.snapshot(conn):
            async for page in exports.message_pages(conn, tenant.id, sid, page_size=2):
                assert len(page) <= 2
                seqs.extend(m["seq"] for m in page)
                if len(seqs) == 2:
                    # committed after the export began: must not appear in it
                    await writer.execute(
                        "INSERT INTO messages (id, tenant_id, session_id, seq, role) "
                        "SELECT gen_random_uuid(), $1, $2, n, 'user' "
                        "FROM generate_series(6, 9) AS n", tenant.id, sid)
                    await writer.execute("DELETE FROM messages WHERE session_id = $1 AND seq = 5",
                                         sid)
        assert seqs == [1, 2, 3, 4, 5]
        # the next export sees the new state
        async with exports.snapshot(conn):
            pages = [p async for p in exports.message_pages(conn, tenant.id, sid, page_size=4)]
        assert [[m["seq"] for m in p] for p in pages] == [[1, 2, 3, 4], [6, 7, 8, 9]]


async def test_exact_multiple_of_page_size_and_tenant_scope(
    pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> None:
    async with pool.acquire() as conn:
        sid = await add_session(conn, tenant, messages=4)
        pages = [p async for p in exports.message_pages(conn, tenant.id, sid, page_size=2)]
        assert [len(p) for p in pages] == [2, 2]
        assert [p async for p in exports.message_pages(conn, other_tenant.id, sid)] == []


async def test_user_sessions_in_creation_order(pool: asyncpg.Pool, tenant: Tenant,
                                               other_tenant: Tenant) -> None:
    async with pool.acquire() as conn:
        made = [await add_session(conn, tenant, "kim") for _ in range(5)]
        await add_session(conn, tenant, "lee")
        await add_session(conn, other_tenant, "kim")
        # equal (and earliest) creation times: among these, order and paging rest on id
        await conn.execute("UPDATE sessions SET created_at = '2000-01-01Z' WHERE id = ANY($1)",
                           made[1:4])
        found = [s async for s in exports.user_sessions(conn, tenant.id, "kim", page_size=2)]
        assert [s["id"] for s in found] == [*sorted(made[1:4]), made[0], made[4]]
        assert found[-1] == await sessions.get(conn, tenant.id, made[4])
