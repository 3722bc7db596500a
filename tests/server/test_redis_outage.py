"""Redis faults under streaming, across two real replicas (issue 17, findings 5 and 6).

Answers stream on replica A; subscribers watch on B, some staying connected, some
hopping between A and B at random and resuming with ``streams: [{seq, offset}]`` at a
random offset at most what they have. Redis (a private ``redis-server``, never the
shared one) is killed and restarted empty, or paused (SIGSTOP) and continued, while
the answers go on and end. Afterwards, with nothing more happening, every
subscriber's view equals Postgres (B learns how the answers produced during the
outage ended), and no subscriber ever got a ``stream.snapshot`` shorter than what it
said it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from chat_storage.actors.live import events
from tests.conftest import Tenant
from tests.support.procs import Cluster, RedisServer, Server
from tests.support.procws import Frame, Reader, new_session, open_ws, subscriber
from tests.support.streamkit import recv_until, start

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)
# checkpoints rarely: a replica that misses the broker knows much less than the producer's
ENV = {"CHAT_CHECKPOINT_INTERVAL_S": "5", "CHAT_CHECKPOINT_CHARS": "100000"}
Seen = dict[int, tuple[str, str]]  # seq -> (status, content)


@pytest.fixture
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(database_url, tmp_path)
    yield c
    await c.close()


class View:
    """What one client has of the session, kept from the frames it got, as a UI keeps it."""

    def __init__(self) -> None:
        self.messages: dict[int, dict[str, str]] = {}
        self.seq_of: dict[str, int] = {}
        self.claimed: dict[str, int] = {}  # what it said it had at its last resume
        self.errors: list[str] = []

    def apply(self, f: Frame) -> None:
        kind = f["type"]
        if kind == events.CREATED or kind in events.FINALS:
            m = f["message"]
            self._put(m["seq"], m["id"], m["status"], m["content"])
        elif kind == events.STARTED:
            self._put(f["seq"], f["stream_id"], "streaming", "")
        elif kind == events.SNAPSHOT:
            had = self.claimed.get(f["stream_id"], 0)
            if len(f["content"]) < had:
                self.errors.append(f"snapshot of {len(f['content'])} < offset {had}")
            self._put(f["seq"], f["stream_id"], "streaming", f["content"])
        elif kind == events.DELTA:
            m = self.messages[self.seq_of[f["stream_id"]]]
            if f["offset"] != len(m["content"]):
                self.errors.append(f"delta at {f['offset']}, have {len(m['content'])}")
            m["content"] += f["delta"]

    def _put(self, seq: int, mid: str, status: str, content: str) -> None:
        self.messages[seq] = {"id": mid, "status": status, "content": content}
        self.seq_of[mid] = seq

    def resume(self, rng: random.Random) -> Frame:
        """The subscribe frame of a reconnect, at a random offset of each stream in progress
        (the client forgets what lies beyond it)."""
        streams = []
        self.claimed = {}
        for seq, m in self.messages.items():
            if m["status"] == "streaming":
                offset = rng.randint(0, len(m["content"]))
                m["content"] = m["content"][:offset]
                self.claimed[m["id"]] = offset
                streams.append({"seq": seq, "offset": offset})
        return {"type": "subscribe", "after_seq": max(self.messages, default=0),
                "streams": streams}

    def seen(self) -> Seen:
        return {s: (m["status"], m["content"]) for s, m in sorted(self.messages.items())}


def view_of(frames: list[Frame]) -> View:
    view = View()
    for f in frames:
        view.apply(f)
    return view


async def stored(http: aiohttp.ClientSession, server: Server, tenant: Tenant, sid: str) -> Seen:
    """The session as Postgres has it (every page)."""
    out: Seen = {}
    cursor: str | None = None
    for _ in range(20):
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        async with http.get(f"{server.base}/api/v1/sessions/{sid}/messages", params=params,
                            headers=tenant.headers) as r:
            assert r.status == 200, await r.text()
            page = await r.json()
        out.update({m["seq"]: (m["status"], m["content"]) for m in page["data"]})
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return out
    raise AssertionError("too many pages")


async def eventually_equal(reader: Reader, want: Seen, deadline_s: float = 30) -> None:
    """Until the view of what ``reader`` got equals ``want`` (compared on a timeout too)."""
    with contextlib.suppress(TimeoutError):
        await reader.wait(lambda fs: view_of(fs).seen() == want, deadline_s)
    assert view_of(reader.frames).seen() == want


class Hopper:
    """A subscriber that reconnects every 0.1 to 0.6 s to A or B at random, resuming exactly."""

    def __init__(self, http: aiohttp.ClientSession, servers: list[Server], tenant: Tenant,
                 sid: str, seed: int) -> None:
        self.http, self.servers, self.tenant, self.sid = http, servers, tenant, sid
        self.rng = random.Random(seed)  # test data, not a secret
        self.view = View()
        self.hops = 0
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.visit(self.rng.choice(self.servers), self.rng.uniform(0.1, 0.6))

    async def visit(self, server: Server, stay_s: float, until: Seen | None = None) -> None:
        """One connection: resume, read for ``stay_s`` (or until the view is ``until``)."""
        self.hops += 1
        ws = await open_ws(self.http, server, self.tenant, self.sid)
        try:
            await ws.send_json(self.view.resume(self.rng))
            loop = asyncio.get_running_loop()
            end = loop.time() + stay_s
            while (left := end - loop.time()) > 0 and self.view.seen() != until:
                try:
                    msg = await ws.receive(timeout=left)
                except TimeoutError:
                    break
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                self.view.apply(msg.json())
        finally:
            await ws.close()

    async def stop(self) -> None:
        self._stop.set()
        await self._task


async def wait_redis(http: aiohttp.ClientSession, server: Server, state: str) -> None:
    """Until ``/readyz`` says Redis is ``state``; the server stays ready meanwhile."""
    async with asyncio.timeout(20):
        while True:
            async with http.get(f"{server.base}/readyz") as r:
                body = await r.json()
                assert r.status == 200, body
                if body["checks"]["redis"] == state:
                    return
            await asyncio.sleep(0.05)


class Producer:
    """Answers streamed on one WebSocket of replica A."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.n = 0

    async def answer(self, parts: int, pace_s: float = 0.0) -> str:
        """Stream an answer of ``parts`` deltas and end it; its stream id."""
        self.n += 1
        stream_id = str((await start(self.ws, ref=f"s{self.n}"))["stream_id"])
        await self.deltas(stream_id, parts, pace_s)
        await self.end(stream_id)
        return stream_id

    async def deltas(self, stream_id: str, parts: int, pace_s: float = 0.0) -> None:
        for i in range(parts):
            await self.ws.send_json({"type": "stream.delta", "stream_id": stream_id,
                                     "delta": f"<{self.n}.{i}>"})
            if pace_s:
                await asyncio.sleep(pace_s)

    async def end(self, stream_id: str) -> None:
        ref = f"e{stream_id}"
        await self.ws.send_json({"type": "stream.end", "ref": ref, "stream_id": stream_id})
        frames = await recv_until(self.ws, lambda f: f.get("ref") == ref)
        assert frames[-1]["type"] == events.COMPLETED, frames[-1]


async def run_fault(cluster: Cluster, tenant: Tenant, tmp_path: Path,
                    fault: Callable[[RedisServer], Awaitable[None]],
                    recover: Callable[[RedisServer], Awaitable[None]]) -> None:
    redis = RedisServer(tmp_path / "redis.log")  # ours to break: never the shared one
    await redis.start()
    try:
        a, b = await cluster.start(2, redis_url=redis.url, env=ENV)
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            sid = await new_session(http, a, tenant)
            stay = [await subscriber(http, b, tenant, sid) for _ in range(2)]
            stay.append(await subscriber(http, a, tenant, sid))
            producer = Producer(await open_ws(http, a, tenant, sid))
            await producer.answer(5)  # through Redis, before the fault
            await stay[0].wait(lambda fs: any(f["type"] == events.COMPLETED for f in fs))
            hoppers = [Hopper(http, [a, b], tenant, sid, seed) for seed in range(4)]
            long = str((await start(producer.ws, ref="long"))["stream_id"])
            await producer.deltas(long, 20, 0.02)
            await fault(redis)
            # the answer goes on and ends, and more are produced, while B cannot hear
            await producer.deltas(long, 100, 0.03)
            await producer.end(long)
            for _ in range(4):
                await producer.answer(10, 0.01)
            await recover(redis)
            await wait_redis(http, b, "ok")
            await asyncio.sleep(1.5)  # hoppers keep hopping across the recovery
            for hopper in hoppers:
                await hopper.stop()
            want = await stored(http, a, tenant, sid)
            assert len(want) == 6 and all(s == "complete" for s, _ in want.values()), want
            # nothing else happens: every view must reach Postgres by itself
            for reader in stay:
                await eventually_equal(reader, want)
                assert view_of(reader.frames).errors == []
            for hopper in hoppers:
                await hopper.visit(b, 30, until=want)  # one last resume, on B
                assert hopper.view.seen() == want
                assert hopper.view.errors == [], hopper.view.errors[:5]
                assert hopper.hops > 3
            for reader in stay:
                await reader.close()
            await producer.ws.close()
    finally:
        await redis.stop()


async def _kill(redis: RedisServer) -> None:
    await redis.kill()


async def _restart(redis: RedisServer) -> None:
    await redis.start()  # empty: no persistence


async def _pause(redis: RedisServer) -> None:
    assert redis.proc is not None
    os.kill(redis.proc.pid, signal.SIGSTOP)


async def _continue(redis: RedisServer) -> None:
    assert redis.proc is not None
    await asyncio.sleep(3)  # long enough for every Redis call to time out
    os.kill(redis.proc.pid, signal.SIGCONT)


async def test_redis_killed_and_restarted_while_answers_stream(
    cluster: Cluster, tenant: Tenant, tmp_path: Path
) -> None:
    await run_fault(cluster, tenant, tmp_path, _kill, _restart)


async def test_redis_paused_while_subscribers_hop_between_replicas(
    cluster: Cluster, tenant: Tenant, tmp_path: Path
) -> None:
    await run_fault(cluster, tenant, tmp_path, _pause, _continue)


async def test_answers_of_a_replica_that_died_during_the_outage_reach_the_others(
    cluster: Cluster, tenant: Tenant, tmp_path: Path
) -> None:
    """A cannot tell the others what they missed (it is gone when Redis is back): B's
    subscribers learn it because B reconciles when its reader has Redis again."""
    redis = RedisServer(tmp_path / "redis.log")
    await redis.start()
    try:
        a, b = await cluster.start(2, redis_url=redis.url, env=ENV)
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            sid = await new_session(http, a, tenant)
            stay = [await subscriber(http, b, tenant, sid) for _ in range(2)]
            producer = Producer(await open_ws(http, a, tenant, sid))
            long = str((await start(producer.ws, ref="long"))["stream_id"])
            await producer.deltas(long, 10)
            await stay[0].wait(lambda fs: any(f["type"] == events.DELTA for f in fs))
            await redis.kill()
            await wait_redis(http, b, "degraded")
            await producer.deltas(long, 30)
            await producer.end(long)
            for _ in range(3):
                await producer.answer(5)
            await a.kill()  # with what it could not publish
            await redis.start()
            want = await stored(http, b, tenant, sid)
            assert len(want) == 4 and all(s == "complete" for s, _ in want.values()), want
            for reader in stay:
                await eventually_equal(reader, want)
                assert view_of(reader.frames).errors == []
                await reader.close()
    finally:
        await redis.stop()
