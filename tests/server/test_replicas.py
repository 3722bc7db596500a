"""Several real replicas (``chat-storage serve`` processes) on one Postgres and one Redis.

- fan-out: a subscriber on B sees every message written on A (REST) and C (WebSocket)
  exactly once, in seq order, and rebuilds A's token stream exactly;
- late join on another replica mid-answer: snapshot + following deltas = the text;
- a replica SIGKILLed mid-stream: another replica's sweeper stores it ``interrupted``
  with everything that reached Redis, beyond the last checkpoint;
- Redis stopped and restarted under load (a private redis-server): writes keep getting
  201, same-replica subscribers keep receiving, ``/readyz`` says degraded, and the
  other replica's subscriber catches up from Postgres — every message exactly once.

Each test has its own Redis prefix, tenant and sessions; servers are killed at the end.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from chat_storage.actors.live import events
from chat_storage.storage.redis_keys import RedisKeys
from tests.conftest import REDIS_URL, Tenant
from tests.support.procs import Cluster, RedisServer, Server
from tests.support.procws import Frame, Reader, new_session, open_ws, subscriber
from tests.support.streamkit import rebuild, recv_until, start

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)  # a request slower than this has hung


@pytest.fixture
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(database_url, tmp_path)
    yield c
    await c.close()


def seq_events(frames: list[Frame]) -> list[int]:
    """The seq of every message announcement (created or started), in arrival order."""
    return [f["message"]["seq"] if f["type"] == events.CREATED else f["seq"]
            for f in frames if f["type"] in (events.CREATED, events.STARTED)]


def contents(frames: list[Frame]) -> dict[int, str]:
    return {f["message"]["seq"]: f["message"]["content"] for f in frames
            if f["type"] == events.CREATED}


def assert_exactly_once_in_order(frames: list[Frame], upto: int) -> None:
    seqs = seq_events(frames)
    assert seqs == list(range(1, upto + 1)), seqs


async def test_fan_out_across_three_replicas(cluster: Cluster, tenant: Tenant) -> None:
    a, b, c = await cluster.start(3)
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        sid = await new_session(http, a, tenant)
        watcher = await subscriber(http, b, tenant, sid)
        writer_c = Reader(await open_ws(http, c, tenant, sid))
        producer = await open_ws(http, a, tenant, sid)
        stream_id = (await start(producer, ref="s"))["stream_id"]  # seq 1
        parts = [f"tok{i} é🙂 " for i in range(200)]  # offsets count code points
        acked: dict[int, str] = {}

        async def rest_writer(w: int, n: int = 15) -> None:
            for i in range(n):
                async with http.post(f"{a.base}/api/v1/sessions/{sid}/messages",
                                     headers=tenant.headers,
                                     json={"role": "user", "content": f"rest {w}.{i}"}) as r:
                    assert r.status == 201, await r.text()
                    body = await r.json()
                    acked[body["seq"]] = body["content"]

        async def ws_writer() -> None:
            for i in range(30):  # pipelined: the acks come back later
                await writer_c.ws.send_json({"type": "message.create", "ref": f"c{i}",
                                             "role": "user", "content": f"ws {i}"})
            await writer_c.wait(lambda fs: sum(f["type"] == "ack" for f in fs) == 30)
            for f in writer_c.frames:
                acked[f["message"]["seq"]] = f["message"]["content"]

        async def tokens() -> None:
            for i, part in enumerate(parts):
                await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                                          "delta": part})
                if i % 20 == 0:
                    await asyncio.sleep(0.01)  # interleave with the writers

        await asyncio.gather(rest_writer(0), rest_writer(1), ws_writer(), tokens())
        await producer.send_json({"type": "stream.end", "ref": "e", "stream_id": stream_id})
        await recv_until(producer, lambda f: f.get("ref") == "e")
        assert len(acked) == 60
        await watcher.wait(lambda fs: len(contents(fs)) >= 60
                           and any(f["type"] == events.COMPLETED for f in fs))
        # one more message from A and from C: each replica's events reach B in the order
        # they were published, so a late duplicate of anything above would come before
        await rest_writer(2, 1)
        await writer_c.ws.send_json({"type": "message.create", "ref": "last", "role": "user",
                                     "content": "ws last"})
        await writer_c.wait(lambda fs: any(f.get("ref") == "last" for f in fs))
        acked[writer_c.frames[-1]["message"]["seq"]] = "ws last"
        await watcher.wait(lambda fs: len(contents(fs)) >= 62)
        await watcher.sync("end")
        frames = watcher.frames
        assert_exactly_once_in_order(frames, 63)
        assert contents(frames) == acked
        text = "".join(parts)
        assert rebuild(frames, stream_id) == text  # offsets contiguous, no duplicate
        done = [f for f in frames if f["type"] == events.COMPLETED]
        assert len(done) == 1 and done[0]["message"]["content"] == text
        assert next(f["type"] for f in frames if f.get("stream_id") == stream_id) == events.STARTED
        await writer_c.close()
        await watcher.close()


async def redis_deltas(prefix: str, tenant: Tenant, sid: str, stream_id: str) -> str:
    """The text of a stream as its deltas stand in the session's Redis stream."""
    key = RedisKeys(prefix).session_stream(f"session:{tenant.id}:{sid}")
    client = Redis.from_url(REDIS_URL)
    try:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange(key)  # type: ignore[assignment]
    finally:
        await client.aclose()
    text = ""
    for _, fields in entries:
        _, ev = events.open_envelope(fields[b"d"])
        if ev is not None and ev.kind == events.DELTA and ev.stream_id == stream_id:
            assert ev.offset == len(text)
            text += ev.text
    return text


async def test_late_joiners_on_other_replicas_get_snapshot_then_deltas(
    cluster: Cluster, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    # checkpoints by size only (every 2000 chars): what Postgres holds is predictable
    a, b, c = await cluster.start(3, first_env={"CHAT_CHECKPOINT_INTERVAL_S": "3600"})
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        sid = await new_session(http, a, tenant)
        producer = await open_ws(http, a, tenant, sid)
        stream_id = (await start(producer, ref="s"))["stream_id"]
        sent = ""
        flowing = asyncio.Event()

        async def send(n: int, pace_s: float = 0.0) -> None:
            nonlocal sent
            for i in range(n):
                part = f"<{len(sent)}:ü>"
                sent += part
                await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                                          "delta": part})
                if pace_s:
                    await asyncio.sleep(pace_s)
                if i == n // 4:
                    flowing.set()

        async def stored() -> str:
            return str(await pool.fetchval("SELECT content FROM messages WHERE id = $1",
                                           uuid.UUID(stream_id)))

        await send(300)  # over 2000 chars: one checkpoint
        for _ in range(500):  # bounded: until it is stored
            if await stored():
                break
            await asyncio.sleep(0.02)
        await send(50)  # Postgres holds the checkpoint, Redis holds everything
        for _ in range(500):  # bounded: until A's relay has published every delta
            if await redis_deltas(cluster.prefix, tenant, sid, stream_id) == sent:
                break
            await asyncio.sleep(0.02)
        assert await redis_deltas(cluster.prefix, tenant, sid, stream_id) == sent
        at_pause = sent
        checkpoint = await stored()
        assert checkpoint and at_pause.startswith(checkpoint) and checkpoint != at_pause
        first = await subscriber(http, b, tenant, sid)  # B opens its feed now
        snap = [f for f in first.frames if f["type"] == events.SNAPSHOT]
        assert len(snap) == 1 and snap[0]["content"] == at_pause
        assert snap[0]["offset"] == len(at_pause)
        # more joiners while deltas are flowing: one on B's existing feed, one on C's new one
        flowing.clear()
        sending = asyncio.create_task(send(300, pace_s=0.002))
        await flowing.wait()
        joiners = [await subscriber(http, b, tenant, sid), await subscriber(http, c, tenant, sid)]
        await sending
        await producer.send_json({"type": "stream.end", "ref": "e", "stream_id": stream_id})
        await recv_until(producer, lambda f: f.get("ref") == "e")
        for reader in [first, *joiners]:
            await reader.wait(lambda fs: any(f["type"] == events.COMPLETED for f in fs))
            kinds = [f["type"] for f in reader.frames if f.get("stream_id") == stream_id]
            assert kinds[:2] == [events.STARTED, events.SNAPSHOT], kinds[:3]
            assert rebuild(reader.frames, stream_id) == sent
            final = [f for f in reader.frames if f["type"] == events.COMPLETED]
            assert len(final) == 1 and final[0]["message"]["content"] == sent
            await reader.close()


async def test_replica_killed_mid_stream_is_interrupted_with_what_redis_holds(
    cluster: Cluster, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    # no checkpoint at all on the producer's replica: what is recovered comes from Redis
    quick = {"CHAT_STREAM_GRACE_S": "1"}  # orphaned after 1 + 3*1 + 5 s without a heartbeat
    a, b = await cluster.start(2, env=quick, first_env={
        "CHAT_CHECKPOINT_INTERVAL_S": "3600", "CHAT_CHECKPOINT_CHARS": "100000000"})
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        sid = await new_session(http, a, tenant)
        watcher = await subscriber(http, b, tenant, sid)
        producer = await open_ws(http, a, tenant, sid)
        stream_id = (await start(producer, ref="s"))["stream_id"]
        parts = [f"[{i}]" for i in range(250)]
        for part in parts[:200]:
            await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                                      "delta": part})
        confirmed = "".join(parts[:200])
        await watcher.wait(lambda fs: len(rebuild(fs, stream_id)) == len(confirmed))
        for part in parts[200:]:  # in flight when the process dies
            await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                                      "delta": part})
        a.signal(signal.SIGKILL)
        await a.exited(10)
        row = await pool.fetchrow("SELECT status, content FROM messages WHERE id = $1",
                                  uuid.UUID(stream_id))
        assert row is not None and row["status"] == "streaming" and row["content"] == ""
        await watcher.wait(lambda fs: any(f["type"] == events.INTERRUPTED for f in fs),
                           deadline_s=40)
        in_redis = await redis_deltas(cluster.prefix, tenant, sid, stream_id)
        assert in_redis.startswith(confirmed) and "".join(parts).startswith(in_redis)
        row = await pool.fetchrow("SELECT status, content FROM messages WHERE id = $1",
                                  uuid.UUID(stream_id))
        assert row is not None
        assert (row["status"], row["content"]) == ("interrupted", in_redis)
        final = [f for f in watcher.frames if f["type"] == events.INTERRUPTED]
        assert len(final) == 1 and final[0]["message"]["content"] == in_redis
        assert rebuild(watcher.frames, stream_id) == in_redis
        async with http.get(f"{b.base}/api/v1/sessions/{sid}/messages/{stream_id}",
                            headers=tenant.headers) as r:
            body = await r.json()
            assert (body["status"], body["content"]) == ("interrupted", in_redis)
        await watcher.close()


class Load:
    """Two REST writers and one token stream on one replica, until stopped.

    Every message has a unique content; what was acknowledged is kept by seq. Anything
    but a 201 (a 5xx, a hang past the client timeout, a dropped request) is a failure.
    """

    def __init__(self, http: aiohttp.ClientSession, server: Server, tenant: Tenant, sid: str,
                 producer: aiohttp.ClientWebSocketResponse, stream_id: str) -> None:
        self.http, self.headers = http, tenant.headers
        self.url = f"{server.base}/api/v1/sessions/{sid}/messages"
        self.producer, self.stream_id = producer, stream_id
        self.acked: dict[int, str] = {}
        self.sent = ""  # the stream's text so far
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._write(w)) for w in range(2)]
        self._tasks.append(asyncio.create_task(self._stream()))

    async def _write(self, w: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            content = f"w{w}-{n}"
            try:
                async with self.http.post(self.url, json={"role": "user", "content": content},
                                          headers=self.headers) as r:
                    if r.status != 201:
                        self.failures.append(f"{r.status}: {await r.text()}")
                        return
                    self.acked[(await r.json())["seq"]] = content
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(repr(exc))
                return
            await asyncio.sleep(0.01)

    async def _stream(self) -> None:
        while not self._stop.is_set():
            part = f"({len(self.sent)})"
            self.sent += part
            await self.producer.send_json({"type": "stream.delta", "delta": part,
                                           "stream_id": self.stream_id})
            await asyncio.sleep(0.02)

    async def acked_count(self, count: int, deadline_s: float = 30) -> int:
        """Wait for ``count`` acknowledged writes in all; the highest acknowledged seq."""
        async with asyncio.timeout(deadline_s):
            while len(self.acked) < count:
                assert not self.failures, self.failures[:3]
                await asyncio.sleep(0.01)
        return max(self.acked)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


def seen_upto(seq: int) -> Callable[[list[Frame]], bool]:
    return lambda fs: any(s >= seq for s in seq_events(fs))


async def wait_degraded(http: aiohttp.ClientSession, server: Server) -> None:
    """Until ``/readyz`` reports Redis degraded; it must stay 200 (ready) meanwhile."""
    async with asyncio.timeout(10):
        while True:
            async with http.get(f"{server.base}/readyz") as r:
                body = await r.json()
                assert r.status == 200 and body["checks"]["database"] == "ok", body
                if body["checks"]["redis"] == "degraded":
                    return
            await asyncio.sleep(0.05)


async def test_redis_stopped_and_restarted_under_load(
    cluster: Cluster, tenant: Tenant, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis.log")  # ours to stop: never the shared one
    await redis.start()
    try:
        a, b = await cluster.start(2, redis_url=redis.url)
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            sid = await new_session(http, a, tenant)
            near = await subscriber(http, a, tenant, sid)  # the producer's replica
            far = await subscriber(http, b, tenant, sid)
            producer = await open_ws(http, a, tenant, sid)
            stream_id = (await start(producer, ref="s"))["stream_id"]  # seq 1
            load = Load(http, a, tenant, sid, producer, stream_id)
            try:
                await far.wait(seen_upto(await load.acked_count(10)))  # through Redis
                await redis.stop()
                await asyncio.gather(wait_degraded(http, a), wait_degraded(http, b))
                # writes go on, and the producer's replica still delivers everything
                top = await load.acked_count(len(load.acked) + 30)
                text = load.sent
                await near.wait(seen_upto(top))
                await near.wait(lambda fs: rebuild(fs, stream_id).startswith(text))
                assert not seen_upto(top)(far.frames)  # B has no way but Redis to know

                await redis.start()  # empty: no persistence
                # B hears of writes again, and reads from Postgres the ones it missed ...
                await far.wait(seen_upto(await load.acked_count(len(load.acked) + 10)))
                # ... and of the answer in progress: what it missed as a snapshot, then deltas
                text = load.sent
                await far.wait(lambda fs: rebuild(fs, stream_id).startswith(text))
            finally:
                await load.stop()
            await producer.send_json({"type": "stream.end", "ref": "e", "stream_id": stream_id})
            await recv_until(producer, lambda f: f.get("ref") == "e")
            assert not load.failures, load.failures[:5]
            last = max(load.acked)
            for reader in (near, far):
                await reader.wait(lambda fs: seen_upto(last)(fs) and any(
                    f["type"] == events.COMPLETED for f in fs))
                await reader.sync("end")
                assert_exactly_once_in_order(reader.frames, last)
                assert contents(reader.frames) == load.acked
                assert rebuild(reader.frames, stream_id) == load.sent
                final = [f for f in reader.frames if f["type"] == events.COMPLETED]
                assert len(final) == 1 and final[0]["message"]["content"] == load.sent
            async with http.get(f"{b.base}/readyz") as r:
                assert r.status == 200 and (await r.json())["checks"]["redis"] == "ok"
    finally:
        await redis.stop()
