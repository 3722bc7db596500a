"""Async ingestion (CHAT_INGEST_MODE=async) on the real Postgres and Redis.

- The app answers 202 with the message id, and every accepted message then appears in
  Postgres exactly once, with gap-free seq; a batch stays together.
- Redelivery never stores twice: the same entry twice, an entry claimed from a
  consumer that stored it before dying, one claimed from a consumer that did not.
- Session deleted (or a bad parent_id) → dead-lettered, counted, never retried.
- A full backlog is 503; an Idempotency-Key replays the 202.
- A server process SIGKILLed while its batches wait on the database (several batches
  in flight): another process takes the entries over with XAUTOCLAIM; nothing is lost
  or doubled, and the session's messages are stored in the order they were accepted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from chat_storage.actors.write.ingest import IngestConsumer
from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.server.state import REDIS_KEY
from chat_storage.storage.ids import new_id
from chat_storage.storage.ingest import Entry, IngestStream
from chat_storage.storage.messages import NewMessage, WriteGroup
from chat_storage.supervisor import Supervisor
from tests.actors.conftest import MakeRegistry, metric, new_session, row_locked, stored
from tests.conftest import REDIS_URL, Tenant
from tests.server.test_attachments import ready
from tests.support.procs import metric_total, replica_env, running

DEADLINE_S = 30.0


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def async_settings(settings: Settings, prefix: str) -> Settings:
    return dataclasses.replace(settings, redis_url=REDIS_URL, redis_prefix=prefix,
                               ingest_mode="async", ingest_claim_idle_s=1.0)


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait (bounded) until ``check()`` is true."""
    try:
        async with asyncio.timeout(DEADLINE_S):
            while not await check():  # noqa: ASYNC110 - polls Postgres/Redis: no event
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out waiting until {what}")


def user_message(content: str, **fields: Any) -> NewMessage:
    return NewMessage(id=new_id(), role="user", content=content, **fields)


# -- the app in async mode ----------------------------------------------------------------


async def test_accepted_202_then_stored_exactly_once_gap_free(
    async_settings: Settings, aiohttp_client: Any, tenant: Tenant, pool: asyncpg.Pool,
    redis: Redis, prefix: str,
) -> None:
    client = await aiohttp_client(create_app(async_settings))
    sid = await new_session(pool, tenant)
    url = f"/api/v1/sessions/{sid}/messages"

    async def post(n: int) -> dict[str, Any]:
        r = await client.post(url, json={"role": "user", "content": f"m{n}"},
                              headers=tenant.headers)
        body: dict[str, Any] = await r.json()
        assert r.status == 202, body
        assert r.headers["Location"] == f"{url}/{body['id']}"
        return body

    singles = await asyncio.gather(*(post(n) for n in range(30)))
    r = await client.post(f"{url}/batch", headers=tenant.headers, json={"messages": [
        {"role": "user", "content": f"b{n}"} for n in range(5)]})
    batch = await r.json()
    assert r.status == 202, batch
    assert [set(b) for b in singles + batch["data"]] == [{"id", "session_id", "status"}] * 35
    assert {b["status"] for b in singles + batch["data"]} == {"accepted"}
    assert {b["session_id"] for b in singles + batch["data"]} == {str(sid)}

    async def all_stored() -> bool:
        return len(await stored(pool, sid)) >= 35 and await redis.xlen(f"{prefix}:ingest") == 0

    await until(all_stored, "every accepted message is stored")
    rows = await stored(pool, sid)
    assert [r["seq"] for r in rows] == list(range(1, 36))
    assert sorted(str(r["id"]) for r in rows) == sorted(b["id"] for b in singles + batch["data"])
    by_content = {r["content"]: r["seq"] for r in rows}
    # the batch is one entry: stored together, consecutive seq, in its order
    batch_seqs = [by_content[f"b{n}"] for n in range(5)]
    assert batch_seqs == list(range(batch_seqs[0], batch_seqs[0] + 5))
    assert await pool.fetchval("SELECT last_seq FROM sessions WHERE id = $1", sid) == 35
    # the 202's Location now finds the stored message
    r = await client.get(f"{url}/{singles[0]['id']}", headers=tenant.headers)
    assert r.status == 200 and (await r.json())["content"] == "m0"
    r = await client.get("/metrics")
    assert "chat_ingest_lag_entries" in await r.text()


async def test_idempotency_key_replays_the_202(
    async_settings: Settings, aiohttp_client: Any, tenant: Tenant, pool: asyncpg.Pool,
) -> None:
    client = await aiohttp_client(create_app(async_settings))
    sid = await new_session(pool, tenant)
    url = f"/api/v1/sessions/{sid}/messages"
    headers = {**tenant.headers, "Idempotency-Key": f"k-{secrets.token_hex(4)}"}
    first = await client.post(url, json={"role": "user", "content": "once"}, headers=headers)
    again = await client.post(url, json={"role": "user", "content": "once"}, headers=headers)
    assert (first.status, again.status) == (202, 202)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert (await again.json()) == (await first.json())
    other = await client.post(url, json={"role": "user", "content": "else"}, headers=headers)
    assert other.status == 422

    async def one_stored() -> bool:
        return len(await stored(pool, sid)) == 1

    await until(one_stored, "the message is stored")
    await asyncio.sleep(0.3)  # a second copy would be stored by now: still one
    assert [r["content"] for r in await stored(pool, sid)] == ["once"]


async def test_deleted_session_and_bad_parent_are_dead_lettered(
    async_settings: Settings, aiohttp_client: Any, tenant: Tenant, pool: asyncpg.Pool,
    redis: Redis, prefix: str,
) -> None:
    client = await aiohttp_client(create_app(async_settings))
    gone, alive = await new_session(pool, tenant), await new_session(pool, tenant)
    r = await client.delete(f"/api/v1/sessions/{gone}", headers=tenant.headers)
    assert r.status == 204
    before = metric("chat_ingest_dead_letters_total", reason="session_not_found")
    r = await client.post(f"/api/v1/sessions/{gone}/messages",
                          json={"role": "user", "content": "lost"}, headers=tenant.headers)
    assert r.status == 202  # the session is not looked up when accepting
    r = await client.post(f"/api/v1/sessions/{alive}/messages", headers=tenant.headers,
                          json={"role": "user", "content": "orphan", "parent_id": str(new_id())})
    assert r.status == 202
    r = await client.post(f"/api/v1/sessions/{alive}/messages",
                          json={"role": "user", "content": "kept"}, headers=tenant.headers)
    assert r.status == 202

    async def settled() -> bool:
        return (await redis.xlen(f"{prefix}:ingest:dead") == 2
                and await redis.xlen(f"{prefix}:ingest") == 0)

    await until(settled, "both bad entries are dead-lettered")
    dead = await redis.xrange(f"{prefix}:ingest:dead")
    assert sorted(fields[b"reason"] for _, fields in dead) == [
        b"invalid_reference", b"session_not_found"]
    assert metric("chat_ingest_dead_letters_total", reason="session_not_found") == before + 1
    assert [r["content"] for r in await stored(pool, alive)] == ["kept"]  # seq 1: none burnt
    assert (await stored(pool, alive))[0]["seq"] == 1
    pending = await redis.xpending(f"{prefix}:ingest", f"{prefix}:ingest:writers")
    assert pending["pending"] == 0  # acknowledged: never retried


async def test_full_backlog_is_503_and_nothing_is_lost(
    async_settings: Settings, aiohttp_client: Any, tenant: Tenant, pool: asyncpg.Pool,
    prefix: str,
) -> None:
    client = await aiohttp_client(create_app(
        dataclasses.replace(async_settings, ingest_max_backlog=2)))
    sid = await new_session(pool, tenant)
    url = f"/api/v1/sessions/{sid}/messages"
    stream = IngestStream(client.server.app[REDIS_KEY], prefix=prefix)
    async with row_locked(pool, sid):  # the consumer's commit waits: the backlog grows
        for n in range(2):
            r = await client.post(url, json={"role": "user", "content": f"m{n}"},
                                  headers=tenant.headers)
            assert r.status == 202

        async def one_delivered() -> bool:
            stats = await stream.stats()
            return stats.pending + stats.lag == 2 and stats.pending >= 1

        await until(one_delivered, "the consumer holds an entry")
        r = await client.post(url, json={"role": "user", "content": "m2"},
                              headers=tenant.headers)
        body = await r.json()
        assert r.status == 503 and body["status"] == 503 and "nothing was accepted" in (
            body["message"])
        assert r.headers["Retry-After"] == "1"
        assert (await stream.stats()).backlog == 2

    async def drained() -> bool:
        return (await stream.stats()).backlog == 0

    await until(drained, "the backlog is stored")  # then writes are accepted again
    r = await client.post(url, json={"role": "user", "content": "m2"}, headers=tenant.headers)
    assert r.status == 202

    async def three() -> bool:
        return len(await stored(pool, sid)) == 3

    await until(three, "the last message is stored")
    assert [(r["seq"], r["content"]) for r in await stored(pool, sid)] == [
        (1, "m0"), (2, "m1"), (3, "m2")]


async def test_openapi_documents_the_202(client: Any) -> None:
    doc = await (await client.get("/openapi.json")).json()
    path = "/api/v1/sessions/{session_id}/messages"
    one = doc["paths"][path]["post"]["responses"]["202"]
    many = doc["paths"][path + "/batch"]["post"]["responses"]["202"]
    assert one["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MessageAccepted"}
    assert many["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MessageAcceptedList"}
    assert set(doc["components"]["schemas"]["MessageAccepted"]["required"]) == {
        "id", "session_id", "status"}


# -- the consumer on its own: redelivery ----------------------------------------------------


async def test_redelivery_never_stores_twice(
    make_registry: MakeRegistry, pool: asyncpg.Pool, tenant: Tenant, redis: Redis,
    prefix: str, tasks: Supervisor,
) -> None:
    registry = await make_registry()
    stream = IngestStream(redis, prefix=prefix)
    await stream.ensure_group()
    consumer = IngestConsumer(stream, registry, pool, tasks=tasks, claim_idle_s=0.2,
                              stats_interval_s=0.05, block_ms=100)
    sid = await new_session(pool, tenant)
    first = Entry(tenant.id, sid, [user_message("a")])
    stored_by_ghost = Entry(tenant.id, sid, [user_message("b")])
    lost_by_ghost = Entry(tenant.id, sid, [user_message("c"), user_message("d")], wrap=True)
    for entry in (first, first, stored_by_ghost, lost_by_ghost):  # ``first`` sent twice
        await stream.append(entry)
    stats = await stream.stats()
    assert (stats.lag, stats.pending, stats.backlog) == (4, 0, 4)
    # a consumer takes the first three, stores one of them, and dies
    ghost = await stream.read("ghost", count=3, block_ms=100)
    assert [d.entry for d in ghost[1:]] == [first, stored_by_ghost]
    await registry.write(tenant.id, sid, WriteGroup(stored_by_ghost.messages))
    stats = await stream.stats()
    assert (stats.lag, stats.pending) == (1, 3)
    # the fourth is delivered to a ghost too, which never stores it
    assert [d.entry for d in await stream.read("ghost", count=10, block_ms=100)] == [
        lost_by_ghost]
    duplicates = metric("chat_ingest_entries_total", outcome="duplicate")
    reclaimed = metric("chat_ingest_reclaimed_total")
    consumer.start()
    try:
        async def drained() -> bool:
            return await redis.xlen(f"{prefix}:ingest") == 0

        await until(drained, "every entry is acknowledged")
        rows = await stored(pool, sid)
        assert [(r["seq"], r["content"]) for r in rows] == [(1, "b"), (2, "a"), (3, "c"),
                                                            (4, "d")]
        assert await pool.fetchval("SELECT last_seq FROM sessions WHERE id = $1", sid) == 4
        # ``first``'s copy and ``stored_by_ghost`` were found stored, not written again
        assert metric("chat_ingest_entries_total", outcome="duplicate") == duplicates + 2
        assert metric("chat_ingest_reclaimed_total") == reclaimed + 4

        async def gauges_zero() -> bool:
            return (metric("chat_ingest_backlog_entries") == 0
                    and metric("chat_ingest_pending_entries") == 0)

        await until(gauges_zero, "the lag gauges show an empty stream")
    finally:
        await consumer.close(5.0)


async def test_malformed_entry_is_dead_lettered(
    make_registry: MakeRegistry, pool: asyncpg.Pool, redis: Redis, prefix: str,
    tasks: Supervisor,
) -> None:
    stream = IngestStream(redis, prefix=prefix)
    await stream.ensure_group()
    await redis.xadd(f"{prefix}:ingest", {b"d": b"{not json"})
    consumer = IngestConsumer(stream, await make_registry(), pool, tasks=tasks, block_ms=100)
    consumer.start()
    try:
        async def dead() -> bool:
            return await redis.xlen(f"{prefix}:ingest:dead") == 1

        await until(dead, "the entry is dead-lettered")
        [(_, fields)] = await redis.xrange(f"{prefix}:ingest:dead")
        assert fields[b"reason"] == b"malformed" and fields[b"d"] == b"{not json"
        assert await redis.xlen(f"{prefix}:ingest") == 0
    finally:
        await consumer.close(5.0)


# -- real processes: a consumer killed mid-batch --------------------------------------------


async def test_killed_process_entries_are_reclaimed_nothing_lost_or_doubled(
    database_url: str, tenant: Tenant, pool: asyncpg.Pool, redis: Redis, tmp_path: Path,
) -> None:
    env = replica_env(database_url, CHAT_INGEST_MODE="async", CHAT_INGEST_BATCH="2",
                      CHAT_INGEST_CLAIM_IDLE_S="1", CHAT_WRITE_TIMEOUT_S="60")
    prefix = env["CHAT_REDIS_PREFIX"]
    stream_key, group = f"{prefix}:ingest", f"{prefix}:ingest:writers"
    sid = await new_session(pool, tenant)
    accepted: list[str] = []
    # hold the session's row lock: a database too slow to commit anything for now
    locker = await pool.acquire()
    lock = locker.transaction()
    await lock.start()
    await locker.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", sid)
    try:
        async with running(tmp_path, env) as (first,), aiohttp.ClientSession() as http:
            for n in range(10):
                async with http.post(f"{first.base}/api/v1/sessions/{sid}/messages",
                                     json={"role": "user", "content": f"m{n}"},
                                     headers=tenant.headers) as r:
                    assert r.status == 202
                    accepted.append((await r.json())["id"])

            async def holds_batches() -> bool:
                return int((await redis.xpending(stream_key, group))["pending"]) >= 3

            # more than one batch (of at most 2) handed over while the first cannot
            # commit: its next batches wait behind it in the session's mailbox
            await until(holds_batches, "the first process holds several batches")
            await first.kill()  # mid-batch: its entries stay pending under its name
        held = await redis.xpending(stream_key, group)
        assert 3 <= held["pending"] <= 6 and len(held["consumers"]) == 1

        async def all_idle() -> bool:
            entries = await redis.xpending_range(stream_key, group, "-", "+", 10)
            return all(e["time_since_delivered"] > 1100 for e in entries)

        # the next process's first round then takes them all over before it reads the
        # entries never delivered: the session's order is kept across the crash
        await until(all_idle, "the dead process's entries are idle past CLAIM_IDLE_S")
        async with running(tmp_path, env) as (second,):
            await lock.rollback()  # the database is fast again
            lock = None

            async def all_stored() -> bool:
                return await redis.xlen(stream_key) == 0

            await until(all_stored, "the second process stored everything")
            async with aiohttp.ClientSession() as http, http.get(f"{second.base}/metrics") as r:
                text = await r.text()
            # the dead process's entries were taken over, not just read again
            assert metric_total(text, "chat_ingest_reclaimed_total") == held["pending"]
            # each entry handled once here: stored, or found stored (by the dead process's
            # transaction, which its database connection still committed)
            assert metric_total(text, "chat_ingest_entries_total", outcome="stored") + (
                metric_total(text, "chat_ingest_entries_total", outcome="duplicate")) == 10
        rows = await stored(pool, sid)
        # each exactly once, in the order accepted
        assert [str(r["id"]) for r in rows] == accepted
        assert [r["content"] for r in rows] == [f"m{n}" for n in range(10)]
        assert [r["seq"] for r in rows] == list(range(1, 11))
        assert await pool.fetchval("SELECT last_seq FROM sessions WHERE id = $1", sid) == 10
    finally:
        if lock is not None:
            await lock.rollback()
        await pool.release(locker)
        await redis.delete(stream_key, f"{prefix}:ingest:dead")


async def test_attachments_are_linked_when_the_entry_is_stored(
    async_settings: Settings, aiohttp_client: Any, tenant: Tenant, pool: asyncpg.Pool,
    redis: Redis, prefix: str,
) -> None:
    client = await aiohttp_client(create_app(async_settings))
    sid = await new_session(pool, tenant)
    aid = await ready(client, tenant, str(sid))
    url = f"/api/v1/sessions/{sid}/messages"
    r = await client.post(url, headers=tenant.headers,
                          json={"role": "user", "content": "with", "attachment_ids": [aid]})
    assert r.status == 202

    async def first_stored() -> bool:
        return len(await stored(pool, sid)) == 1

    await until(first_stored, "the first message is stored")
    # the same attachment again: accepted (not checked yet), then dead-lettered
    r = await client.post(url, headers=tenant.headers,
                          json={"role": "user", "content": "again", "attachment_ids": [aid]})
    assert r.status == 202

    async def settled() -> bool:
        return (await redis.xlen(f"{prefix}:ingest:dead") == 1
                and await redis.xlen(f"{prefix}:ingest") == 0)

    await until(settled, "the second entry is dead-lettered")
    [row] = await stored(pool, sid)
    assert row["content"] == "with"
    linked = await pool.fetchval("SELECT message_id FROM attachments WHERE id = $1",
                                 uuid.UUID(aid))
    assert linked == row["id"]
