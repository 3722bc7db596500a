"""Retention against real Postgres and the local object store: archive, then delete."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import asyncpg
import pytest

from chat_storage.storage import audit_log, retention, sessions
from chat_storage.storage.ids import new_id
from chat_storage.storage.messages import NewMessage, WriteGroup
from chat_storage.storage.objects.local import LocalStore
from chat_storage.storage.writes import SessionBatch, insert_batches
from tests.conftest import Tenant, make_tenant

OLD = "now() - interval '40 days'"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path, b"test key")


async def new_session(conn: asyncpg.Connection, tenant: Tenant, user: str, *contents: str,
                      status: str = "complete") -> tuple[uuid.UUID, list[uuid.UUID]]:
    session = await sessions.create(conn, tenant.id, user_id=user)
    sid = session["id"]
    msgs = [NewMessage(id=new_id(), role="user", content=c, status=status) for c in contents]
    if msgs:
        [[stored]] = await insert_batches(conn, [SessionBatch(tenant.id, sid, [WriteGroup(msgs)])])
        assert not isinstance(stored, Exception)
    return sid, [m.id for m in msgs]


async def age(conn: asyncpg.Connection, ids: list[uuid.UUID], *, sessions_too: bool = False,
              ) -> None:
    await conn.execute(f"UPDATE messages SET created_at = {OLD} WHERE id = ANY($1::uuid[])", ids)
    if sessions_too:
        await conn.execute(f"UPDATE sessions SET activity_at = {OLD} WHERE id IN "
                           "(SELECT session_id FROM messages WHERE id = ANY($1::uuid[]))", ids)


async def test_archive_moves_old_messages_to_the_store_then_deletes_them(
    pool: asyncpg.Pool, store: LocalStore,
) -> None:
    tenant = await make_tenant(pool)
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    async with pool.acquire() as conn:
        # ada: two old messages and one recent in one session; her session stays
        kept, ada = await new_session(conn, tenant, "ada", "old 1", "old 2", "new")
        await age(conn, ada[:2])
        # bob: a session whose every message is old and which was last active long ago
        gone, bob = await new_session(conn, tenant, "bob", "bob's old")
        await age(conn, bob, sessions_too=True)
        # a streamed answer is never archived, however old
        _, live = await new_session(conn, tenant, "ada", "still streaming", status="streaming")
        await age(conn, live)
        # an old session with nothing in it is removed too
        empty = (await sessions.create(conn, tenant.id, user_id="cy"))["id"]
        await conn.execute(f"UPDATE sessions SET activity_at = {OLD} WHERE id = $1", empty)
        await conn.execute(
            "INSERT INTO attachments (id, tenant_id, session_id, message_id, name, mime, size, "
            "sha256, object_key, status) VALUES ($1, $2, $3, $4, 'a', 'a/b', 1, 'x', 'k/a', "
            "'ready')", new_id(), tenant.id, kept, ada[0])

        out = await retention.archive_batch(conn, store, tenant.id, cutoff)
        assert (out.messages, out.sessions) == (3, 2)
        assert out.object_keys == ["k/a"]
        lines = {}
        for key in out.archives:
            for line in await retention.read_archive(store, key):
                lines[(line["kind"], str(line["id"]))] = line
                assert key.startswith(retention.user_prefix(tenant.id, line["user_id"]))
        assert {k: v.get("content") for k, v in lines.items()} == {
            ("message", str(ada[0])): "old 1", ("message", str(ada[1])): "old 2",
            ("message", str(bob[0])): "bob's old", ("session", str(gone)): None,
            ("session", str(empty)): None}
        left = await conn.fetch("SELECT content FROM messages WHERE tenant_id = $1 "
                                "ORDER BY content", tenant.id)
        assert [r["content"] for r in left] == ["new", "still streaming"]
        count = await conn.fetchval("SELECT message_count FROM sessions WHERE id = $1", kept)
        assert count == 1
        assert await conn.fetchval(
            "SELECT count(*) FROM sessions WHERE id = ANY($1::uuid[])", [gone, empty]) == 0
        assert await conn.fetchval("SELECT count(*) FROM attachments WHERE tenant_id = $1",
                                   tenant.id) == 0
        [record] = [a for a in await audit_log.audit_records(conn, tenant.id)
                    if a["action"] == "retention.archive"]
        assert record["details"]["messages"] == 3 and record["actor"] == "retention"

        # nothing is left to do
        again = await retention.archive_batch(conn, store, tenant.id, cutoff)
        assert (again.messages, again.sessions, again.archives) == (0, 0, [])


async def test_batches_archive_each_message_once(pool: asyncpg.Pool, store: LocalStore) -> None:
    tenant = await make_tenant(pool)
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    async with pool.acquire() as conn:
        ids: list[uuid.UUID] = []
        for n in range(3):
            _, more = await new_session(conn, tenant, f"u{n}", *[f"{n}.{i}" for i in range(4)])
            ids += more
        await age(conn, ids)
        seen: list[str] = []
        for _ in range(10):
            out = await retention.archive_batch(conn, store, tenant.id, cutoff, limit=5)
            for key in out.archives:
                seen += [line["content"] for line in await retention.read_archive(store, key)]
            if out.messages == 0:
                break
    assert sorted(seen) == sorted(f"{n}.{i}" for n in range(3) for i in range(4))


async def test_erase_expired_removes_temporary_chats_only(pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pool)
    async with pool.acquire() as conn:
        expired, _ = await new_session(conn, tenant, "ada", "temporary")
        lasting = (await sessions.create(conn, tenant.id, user_id="ada", ttl_s=3600))["id"]
        forever, _ = await new_session(conn, tenant, "ada", "kept")
        await conn.execute("UPDATE sessions SET expires_at = now() - interval '1 second' "
                           "WHERE id = $1", expired)
        await conn.execute(
            "INSERT INTO attachments (id, tenant_id, session_id, name, mime, size, sha256, "
            "object_key) VALUES ($1, $2, $3, 'a', 'a/b', 1, 'x', 'k/tmp')",
            new_id(), tenant.id, expired)
        out = await retention.erase_expired(conn)
        # the sweep is database-wide: other tests' expired chats may go with it
        assert "k/tmp" in out.object_keys
        left = {r["id"] for r in await conn.fetch(
            "SELECT id FROM sessions WHERE tenant_id = $1", tenant.id)}
        assert left == {lasting, forever}
        [record] = [a for a in await audit_log.audit_records(conn, tenant.id)
                    if a["action"] == "session.expire"]
        assert record["details"] == {"sessions": [str(expired)], "messages": 1}
