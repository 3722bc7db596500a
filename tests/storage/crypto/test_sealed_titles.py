"""Session titles of an encrypted tenant: sealed at rest, opened by every read."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from chat_storage.storage import exports, sessions
from chat_storage.storage.crypto.envelope import Unreadable
from chat_storage.storage.crypto.kek import open_kek
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.crypto.switch import set_encryption
from chat_storage.storage.errors import Conflict
from tests.conftest import make_tenant


@pytest.fixture
async def keyring() -> AsyncIterator[Keyring]:
    ring = Keyring(await open_kek(f"local:{secrets.token_hex(32)}"), cache_s=60)
    yield ring
    await ring.close()


async def test_an_encrypted_tenants_titles_are_sealed_and_read_back(
        pool: asyncpg.Pool, keyring: Keyring) -> None:
    tenant, plain = await make_tenant(pool, "ttl"), await make_tenant(pool, "ttp")
    title, renamed = f"title-{secrets.token_hex(6)}", f"renamed-{secrets.token_hex(6)}"
    async with pool.acquire() as conn:
        await set_encryption(conn, tenant.name, True)
        created = await sessions.create(conn, tenant.id, user_id="u", title=title,
                                        keyring=keyring)
        sid = created["id"]
        assert created["title"] == title and "sealed_title" not in created
        row = await conn.fetchrow("SELECT title, sealed_title FROM sessions WHERE id = $1", sid)
        assert row["title"] == "" and row["sealed_title"] is not None
        assert (await sessions.get(conn, tenant.id, sid, keyring))["title"] == title
        updated = await sessions.update(conn, tenant.id, sid, title=renamed, keyring=keyring)
        assert updated["title"] == renamed
        assert await conn.fetchval("SELECT title FROM sessions WHERE id = $1", sid) == ""
        [listed] = await sessions.list_sessions(conn, tenant.id, keyring=keyring)
        assert listed.session["title"] == renamed
        exported = [s async for s in exports.user_sessions(conn, tenant.id, "u",
                                                            keyring=keyring)]
        assert [s["title"] for s in exported] == [renamed]
        with pytest.raises(Conflict, match="encrypted"):
            await sessions.list_sessions(conn, tenant.id, q="renamed", keyring=keyring)
        with pytest.raises(Unreadable):  # no KEK, no title
            await sessions.get(conn, tenant.id, sid)
        # a sealed title moved to another session does not open
        other = (await sessions.create(conn, tenant.id, user_id="u", title="x",
                                       keyring=keyring))["id"]
        await conn.execute("UPDATE sessions SET sealed_title = (SELECT sealed_title FROM "
                           "sessions WHERE id = $1) WHERE id = $2", sid, other)
        with pytest.raises(Unreadable):
            await sessions.get(conn, tenant.id, other, keyring)
        # an unencrypted tenant's titles are as before, and searchable
        psid = (await sessions.create(conn, plain.id, user_id="u", title=title,
                                      keyring=keyring))["id"]
        assert await conn.fetchval("SELECT title FROM sessions WHERE id = $1", psid) == title
        assert len(await sessions.list_sessions(conn, plain.id, q=title[:8])) == 1
