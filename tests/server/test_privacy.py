"""PII redaction through a running server: REST and WebSocket writes, a streamed answer
whose personal data is split across deltas, and what is left in Postgres and Redis.

Two replicas (two apps on real sockets, one Postgres, one Redis): the watcher is on the
other one, so the deltas go through Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import uuid
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.server.state import SERVICES_KEY
from chat_storage.storage import tenants
from tests.conftest import REDIS_URL, Tenant
from tests.support.streamkit import connect, new_session, rebuild, recv_until, start, subscribe

# one value of each kind, and what it becomes
PII = {
    "jane.roe@example.org": "<EMAIL>",
    "+1 415-555-0132": "<PHONE>",
    "4111 1111 1111 1111": "<CARD>",
    "DE89 3704 0044 0532 0130 00": "<IBAN>",
    "203.0.113.7": "<IP>",
    "EMP-204816": "<EMPLOYEE_ID>",
}
TEXT = "Reach me: " + "; ".join(PII) + "."
REDACTED = "Reach me: " + "; ".join(PII.values()) + "."


async def _redacting(pool: asyncpg.Pool, tenant: Tenant) -> None:
    async with pool.acquire() as conn:
        await tenants.update_tenant(conn, tenant.name, redact_pii=True,
                                    pii_patterns={"EMPLOYEE_ID": r"EMP-\d{6}"})


async def _stored(pool: asyncpg.Pool, message_id: str) -> tuple[str, str]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT content, context::text AS context FROM messages WHERE id = $1",
            uuid.UUID(message_id))
    assert row is not None
    return row["content"], row["context"] or ""


def _replicas_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, redis_url=REDIS_URL,
                               redis_prefix=f"test{secrets.token_hex(4)}")


async def test_rest_and_ws_messages_are_stored_redacted(
        client: Any, pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant) -> None:
    await _redacting(pool, tenant)
    sid = await new_session(client, tenant)
    context = [{"source_id": "crm", "snippet": "owner jane.roe@example.org"}]
    r = await client.post(f"/api/v1/sessions/{sid}/messages", headers=tenant.headers,
                          json={"role": "user", "content": TEXT, "context": context})
    assert r.status == 201, await r.text()
    made = await r.json()
    assert made["content"] == REDACTED
    assert made["context"][0]["snippet"] == "owner <EMAIL>"
    content, stored_context = await _stored(pool, made["id"])
    assert content == REDACTED
    assert "jane.roe" not in stored_context

    r = await client.post(f"/api/v1/sessions/{sid}/messages/batch", headers=tenant.headers,
                          json={"messages": [{"role": "user", "content": TEXT}] * 2})
    assert r.status == 201, await r.text()
    for m in (await r.json())["data"]:
        assert (await _stored(pool, m["id"]))[0] == REDACTED

    ws = await connect(client, tenant, sid)
    await ws.send_json({"type": "message.create", "ref": "c1", "role": "user",
                        "content": TEXT})
    ack = (await recv_until(ws, lambda f: f.get("ref") == "c1"))[-1]
    assert ack["type"] == "ack" and ack["message"]["content"] == REDACTED
    assert (await _stored(pool, ack["message"]["id"]))[0] == REDACTED
    await ws.close()

    r = await client.post("/api/v1/sessions", headers=tenant.headers,
                          json={"user_id": "u1", "title": "call +1 415-555-0132"})
    assert (await r.json())["title"] == "call <PHONE>"
    r = await client.patch(f"/api/v1/sessions/{sid}", headers=tenant.headers,
                           json={"title": "about jane.roe@example.org"})
    assert (await r.json())["title"] == "about <EMAIL>"
    async with pool.acquire() as conn:
        titles = [t for (t,) in await conn.fetch(
            "SELECT title FROM sessions WHERE tenant_id = $1", tenant.id)]
    assert not any("jane" in t or "555" in t for t in titles)

    # a tenant without the flag stores what it is given
    other = await new_session(client, other_tenant)
    r = await client.post(f"/api/v1/sessions/{other}/messages", headers=other_tenant.headers,
                          json={"role": "user", "content": TEXT})
    assert (await r.json())["content"] == TEXT


async def _stream_entries(prefix: str, sid: str, tenant: Tenant) -> list[bytes]:
    redis = Redis.from_url(REDIS_URL)
    try:
        entries = await redis.xrange(f"{prefix}:s:session:{tenant.id}:{sid}")
    finally:
        await redis.aclose()
    return [fields[b"d"] for _, fields in entries]


async def _stream_split_value(aiohttp_client: Any, settings: Settings,
                              tenant: Tenant) -> tuple[str, list[dict[str, Any]], str, str]:
    """Stream ``TEXT`` in pieces cut through every value on one replica while a watcher
    on the other replica watches; returns (session, watcher's frames, stream id, prefix)."""
    shared = _replicas_settings(settings)
    a = await aiohttp_client(create_app(shared))
    b = await aiohttp_client(create_app(shared))
    sid = await new_session(a, tenant)
    watcher = await connect(b, tenant, sid)
    await subscribe(watcher)
    await watcher.send_json({"type": "ping", "ref": "sync"})
    await recv_until(watcher, lambda f: f.get("ref") == "sync")
    producer = await connect(a, tenant, sid)
    stream_id = (await start(producer, context=[
        {"source_id": "crm", "title": "owner jane.roe@example.org"}]))["stream_id"]
    pieces = [TEXT[i:i + 7] for i in range(0, len(TEXT), 7)]  # every value cut at least once
    for piece in pieces:
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                                  "delta": piece})
    await producer.send_json({"type": "stream.end", "stream_id": stream_id, "ref": "end"})
    done = (await recv_until(producer, lambda f: f.get("ref") == "end"))[-1]
    assert done["type"] == "stream.completed", done
    frames = await recv_until(watcher, lambda f: f["type"] == "stream.completed")
    await producer.close()
    await watcher.close()
    return sid, frames, stream_id, shared.redis_prefix


async def _until_scrubbed(prefix: str, sid: str, tenant: Tenant, raw: str) -> list[bytes]:
    """The session's Redis entries once none holds ``raw`` any more (the relay scrubs
    after it publishes the final event; bounded: 100 looks over 5 s)."""
    for _ in range(100):
        entries = await _stream_entries(prefix, sid, tenant)
        if not any(raw.encode() in e for e in entries):
            return entries
        await asyncio.sleep(0.05)
    pytest.fail(f"{raw!r} still in Redis after 5 s")


async def test_a_stream_is_redacted_at_its_end_and_its_deltas_leave_redis(
        aiohttp_client: Any, settings: Settings, pool: asyncpg.Pool, tenant: Tenant,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await _redacting(pool, tenant)
    sid, frames, stream_id, prefix = await _stream_split_value(aiohttp_client, settings, tenant)
    # the watcher saw the answer live, as it was produced ...
    assert rebuild(frames, stream_id) == TEXT
    # ... and got it, and Postgres holds it, redacted: every value, split or not
    assert frames[-1]["message"]["content"] == REDACTED
    content, context = await _stored(pool, stream_id)
    assert content == REDACTED and "owner <EMAIL>" in context and "jane" not in context
    entries = await _until_scrubbed(prefix, sid, tenant, "jane.roe")
    assert not any(b'"stream.delta"' in e for e in entries)
    final = [e for e in entries if b'"stream.completed"' in e]
    assert len(final) == 1 and REDACTED.encode() in final[0]
    for value in PII:
        assert not any(value.encode() in e for e in entries)
        assert value not in caplog.text  # logs never hold content


async def test_without_the_flag_a_stream_and_its_deltas_stay_as_sent(
        aiohttp_client: Any, settings: Settings, pool: asyncpg.Pool, tenant: Tenant) -> None:
    sid, frames, stream_id, prefix = await _stream_split_value(aiohttp_client, settings, tenant)
    assert frames[-1]["message"]["content"] == TEXT
    content, context = await _stored(pool, stream_id)
    assert content == TEXT and "owner jane.roe@example.org" in context
    entries = await _stream_entries(prefix, sid, tenant)
    assert sum(b'"stream.delta"' in e for e in entries) == len(range(0, len(TEXT), 7))


async def test_a_policy_change_reaches_the_writes(
        client: Any, pool: asyncpg.Pool, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)

    async def post() -> str:
        r = await client.post(f"/api/v1/sessions/{sid}/messages", headers=tenant.headers,
                              json={"role": "user", "content": "jo@example.com"})
        assert r.status == 201
        return str((await r.json())["content"])

    assert await post() == "jo@example.com"
    await _redacting(pool, tenant)
    client.server.app[SERVICES_KEY].privacy.forget()  # its ttl (CHAT_API_KEY_CACHE_S) cut short
    assert await post() == "<EMAIL>"
