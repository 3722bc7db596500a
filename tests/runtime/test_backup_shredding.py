"""Crypto-shredding and backups: a backup holds an encrypted tenant's content as
ciphertext and no data key; after a user's erasure, their rows restored from a backup
taken before it no longer open, while the other users' rows do.

Real Postgres, moto's S3 server (the backup location), the real ``backup`` and
``restore`` commands.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from chat_storage.runtime.settings import DEFAULT_MIGRATIONS_DIR
from chat_storage.storage import db, messages, sessions
from chat_storage.storage.crypto.envelope import Unreadable
from chat_storage.storage.crypto.kek import open_kek
from chat_storage.storage.crypto.keyring import Keyring
from chat_storage.storage.crypto.rows import open_messages
from chat_storage.storage.crypto.switch import set_encryption
from tests.conftest import ADMIN_URL, make_tenant
from tests.storage.crypto.test_sealed_rows import write
from tests.support import backupkit, motoserver, scratch
from tests.support.pgdump import data_dump

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def databases() -> AsyncIterator[tuple[str, str]]:
    names = [f"chat_shred_{kind}_{secrets.token_hex(4)}" for kind in ("src", "dst")]
    source = await scratch.create(ADMIN_URL, names[0], DEFAULT_MIGRATIONS_DIR)
    target = await scratch.create(ADMIN_URL, names[1])
    try:
        yield source, target
    finally:
        for name in names:
            await scratch.drop(ADMIN_URL, name)


async def test_rows_restored_from_an_older_backup_stay_shredded(
        databases: tuple[str, str], s3_endpoint: str) -> None:
    source_url, target_url = databases
    bucket = f"chat-shred-{secrets.token_hex(4)}"
    await motoserver.make_bucket(s3_endpoint, bucket)
    keyring = Keyring(await open_kek(f"local:{secrets.token_hex(32)}"), cache_s=60)
    secret = {u: f"{u}-{secrets.token_hex(8)}" for u in ("alice", "bob")}
    live = await db.create_pool(source_url, min_size=1, max_size=2)
    try:
        tenant = await make_tenant(live, "shred")
        async with live.acquire() as conn:
            await set_encryption(conn, tenant.name, True)
            sids = {u: (await write(conn, keyring, tenant, u, text))[0]
                    for u, text in secret.items()}

        location = f"s3://{bucket}/before-erasure"
        env = {**backupkit.s3_env(s3_endpoint, None), "CHAT_MAINTENANCE_INTERVAL_S": "0"}
        done = backupkit.cli("backup", "--to", location, DATABASE_URL=source_url, **env)
        assert done.returncode == 0, done.stderr
        async with live.acquire() as conn:
            await sessions.erase_user(conn, tenant.id, "alice", actor="test")
        done = backupkit.cli("restore", "--from", location, DATABASE_URL=target_url, **env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["rows"]

        dumped = data_dump(target_url)
        for text in secret.values():
            assert text not in dumped
        restored = await asyncpg.connect(target_url)
        try:
            # the backup held no data key: the restored rows are ciphertext only
            assert await restored.fetchval("SELECT count(*) FROM data_keys") == 0
            rows = {u: [messages.to_json(r) for r in await restored.fetch(
                f"SELECT {messages.COLUMNS} FROM messages WHERE session_id = $1", sid)]
                for u, sid in sids.items()}
        finally:
            await restored.close()
        assert all(len(r) == 1 and r[0]["sealed"] for r in rows.values())
        # they open with the keys the live key table holds now: bob's, not alice's
        fresh = Keyring(keyring.kek, cache_s=60)
        async with live.acquire() as conn:
            [bob] = await open_messages(conn, fresh, tenant.id, rows["bob"])
            assert bob["content"] == secret["bob"]
            with pytest.raises(Unreadable, match="destroyed"):
                await open_messages(conn, fresh, tenant.id, rows["alice"])
    finally:
        await live.close()
        await keyring.close()
