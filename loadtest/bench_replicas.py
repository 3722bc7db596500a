"""Benchmark of cross-replica delivery (a benchmark, not a test: it prints figures).

Two replicas, A and B (``chat-storage serve`` processes started by this run, on a fresh
database and a private ``redis-server`` of this run — or ``--redis-url``, under a key
prefix of this run's own). N producers, each
on its own session, stream answers over WebSockets on A; each session has one
subscriber on A (same replica: delivered by A's feed directly) and one on B (cross
replica: A → Redis stream → B's XREAD loop → B's feed). Every delta carries its send
time, so both subscribers of a delta measure producer → subscriber latency in the same
run, under the same load.

Loads: ``moderate`` sends ``--rate`` deltas/s per producer; ``max`` sends as fast as A
accepts (a ping every ``--window`` deltas bounds what is in flight). Figures per load
and path: tokens (deltas) delivered per second, p50/p99/max latency. Clients, both
servers, Redis and Postgres share this machine's cores: read the figures as relative.

    .venv/bin/python loadtest/bench_replicas.py --producers 8 --rate 50 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chat_storage.storage import apikeys
from loadtest import harness
from tests.support.procs import RedisServer, Server

PATHS = ("same replica", "cross replica")


@dataclasses.dataclass
class Figures:
    """What the subscribers of one path saw during the measured window."""

    delivered: int = 0
    latencies_ns: list[int] = dataclasses.field(default_factory=list)

    def pct(self, p: float) -> float:
        lat = sorted(self.latencies_ns)
        return lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6 if lat else float("nan")


@dataclasses.dataclass
class Run:
    load: str
    sent: int = 0
    errors: int = 0
    seconds: float = 0.0
    paths: dict[str, Figures] = dataclasses.field(
        default_factory=lambda: {p: Figures() for p in PATHS})


class Load:
    """Producers on A, a subscriber on A and one on B per session, for one run."""

    def __init__(self, a: Server, b: Server, key: str, args: argparse.Namespace,
                 rate: float | None, name: str) -> None:
        self.a, self.b, self.key, self.args, self.rate = a, b, key, args, rate
        self.run_ = Run(name)
        self.measuring = False
        self.stopping = False

    async def run(self, sessions: list[str]) -> Run:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            subs = []
            for sid in sessions:
                for server, path in ((self.a, PATHS[0]), (self.b, PATHS[1])):
                    ws = await self._connect(http, server, sid)
                    await ws.send_str('{"type":"subscribe","after_seq":0}')
                    await ws.send_str('{"type":"ping","ref":"sub"}')
                    await self._reply(ws, "sub")  # live before anything is produced
                    subs.append((ws, path))
            readers = [asyncio.create_task(self._read(ws, path)) for ws, path in subs]
            producers = [asyncio.create_task(self._produce(http, sid)) for sid in sessions]
            self.run_.seconds = await harness.measure(self, self.args.warmup, self.args.duration,
                                                      producers, readers)
            for ws, _ in subs:
                await ws.close()
        return self.run_

    async def _connect(self, http: aiohttp.ClientSession, server: Server,
                       sid: str) -> aiohttp.ClientWebSocketResponse:
        return await http.ws_connect(f"{server.base}/api/v1/sessions/{sid}/ws",
                                     headers={"X-Api-Key": self.key}, max_msg_size=0)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, path: str) -> None:
        figures, loads, now = self.run_.paths[path], orjson.loads, time.perf_counter_ns
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = loads(msg.data)
            if frame.get("type") == "stream.delta" and self.measuring:
                figures.delivered += 1
                figures.latencies_ns.append(now() - int(frame["delta"].split(" ", 1)[0]))
        if self.measuring:
            self.run_.errors += 1  # a subscriber cut during the measurement

    async def _produce(self, http: aiohttp.ClientSession, sid: str) -> None:
        ws = await self._connect(http, self.a, sid)
        interval = None if self.rate is None else 1.0 / self.rate
        next_at = time.perf_counter()
        try:
            while not self.stopping:
                await ws.send_str('{"type":"stream.start","ref":"s"}')
                stream_id = (await self._reply(ws, "s"))["stream_id"]
                head = '{"type":"stream.delta","stream_id":"' + stream_id + '","delta":"'
                for i in range(self.args.tokens_per_answer):
                    if self.stopping:
                        break
                    await ws.send_str(f'{head}{time.perf_counter_ns()} tok"}}')
                    if self.measuring:
                        self.run_.sent += 1
                    if interval is not None:
                        next_at += interval
                        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    elif i % self.args.window == self.args.window - 1:
                        await ws.send_str('{"type":"ping","ref":"w"}')
                        await self._reply(ws, "w")
                await ws.send_str(f'{{"type":"stream.end","ref":"e","stream_id":"{stream_id}"}}')
                await self._reply(ws, "e")
        except (aiohttp.ClientError, ConnectionError, TimeoutError):
            self.run_.errors += 1
        finally:
            await ws.close()

    async def _reply(self, ws: aiohttp.ClientWebSocketResponse, ref: str) -> dict[str, Any]:
        while True:  # bounded by the receive timeout
            msg = await ws.receive(timeout=30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"connection ended: {msg.type}")
            frame: dict[str, Any] = orjson.loads(msg.data)
            if frame.get("type") == "error":
                self.run_.errors += 1
            if frame.get("ref") == ref:
                return frame


# ---------------------------------------------------------------- setup and report
async def cleanup(name: str, redis_url: str, prefix: str) -> None:
    await harness.drop_database(name)
    client = Redis.from_url(redis_url)
    try:
        async for k in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(k)
    finally:
        await client.aclose()


def report(args: argparse.Namespace, runs: list[Run]) -> None:
    print(f"\n{args.producers} producers on replica A, one subscriber on A and one on B per "
          f"session; {args.duration:.0f} s measured per load; moderate = {args.rate:.0f} "
          f"deltas/s per producer")
    print(f"{'load':<9} {'path':<14} {'sent/s':>9} {'tokens/s':>9} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7} {'errors':>6}")
    for run in runs:
        for path, f in run.paths.items():
            print(f"{run.load:<9} {path:<14} {run.sent / run.seconds:>9,.0f} "
                  f"{f.delivered / run.seconds:>9,.0f} {f.pct(0.5):>7.2f} {f.pct(0.99):>7.2f} "
                  f"{f.pct(1.0):>7.2f} {run.errors:>6}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark of cross-replica delivery.")
    p.add_argument("--producers", type=int, default=8, help="producers, one session each")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per load")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--rate", type=float, default=50.0,
                   help="deltas/s per producer in the moderate load")
    p.add_argument("--window", type=int, default=64, help="deltas in flight per producer (max)")
    p.add_argument("--tokens-per-answer", type=int, default=200, help="deltas per answer")
    p.add_argument("--loads", default="moderate,max", help="comma-separated: moderate, max")
    p.add_argument("--redis-url", default=None,
                   help="Redis to use (default: a private redis-server started for the run)")
    return p.parse_args()


async def main() -> None:
    args = parse_args()
    key = apikeys.make_key()[1]
    prefix = f"bench-{secrets.token_hex(4)}"
    name = f"chat_bench_replicas_{secrets.token_hex(4)}"
    url = await harness.create_database(name)
    logdir = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    redis: RedisServer | None = None
    redis_url = args.redis_url
    if redis_url is None:
        redis = RedisServer(logdir / "redis.log")
        await redis.start()
        redis_url = redis.url
    env = {"CHAT_API_KEYS": f"bench:{key}", "CHAT_REDIS_PREFIX": prefix,
           "CHAT_RATE_LIMIT_PER_S": "1000000", "CHAT_RATE_LIMIT_BURST": "1000000"}
    a, b = (Server(url, logdir / f"{n}.log", redis_url=redis_url, env=env) for n in "ab")
    runs: list[Run] = []
    try:
        await asyncio.gather(a.start(), b.start())
        for load in [x for x in args.loads.split(",") if x]:
            sessions = await harness.make_sessions(a.base, key, args.producers)
            rate = None if load == "max" else args.rate
            runs.append(await Load(a, b, key, args, rate, load).run(sessions))
    finally:
        await asyncio.gather(a.stop(), b.stop())
        await cleanup(name, redis_url, prefix)
        if redis is not None:
            await redis.stop()
    report(args, runs)
    print(f"\nserver logs: {logdir}")


if __name__ == "__main__":
    harness.run(main())
