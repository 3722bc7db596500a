"""An Idempotency-Key whose holder process was killed (-9) is free for a retry at once,
not after its claim's lock expires (storage/liveness.py, storage/idempotency.py).

A real server process claims a key and then waits on a session row this test holds
locked, so the claim is in flight when the process is killed; the retry goes to a
new process. While the holder lives, the same retry is still 409.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg

from chat_storage.storage.idempotency import LOCK_S
from tests.conftest import Tenant
from tests.support.procs import Server

WAIT_S = 10.0


async def _claim_row(pool: asyncpg.Pool, tenant: Tenant, key: str) -> asyncpg.Record:
    """The key's row once the server claimed it (bounded polling: nothing to await)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            row = await pool.fetchrow(
                "SELECT holder, status_code FROM idempotency_keys "
                "WHERE tenant_id = $1 AND key = $2", tenant.id, key)
            if row is not None:
                return row
            await asyncio.sleep(0.02)


async def test_a_killed_holders_claim_is_taken_over_at_once(
    database_url: str, tenant: Tenant, pool: asyncpg.Pool, tmp_path: Path,
) -> None:
    servers = [Server(database_url, tmp_path / f"server{i}.log",
                      app_name=f"chat-idem-{secrets.token_hex(4)}") for i in range(2)]
    key = f"crash-{secrets.token_hex(6)}"
    headers = {**tenant.headers, "Idempotency-Key": key}
    body = {"role": "user", "content": key}
    timeout = aiohttp.ClientTimeout(total=WAIT_S)
    try:
        first, second = servers
        await first.start()
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.post(f"{first.base}/api/v1/sessions", json={"user_id": "u"},
                                 headers=tenant.headers) as r:
                sid = uuid.UUID((await r.json())["id"])
            locker = await asyncpg.connect(database_url)
            tx = locker.transaction()
            await tx.start()
            await locker.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", sid)
            stuck = asyncio.create_task(http.post(
                f"{first.base}/api/v1/sessions/{sid}/messages", json=body, headers=headers))
            row = await _claim_row(pool, tenant, key)
            assert row["holder"] is not None and row["status_code"] is None
            # its holder lives: the retry waits for it
            async with http.post(f"{first.base}/api/v1/sessions/{sid}/messages", json=body,
                                 headers=headers) as r:
                assert r.status == 409, await r.text()
            await first.kill()
            killed_at = time.monotonic()
            await tx.rollback()
            await locker.close()
            await asyncio.gather(stuck, return_exceptions=True)
            await second.start()
            async with http.post(f"{second.base}/api/v1/sessions/{sid}/messages", json=body,
                                 headers=headers) as r:
                assert r.status == 201, await r.text()
            took = time.monotonic() - killed_at
            assert took < LOCK_S / 2, took  # not the claim's expiry
            async with http.post(f"{second.base}/api/v1/sessions/{sid}/messages", json=body,
                                 headers=headers) as r:
                assert r.status == 201 and r.headers["Idempotent-Replayed"] == "true"
        stored = await pool.fetchval(
            "SELECT count(*) FROM messages WHERE session_id = $1 AND content = $2", sid, key)
        assert stored == 1
    finally:
        for server in servers:
            await server.kill()
