"""storage.sessions against the real database: keyset lists, delete, user erasure, locks."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import asyncpg
import pytest

from chat_storage.storage import sessions
from chat_storage.storage.errors import NotFound
from chat_storage.storage.ids import new_id
from tests.conftest import Tenant, make_tenant


async def add_session(conn: asyncpg.Connection, tenant: Tenant, user_id: str = "u1",
                      title: str = "", messages: int = 0) -> uuid.UUID:
    session = await sessions.create(conn, tenant.id, user_id=user_id, title=title)
    session_id: uuid.UUID = session["id"]
    if messages:
        await conn.execute(
            "INSERT INTO messages (id, tenant_id, session_id, seq, role, content) "
            "SELECT gen_random_uuid(), $1, $2, n, 'user', 'm' || n "
            "FROM generate_series(1, $3::int) AS n",
            tenant.id, session_id, messages,
        )
        await conn.execute(
            "UPDATE sessions SET last_seq = $2::int, message_count = $2::int WHERE id = $1",
            session_id, messages)
    return session_id


async def add_attachment(conn: asyncpg.Connection, tenant: Tenant, session_id: uuid.UUID,
                         key: str) -> None:
    await conn.execute(
        "INSERT INTO attachments (id, tenant_id, session_id, name, mime, size, sha256, "
        "object_key) VALUES ($1, $2, $3, 'f', 'text/plain', 1, 'x', $4)",
        new_id(), tenant.id, session_id, key,
    )


async def count(conn: asyncpg.Connection, table: str, session_ids: list[uuid.UUID]) -> int:
    column = "id" if table == "sessions" else "session_id"
    n: int = await conn.fetchval(
        f"SELECT count(*) FROM {table} WHERE {column} = ANY($1::uuid[])", session_ids)
    return n


def test_like_pattern_escapes_wildcards() -> None:
    assert sessions.like_pattern("a%b_c\\d") == "%a\\%b\\_c\\\\d%"


async def test_list_keyset_breaks_ties_by_id(pool: asyncpg.Pool, tenant: Tenant) -> None:
    async with pool.acquire() as conn:
        made = [await add_session(conn, tenant) for _ in range(5)]
        # same activity for all: the order and the pages rest on id alone
        await conn.execute("UPDATE sessions SET activity_at = '2026-01-01Z' WHERE tenant_id = $1",
                           tenant.id)
        seen: list[uuid.UUID] = []
        after = None
        for _ in range(10):
            listed = await sessions.list_sessions(conn, tenant.id, after=after, limit=2)
            seen.extend(item.session["id"] for item in listed)
            assert all(i.key == (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), i.session["id"])
                       for i in listed)
            if len(listed) < 2:
                break
            after = listed[-1].key
        assert seen == sorted(made, reverse=True)


async def test_list_filters(pool: asyncpg.Pool, tenant: Tenant) -> None:
    async with pool.acquire() as conn:
        a = await add_session(conn, tenant, "x", "50% off")
        b = await add_session(conn, tenant, "x", "5000 off")
        c = await add_session(conn, tenant, "y", "back\\slash")
        await sessions.update(conn, tenant.id, b, favorite=True)

        async def found(**kw: Any) -> set[uuid.UUID]:
            return {i.session["id"] for i in await sessions.list_sessions(conn, tenant.id, **kw)}

        assert await found(q="0% O") == {a}
        assert await found(q="\\") == {c}
        assert await found(user_id="x") == {a, b}
        assert await found(user_id="x", favorite=False) == {a}
        assert await found(favorite=True) == {b}


async def test_delete_cascades_and_returns_object_keys(pool: asyncpg.Pool, tenant: Tenant,
                                                       other_tenant: Tenant) -> None:
    async with pool.acquire() as conn:
        sid = await add_session(conn, tenant, messages=3)
        await add_attachment(conn, tenant, sid, "t/a")
        await add_attachment(conn, tenant, sid, "t/b")
        with pytest.raises(NotFound):
            await sessions.delete(conn, other_tenant.id, sid, actor="test")
        assert await count(conn, "messages", [sid]) == 3
        keys = await sessions.delete(conn, tenant.id, sid, actor="test", request_id="r1")
        assert sorted(keys) == ["t/a", "t/b"]
        for table in ("sessions", "messages", "attachments"):
            assert await count(conn, table, [sid]) == 0
        with pytest.raises(NotFound):
            await sessions.delete(conn, tenant.id, sid, actor="test")


async def test_erase_user_counts_and_scope(pool: asyncpg.Pool, tenant: Tenant,
                                           other_tenant: Tenant) -> None:
    async with pool.acquire() as conn:
        gone = [await add_session(conn, tenant, "eve", messages=n) for n in (2, 3)]
        await add_attachment(conn, tenant, gone[1], "eve/1")
        kept = [await add_session(conn, tenant, "eve2", messages=1),
                await add_session(conn, other_tenant, "eve", messages=1)]
        erased = await sessions.erase_user(conn, tenant.id, "eve", actor="test")
        assert erased == sessions.Erased(2, 5, ["eve/1"], sorted(gone))
        assert await count(conn, "sessions", gone) == 0
        assert await count(conn, "messages", gone) == 0
        assert await count(conn, "messages", kept) == 2
        assert await sessions.erase_user(conn, tenant.id, "eve", actor="test") == \
            sessions.Erased(0, 0, [], [])


async def test_delete_waits_for_a_writer_without_deadlock(pool: asyncpg.Pool,
                                                          database_url: str) -> None:
    """A writer locks the session, then a message; a delete must queue behind it.

    Were the delete to lock the messages before the session, the writer's second
    step would wait for the delete while the delete waits for the writer: deadlock.
    """
    tenant = await make_tenant(pool)
    async with pool.acquire() as conn:
        sid = await add_session(conn, tenant, messages=2)
    writer = await asyncpg.connect(database_url)
    try:
        tx = writer.transaction()
        await tx.start()
        await writer.execute("SELECT 1 FROM sessions WHERE id = $1 FOR NO KEY UPDATE", sid)

        async def delete() -> list[str]:
            async with pool.acquire() as conn:
                return await sessions.delete(conn, tenant.id, sid, actor="test")

        deleting = asyncio.create_task(delete())
        await wait_until_blocked(pool, deleting)
        await writer.execute("UPDATE messages SET content = 'x' WHERE session_id = $1 AND seq = 1",
                             sid)
        await tx.commit()
        assert await asyncio.wait_for(deleting, 10) == []
    finally:
        await writer.close()
    async with pool.acquire() as conn:
        assert await count(conn, "messages", [sid]) == 0


async def wait_until_blocked(pool: asyncpg.Pool, task: asyncio.Task[Any]) -> None:
    """Wait (bounded) until some backend of this database waits for a row lock."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert not task.done(), task
        async with pool.acquire() as conn:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the delete never waited for the writer's lock")
