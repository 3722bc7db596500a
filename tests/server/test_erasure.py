"""Erase means gone from every place the service writes (issue 17, finding 7).

Looked for where it was written, not through the API: the stored idempotent replies
(``idempotency_keys``), the attachments, and the Redis session streams of the broker
(a real Redis, a key prefix of this test's own), also after maintenance erased an
expired temporary chat.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from chat_storage.actors.live.relay import channel
from chat_storage.runtime import maintenance
from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.server.state import BROKER_KEY, OBJECTS_KEY, POOL_KEY, SETTINGS_KEY
from chat_storage.storage.redis_keys import RedisKeys
from tests.conftest import REDIS_URL, Tenant
from tests.support.streamkit import connect, recv_until, start, subscribe

SESSIONS = "/api/v1/sessions"


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def app_client(aiohttp_client: Any, settings: Settings, prefix: str) -> Any:
    """The whole app with the Redis broker under this test's prefix."""
    shared = dataclasses.replace(settings, redis_url=REDIS_URL, redis_prefix=prefix)
    return await aiohttp_client(create_app(shared))


async def replies(pool: asyncpg.Pool, tenant: Tenant) -> list[str]:
    """The text of every stored reply of the tenant."""
    rows = await pool.fetch("SELECT response::text AS r FROM idempotency_keys "
                            "WHERE tenant_id = $1 AND response IS NOT NULL", tenant.id)
    return [r["r"] for r in rows]


def stream_key(prefix: str, tenant: Tenant, sid: str) -> str:
    return RedisKeys(prefix).session_stream(channel((tenant.id, uuid.UUID(sid))))


async def stream_text(redis: Redis, prefix: str, tenant: Tenant, sid: str) -> bytes:
    """Every byte the session's Redis stream holds."""
    entries = await redis.xrange(stream_key(prefix, tenant, sid), "-", "+")
    return b"".join(v for _, fields in entries for v in fields.values())


async def in_stream(redis: Redis, prefix: str, tenant: Tenant, sid: str, text: str) -> None:
    """Until the relay has published ``text`` to the session's stream (XREAD BLOCK, bounded)."""
    key, last, seen = stream_key(prefix, tenant, sid), "0-0", b""
    async with asyncio.timeout(10):
        while text.encode() not in seen:
            for _, entries in await redis.xread({key: last}, block=1000) or []:
                for entry_id, fields in entries:
                    last, seen = entry_id, seen + b"".join(fields.values())


async def new_session(client: Any, tenant: Tenant, user_id: str, key: str | None = None) -> str:
    headers = {**tenant.headers, **({"Idempotency-Key": key} if key else {})}
    r = await client.post(SESSIONS, json={"user_id": user_id, "title": "t"}, headers=headers)
    assert r.status == 201, await r.text()
    return str((await r.json())["id"])


async def test_a_deleted_message_leaves_no_content_in_stored_replies(
    client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    sid = await new_session(client, tenant, "ida")
    url = f"{SESSIONS}/{sid}/messages"
    one = {**tenant.headers, "Idempotency-Key": "one"}
    r = await client.post(url, json={"role": "user", "content": "secret-one"}, headers=one)
    doomed = await r.json()
    batch = {**tenant.headers, "Idempotency-Key": "batch"}
    r = await client.post(f"{url}/batch", headers=batch, json={"messages": [
        {"role": "user", "content": "keep-me"}, {"role": "user", "content": "secret-two"}]})
    kept, doomed2 = (await r.json())["data"]
    for m in (doomed, doomed2):
        r = await client.delete(f"{url}/{m['id']}", headers=tenant.headers)
        assert r.status == 204
    stored = await replies(pool, tenant)
    assert stored and not [s for s in stored if "secret-" in s]
    assert any("keep-me" in s for s in stored)  # the rest of the batch's reply stays
    # a retry still replays (nothing is stored twice), showing the tombstone as a read does
    r = await client.post(url, json={"role": "user", "content": "secret-one"}, headers=one)
    assert r.status == 201 and r.headers["Idempotent-Replayed"] == "true"
    replay = await r.json()
    r = await client.get(f"{url}/{doomed['id']}", headers=tenant.headers)
    assert replay == await r.json() and replay["status"] == "deleted"
    r = await client.post(f"{url}/batch", headers=batch, json={"messages": [
        {"role": "user", "content": "keep-me"}, {"role": "user", "content": "secret-two"}]})
    data = (await r.json())["data"]
    assert data[0] == kept and data[1]["status"] == "deleted" and data[1]["content"] == ""
    r = await client.get(url, headers=tenant.headers)
    assert len((await r.json())["data"]) == 3


async def test_erasure_leaves_no_attachment_names(
    client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    data = b"scan"
    announce = {"mime": "application/pdf", "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}
    for user, session_key in (("ann", "s-ann"), ("bob", "s-bob")):
        sid = await new_session(client, tenant, user, session_key)
        r = await client.post(f"{SESSIONS}/{sid}/attachments",
                              json={"name": f"passport-of-{user}.pdf", **announce},
                              headers={**tenant.headers, "Idempotency-Key": f"a-{user}"})
        assert r.status == 201, await r.text()
    r = await client.delete("/api/v1/users/ann/sessions", headers=tenant.headers)
    assert r.status == 204
    stored = await replies(pool, tenant)
    assert not [s for s in stored if "passport-of-ann" in s or '"user_id":"ann"' in s]
    assert [s for s in stored if "passport-of-bob" in s]  # another user's stay
    names = await pool.fetch("SELECT name FROM attachments WHERE tenant_id = $1", tenant.id)
    assert [r["name"] for r in names] == ["passport-of-bob.pdf"]
    # deleting a session (not a user) reaches its replies too
    r = await client.get(SESSIONS, params={"user_id": "bob"}, headers=tenant.headers)
    bob = (await r.json())["data"][0]["id"]
    r = await client.delete(f"{SESSIONS}/{bob}", headers=tenant.headers)
    assert r.status == 204
    assert not [s for s in await replies(pool, tenant) if "passport-of-bob" in s]


async def test_deleted_content_leaves_the_redis_streams(
    app_client: Any, tenant: Tenant, redis: Redis, prefix: str
) -> None:
    client = app_client
    sid = await new_session(client, tenant, "rae")
    watcher = await connect(client, tenant, sid)  # a reader: the session's events flow
    await subscribe(watcher)
    url = f"{SESSIONS}/{sid}/messages"
    r = await client.post(url, json={"role": "user", "content": "secret-rest"},
                          headers=tenant.headers)
    doomed = await r.json()
    r = await client.post(url, json={"role": "user", "content": "still-here"},
                          headers=tenant.headers)
    producer = await connect(client, tenant, sid)
    stream_id = (await start(producer))["stream_id"]
    for part in ("secret-", "streamed"):
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                                  "delta": part})
    await producer.send_json({"type": "stream.end", "ref": "e", "stream_id": stream_id})
    await recv_until(producer, lambda f: f.get("ref") == "e")
    await in_stream(redis, prefix, tenant, sid, "secret-streamed")  # in the final event
    assert b"secret-rest" in await stream_text(redis, prefix, tenant, sid)
    for mid in (doomed["id"], stream_id):
        r = await client.delete(f"{url}/{mid}", headers=tenant.headers)
        assert r.status == 204
    held = await stream_text(redis, prefix, tenant, sid)
    assert b"secret" not in held and b"still-here" in held
    # deleting the session (and erasing a user) takes the whole stream
    key = stream_key(prefix, tenant, sid)
    r = await client.delete(f"{SESSIONS}/{sid}", headers=tenant.headers)
    assert r.status == 204 and not await redis.exists(key)
    other = await new_session(client, tenant, "rae")
    await client.post(f"{SESSIONS}/{other}/messages", json={"role": "user", "content": "x"},
                      headers=tenant.headers)
    await in_stream(redis, prefix, tenant, other, '"content":"x"')
    r = await client.delete("/api/v1/users/rae/sessions", headers=tenant.headers)
    assert r.status == 204
    assert await stream_text(redis, prefix, tenant, other) == b""


async def test_an_expired_temporary_chat_leaves_the_redis_streams(
    app_client: Any, tenant: Tenant, redis: Redis, prefix: str, pool: asyncpg.Pool
) -> None:
    client = app_client
    sid = await new_session(client, tenant, "tess")
    await client.post(f"{SESSIONS}/{sid}/messages", json={"role": "user", "content": "gone"},
                      headers=tenant.headers)
    await in_stream(redis, prefix, tenant, sid, '"content":"gone"')
    await pool.execute("UPDATE sessions SET expires_at = now() - interval '1 second' "
                       "WHERE id = $1", uuid.UUID(sid))
    app = client.app
    report = await maintenance.run_once(app[POOL_KEY], app[OBJECTS_KEY], app[SETTINGS_KEY],
                                        broker=app[BROKER_KEY])
    assert report is not None and report.expired_sessions == 1
    assert not await redis.exists(stream_key(prefix, tenant, sid))
