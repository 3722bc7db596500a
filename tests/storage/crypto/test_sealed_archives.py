"""Retention archives of an encrypted tenant hold ciphertext, which shredding makes
unreadable: real Postgres and the local object store."""

from __future__ import annotations

import datetime as dt
import gzip
import secrets
from pathlib import Path

import asyncpg
import pytest

from chat_storage.storage import retention, sessions
from chat_storage.storage.crypto.envelope import Unreadable
from chat_storage.storage.crypto.kek import open_kek
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.crypto.rows import from_archive, open_messages
from chat_storage.storage.crypto.switch import set_encryption
from chat_storage.storage.objects.local import LocalStore
from tests.conftest import make_tenant
from tests.storage.crypto.test_sealed_rows import write


async def test_archives_hold_ciphertext_that_shredding_makes_unreadable(
        pool: asyncpg.Pool, tmp_path: Path) -> None:
    store = LocalStore(tmp_path, b"test key")
    keyring = Keyring(await open_kek(f"local:{secrets.token_hex(32)}"), cache_s=60)
    tenant = await make_tenant(pool, "arch")
    secret = {u: f"{u}-{secrets.token_hex(8)}" for u in ("alice", "bob")}
    async with pool.acquire() as conn:
        await set_encryption(conn, tenant.name, True)
        for user, text in secret.items():
            await write(conn, keyring, tenant, user, text)
        await conn.execute("UPDATE messages SET created_at = now() - interval '40 days' "
                           "WHERE tenant_id = $1", tenant.id)
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        out = await retention.archive_batch(conn, store, tenant.id, cutoff)
        assert out.messages == 2
        raw = b"".join(gzip.decompress((tmp_path / key).read_bytes()) for key in out.archives)
        for text in secret.values():
            assert text.encode() not in raw
        lines = {line["user_id"]: from_archive(line) for key in out.archives
                 for line in await retention.read_archive(store, key)
                 if line["kind"] == "message"}
        assert lines["alice"]["content"] == "" and lines["alice"]["sealed"]
        # while the key exists, an archive opens
        [opened] = await open_messages(conn, keyring, tenant.id, [lines["alice"]])
        assert opened["content"] == secret["alice"]
        await sessions.erase_user(conn, tenant.id, "alice", actor="test")
        fresh = Keyring(keyring.kek, cache_s=60)  # no key kept in memory
        with pytest.raises(Unreadable):
            await open_messages(conn, fresh, tenant.id, [lines["alice"]])
        [bob] = await open_messages(conn, fresh, tenant.id, [lines["bob"]])
        assert bob["content"] == secret["bob"]
    await keyring.close()


async def test_an_archived_empty_session_keeps_its_title_sealed(
        pool: asyncpg.Pool, tmp_path: Path) -> None:
    store = LocalStore(tmp_path, b"test key")
    keyring = Keyring(await open_kek(f"local:{secrets.token_hex(32)}"), cache_s=60)
    tenant = await make_tenant(pool, "archt")
    title = f"title-{secrets.token_hex(8)}"
    async with pool.acquire() as conn:
        await set_encryption(conn, tenant.name, True)
        sid = (await sessions.create(conn, tenant.id, user_id="u", title=title,
                                     keyring=keyring))["id"]
        await conn.execute("UPDATE sessions SET activity_at = now() - interval '40 days' "
                           "WHERE id = $1", sid)
        out = await retention.archive_batch(conn, store, tenant.id,
                                            dt.datetime.now(dt.UTC) - dt.timedelta(days=30))
        assert out.sessions == 1
        raw = b"".join(gzip.decompress((tmp_path / key).read_bytes()) for key in out.archives)
        assert title.encode() not in raw
        [line] = [line for key in out.archives for line in await retention.read_archive(store, key)]
        assert line["kind"] == "session" and line["title"] == "" and line["sealed_title"]
    await keyring.close()
