"""Sealed messages against real Postgres: what is stored, what opens, what is shredded."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from chat_storage.storage import exports, history, messages, sessions
from chat_storage.storage.crypto.envelope import Unreadable
from chat_storage.storage.crypto.kek import open_kek
from chat_storage.storage.crypto.keyring import Keyring, rewrap
from chat_storage.storage.crypto.switch import set_encryption
from chat_storage.storage.errors import Conflict
from chat_storage.storage.ids import new_id
from chat_storage.storage.messages import NewMessage, WriteGroup
from chat_storage.storage.writes import SessionBatch, insert_batches
from tests.conftest import Tenant, make_tenant
from tests.support.pgdump import data_dump


@pytest.fixture
async def keyring() -> AsyncIterator[Keyring]:
    ring = Keyring(await open_kek(f"local:{secrets.token_hex(32)}"), cache_s=60)
    yield ring
    await ring.close()


async def write(conn: asyncpg.Connection, keyring: Keyring, tenant: Tenant, user: str,
                content: str) -> tuple[uuid.UUID, uuid.UUID]:
    """A new session of ``user`` with one message; (session id, message id)."""
    sid = (await sessions.create(conn, tenant.id, user_id=user))["id"]
    msg = NewMessage(id=new_id(), role="user", content=content,
                     context=[{"doc": content}], metadata={"note": content})
    [[stored]] = await insert_batches(
        conn, [SessionBatch(tenant.id, sid, [WriteGroup([msg])])], keyring)
    assert not isinstance(stored, Exception)
    assert stored[0]["content"] == content  # the writer's answer is plain
    return sid, msg.id


async def encrypted(pool: asyncpg.Pool) -> Tenant:
    tenant = await make_tenant(pool, "enc")
    async with pool.acquire() as conn:
        assert await set_encryption(conn, tenant.name, True)
        assert not await set_encryption(conn, tenant.name, True)
    return tenant


async def test_an_encrypted_tenants_content_is_never_stored_in_plain_text(
        pool: asyncpg.Pool, keyring: Keyring, database_url: str) -> None:
    tenant, plain = await encrypted(pool), await make_tenant(pool, "plain")
    secret, visible = f"sekrit-{secrets.token_hex(8)}", f"visible-{secrets.token_hex(8)}"
    async with pool.acquire() as conn:
        sid, mid = await write(conn, keyring, tenant, "alice", secret)
        psid, _ = await write(conn, keyring, plain, "bob", visible)
        row = await conn.fetchrow("SELECT content, context, metadata, sealed, data_key_id "
                                  "FROM messages WHERE id = $1", mid)
        assert (row["content"], row["context"], row["metadata"]) == ("", None, {})
        assert row["sealed"] is not None and row["data_key_id"] is not None
        # every reader opens it
        [got] = await history.history(conn, tenant.id, sid, limit=10, keyring=keyring)
        assert (got["content"], got["context"], got["metadata"]) == (
            secret, [{"doc": secret}], {"note": secret})
        assert "sealed" not in got and "data_key_id" not in got
        one = await messages.get(conn, tenant.id, sid, mid, keyring)
        assert one["content"] == secret
        pages = [p async for p in exports.message_pages(conn, tenant.id, sid, keyring=keyring)]
        assert pages[0][0]["metadata"] == {"note": secret}
        # an unencrypted tenant's rows are as before
        [other] = await history.history(conn, plain.id, psid, limit=10, keyring=keyring)
        assert other["content"] == visible
        assert await conn.fetchval("SELECT sealed FROM messages WHERE session_id = $1",
                                   psid) is None
        # without the KEK a sealed row does not open (and says why)
        with pytest.raises(Unreadable, match="CHAT_ENCRYPTION_KEK"):
            await history.history(conn, tenant.id, sid, limit=10)
    dumped = data_dump(database_url)
    assert secret not in dumped
    assert visible in dumped  # the check can see plain text where there is some


async def test_a_sealed_row_moved_elsewhere_does_not_open(
        pool: asyncpg.Pool, keyring: Keyring) -> None:
    tenant = await encrypted(pool)
    async with pool.acquire() as conn:
        sid, mid = await write(conn, keyring, tenant, "alice", "first")
        _, other = await write(conn, keyring, tenant, "alice", "second")
        # the same user's key, another session and message: the bound place differs
        await conn.execute(
            "UPDATE messages SET sealed = (SELECT sealed FROM messages WHERE id = $1) "
            "WHERE id = $2", mid, other)
        osid = await conn.fetchval("SELECT session_id FROM messages WHERE id = $1", other)
        with pytest.raises(Unreadable):
            await history.history(conn, tenant.id, osid, limit=10, keyring=keyring)
        assert (await history.history(conn, tenant.id, sid, limit=10,
                                      keyring=keyring))[0]["content"] == "first"


async def test_search_on_an_encrypted_tenant_is_a_conflict_that_says_why(
        pool: asyncpg.Pool) -> None:
    tenant = await encrypted(pool)
    async with pool.acquire() as conn:
        with pytest.raises(Conflict, match="encrypted at rest"):
            await history.search(conn, tenant.id, "anything", limit=10)


async def test_erasure_shreds_the_users_key_so_old_copies_no_longer_open(
        pool: asyncpg.Pool, keyring: Keyring) -> None:
    tenant = await encrypted(pool)
    async with pool.acquire() as conn:
        asid, _ = await write(conn, keyring, tenant, "alice", "alice's secret")
        bsid, _ = await write(conn, keyring, tenant, "bob", "bob's words")
        # what a backup taken now holds of the messages (the rows, as stored)
        backup = [dict(r) for r in await conn.fetch(
            f"SELECT {messages.COLUMNS} FROM messages WHERE tenant_id = $1", tenant.id)]
        erased = await sessions.erase_user(conn, tenant.id, "alice", actor="test")
        assert erased.sessions == 1
        assert await conn.fetchval(
            "SELECT count(*) FROM data_keys WHERE tenant_id = $1 AND user_id = 'alice'",
            tenant.id) == 0
        details = await conn.fetchval(
            "SELECT details FROM audit_log WHERE action = 'user.erase' AND tenant_id = $1",
            tenant.id)
        assert details["data_keys_destroyed"] == 1
    fresh = Keyring(keyring.kek, cache_s=60)  # another replica, or after a restart
    async with pool.acquire() as conn:
        alice = [messages.to_json(r) for r in backup if r["session_id"] == asid]
        bob = [messages.to_json(r) for r in backup if r["session_id"] == bsid]
        with pytest.raises(Unreadable, match="destroyed"):
            await open_rows(conn, fresh, tenant.id, alice)
        [opened] = await open_rows(conn, fresh, tenant.id, bob)
        assert opened["content"] == "bob's words"


async def open_rows(conn: asyncpg.Connection, keyring: Keyring, tenant_id: uuid.UUID,
                    rows: list[dict[str, object]]) -> list[dict[str, object]]:
    from chat_storage.storage.crypto.rows import open_messages
    return await open_messages(conn, keyring, tenant_id, rows)


async def test_rotating_the_kek_rewraps_keys_without_touching_rows(
        pool: asyncpg.Pool, keyring: Keyring) -> None:
    tenant = await encrypted(pool)
    new = await open_kek(f"local:{secrets.token_hex(32)}")
    async with pool.acquire() as conn:
        sid, mid = await write(conn, keyring, tenant, "carol", "before rotation")
        sealed = await conn.fetchval("SELECT sealed FROM messages WHERE id = $1", mid)
        assert await rewrap(conn, keyring.kek, new) >= 1
        assert await rewrap(conn, keyring.kek, new) == 0  # done: a rerun has nothing left
        assert await conn.fetchval("SELECT sealed FROM messages WHERE id = $1", mid) == sealed
        assert await conn.fetchval(
            "SELECT kek_id FROM data_keys WHERE tenant_id = $1", tenant.id) == new.id
        rotated = Keyring(new, cache_s=60)
        [got] = await history.history(conn, tenant.id, sid, limit=10, keyring=rotated)
        assert got["content"] == "before rotation"
        # the old KEK opens nothing any more
        with pytest.raises(Exception, match="unwrap"):
            await history.history(conn, tenant.id, sid, limit=10,
                                  keyring=Keyring(keyring.kek, cache_s=60))


async def test_feedback_on_a_sealed_message_works_and_its_metadata_is_refused(
        pool: asyncpg.Pool, keyring: Keyring) -> None:
    tenant = await encrypted(pool)
    async with pool.acquire() as conn:
        sid, mid = await write(conn, keyring, tenant, "dana", "rate me")
        rated = await messages.update(conn, tenant.id, sid, mid, feedback={"rating": 1},
                                      keyring=keyring)
        assert rated["content"] == "rate me" and rated["feedback"] == {"rating": 1}
        with pytest.raises(Conflict, match="encrypted"):
            await messages.update(conn, tenant.id, sid, mid, metadata={"x": 1},
                                  keyring=keyring)
        # a tombstone keeps nothing sealed
        await messages.tombstone(conn, tenant.id, sid, mid, actor="test")
        assert await conn.fetchval("SELECT sealed FROM messages WHERE id = $1", mid) is None
