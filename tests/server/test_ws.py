"""The session WebSocket: frames, acks after commit, live fan-out, exact catch-up."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import asyncpg

from tests.conftest import Tenant
from tests.support.streamkit import (
    connect,
    new_session,
    rebuild,
    recv,
    recv_until,
    start,
    subscribe,
)


async def test_message_create_acks_after_commit_and_reaches_subscribers(
    client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    sid = await new_session(client, tenant)
    watcher = await connect(client, tenant, sid)
    await subscribe(watcher)
    writer = await connect(client, tenant, sid)
    await writer.send_json({"type": "message.create", "ref": "c1", "role": "user",
                            "content": "hello"})
    ack = await recv(writer)
    assert ack["type"] == "ack" and ack["ref"] == "c1"
    assert ack["message"]["seq"] == 1 and ack["message"]["content"] == "hello"
    # acknowledged means stored
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT content FROM messages WHERE id = $1",
                                   uuid.UUID(ack["message"]["id"])) == "hello"
    created = await recv(watcher)
    assert created == {"type": "message.created", "message": ack["message"]}
    # a REST write reaches the subscriber too
    r = await client.post(f"/api/v1/sessions/{sid}/messages",
                          json={"role": "assistant", "content": "hi"}, headers=tenant.headers)
    assert r.status == 201
    created = await recv(watcher)
    assert created["type"] == "message.created" and created["message"]["seq"] == 2


async def test_stream_start_delta_end(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    watcher = await connect(client, tenant, sid)
    await subscribe(watcher)
    producer = await connect(client, tenant, sid)
    started = await start(producer, "s1", role="assistant", metadata={"model": "m"},
                          context=[{"source_id": "doc-1", "snippet": "x"}])
    assert started["stream_id"] == started["message_id"] and started["seq"] == 1
    assert started["role"] == "assistant"
    stream_id = started["stream_id"]
    parts = ["Hel", "lo, ", "wörld 👋", "!"]
    for part in parts:
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": part})
    await producer.send_json({"type": "stream.end", "ref": "e1", "stream_id": stream_id,
                              "metadata": {"finish_reason": "stop"},
                              "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    done = await recv(producer)
    assert done["type"] == "stream.completed" and done["ref"] == "e1"
    message = done["message"]
    assert message["content"] == "".join(parts) and message["status"] == "complete"
    assert message["metadata"] == {"model": "m", "finish_reason": "stop"}
    assert message["usage"] == {"prompt_tokens": 3, "completion_tokens": 4}
    assert message["context"] == [{"source_id": "doc-1", "snippet": "x"}]

    frames = await recv_until(watcher, lambda f: f["type"] == "stream.completed")
    kinds = [f["type"] for f in frames]
    assert kinds == ["stream.started"] + ["stream.delta"] * len(parts) + ["stream.completed"]
    assert frames[0] == {"type": "stream.started", "stream_id": stream_id,
                         "message_id": stream_id, "seq": 1, "role": "assistant"}
    assert rebuild(frames, stream_id) == "".join(parts)
    assert frames[-1]["message"] == message

    r = await client.get(f"/api/v1/sessions/{sid}", headers=tenant.headers)
    assert (await r.json())["usage"] == {"prompt_tokens": 3, "completion_tokens": 4,
                                         "total_tokens": 7}


async def test_late_subscriber_rebuilds_exact_text(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    producer = await connect(client, tenant, sid)
    await producer.send_json({"type": "message.create", "ref": "q", "role": "user",
                              "content": "question"})
    assert (await recv(producer))["type"] == "ack"
    stream_id = (await start(producer))["stream_id"]
    sent = []
    for i in range(50):
        sent.append(f"tok{i} ")
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                                  "delta": sent[-1]})
    await producer.send_json({"type": "ping", "ref": "p"})  # frames are handled in order
    assert await recv(producer) == {"type": "pong", "ref": "p"}

    late = await connect(client, tenant, sid)
    await subscribe(late, after_seq=0)
    first = await recv_until(late, lambda f: f["type"] == "stream.snapshot")
    assert [f["type"] for f in first] == ["message.created", "stream.started", "stream.snapshot"]
    assert first[-1]["content"] == "".join(sent) and first[-1]["seq"] == 2
    for i in range(50, 80):
        sent.append(f"tok{i} ")
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                                  "delta": sent[-1]})
    await producer.send_json({"type": "stream.end", "stream_id": stream_id})
    rest = await recv_until(late, lambda f: f["type"] == "stream.completed")
    assert rebuild(first + rest, stream_id) == "".join(sent)
    assert rest[-1]["message"]["content"] == "".join(sent)
    # after_seq skips what the client has
    again = await connect(client, tenant, sid)
    await subscribe(again, after_seq=1)
    frame = await recv(again)
    assert frame["type"] == "message.created" and frame["message"]["seq"] == 2
    assert frame["message"]["content"] == "".join(sent)


async def test_concurrent_producers_keep_their_own_streams(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    watcher = await connect(client, tenant, sid)
    await subscribe(watcher)
    producers = [await connect(client, tenant, sid) for _ in range(3)]
    starts = await asyncio.gather(*(start(p, f"s{i}") for i, p in enumerate(producers)))
    ids = [s["stream_id"] for s in starts]
    assert sorted(s["seq"] for s in starts) == [1, 2, 3]

    async def produce(i: int) -> str:
        text = ""
        for j in range(40):
            part = f"[{i}.{j}]"
            text += part
            await producers[i].send_json({"type": "stream.delta", "stream_id": ids[i],
                                          "delta": part})
            if j % 7 == 0:
                await asyncio.sleep(0)
        await producers[i].send_json({"type": "stream.end", "stream_id": ids[i]})
        return text

    texts = await asyncio.gather(*(produce(i) for i in range(3)))
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while sum(f["type"] == "stream.completed" for f in frames) < 3:
            frames.append(await recv(watcher))
    for i in range(3):
        assert rebuild(frames, ids[i]) == texts[i]
        final = next(f for f in frames if f["type"] == "stream.completed"
                     and f["message"]["id"] == ids[i])
        assert final["message"]["content"] == texts[i]


async def test_another_producer_cannot_write_into_a_stream(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    owner = await connect(client, tenant, sid)
    stream_id = (await start(owner))["stream_id"]
    intruder = await connect(client, tenant, sid)
    await intruder.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": "x"})
    err = await recv(intruder)
    assert err["type"] == "error" and err["code"] == "forbidden"
    await intruder.send_json({"type": "stream.end", "ref": "e", "stream_id": "nope"})
    err = await recv(intruder)
    assert err == {"type": "error", "code": "not_found", "message": err["message"], "ref": "e"}


async def test_abort_stores_aborted_with_content(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    watcher = await connect(client, tenant, sid)
    await subscribe(watcher)
    producer = await connect(client, tenant, sid)
    stream_id = (await start(producer))["stream_id"]
    await producer.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": "part"})
    await producer.send_json({"type": "stream.abort", "ref": "a", "stream_id": stream_id,
                              "reason": "user pressed stop"})
    reply = await recv(producer)
    assert reply["type"] == "stream.aborted" and reply["ref"] == "a"
    assert reply["message"]["status"] == "aborted" and reply["message"]["content"] == "part"
    assert reply["message"]["metadata"]["abort_reason"] == "user pressed stop"
    frames = await recv_until(watcher, lambda f: f["type"] == "stream.aborted")
    assert frames[-1]["message"] == reply["message"]


async def test_ws_of_another_tenant_is_404_before_upgrade(
    client: Any, tenant: Tenant, other_tenant: Tenant
) -> None:
    sid = await new_session(client, tenant)
    try:
        await connect(client, other_tenant, sid)
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 404
    else:
        raise AssertionError("another tenant's session was opened")
    r = await client.get(f"/api/v1/sessions/{sid}/ws")
    assert r.status == 401
