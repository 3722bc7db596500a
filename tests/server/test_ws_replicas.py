"""Two replicas (two apps, one Postgres, one Redis): a subscriber on one sees the other's events."""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

import aiohttp

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from tests.conftest import REDIS_URL, Tenant
from tests.support.streamkit import (
    connect,
    new_session,
    rebuild,
    recv,
    recv_until,
    start,
    subscribe,
)


async def _replicas(aiohttp_client: Any, settings: Settings) -> tuple[Any, Any]:
    # a prefix of its own: runs and tests never read each other's streams
    shared = dataclasses.replace(settings, redis_url=REDIS_URL,
                                 redis_prefix=f"test{secrets.token_hex(4)}")
    return (await aiohttp_client(create_app(shared)),
            await aiohttp_client(create_app(shared)))


async def _sync(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_json({"type": "ping", "ref": "sync"})
    await recv_until(ws, lambda f: f.get("ref") == "sync")


async def test_events_cross_replicas(aiohttp_client: Any, settings: Settings,
                                     tenant: Tenant) -> None:
    a, b = await _replicas(aiohttp_client, settings)
    sid = await new_session(a, tenant)
    watcher = await connect(b, tenant, sid)
    await subscribe(watcher)
    await _sync(watcher)  # subscribed (its feed listens to Redis) before anything happens
    producer = await connect(a, tenant, sid)
    await producer.send_json({"type": "message.create", "ref": "q", "role": "user",
                              "content": "question"})
    stream_id = (await start(producer))["stream_id"]
    parts = [f"part {i}; " for i in range(30)]
    for part in parts:
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": part})
    await producer.send_json({"type": "stream.end", "stream_id": stream_id})
    frames = await recv_until(watcher, lambda f: f["type"] == "stream.completed")
    kinds = [f["type"] for f in frames if f["type"] != "pong"]
    assert kinds == ["message.created", "stream.started"] + ["stream.delta"] * 30 + [
        "stream.completed"]
    assert rebuild(frames, stream_id) == "".join(parts)
    assert frames[-1]["message"]["content"] == "".join(parts)


async def test_late_subscriber_on_another_replica_gets_exact_snapshot(
    aiohttp_client: Any, settings: Settings, tenant: Tenant
) -> None:
    a, b = await _replicas(aiohttp_client, settings)
    sid = await new_session(a, tenant)
    producer = await connect(a, tenant, sid)
    stream_id = (await start(producer))["stream_id"]
    sent = ""
    for i in range(40):  # more than one checkpoint: Postgres has part, Redis the rest
        part = f"<{i}>" * 20
        sent += part
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": part})
    await _sync(producer)
    late = await connect(b, tenant, sid)
    await subscribe(late)
    frames = await recv_until(late, lambda f: f["type"] == "stream.snapshot")
    # the producer's replica publishes to Redis in the background: the snapshot holds
    # the checkpoint plus what Redis had; the rest follows as deltas
    assert sent.startswith(frames[-1]["content"]) and frames[-1]["content"]
    for i in range(5):
        sent += f"[{i}]"
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                                  "delta": f"[{i}]"})
    await producer.send_json({"type": "stream.end", "stream_id": stream_id})
    frames += await recv_until(late, lambda f: f["type"] == "stream.completed")
    assert rebuild(frames, stream_id) == sent
    # the REST history on the reader's replica shows the final text
    r = await b.get(f"/api/v1/sessions/{sid}/messages/{stream_id}", headers=tenant.headers)
    assert (await r.json())["content"] == sent
    # and message.create on the reader's replica reaches a subscriber on the producer's
    watcher = await connect(a, tenant, sid)
    await subscribe(watcher, after_seq=1)
    await late.send_json({"type": "message.create", "ref": "c", "role": "user",
                          "content": "from b"})
    assert (await recv(watcher))["message"]["content"] == "from b"
