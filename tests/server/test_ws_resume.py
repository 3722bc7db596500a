"""Streams that outlive connections: grace, interruption, resume, checkpoints, slow readers."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.server.streaming import CONNECTIONS_KEY
from tests.conftest import Tenant
from tests.support.streamkit import (
    RawWebSocket,
    connect,
    new_session,
    rebuild,
    recv,
    recv_until,
    start,
    subscribe,
)


async def _app(aiohttp_client: Any, settings: Settings, **changes: Any) -> Any:
    return await aiohttp_client(create_app(dataclasses.replace(settings, **changes)))


async def _send(ws: aiohttp.ClientWebSocketResponse, stream_id: str, *parts: str) -> None:
    """Send deltas and wait until the server has handled them (a ping answered after)."""
    for part in parts:
        await ws.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": part})
    await ws.send_json({"type": "ping", "ref": "sync"})
    await recv_until(ws, lambda f: f.get("ref") == "sync")


async def _poll(fn: Any, deadline_s: float = 10.0) -> Any:
    """Call ``fn`` until it returns something truthy, within a deadline."""
    async with asyncio.timeout(deadline_s):
        while not (value := await fn()):  # noqa: ASYNC110 - no event to await: polls the DB
            await asyncio.sleep(0.02)
    return value


async def test_producer_gone_leaves_interrupted_with_all_content(
    aiohttp_client: Any, settings: Settings, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    client = await _app(aiohttp_client, settings, stream_grace_s=0.3)
    sid = await new_session(client, tenant)
    watcher = await connect(client, tenant, sid)
    await subscribe(watcher)
    producer = await connect(client, tenant, sid)
    stream_id = (await start(producer))["stream_id"]
    await _send(producer, stream_id, "all ", "of ", "this")
    await producer.close()
    frames = await recv_until(watcher, lambda f: f["type"] == "stream.interrupted")
    message = frames[-1]["message"]
    assert message["status"] == "interrupted" and message["content"] == "all of this"
    assert rebuild(frames, stream_id) == "all of this"
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT status, content FROM messages WHERE id = $1",
                                  uuid.UUID(stream_id))
    assert dict(row) == {"status": "interrupted", "content": "all of this"}


async def test_producer_reconnects_within_grace_and_continues(
    aiohttp_client: Any, settings: Settings, tenant: Tenant
) -> None:
    client = await _app(aiohttp_client, settings, stream_grace_s=60.0)
    sid = await new_session(client, tenant)
    watcher = await connect(client, tenant, sid)
    await subscribe(watcher)
    first = await connect(client, tenant, sid)
    stream_id = (await start(first))["stream_id"]
    await _send(first, stream_id, "Hello, ")
    await first.close()

    second = await connect(client, tenant, sid)
    await second.send_json({"type": "stream.resume", "ref": "r", "stream_id": stream_id})
    assert await recv(second) == {"type": "stream.resumed", "ref": "r",
                                  "stream_id": stream_id, "offset": 7}
    await second.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": "world"})
    await second.send_json({"type": "stream.end", "ref": "e", "stream_id": stream_id})
    done = await recv(second)
    assert done["message"]["content"] == "Hello, world"
    assert done["message"]["status"] == "complete"
    frames = await recv_until(watcher, lambda f: f["type"] == "stream.completed")
    assert rebuild(frames, stream_id) == "Hello, world"
    # an ended stream cannot be resumed
    await second.send_json({"type": "stream.resume", "ref": "r2", "stream_id": stream_id})
    assert (await recv(second))["code"] == "not_found"


async def test_resume_takes_over_from_a_connection_still_open(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    old = await connect(client, tenant, sid)
    stream_id = (await start(old))["stream_id"]
    await _send(old, stream_id, "abc")
    new = await connect(client, tenant, sid)
    await new.send_json({"type": "stream.resume", "stream_id": stream_id})
    assert (await recv(new))["offset"] == 3
    await old.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": "x"})
    assert (await recv(old))["code"] == "forbidden"
    await old.close()  # the old connection going away no longer affects the stream
    await new.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": "def"})
    await new.send_json({"type": "stream.end", "stream_id": stream_id})
    assert (await recv(new))["message"]["content"] == "abcdef"


async def test_rest_history_shows_streaming_content(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    producer = await connect(client, tenant, sid)
    stream_id = (await start(producer))["stream_id"]
    await _send(producer, stream_id, "so ", "far")
    r = await client.get(f"/api/v1/sessions/{sid}/messages", headers=tenant.headers)
    page = await r.json()
    assert [(m["id"], m["status"], m["content"]) for m in page["data"]] == [
        (stream_id, "streaming", "so far")]
    r = await client.get(f"/api/v1/sessions/{sid}/messages/{stream_id}", headers=tenant.headers)
    one = await r.json()
    assert one["status"] == "streaming" and one["content"] == "so far"


async def test_content_is_checkpointed_by_size_and_by_time(
    aiohttp_client: Any, settings: Settings, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    client = await _app(aiohttp_client, settings, checkpoint_chars=20,
                        checkpoint_interval_s=0.2)
    sid = await new_session(client, tenant)
    producer = await connect(client, tenant, sid)
    stream_id = (await start(producer))["stream_id"]

    async def stored() -> Any:
        async with pool.acquire() as conn:
            return await conn.fetchval("SELECT content FROM messages WHERE id = $1",
                                       uuid.UUID(stream_id))

    await _send(producer, stream_id, "x" * 25)  # over checkpoint_chars
    assert await _poll(lambda: _equals(stored, "x" * 25))
    await _send(producer, stream_id, "tail")  # under it: saved after checkpoint_interval_s
    assert await _poll(lambda: _equals(stored, "x" * 25 + "tail"))


async def _equals(fn: Any, expected: str) -> bool:
    return bool(await fn() == expected)


async def test_subscribe_resumes_exactly_from_a_stream_offset(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    producer = await connect(client, tenant, sid)
    started = await start(producer)
    stream_id, seq = started["stream_id"], started["seq"]
    await _send(producer, stream_id, "0123456789")
    reader = await connect(client, tenant, sid)
    await subscribe(reader)
    frames = await recv_until(reader, lambda f: f["type"] == "stream.snapshot")
    assert frames[-1]["content"] == "0123456789"
    await reader.close()
    await _send(producer, stream_id, "abc", "def")
    # back with what it had: the rest comes as one delta from its offset, not a snapshot
    reader = await connect(client, tenant, sid)
    await subscribe(reader, after_seq=seq, streams=[{"seq": seq, "offset": 10}])
    frame = await recv(reader)
    assert frame == {"type": "stream.delta", "stream_id": stream_id, "offset": 10,
                     "delta": "abcdef"}
    await producer.send_json({"type": "stream.end", "stream_id": stream_id})
    frames = await recv_until(reader, lambda f: f["type"] == "stream.completed")
    assert frames[-1]["message"]["content"] == "0123456789abcdef"
    await reader.close()
    # a stream that ended while the client was away: the rest as one delta, then the
    # final event (appending every delta gives the whole answer)
    reader = await connect(client, tenant, sid)
    await subscribe(reader, after_seq=seq, streams=[{"seq": seq, "offset": 10}])
    frame = await recv(reader)
    assert frame == {"type": "stream.delta", "stream_id": stream_id, "offset": 10,
                     "delta": "abcdef"}
    frame = await recv(reader)
    assert frame["type"] == "stream.completed"
    assert frame["message"]["content"] == "0123456789abcdef"


@pytest.mark.timeout(120)
async def test_slow_subscriber_is_cut_without_slowing_others(
    aiohttp_client: Any, settings: Settings, tenant: Tenant
) -> None:
    # big content (the reader's buffers must fill), checkpointed rarely
    client = await _app(aiohttp_client, settings, ws_send_queue=256,
                        max_content_bytes=64 * 1024 * 1024, checkpoint_chars=10**9,
                        checkpoint_interval_s=5.0)
    sid = await new_session(client, tenant)
    slow = await RawWebSocket.open(client.host, client.port, f"/api/v1/sessions/{sid}/ws",
                                   tenant.headers)
    await slow.send_json({"type": "subscribe", "after_seq": 0})  # then never reads
    fast = await connect(client, tenant, sid, max_msg_size=0)
    await subscribe(fast)
    producer = await connect(client, tenant, sid, max_msg_size=0)
    stream_id = (await start(producer))["stream_id"]
    connections = client.server.app[CONNECTIONS_KEY]
    assert connections.count(tenant.id) == 3
    received: list[dict[str, Any]] = []

    async def read_fast() -> None:
        while True:
            frame = await recv(fast)
            received.append(frame)
            if frame["type"] == "stream.completed":
                return

    reader = asyncio.create_task(read_fast())
    chunk = "y" * 4000
    sent = 0
    # bounded: 40 MB at most; the slow reader's buffers (about 5 MB) fill long before
    while connections.count(tenant.id) == 3 and sent < 10_000:
        await _send(producer, stream_id, *[chunk] * 20)
        sent += 20
    assert connections.count(tenant.id) == 2, "the slow subscriber was never cut"
    await _send(producer, stream_id, "end")
    await producer.send_json({"type": "stream.end", "stream_id": stream_id})
    async with asyncio.timeout(30):
        await reader
    text = chunk * sent + "end"
    assert rebuild(received, stream_id) == text
    # the slow one gets what the socket held, then the 1013 close (or, had it waited
    # longer than the server lingers, a reset); never the end of the stream
    async with asyncio.timeout(30):
        frames, code = await slow.read_all()
    slow.close()
    assert code in (1013, None)
    assert all(f["type"] != "stream.completed" for f in frames)
    assert rebuild(frames, stream_id) == chunk * (len(frames) - 1)
    assert len(frames) < sent
