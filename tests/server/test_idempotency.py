"""Idempotency-Key on POST sessions, messages and batch: replay, 422, 409, scoping."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg

from tests.conftest import Tenant

KEY = "Idempotency-Key"


async def new_session(client: Any, tenant: Tenant) -> str:
    r = await client.post("/api/v1/sessions", json={"user_id": "u"}, headers=tenant.headers)
    assert r.status == 201, await r.text()
    return str((await r.json())["id"])


async def count(pool: asyncpg.Pool, sql: str, *args: Any) -> int:
    return int(await pool.fetchval(sql, *args))


async def messages_in(pool: asyncpg.Pool, sid: str) -> int:
    return await count(pool, "SELECT count(*) FROM messages WHERE session_id = $1",
                       uuid.UUID(sid))


async def wait_until(pool: asyncpg.Pool, sql: str, *args: Any, timeout_s: float = 10.0) -> None:
    """Poll ``sql`` until it returns true (there is no event to await in another backend)."""
    deadline = time.monotonic() + timeout_s
    while not await pool.fetchval(sql, *args):
        assert time.monotonic() < deadline, f"condition never held: {sql}"
        await asyncio.sleep(0.02)


async def test_replay_of_a_message(client: Any, tenant: Tenant, pool: asyncpg.Pool) -> None:
    sid = await new_session(client, tenant)
    url = f"/api/v1/sessions/{sid}/messages"
    headers = {**tenant.headers, KEY: "msg-1"}
    body = {"role": "user", "content": "hi", "metadata": {"a": 1, "b": 2}}
    first = await client.post(url, json=body, headers=headers)
    assert first.status == 201
    assert "Idempotent-Replayed" not in first.headers
    # the same body with keys in another order is the same request
    again = await client.post(url, json={"metadata": {"b": 2, "a": 1}, "content": "hi",
                                         "role": "user"}, headers=headers)
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    # byte for byte, with the same Location (docs/api.md 1.1)
    assert await again.read() == await first.read()
    assert again.headers["Location"] == first.headers["Location"]
    assert await messages_in(pool, sid) == 1

    r = await client.post(url, json={**body, "content": "changed"}, headers=headers)
    assert r.status == 422
    assert (await r.json())["status"] == 422
    assert (await r.json())["code"] == "idempotency_mismatch"
    # the same key on another session's path is another request too
    other = await new_session(client, tenant)
    r = await client.post(f"/api/v1/sessions/{other}/messages", json=body, headers=headers)
    assert r.status == 422
    assert await messages_in(pool, sid) == 1
    assert await messages_in(pool, other) == 0


async def test_replay_of_a_batch(client: Any, tenant: Tenant, pool: asyncpg.Pool) -> None:
    sid = await new_session(client, tenant)
    url = f"/api/v1/sessions/{sid}/messages/batch"
    headers = {**tenant.headers, KEY: "batch-1"}
    body = {"messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a"}]}
    first = await client.post(url, json=body, headers=headers)
    assert first.status == 201
    again = await client.post(url, json=body, headers=headers)
    assert (again.status, again.headers.get("Idempotent-Replayed")) == (201, "true")
    assert await again.read() == await first.read()
    assert [m["seq"] for m in (await again.json())["data"]] == [1, 2]
    assert await messages_in(pool, sid) == 2
    r = await client.post(url, json={"messages": body["messages"][:1]}, headers=headers)
    assert r.status == 422
    assert await messages_in(pool, sid) == 2


async def test_replay_of_a_session(client: Any, tenant: Tenant, pool: asyncpg.Pool) -> None:
    headers = {**tenant.headers, KEY: "session-1"}
    body = {"user_id": "idem-user", "title": "t"}
    first = await client.post("/api/v1/sessions", json=body, headers=headers)
    assert first.status == 201
    again = await client.post("/api/v1/sessions", json=body, headers=headers)
    assert (again.status, again.headers.get("Idempotent-Replayed")) == (201, "true")
    assert await again.read() == await first.read()
    assert again.headers["Location"] == first.headers["Location"]
    r = await client.post("/api/v1/sessions", json={**body, "title": "u"}, headers=headers)
    assert r.status == 422
    n = await count(pool, "SELECT count(*) FROM sessions WHERE tenant_id = $1 AND user_id = $2",
                    tenant.id, "idem-user")
    assert n == 1


async def test_same_key_while_in_flight_is_409(
    client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    sid = await new_session(client, tenant)
    url = f"/api/v1/sessions/{sid}/messages"
    headers = {**tenant.headers, KEY: "slow-1"}
    body = {"role": "user", "content": "held"}
    async with pool.acquire() as conn:
        lock = conn.transaction()
        await lock.start()
        try:
            # hold the session row: the first write blocks in its transaction
            await conn.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE",
                               uuid.UUID(sid))
            first = asyncio.create_task(client.post(url, json=body, headers=headers))
            # in flight for sure: some backend now waits for our lock
            await wait_until(
                pool,
                "SELECT count(*) > 0 FROM pg_stat_activity "
                "WHERE $1 = ANY(pg_blocking_pids(pid))",
                conn.get_server_pid(),
            )
            second = await client.post(url, json=body, headers=headers)
            assert second.status == 409, await second.text()
            assert (await second.json())["code"] == "idempotency_in_flight"
            assert second.headers["Retry-After"]
            assert not first.done()
        finally:
            await lock.rollback()
    r = await first
    assert r.status == 201, await r.text()
    assert "Idempotent-Replayed" not in r.headers
    third = await client.post(url, json=body, headers=headers)
    assert (third.status, third.headers.get("Idempotent-Replayed")) == (201, "true")
    assert (await third.json())["id"] == (await r.json())["id"]
    assert await messages_in(pool, sid) == 1


async def test_simultaneous_same_key_stores_once(
    client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    sid = await new_session(client, tenant)
    url = f"/api/v1/sessions/{sid}/messages"
    headers = {**tenant.headers, KEY: "race-1"}
    responses = await asyncio.gather(*(
        client.post(url, json={"role": "user", "content": "once"}, headers=headers)
        for _ in range(20)
    ))
    statuses = [r.status for r in responses]
    assert set(statuses) <= {201, 409}
    fresh = [r for r in responses
             if r.status == 201 and "Idempotent-Replayed" not in r.headers]
    assert len(fresh) == 1
    assert await messages_in(pool, sid) == 1


async def test_key_limits_and_tenant_scope(
    client: Any, tenant: Tenant, other_tenant: Tenant, pool: asyncpg.Pool
) -> None:
    sid = await new_session(client, tenant)
    url = f"/api/v1/sessions/{sid}/messages"
    body = {"role": "user", "content": "x"}
    r = await client.post(url, json=body, headers={**tenant.headers, KEY: "k" * 256})
    assert r.status == 400
    assert (await r.json())["errors"][0]["field"] == KEY
    r = await client.post(url, json=body, headers={**tenant.headers, KEY: "k" * 255})
    assert r.status == 201
    assert await messages_in(pool, sid) == 1

    # another tenant's identical key is a different key
    shared = {KEY: "shared-key"}
    theirs = await new_session(client, other_tenant)
    r = await client.post(url, json=body, headers={**tenant.headers, **shared})
    assert r.status == 201
    r = await client.post(f"/api/v1/sessions/{theirs}/messages",
                          json={"role": "user", "content": "other"},
                          headers={**other_tenant.headers, **shared})
    assert r.status == 201
    assert "Idempotent-Replayed" not in r.headers
    assert await messages_in(pool, theirs) == 1


async def test_failed_request_does_not_keep_the_key(
    client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    sid = await new_session(client, tenant)
    url = f"/api/v1/sessions/{sid}/messages"
    headers = {**tenant.headers, KEY: "retry-1"}
    body = {"role": "user", "content": "x", "parent_id": str(uuid.uuid4())}
    for _ in range(2):
        # an error is not recorded: the retry runs again (not a replay, not a 409)
        r = await client.post(url, json=body, headers=headers)
        assert r.status == 400
        assert "Idempotent-Replayed" not in r.headers
    assert await count(pool, "SELECT count(*) FROM idempotency_keys WHERE tenant_id = $1 "
                             "AND key = $2", tenant.id, "retry-1") == 0
    assert await messages_in(pool, sid) == 0
