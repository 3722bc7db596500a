"""storage.history against the real database: branches, scoping, and index use."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from chat_storage.storage import history, messages, sessions, writes
from chat_storage.storage.errors import InvalidReference, NotFound
from chat_storage.storage.ids import new_id
from chat_storage.storage.messages import NewMessage, WriteGroup
from tests.conftest import make_tenant


async def store(conn: asyncpg.Connection, tenant_id: uuid.UUID, session_id: uuid.UUID,
                *contents: str, parent_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    group = WriteGroup([NewMessage(new_id(), "user", c, parent_id=parent_id) for c in contents])
    [[result]] = await writes.insert_batches(
        conn, [writes.SessionBatch(tenant_id, session_id, [group])])
    assert isinstance(result, list), result
    return result


def contents(rows: list[dict[str, Any]]) -> list[str]:
    return [r["content"] for r in rows]


async def test_history_scoping_and_errors(pool: asyncpg.Pool) -> None:
    mine, theirs = await make_tenant(pool), await make_tenant(pool)
    async with pool.acquire() as conn:
        sid = (await sessions.create(conn, mine.id, user_id="u"))["id"]
        assert await history.history(conn, mine.id, sid, limit=10) == []
        assert await history.session_exists(conn, mine.id, sid)
        assert not await history.session_exists(conn, theirs.id, sid)
        rows = await store(conn, mine.id, sid, "a", "b")
        with pytest.raises(NotFound):
            await history.history(conn, theirs.id, sid, limit=10)
        with pytest.raises(NotFound):
            await history.history(conn, theirs.id, sid, limit=10, leaf=rows[1]["id"])
        with pytest.raises(InvalidReference) as info:
            await history.history(conn, mine.id, sid, limit=10, leaf=uuid.uuid4())
        assert info.value.field == "leaf"
        # an empty range of a real leaf is just empty
        assert await history.history(conn, mine.id, sid, limit=10, leaf=rows[1]["id"],
                                     after_seq=2) == []


async def test_branch_walk_with_range_and_bad_parents(pool: asyncpg.Pool) -> None:
    t = await make_tenant(pool)
    async with pool.acquire() as conn:
        sid = (await sessions.create(conn, t.id, user_id="u"))["id"]
        base = await store(conn, t.id, sid, "1", "2", "3", "4")
        fork = await store(conn, t.id, sid, "5", "6", parent_id=base[1]["id"])
        # rows 5 and 6 both name message 2 as parent (each starts a branch from it)
        leaf = fork[1]
        walked = await history.history(conn, t.id, sid, limit=10, leaf=leaf["id"])
        assert contents(walked) == ["1", "2", "6"]
        walked = await history.history(conn, t.id, sid, limit=10, leaf=leaf["id"],
                                       descending=True, before_seq=6)
        assert contents(walked) == ["2", "1"]
        walked = await history.history(conn, t.id, sid, limit=1, leaf=base[3]["id"], after_seq=1)
        assert contents(walked) == ["2"]

        # parents that would loop (itself, a later message) end the walk instead
        await conn.execute("UPDATE messages SET parent_id = id WHERE id = $1", base[2]["id"])
        walked = await history.history(conn, t.id, sid, limit=10, leaf=base[3]["id"])
        assert contents(walked) == ["3", "4"]
        await conn.execute("UPDATE messages SET parent_id = $2 WHERE id = $1",
                           base[2]["id"], leaf["id"])
        walked = await history.history(conn, t.id, sid, limit=10, leaf=base[2]["id"])
        assert contents(walked) == ["3"]


async def test_feedback_and_search_keysets(pool: asyncpg.Pool) -> None:
    t = await make_tenant(pool)
    async with pool.acquire() as conn:
        sid = (await sessions.create(conn, t.id, user_id="u"))["id"]
        rows = await store(conn, t.id, sid, "alpha beta", "alpha gamma", "alpha delta")
        for r in rows:
            await messages.update(conn, t.id, sid, r["id"], feedback={"rating": 1})
        first = await history.feedback(conn, t.id, limit=2)
        assert len(first) == 2
        last_msg, last_at = first[-1]
        rest = await history.feedback(conn, t.id, limit=2, before=(last_at, last_msg["id"]))
        seen = [m["id"] for m, _ in first + rest]
        assert sorted(seen) == sorted(r["id"] for r in rows)
        assert len(set(seen)) == 3

        hits = await history.search(conn, t.id, "alpha", limit=2)
        more = await history.search(conn, t.id, "alpha", limit=2,
                                    before=(hits[-1]["created_at"], hits[-1]["message_id"]))
        assert len(hits) == 2
        assert len(more) == 1
        assert {h["message_id"] for h in hits + more} == {r["id"] for r in rows}


@pytest.mark.parametrize(("sql", "index"), [
    # the expression of storage.history.search; the GIN index must match it exactly
    ("SELECT id FROM messages m WHERE "
     "to_tsvector('english', m.content) @@ websearch_to_tsquery('english', $1::text)",
     "messages_search"),
    ("SELECT id FROM messages m WHERE m.tenant_id = $1::uuid AND m.feedback IS NOT NULL "
     "ORDER BY m.feedback_at DESC, m.id DESC LIMIT 5", "messages_feedback"),
])
async def test_queries_can_use_their_index(pool: asyncpg.Pool, sql: str, index: str) -> None:
    """An expression that differs from its index's makes every query scan the table."""
    t = await make_tenant(pool)
    arg = "alpha" if index == "messages_search" else t.id
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", arg))
    assert index in plan, plan
