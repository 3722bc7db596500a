"""Retention archives of an encrypted tenant are sealed files of sealed rows, which
shredding makes unreadable: real Postgres and the local object store."""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

import asyncpg
import pytest

from chat_storage.storage import retention, sessions
from chat_storage.storage.crypto.envelope import Unreadable
from chat_storage.storage.crypto.files import read_header
from chat_storage.storage.crypto.kek import open_kek
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.crypto.rows import from_archive, open_messages
from chat_storage.storage.crypto.switch import EncryptionNotConfigured, set_encryption
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
        with pytest.raises(EncryptionNotConfigured):  # never written in the clear
            await retention.archive_batch(conn, store, tenant.id, cutoff)
        out = await retention.archive_batch(conn, store, tenant.id, cutoff, keyring=keyring)
        assert out.messages == 2 and len(out.archives) == 2
        assert all(key.endswith(".jsonl.gz.sealed") for key in out.archives)
        # the files on disk: sealed whole, so neither the text nor the user ids show
        raw = b"".join((tmp_path / key).read_bytes() for key in out.archives)
        for user, text in secret.items():
            assert text.encode() not in raw and f'"user_id":"{user}"'.encode() not in raw
        assert all(read_header(tmp_path / key) is not None for key in out.archives)
        copies = {key: (tmp_path / key).read_bytes() for key in out.archives}
        with pytest.raises(Unreadable):  # no key, no lines
            await retention.read_archive(store, out.archives[0])
        lines = {line["user_id"]: from_archive(line) for key in out.archives
                 for line in await retention.read_archive(store, key, conn=conn,
                                                          keyring=keyring)
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
        # the archive files copied before the erasure: alice's no longer opens, bob's does
        for key, copy in copies.items():
            (tmp_path / key).write_bytes(copy)
        opened = []
        for key in out.archives:
            try:
                opened += await retention.read_archive(store, key, conn=conn, keyring=fresh)
            except Unreadable:
                opened.append({"user_id": "(shredded)"})
        assert sorted(line["user_id"] for line in opened) == ["(shredded)", "bob"]
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
                                            dt.datetime.now(dt.UTC) - dt.timedelta(days=30),
                                            keyring=keyring)
        assert out.sessions == 1
        raw = b"".join((tmp_path / key).read_bytes() for key in out.archives)
        assert title.encode() not in raw
        [line] = [line for key in out.archives for line in await retention.read_archive(
            store, key, conn=conn, keyring=keyring)]
        assert line["kind"] == "session" and line["title"] == "" and line["sealed_title"]
    await keyring.close()
