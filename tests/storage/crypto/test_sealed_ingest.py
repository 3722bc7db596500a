"""Async-ingest entries of an encrypted tenant, in the real Redis ingest stream: sealed
while they wait, opened for the consumer with the right key only."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from chat_storage.storage import sessions
from chat_storage.storage.crypto.kek import open_kek
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.errors import NotFound
from chat_storage.storage.ids import new_id
from chat_storage.storage.ingest import Entry, IngestStream, opened
from chat_storage.storage.messages import NewMessage
from tests.conftest import REDIS_URL, Tenant


@pytest.fixture
async def keyring() -> AsyncIterator[Keyring]:
    ring = Keyring(await open_kek(f"local:{secrets.token_hex(32)}"), cache_s=60)
    yield ring
    await ring.close()


async def test_an_encrypted_tenants_entry_waits_sealed_and_opens_for_the_consumer(
        pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant, keyring: Keyring,
        prefix: str) -> None:
    await pool.execute("UPDATE tenants SET encrypted = true WHERE id = $1", tenant.id)
    async with pool.acquire() as conn:
        sid = uuid.UUID(str((await sessions.create(conn, tenant.id, user_id="u"))["id"]))
        psid = uuid.UUID(str((await sessions.create(conn, other_tenant.id,
                                                     user_id="u"))["id"]))
        key = await keyring.for_copies(conn, tenant.id, sid)
        assert key is not None
        assert await keyring.for_copies(conn, other_tenant.id, psid) is None
        with pytest.raises(NotFound):  # no user's key to seal for: refused, not queued
            await keyring.for_copies(conn, tenant.id, uuid.uuid4())
    said, meta = f"said-{secrets.token_hex(8)}", f"meta-{secrets.token_hex(8)}"
    message = NewMessage(id=new_id(), role="user", content=said, metadata={"m": meta},
                         context=[{"doc": said}])
    client = Redis.from_url(REDIS_URL)
    stream = IngestStream(client, prefix=prefix)
    try:
        await stream.ensure_group()
        await stream.append(Entry(tenant.id, sid, [message]), key)
        [(_, fields)] = await client.xrange(stream.keys.ingest_stream, "-", "+")
        raw = b"".join(fields.values())
        assert said.encode() not in raw and meta.encode() not in raw
        assert str(sid).encode() in raw  # routed by its ids, which stay readable
        [delivery] = await stream.read("c", count=10, block_ms=100)
        assert delivery.entry is None and delivery.key_id == key.id
        entry = opened(delivery, key).entry
        assert entry is not None and entry.session_id == sid
        assert [(m.id, m.content, m.metadata, m.context) for m in entry.messages] == [
            (message.id, said, {"m": meta}, [{"doc": said}])]
        gone = opened(delivery, None)  # its user erased meanwhile: dead-lettered as is
        assert gone.entry is None and (gone.error or "").startswith("unreadable")
        async with pool.acquire() as conn:
            other = await keyring.for_user(conn, tenant.id, "someone-else")
        assert opened(delivery, other).entry is None  # another user's key: does not open
    finally:
        await client.aclose()
