"""A database that stops answering (SIGSTOP-like) cannot hold requests past their
deadline (server/deadlines.py, storage/db.py), against a real server process.

The server reaches Postgres through a proxy this test freezes (tests/support/pgproxy.py):
connections stay open and nothing is answered, as with a SIGSTOPped Postgres, without
stopping the Postgres other test runs share. While frozen, reads answer 503 within
CHAT_REQUEST_TIMEOUT_S, /readyz 503 within CHAT_DB_ACQUIRE_TIMEOUT_S, writes 503
within CHAT_WRITE_TIMEOUT_S, /healthz at once; after the thaw, each write retried with
its Idempotency-Key is stored exactly once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import Tenant
from tests.support.pgproxy import PgProxy
from tests.support.procs import Server

READ_S, WRITE_S, ACQUIRE_S = 2.0, 3.0, 1.0
SLACK_S = 0.75  # scheduling on a busy 2-core machine
FROZEN_S = 6.0  # longer than every deadline


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[PgProxy]:
    parts = urllib.parse.urlsplit(database_url)
    p = PgProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await p.start()
    yield p
    p.thaw()
    await p.close()


async def _timed(http: aiohttp.ClientSession, method: str, url: str,
                 **kwargs: Any) -> tuple[int, float, dict[str, Any] | None]:
    started = time.monotonic()
    async with http.request(method, url, **kwargs) as r:
        body = await r.json() if r.content_type == "application/json" else None
        return r.status, time.monotonic() - started, body


async def test_requests_keep_their_deadlines_while_the_database_is_frozen(
    database_url: str, proxy: PgProxy, tenant: Tenant, pool: asyncpg.Pool, tmp_path: Path,
) -> None:
    parts = urllib.parse.urlsplit(database_url)
    via_proxy = urllib.parse.urlunsplit(
        parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    server = Server(via_proxy, tmp_path / "server.log", env={
        "CHAT_REQUEST_TIMEOUT_S": str(READ_S), "CHAT_WRITE_TIMEOUT_S": str(WRITE_S),
        "CHAT_DB_ACQUIRE_TIMEOUT_S": str(ACQUIRE_S), "CHAT_API_KEY_CACHE_S": "300"})
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        await server.start()
        base = f"{server.base}/api/v1"
        async with aiohttp.ClientSession(timeout=timeout) as http:
            status, _, made = await _timed(http, "POST", f"{base}/sessions",
                                           json={"user_id": "u"}, headers=tenant.headers)
            assert status == 201 and made is not None
            sid = made["id"]
            messages = f"{base}/sessions/{sid}/messages"
            keys = [f"frozen-{secrets.token_hex(4)}-{i}" for i in range(4)]

            proxy.freeze()
            frozen_at = time.monotonic()
            reads = [_timed(http, "GET", messages, headers=tenant.headers) for _ in range(4)]
            reads += [_timed(http, "GET", f"{base}/sessions/{sid}", headers=tenant.headers)]
            writes = [_timed(http, "POST", messages, json={"role": "user", "content": k},
                             headers={**tenant.headers, "Idempotency-Key": k}) for k in keys]
            writes += [_timed(http, "POST", f"{base}/sessions", json={"user_id": "v"},
                              headers=tenant.headers)]
            ready = [_timed(http, "GET", f"{server.base}/readyz") for _ in range(2)]
            health = _timed(http, "GET", f"{server.base}/healthz")
            results = await asyncio.gather(*reads, *writes, *ready, health)
            assert time.monotonic() - frozen_at < FROZEN_S
            got_reads = results[:len(reads)]
            got_writes = results[len(reads):len(reads) + len(writes)]
            got_ready = results[len(reads) + len(writes):-1]
            for status, took, body in got_reads:
                assert status == 503 and body is not None and body["code"] == "unavailable"
                assert took < READ_S + SLACK_S, took
            for status, took, body in got_writes:
                assert status == 503 and body is not None and body["code"] == "unavailable"
                assert took < WRITE_S + SLACK_S, took
            for status, took, body in got_ready:
                assert status == 503 and body is not None
                assert body["checks"]["database"] == "unreachable"
                assert took < ACQUIRE_S + SLACK_S, took
            assert results[-1][0] == 200 and results[-1][1] < 0.5

            await asyncio.sleep(max(0.0, FROZEN_S - (time.monotonic() - frozen_at)))
            proxy.thaw()
            # the service recovers by itself; each write retried with its key is stored once
            for k in keys:
                status = 0
                async with asyncio.timeout(20):  # bounded: a claim frees within LOCK_S
                    while status not in (200, 201):
                        status, _, body = await _timed(
                            http, "POST", messages, json={"role": "user", "content": k},
                            headers={**tenant.headers, "Idempotency-Key": k})
                        if status not in (200, 201):
                            assert status in (409, 503), (status, body)
                            await asyncio.sleep(0.2)
        stored = await pool.fetch(
            "SELECT content FROM messages WHERE session_id = $1", uuid.UUID(sid))
        assert sorted(r["content"] for r in stored) == sorted(keys)
    finally:
        print(server.log()[-4000:])
        await server.kill()
