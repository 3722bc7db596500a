"""A streamed answer of an encrypted tenant: checkpoints, end and recovery stay sealed."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from chat_storage.storage import sessions, streams
from chat_storage.storage.crypto.kek import open_kek
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.crypto.switch import set_encryption
from chat_storage.storage.ids import new_id
from chat_storage.storage.messages import NewMessage, WriteGroup
from chat_storage.storage.writes import SessionBatch, insert_batches
from tests.conftest import make_tenant


@pytest.fixture
async def keyring() -> AsyncIterator[Keyring]:
    ring = Keyring(await open_kek(f"local:{secrets.token_hex(32)}"), cache_s=60)
    yield ring
    await ring.close()


async def start(pool: asyncpg.Pool, keyring: Keyring,
                encrypted: bool) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    tenant = await make_tenant(pool, "stream")
    async with pool.acquire() as conn:
        await set_encryption(conn, tenant.name, encrypted)
        sid = (await sessions.create(conn, tenant.id, user_id="u"))["id"]
        msg = NewMessage(id=new_id(), role="assistant", content="", status="streaming",
                         metadata={"model": "m1"})
        await insert_batches(conn, [SessionBatch(tenant.id, sid, [WriteGroup([msg])])], keyring)
    return tenant.id, sid, msg.id


async def stored(conn: asyncpg.Connection, mid: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT content, metadata, sealed FROM messages WHERE id = $1", mid)
    assert row is not None
    return row


@pytest.mark.parametrize("encrypted", [True, False])
async def test_checkpoints_and_the_end_of_a_stream(
        pool: asyncpg.Pool, keyring: Keyring, encrypted: bool) -> None:
    tid, sid, mid = await start(pool, keyring, encrypted)
    async with pool.acquire() as conn:
        assert await streams.checkpoint(conn, tid, sid, mid, stored_len=0, tail="secret ",
                                        content="secret ", keyring=keyring)
        assert await streams.checkpoint(conn, tid, sid, mid, stored_len=7, tail="words",
                                        content="secret words", keyring=keyring)
        row = await stored(conn, mid)
        assert row["content"] == ("" if encrypted else "secret words")
        assert (row["sealed"] is not None) == encrypted
        _, live = await streams.live_state(conn, tid, sid, keyring)
        assert [m["content"] for m in live] == ["secret words"]
        final = await streams.finish(conn, tid, sid, mid, content="secret words.",
                                     status="complete", metadata={"done": True},
                                     usage={"total_tokens": 3}, keyring=keyring)
        assert final["content"] == "secret words."
        assert final["metadata"] == {"model": "m1", "done": True}
        assert final["status"] == "complete" and final["usage"] == {"total_tokens": 3}
        row = await stored(conn, mid)
        assert (row["content"] == "") == encrypted
        # ended: a late checkpoint changes nothing
        assert not await streams.checkpoint(conn, tid, sid, mid, stored_len=13, tail="x",
                                            content="secret words.x", keyring=keyring)
        [again] = await streams.at_seqs(conn, tid, sid, [1], keyring)
        assert again["content"] == "secret words."


async def test_a_swept_sealed_stream_gets_its_lost_tail(
        pool: asyncpg.Pool, keyring: Keyring) -> None:
    tid, sid, mid = await start(pool, keyring, True)
    async with pool.acquire() as conn:
        await streams.checkpoint(conn, tid, sid, mid, stored_len=0, tail="abc", content="abc",
                                 keyring=keyring)
        await conn.execute("UPDATE messages SET stream_seen_at = now() - interval '1 hour' "
                           "WHERE id = $1", mid)
        swept = dict((m["id"], m) for _, m in await streams.sweep_orphans(
            conn, 60, keyring=keyring))
        assert swept[mid]["content"] == "abc" and swept[mid]["status"] == "interrupted"
        # a stale length is refused, the right one appends
        assert await streams.append_recovered(conn, tid, mid, 2, "zz", keyring=keyring) is None
        recovered = await streams.append_recovered(conn, tid, mid, 3, "def", keyring=keyring)
        assert recovered is not None and recovered["content"] == "abcdef"
        assert (await stored(conn, mid))["content"] == ""
