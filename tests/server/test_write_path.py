"""The write path through the real app over real sockets: what 201 means, batching
seen in /metrics, and 503 + Retry-After (not stored) when writes cannot be taken."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.server.state import POOL_KEY, REGISTRY_KEY
from tests.conftest import Tenant

Client = TestClient  # type: ignore[type-arg]


async def new_session(client: Client, tenant: Tenant) -> str:
    r = await client.post("/api/v1/sessions", json={"user_id": "u1"}, headers=tenant.headers)
    assert r.status == 201, await r.text()
    return str((await r.json())["id"])


async def post(client: Client, tenant: Tenant, sid: str, content: str,
               **fields: Any) -> tuple[int, dict[str, Any], Any]:
    r = await client.post(f"/api/v1/sessions/{sid}/messages",
                          json={"role": "user", "content": content, **fields},
                          headers=tenant.headers)
    return r.status, await r.json(), r.headers


def samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of the metric ``name`` in a Prometheus text page."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            found[key[len(name):]] = float(value)
    return found


@contextlib.asynccontextmanager
async def row_locked(pool: asyncpg.Pool, sid: str) -> AsyncIterator[None]:
    """Hold the session's row lock: its commits wait until the block ends."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", uuid.UUID(sid))
        yield


async def contents(pool: asyncpg.Pool, sid: str) -> list[str]:
    rows = await pool.fetch("SELECT content FROM messages WHERE session_id = $1 ORDER BY seq",
                            uuid.UUID(sid))
    return [r["content"] for r in rows]


@pytest.fixture
async def make_client(aiohttp_client: Any, settings: Settings
                      ) -> Any:
    async def make(**changes: Any) -> Client:
        client: Client = await aiohttp_client(create_app(dataclasses.replace(settings, **changes)))
        return client
    return make


async def test_answer_is_the_stored_message(client: Client, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    status, first, _ = await post(client, tenant, sid, "question")
    assert status == 201
    status, answer, headers = await post(
        client, tenant, sid, "answer", parent_id=first["id"], sender_id="bot",
        context=[{"source_id": "doc-1", "title": "Paris", "score": 0.5,
                  "metadata": {"page": 3, "tags": ["a", "b"]}}],
        metadata={"b": 1, "a": {"nested": [1, 2.5, None]}},
        usage={"model": "m", "prompt_tokens": 10, "completion_tokens": 5},
    )
    assert status == 201
    assert headers["Location"].endswith(answer["id"])
    r = await client.get(f"/api/v1/sessions/{sid}/messages/{answer['id']}", headers=tenant.headers)
    assert await r.json() == answer
    r = await client.post(f"/api/v1/sessions/{sid}/messages/batch", headers=tenant.headers,
                          json={"messages": [{"role": "user", "content": f"b{i}"}
                                             for i in range(3)]})
    assert r.status == 201
    batch = (await r.json())["data"]
    r = await client.get(f"/api/v1/sessions/{sid}/messages", headers=tenant.headers)
    assert (await r.json())["data"] == [first, answer, *batch]
    assert [m["seq"] for m in batch] == [3, 4, 5]


async def test_concurrent_writes_are_batched_in_metrics(client: Client, tenant: Tenant) -> None:
    sids = [await new_session(client, tenant) for _ in range(4)]
    before = await (await client.get("/metrics")).text()
    results = await asyncio.gather(*(post(client, tenant, sids[i % 4], f"m{i}")
                                     for i in range(128)))
    assert all(status == 201 for status, _, _ in results)
    after = await (await client.get("/metrics")).text()
    count, bucket, one = "chat_write_batch_size_count", "chat_write_batch_size_bucket", '{le="1.0"}'
    transactions = samples(after, count)[""] - samples(before, count).get("", 0.0)
    singles = samples(after, bucket)[one] - samples(before, bucket).get(one, 0.0)
    assert 0 < transactions < 128
    assert singles < transactions  # some transaction carried more than one write
    for sid in sids:
        r = await client.get(f"/api/v1/sessions/{sid}", headers=tenant.headers)
        assert (await r.json())["last_seq"] == 32


async def test_full_mailbox_is_503_with_retry_after_and_not_stored(
    make_client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    client = await make_client(mailbox_size=2)
    sid = await new_session(client, tenant)
    async with row_locked(pool, sid):
        tasks = [asyncio.create_task(post(client, tenant, sid, f"m{i}")) for i in range(12)]
        done: set[asyncio.Task[Any]] = set()
        async with asyncio.timeout(10):  # the refusals come while the commit still waits
            while len(done) < 9:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        refused = [t.result() for t in done]
        assert all(status == 503 for status, _, _ in refused)
    results = await asyncio.gather(*tasks)
    for status, body, headers in results:
        if status == 503:
            assert headers["Retry-After"].isdigit()
            assert body["status"] == 503 and "nothing was stored" in body["message"]
            assert body["code"] == "unavailable"
            assert body["request_id"] == headers["X-Request-ID"]
    # the acknowledged ones, in the order of the seq each was given (the requests race:
    # which reached the mailbox first is not the order the tasks were made in)
    acked = sorted((body["seq"], body["content"]) for status, body, _ in results
                   if status == 201)
    assert len(acked) == 3  # one committing + a mailbox of two
    assert await contents(pool, sid) == [content for _, content in acked]


async def test_write_past_its_deadline_is_503_and_not_stored(
    make_client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    client = await make_client(write_timeout_s=0.3)
    sid = await new_session(client, tenant)
    async with row_locked(pool, sid):
        first = asyncio.create_task(post(client, tenant, sid, "first"))
        await asyncio.sleep(0.05)
        late = await asyncio.wait_for(post(client, tenant, sid, "late"), timeout=10)
        assert late[0] == 503 and "Retry-After" in late[2]
    # the first had started; held up past the commit timeout (the write timeout too) it
    # may be cut off, and then it is settled: 201 and stored, or 503 and not stored
    status, _, _ = await first
    assert status in (201, 503)
    assert await contents(pool, sid) == (["first"] if status == 201 else [])


async def test_saturated_pool_is_503_and_not_stored(
    make_client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    client = await make_client(db_pool_min=1, db_pool_max=2, db_acquire_timeout_s=0.2)
    sid = await new_session(client, tenant)
    app_pool = client.app[POOL_KEY]
    held = [await app_pool.acquire() for _ in range(2)]  # every connection is busy
    try:
        status, body, headers = await asyncio.wait_for(
            post(client, tenant, sid, "no room"), timeout=10)
        assert status == 503 and headers["Retry-After"].isdigit()
        assert body["status"] == 503
    finally:
        for conn in held:
            await app_pool.release(conn)
    assert await contents(pool, sid) == []
    assert (await post(client, tenant, sid, "room again"))[0] == 201


async def test_stopping_server_refuses_new_writes(client: Client, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    client.app[REGISTRY_KEY].begin_shutdown()
    status, body, headers = await post(client, tenant, sid, "too late")
    assert status == 503 and "shutting down" in body["message"]
    assert headers["Retry-After"].isdigit()


async def test_write_path_gauges_and_counters(
    make_client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    client = await make_client(mailbox_size=3)
    sid = await new_session(client, tenant)

    async def scrape() -> str:
        return await (await client.get("/metrics")).text()

    before = await scrape()
    async with row_locked(pool, sid):
        first = asyncio.create_task(post(client, tenant, sid, "first"))
        async with asyncio.timeout(10):  # no event to await: poll the page (bounded)
            while samples(await scrape(), "chat_writes_in_flight") != {"": 1.0}:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        # the first write is committing (it waits for the lock): three more fit the
        # mailbox, two are refused
        tasks = [asyncio.create_task(post(client, tenant, sid, f"m{i}")) for i in range(5)]
        done, _ = await asyncio.wait(tasks, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        while len(done) < 2:
            done, _ = await asyncio.wait(tasks, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        during = await scrape()
        assert samples(during, "chat_mailbox_depth") == {"": 3.0}
        assert samples(during, "chat_writes_in_flight") == {"": 4.0}
        assert samples(during, "chat_active_actors") == {"": 1.0}
        rejected = '{reason="mailbox_full"}'
        assert (samples(during, "chat_writes_rejected_total")[rejected]
                - samples(before, "chat_writes_rejected_total").get(rejected, 0.0)) == 2
    statuses = sorted(status for status, _, _ in await asyncio.gather(first, *tasks))
    assert statuses == [201] * 4 + [503] * 2
    after = await scrape()
    assert samples(after, "chat_mailbox_depth") == {"": 0.0}
    assert samples(after, "chat_writes_in_flight") == {"": 0.0}
    commits = (samples(after, "chat_write_commit_seconds_count")[""]
               - samples(before, "chat_write_commit_seconds_count").get("", 0.0))
    batched = (samples(after, "chat_write_batch_size_sum")[""]
               - samples(before, "chat_write_batch_size_sum").get("", 0.0))
    assert (commits, batched) == (2, 4)  # the three that waited went in together
