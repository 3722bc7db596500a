"""Retries: a POST whose answer is lost is sent again and stored once; 429 waits."""

from __future__ import annotations

import asyncio
import time

import pytest
from chat_storage_client import AsyncClient, RateLimited, RetryPolicy

from tests.conftest import Tenant
from tests.support.cutproxy import CutProxy
from tests.support.procs import Server


async def test_a_post_whose_answer_was_lost_is_stored_once(
        server: Server, proxy: CutProxy, tenant: Tenant) -> None:
    async with AsyncClient(proxy.base, api_key=tenant.key,
                           retry=RetryPolicy(attempts=4, base_s=0.05)) as client:
        sid = (await client.sessions.create("u1"))["id"]
        # the server commits the message; its 201 is swallowed and the connection cut
        proxy.drop_reply_to(b"/messages")
        message = await client.messages.create(sid, "user", "only once")
        assert proxy.replies_dropped == 1 and proxy.dropped.is_set()
        stored = [m async for m in client.messages.list(sid)]
        assert [(m["id"], m["content"]) for m in stored] == [(message["id"], "only once")]
        # the session too: a lost 201 of a create does not make two sessions
        proxy.drop_reply_to(b"POST /api/v1/sessions HTTP")
        made = await client.sessions.create("u-once")
        assert proxy.replies_dropped == 2
        assert [s["id"] async for s in client.sessions.list(user_id="u-once")] == [made["id"]]


async def test_connection_errors_give_up_after_the_attempts(tenant: Tenant) -> None:
    from chat_storage_client import ConnectionFailed

    from tests.support.procs import free_port

    client = AsyncClient(f"http://127.0.0.1:{free_port()}", api_key=tenant.key,
                         retry=RetryPolicy(attempts=3, base_s=0.01))
    async with client:
        with pytest.raises(ConnectionFailed):
            await client.sessions.create("u1")


@pytest.fixture
async def slow_server(database_url: str, tmp_path) -> Server:  # type: ignore[no-untyped-def]
    # one request at a time, one token a second: the second request in a row gets 429
    proc = Server(database_url, tmp_path / "slow.log",
                  env={"CHAT_RATE_LIMIT_PER_S": "1", "CHAT_RATE_LIMIT_BURST": "1"})
    await proc.start()
    yield proc
    await proc.kill()


async def test_429_is_retried_after_retry_after(slow_server: Server, tenant: Tenant) -> None:
    async with AsyncClient(slow_server.base, api_key=tenant.key,
                           retry=RetryPolicy(attempts=5, base_s=0.05, max_wait_s=5)) as client:
        sid = (await client.sessions.create("u1"))["id"]
        started = time.monotonic()
        for i in range(3):
            await client.messages.create(sid, "user", f"m{i}")
        elapsed = time.monotonic() - started
        # each create waited for a token (1/s): the retries honoured Retry-After
        assert elapsed >= 2.0
        assert [m["content"] for m in await client.messages.list(sid).to_list()] == [
            "m0", "m1", "m2"]
    async with AsyncClient(slow_server.base, api_key=tenant.key,
                           retry=RetryPolicy(attempts=1)) as impatient:
        await impatient.check_version()
        with pytest.raises(RateLimited) as caught:
            for _ in range(3):
                await impatient.sessions.get(sid)
        assert caught.value.status == 429 and caught.value.retry_after_s is not None


@pytest.fixture
async def tiny_queue_server(database_url: str, tmp_path) -> Server:  # type: ignore[no-untyped-def]
    # one write queued per session: a burst of creates gets 503 "queue full"
    proc = Server(database_url, tmp_path / "tiny.log", env={"CHAT_MAILBOX_SIZE": "1"})
    await proc.start()
    yield proc
    await proc.kill()


async def test_503_is_retried_and_every_message_stored_once(
        tiny_queue_server: Server, tenant: Tenant) -> None:
    from chat_storage_client import ServerError

    burst = 8
    base = tiny_queue_server.base
    async with AsyncClient(base, api_key=tenant.key, retry=RetryPolicy(attempts=1)) as once:
        sid = (await once.sessions.create("u1"))["id"]
        results = await asyncio.gather(
            *(once.messages.create(sid, "user", f"x{i}") for i in range(burst)),
            return_exceptions=True)
        refused = [r for r in results if isinstance(r, ServerError)]
        # without retries some were refused (503, nothing stored)
        assert refused and all(r.status == 503 and r.code == "unavailable" for r in refused)
        stored_first = burst - len(refused)
    async with AsyncClient(base, api_key=tenant.key,
                           retry=RetryPolicy(attempts=30, base_s=0.05, max_wait_s=2)) as client:
        await asyncio.gather(*(client.messages.create(sid, "user", f"y{i}")
                               for i in range(burst)))
        contents = [m["content"] async for m in client.messages.list(sid)]
        assert sorted(c for c in contents if c.startswith("y")) == sorted(
            f"y{i}" for i in range(burst))
        assert len(contents) == stored_first + burst
