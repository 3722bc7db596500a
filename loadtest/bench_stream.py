"""Benchmark of live token streaming (a benchmark, not a test: it prints figures).

N producers (one session each) stream answers over the session WebSocket while M
subscribers per session watch; every delta carries its send time, so each subscriber
measures producer → subscriber latency. Two loads, each against two servers started
in this run as separate processes:

- ``ceiling``  a raw aiohttp WebSocket fan-out: relays each text frame of a room to the
               room's other sockets (no parsing, no storage) — one process's limit
- ``service``  ``chat-storage serve`` on a fresh database: stream.start / delta / end
               (answers of ``--tokens-per-answer`` deltas), checkpoints, fan-out

``max`` sends as fast as the server accepts (a ping every ``--window`` deltas bounds
what is in flight); ``moderate`` sends ``--rate`` deltas/s per producer.
Figures: deltas/s accepted from producers, deltas/s delivered to subscribers, p50/p99
latency. Clients and servers share this machine's cores, so read them as relative.

    .venv/bin/python loadtest/bench_stream.py --producers 8 --subscribers 4 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chat_storage.storage import apikeys
from loadtest import harness


# ---------------------------------------------------------------- the ceiling server
def ceiling_app() -> web.Application:
    """Relay every text frame to the other sockets of its room; answer pings."""
    rooms: dict[str, set[web.WebSocketResponse]] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        room = rooms.setdefault(request.match_info["room"], set())
        room.add(ws)
        try:
            async for msg in ws:
                data = msg.data
                if data.startswith('{"type":"ping"') or data.startswith('{"type": "ping"'):
                    await ws.send_str('{"type":"pong"}')
                    continue
                for peer in room:
                    if peer is not ws:
                        await peer.send_str(data)
        finally:
            room.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/api/v1/sessions/{room}/ws", handler)
    return app


# ---------------------------------------------------------------- load
@dataclasses.dataclass
class Result:
    name: str
    sent: int = 0
    delivered: int = 0
    latencies_ns: list[int] = dataclasses.field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def row(self) -> str:
        lat = sorted(self.latencies_ns)

        def pct(p: float) -> str:
            return f"{lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6:8.2f}" if lat else "     n/a"

        return (f"{self.name:<18} {self.sent / self.seconds:>12,.0f} "
                f"{self.delivered / self.seconds:>14,.0f} {pct(0.5)} {pct(0.99)} {self.errors:>7}")


class Load:
    def __init__(self, base: str, key: str, args: argparse.Namespace, service: bool,
                 rate: float | None) -> None:
        self.base, self.key, self.args, self.service, self.rate = base, key, args, service, rate
        self.measuring = False
        self.stopping = False
        self.result = Result("")

    async def run(self, name: str, session_ids: list[str]) -> Result:
        self.result = Result(name)
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as http:
            subs = [await self._connect(http, sid) for sid in session_ids
                    for _ in range(self.args.subscribers)]
            for ws in subs:
                if self.service:
                    await ws.send_str('{"type":"subscribe","after_seq":0}')
            readers = [asyncio.create_task(self._read(ws)) for ws in subs]
            producers = [asyncio.create_task(self._produce(http, sid)) for sid in session_ids]
            self.result.seconds = await harness.measure(
                self, self.args.warmup, self.args.duration, producers, readers)
            for ws in subs:
                await ws.close()
        return self.result

    async def _connect(self, http: aiohttp.ClientSession, sid: str) -> Any:
        return await http.ws_connect(f"{self.base}/api/v1/sessions/{sid}/ws",
                                     headers={"X-Api-Key": self.key}, max_msg_size=0)

    async def _read(self, ws: Any) -> None:
        loads, now = orjson.loads, time.perf_counter_ns
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = loads(msg.data)
            if frame.get("type") == "stream.delta" and self.measuring:
                self.result.delivered += 1
                self.result.latencies_ns.append(now() - int(frame["delta"].split(" ", 1)[0]))
        if self.measuring:
            self.result.errors += 1  # closed (cut) during the measurement

    async def _produce(self, http: aiohttp.ClientSession, sid: str) -> None:
        ws = await self._connect(http, sid)
        window, per_answer = self.args.window, self.args.tokens_per_answer
        interval = None if self.rate is None else 1.0 / self.rate
        next_at = time.perf_counter()
        try:
            while not self.stopping:
                stream_id = "bench"
                if self.service:
                    await ws.send_str('{"type":"stream.start","ref":"s"}')
                    stream_id = (await self._reply(ws, "s"))["stream_id"]
                prefix = (b'{"type":"stream.delta","stream_id":"' + stream_id.encode()
                          + b'","delta":"')
                for i in range(per_answer):
                    if self.stopping:
                        break
                    await ws.send_str((prefix + f"{time.perf_counter_ns()} tok".encode()
                                       + b'"}').decode())
                    if self.measuring:
                        self.result.sent += 1
                    if interval is not None:
                        next_at += interval
                        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    elif i % window == window - 1:
                        await ws.send_str('{"type":"ping","ref":"w"}')
                        await self._reply(ws, "w")
                if self.service:
                    await ws.send_str(
                        f'{{"type":"stream.end","ref":"e","stream_id":"{stream_id}"}}')
                    await self._reply(ws, "e")
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            self.result.errors += 1
        finally:
            await ws.close()

    async def _reply(self, ws: Any, ref: str) -> dict[str, Any]:
        while True:
            msg = await ws.receive(timeout=30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"connection ended: {msg.type}")
            frame: dict[str, Any] = orjson.loads(msg.data)
            if frame.get("type") == "error":
                self.result.errors += 1
            if frame.get("ref") == ref or frame.get("type") == "pong":
                return frame


# ---------------------------------------------------------------- setup and report
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark of live token streaming.")
    p.add_argument("--producers", type=int, default=8, help="producers, one session each")
    p.add_argument("--subscribers", type=int, default=4, help="subscribers per session")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--rate", type=float, default=100.0,
                   help="deltas/s per producer in the moderate load")
    p.add_argument("--window", type=int, default=64, help="deltas in flight per producer (max)")
    p.add_argument("--tokens-per-answer", type=int, default=500, help="deltas per answer")
    p.add_argument("--loads", default="max,moderate", help="comma-separated: max, moderate")
    p.add_argument("--serve-cmd", default=None,
                   help="command that serves the app ({port} is replaced); default: "
                        "chat-storage serve")
    p.add_argument("--ceiling-server", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args()


async def main() -> None:
    args = parse_args()
    loads = [x for x in args.loads.split(",") if x]
    key = apikeys.make_key()[1]
    name = f"chat_bench_stream_{secrets.token_hex(4)}"
    url = await harness.create_database(name)
    env = {**os.environ, "DATABASE_URL": url, "CHAT_API_KEYS": f"bench:{key}",
           "CHAT_RATE_LIMIT_PER_S": "1000000", "CHAT_RATE_LIMIT_BURST": "1000000",
           "CHAT_LOG_LEVEL": "WARNING"}
    env.pop("REDIS_URL", None)
    logdir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    results: list[Result] = []
    try:
        cport, sport = harness.free_port(), harness.free_port()
        clog, slog = logdir / "ceiling.log", logdir / "service.log"
        with harness.process([sys.executable, __file__, "--ceiling-server", str(cport)], env,
                             clog) as ceiling, \
             harness.process(harness.service_cmd(args.serve_cmd, sport), env, slog) as service:
            cbase, sbase = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{sport}"
            await harness.wait_ready(cbase + "/", ceiling, clog, any_answer=True)
            await harness.wait_ready(sbase + "/healthz", service, slog)
            rooms = [f"room{i}" for i in range(args.producers)]
            for load in loads:
                rate = None if load == "max" else args.rate
                results.append(await Load(cbase, key, args, False, rate).run(
                    f"ceiling/{load}", rooms))
                sessions = await harness.make_sessions(sbase, key, args.producers)
                results.append(await Load(sbase, key, args, True, rate).run(
                    f"service/{load}", sessions))
    finally:
        await harness.drop_database(name)
    print(f"\n{args.producers} producers x {args.subscribers} subscribers, "
          f"{args.duration:.0f} s each, moderate = {args.rate:.0f} deltas/s per producer")
    print(f"{'run':<18} {'accepted/s':>12} {'delivered/s':>14} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>7}")
    for r in results:
        print(r.row())
    print(f"\nserver logs: {logdir}")


if __name__ == "__main__":
    if "--ceiling-server" in sys.argv:
        port = int(sys.argv[sys.argv.index("--ceiling-server") + 1])
        web.run_app(ceiling_app(), host="127.0.0.1", port=port, print=None,
                    loop=harness.new_loop())
    else:
        harness.run(main())
