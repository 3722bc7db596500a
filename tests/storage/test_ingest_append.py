"""The ingest stream's append on a private redis-server (its counters are ours alone).

- Appends made in one loop turn go in one pipeline on one connection; each caller gets
  its own entry's id, in call order.
- The backlog limit still holds per entry inside a pipeline: the entries past it are
  refused (IngestFull), the others appended.
- Scripts flushed (a Redis restart or SCRIPT FLUSH): the append is sent again, once.
- Redis gone: every caller of the pipeline is told IngestUnavailable.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from chat_storage.storage.ids import new_id
from chat_storage.storage.ingest import (
    Entry,
    IngestFull,
    IngestStream,
    IngestUnavailable,
    decode,
)
from chat_storage.storage.messages import NewMessage
from tests.support.procs import RedisServer


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis.log")
    await server.start()
    yield server
    await server.kill()


@pytest.fixture
async def client(private_redis: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(private_redis.url, max_connections=64)
    yield redis
    await redis.aclose()


def entry(content: str) -> Entry:
    return Entry(uuid.uuid4(), uuid.uuid4(),
                 [NewMessage(id=new_id(), role="user", content=content)])


async def connections(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_connections_received"])


async def test_one_turn_of_appends_is_one_pipeline_each_answered_its_own(
        client: Redis, private_redis: RedisServer) -> None:
    stream = IngestStream(client, prefix="t")
    await stream.ensure_group()  # (opens the pool's first connection)
    probe = Redis.from_url(private_redis.url)
    try:
        before = await connections(probe)
        entries = [entry(f"m{n}") for n in range(20)]
        ids = await asyncio.gather(*(stream.append(e) for e in entries))
        # the pool's idle connection carried all twenty: no second one was opened
        assert await connections(probe) == before
        rows = await probe.xrange("t:ingest")
        assert [i.encode() for i in ids] == [r[0] for r in rows]
        assert [decode(r[1][b"d"]) for r in rows] == entries
    finally:
        await probe.aclose()


async def test_the_backlog_limit_holds_inside_a_pipeline(client: Redis) -> None:
    stream = IngestStream(client, prefix="t", max_backlog=3)
    results = await asyncio.gather(*(stream.append(entry(f"m{n}")) for n in range(5)),
                                   return_exceptions=True)
    assert [type(r) for r in results] == [str, str, str, IngestFull, IngestFull]
    assert await client.xlen("t:ingest") == 3


async def test_flushed_scripts_are_loaded_again_and_each_entry_appended_once(
        client: Redis) -> None:
    stream = IngestStream(client, prefix="t")
    await client.script_flush()
    ids = await asyncio.gather(stream.append(entry("a")), stream.append(entry("b")))
    assert len(set(ids)) == 2
    assert await client.xlen("t:ingest") == 2


async def test_redis_gone_every_caller_is_told_unavailable(
        client: Redis, private_redis: RedisServer) -> None:
    stream = IngestStream(client, prefix="t", op_timeout_s=1.0)
    await stream.append(entry("first"))
    await private_redis.kill()
    results = await asyncio.gather(*(stream.append(entry(f"m{n}")) for n in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, IngestUnavailable) for r in results), results
