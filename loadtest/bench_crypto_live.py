"""Cost of sealing live events in Redis (issue 15; a benchmark, not a test: it prints figures).

Two service processes, A and B, on a fresh database and the local Redis (a prefix of
this run), both with ``CHAT_ENCRYPTION_KEK``; tenants ``plain`` and ``sealed``
(``--encryption on``). For each tenant, ``--sessions`` sessions each with
``--subscribers`` WebSocket subscribers on B; then, per phase:

- ``delta``  one producer per session on A streams deltas of ``--delta-chars``
  characters as fast as A takes them (a ping every 64 deltas bounds what is in flight);
- ``create`` ``--concurrency`` clients POST messages to those sessions on A;
- ``ingest`` the same against C, a third process with ``CHAT_INGEST_MODE=async``: its
  CPU per message covers the 202 (the entry sealed for ``sealed``) and the consumer
  that opens and stores it (the phase waits until B has every ``message.created``).

Every event crosses Redis: A publishes it (sealed for ``sealed``), B reads and opens it
once, then hands it to its subscribers. Figures per phase and tenant: A's CPU µs per
event published, B's CPU µs per event received (one open per event, whatever the
number of subscribers) and per delivery (per subscriber frame). Tenants alternate
order between rounds; prints each run and the median sealed/plain ratios, after the
CPU time of sealing and opening one event in this process.

    .venv/bin/python loadtest/bench_crypto_live.py --rounds 3 --duration 6
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chat_storage.storage.crypto import events as sealed_events
from chat_storage.storage.crypto.keyring import DataKey
from loadtest import bench_clients as clients
from loadtest import harness
from loadtest.bench_crypto import TENANTS, cpu_us, prepare

PHASES = ("delta", "create", "ingest")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Server CPU per live event, sealed vs plain.")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=6.0, help="seconds per phase")
    p.add_argument("--sessions", type=int, default=8, help="sessions per tenant")
    p.add_argument("--subscribers", type=int, default=4, help="subscribers per session on B")
    p.add_argument("--concurrency", type=int, default=16, help="clients of the create phase")
    p.add_argument("--delta-chars", type=int, default=24)
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--kek", default=f"local:{secrets.token_hex(32)}")
    return p.parse_args()


def micro(chars: int) -> None:
    """CPU of sealing and opening one event (AES-256-GCM, header, nonce) in this process."""
    key = DataKey(uuid.uuid4(), AESGCM(os.urandom(32)))
    t, s = uuid.uuid4(), uuid.uuid4()
    for label, body in ((f"{chars}-char delta", orjson.dumps({
            "type": "stream.delta", "stream_id": str(s), "offset": 1000, "delta": "x" * chars})),
            ("1 KB message.created", b"{" + b"y" * 1024 + b"}")):
        header = {"type": "stream.delta", "stream_id": str(s), "seq": 0, "offset": 1000}
        sealed = sealed_events.seal_event(key, t, s, header, body)
        parsed = sealed_events.parse(sealed)
        assert parsed is not None
        seal = cpu_us(lambda b=body, h=header: sealed_events.seal_event(key, t, s, h, b))
        opened = cpu_us(lambda p=parsed: sealed_events.open_event(key, t, s, p))
        parse = cpu_us(lambda x=sealed: sealed_events.parse(x))
        print(f"{label}: seal {seal:.1f} µs CPU, parse {parse:.1f} + open {opened:.1f} µs CPU",
              flush=True)


class Watchers:
    """The subscribers on B of one tenant's sessions, counting the frames they receive."""

    def __init__(self, per_session: int) -> None:
        self.per_session = per_session
        self.frames = 0
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self, http: aiohttp.ClientSession, base: str, key: str,
                   sessions: list[str]) -> None:
        for sid in sessions:
            for _ in range(self.per_session):
                ws = await http.ws_connect(f"{base}/api/v1/sessions/{sid}/ws",
                                           headers={"X-Api-Key": key}, heartbeat=None)
                await ws.send_json({"type": "subscribe", "after_seq": 0})
                self.sockets.append(ws)
                self._tasks.append(asyncio.create_task(self._count(ws)))

    async def _count(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT and (
                    '"stream.delta"' in msg.data or '"message.created"' in msg.data):
                self.frames += 1

    async def close(self) -> None:
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def stream_deltas(http: aiohttp.ClientSession, base: str, key: str, sid: str,
                        stop_at: float, chars: int) -> int:
    """One producer: a stream of deltas until ``stop_at``; how many A acknowledged."""
    ws = await http.ws_connect(f"{base}/api/v1/sessions/{sid}/ws",
                               headers={"X-Api-Key": key}, heartbeat=None)
    try:
        await ws.send_json({"type": "stream.start", "ref": "s", "role": "assistant"})
        stream_id = ""
        while not stream_id:
            frame = orjson.loads((await ws.receive(timeout=30)).data)
            if frame.get("ref") == "s":
                stream_id = frame["stream_id"]
        sent = 0
        while time.monotonic() < stop_at:
            for _ in range(64):
                await ws.send_str(orjson.dumps({"type": "stream.delta", "stream_id": stream_id,
                                                "delta": "t" * chars}).decode())
            sent += 64
            await ws.send_json({"type": "ping", "ref": f"p{sent}"})
            while orjson.loads((await ws.receive(timeout=30)).data).get("ref") != f"p{sent}":
                pass
        await ws.send_json({"type": "stream.end", "stream_id": stream_id, "ref": "e"})
        while orjson.loads((await ws.receive(timeout=30)).data).get("ref") != "e":
            pass
        return sent
    finally:
        await ws.close()


async def create_messages(http: aiohttp.ClientSession, base: str, key: str,
                          sessions: list[str], stop_at: float, concurrency: int,
                          status: int = 201) -> int:
    done = 0

    async def client(i: int) -> None:
        nonlocal done
        n = 0
        while time.monotonic() < stop_at:
            sid = sessions[(i + n) % len(sessions)]
            n += 1
            async with http.post(f"{base}/api/v1/sessions/{sid}/messages",
                                 json=clients.message(n), headers={"X-Api-Key": key}) as r:
                await r.read()
                done += r.status == status

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return done


async def measure(pids: tuple[int, int], watchers: Watchers,
                  load: Callable[[float], Awaitable[int]], duration: float,
                  ) -> tuple[float, float, float]:
    """(A µs per event, B µs per event, B µs per delivery) of one phase of ``load``."""
    a0, b0 = clients.cpu_seconds(pids[0]), clients.cpu_seconds(pids[1])
    frames0 = watchers.frames
    events = max(1, await load(time.monotonic() + duration))
    expected = events * watchers.per_session  # every subscriber of the session gets it
    deadline = time.monotonic() + 10  # the last events still on their way to B
    while watchers.frames - frames0 < expected and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    a1, b1 = clients.cpu_seconds(pids[0]), clients.cpu_seconds(pids[1])
    if a0 is None or b0 is None or a1 is None or b1 is None:
        raise SystemExit("no CPU times in /proc (Linux only)")
    delivered = max(1, watchers.frames - frames0)
    return (a1 - a0) / events * 1e6, (b1 - b0) / events * 1e6, (b1 - b0) / delivered * 1e6


async def main() -> None:
    args = parse_args()
    micro(args.delta_chars)
    name, url, keys = await prepare()
    logdir = Path(tempfile.mkdtemp(prefix="bench_crypto_live_"))
    runs: dict[str, list[tuple[float, float, float]]] = {}
    prefix = f"bench{secrets.token_hex(4)}"
    try:
        env = {**os.environ, "DATABASE_URL": url, "CHAT_LOG_LEVEL": "WARNING",
               "REDIS_URL": args.redis_url, "CHAT_REDIS_PREFIX": prefix,
               "CHAT_RATE_LIMIT_PER_S": "1000000000", "CHAT_RATE_LIMIT_BURST": "1000000000",
               "CHAT_ENCRYPTION_KEK": args.kek, "CHAT_MAINTENANCE_INTERVAL_S": "0",
               "PYTHONPATH": str(harness.ROOT)}
        ports = harness.free_port(), harness.free_port(), harness.free_port()
        async_env = {**env, "CHAT_INGEST_MODE": "async"}
        with harness.process(harness.service_cmd(None, ports[0]), env, logdir / "a.log") as pa, \
                harness.process(harness.service_cmd(None, ports[1]), env, logdir / "b.log") as pb, \
                harness.process(harness.service_cmd(None, ports[2]), async_env,
                                logdir / "c.log") as pc:
            a, b, c = (f"http://127.0.0.1:{p}" for p in ports)
            await harness.wait_ready(f"{a}/readyz", pa, logdir / "a.log")
            await harness.wait_ready(f"{b}/readyz", pb, logdir / "b.log")
            await harness.wait_ready(f"{c}/readyz", pc, logdir / "c.log")
            timeout = aiohttp.ClientTimeout(total=60)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                sessions = {t: await clients.create_sessions(a, keys[t], args.sessions)
                            for t in TENANTS}
                watchers = {t: Watchers(args.subscribers) for t in TENANTS}
                for t in TENANTS:
                    await watchers[t].open(http, b, keys[t], sessions[t])
                for r in range(args.rounds):
                    order = TENANTS if r % 2 == 0 else TENANTS[::-1]
                    for phase in PHASES:
                        for t in order:
                            async def load(stop_at: float, t: str = t, phase: str = phase) -> int:
                                if phase == "create":
                                    return await create_messages(http, a, keys[t], sessions[t],
                                                                 stop_at, args.concurrency)
                                if phase == "ingest":
                                    return await create_messages(http, c, keys[t], sessions[t],
                                                                 stop_at, args.concurrency, 202)
                                sent = await asyncio.gather(*(stream_deltas(
                                    http, a, keys[t], sid, stop_at, args.delta_chars)
                                    for sid in sessions[t]))
                                return sum(sent)
                            writer = pc.pid if phase == "ingest" else pa.pid
                            figures = await measure((writer, pb.pid), watchers[t], load,
                                                    args.duration)
                            runs.setdefault(f"{phase} {t}", []).append(figures)
                            print(f"  {phase} {t:<7} A {figures[0]:7.1f} µs/event  "
                                  f"B {figures[1]:7.1f} µs/event  "
                                  f"{figures[2]:6.1f} µs/delivery", flush=True)
                for w in watchers.values():
                    await w.close()
    finally:
        await harness.drop_database(name)
        redis = Redis.from_url(args.redis_url)
        try:  # the session streams would expire; the ingest streams would not
            async for key in redis.scan_iter(match=f"{prefix}:*"):
                await redis.delete(key)
        finally:
            await redis.aclose()
    print(f"\nserver CPU µs ({args.rounds} rounds of {args.duration} s, {args.sessions} "
          f"sessions x {args.subscribers} subscribers on B, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f})")
    for phase in PHASES:
        for i, what in enumerate(("A (C) per event published", "B per event received",
                                  "B per delivery")):
            ratios = [s[i] / p[i] for s, p in zip(runs[f"{phase} sealed"],
                                                  runs[f"{phase} plain"], strict=True)]
            plain = statistics.median(x[i] for x in runs[f"{phase} plain"])
            sealed = statistics.median(x[i] for x in runs[f"{phase} sealed"])
            print(f"  {phase:<6} {what:<26} plain {plain:7.1f}  sealed {sealed:7.1f}"
                  "  sealed/plain " + ", ".join(f"{x:.3f}" for x in ratios)
                  + f"; median {statistics.median(ratios):.3f}")
    print(f"\nserver logs: {logdir}")


if __name__ == "__main__":
    harness.run(main())
