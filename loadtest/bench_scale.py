"""Benchmark of scale (a benchmark, not a test: it prints figures): idle subscribers'
memory, and one answer streamed to many of them.

1. ``idle``: ``--connections`` WebSockets (default 10,000) held open to each of two
   servers started in this run: a raw aiohttp server that accepts and holds (the
   framework's floor) and ``chat-storage serve`` on a fresh database, where each socket
   is subscribed to a session (``--hot`` on one session, the rest ten per session). The
   figure is each server's resident memory grown per connection (``VmRSS`` of
   ``/proc/<pid>/status`` before and after, once every socket answered a ping).
2. ``stream``: over those same sockets, one producer streams an answer of
   ``--tokens`` deltas at ``--rate`` deltas/s into the hot session; every delta carries
   its send time, and each of the ``--hot`` subscribers measures producer → subscriber
   latency. Figures: p50/p99 latency, deltas/s delivered.

Goals (issue 12, goal 3): ≤ 20 KiB of server memory per idle subscribed WebSocket at
10,000 connections, and the 1,000-subscriber stream's p99 under 50 ms at 20 tokens/s.

    .venv/bin/python loadtest/bench_scale.py [--connections 10000] [--hot 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chat_storage.storage import apikeys
from loadtest import harness
from loadtest.bench_clients import cpu_seconds

GOAL_KIB_PER_CONNECTION = 20.0
GOAL_P99_MS = 50.0
CONNECT_CONCURRENCY = 100  # handshakes in flight at once
REPLY_TIMEOUT_S = 60.0


def idle_app() -> web.Application:
    """Accept a WebSocket and hold it, answering pings: the framework's floor."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT and '"ping"' in msg.data:
                await ws.send_str('{"type":"pong","ref":"p"}')
        return ws

    app = web.Application()
    app.router.add_get("/api/v1/sessions/{sid}/ws", handler)
    return app


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class Client:
    """One subscribed socket, read all the time as a real client does (its reads answer
    the server's heartbeat pings: a socket left unread is closed by the server)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        # called with each text frame as it is read ("" once closed); no queue or task
        # hop in between, so the client adds as little as it can to the latency measured
        self.on_frame: Callable[[str], None] | None = None
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT and self.on_frame is not None:
                self.on_frame(msg.data)
        if self.on_frame is not None:
            self.on_frame("")

    def expect(self, text: str) -> asyncio.Future[str]:
        """The next text frame that contains ``text`` ("" if the socket closes first);
        watched from now on, so a reply to a frame sent after this call is not missed."""
        found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def check(frame: str) -> None:
            if not found.done() and (text in frame or not frame):
                self.on_frame = None
                found.set_result(frame)

        self.on_frame = check
        return found

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self.reader, return_exceptions=True)


async def open_all(http: aiohttp.ClientSession, base: str, key: str,
                   sessions: list[str]) -> list[Client]:
    """One subscribed socket per entry of ``sessions``; each answered a ping."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(sid: str) -> Client:
        async with gate:
            ws = await http.ws_connect(f"{base}/api/v1/sessions/{sid}/ws",
                                       headers={"X-Api-Key": key}, max_msg_size=0,
                                       autoping=True, heartbeat=None)
            client = Client(ws)
            pong = client.expect('"pong"')
            await ws.send_str('{"type":"subscribe","after_seq":0}')
            await ws.send_str('{"type":"ping","ref":"p"}')
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                if not await pong:
                    raise ConnectionError("the socket closed before its pong")
            return client

    return list(await asyncio.gather(*(one(sid) for sid in sessions)))


async def measure_idle(http: aiohttp.ClientSession, base: str, key: str, pid: int,
                       sessions: list[str]) -> tuple[float, list[Client]]:
    """KiB of server memory per connection once all of ``sessions``' sockets are open."""
    await asyncio.sleep(1.0)  # let start-up allocations settle before the baseline
    before = rss_kib(pid)
    sockets = await open_all(http, base, key, sessions)
    await asyncio.sleep(1.0)
    return (rss_kib(pid) - before) / len(sockets), sockets


async def stream(http: aiohttp.ClientSession, base: str, key: str, hot: str,
                 subscribers: list[Client], tokens: int,
                 rate: float) -> tuple[list[float], float]:
    """Stream ``tokens`` deltas at ``rate``/s into ``hot``; latencies (ms) and delivered/s."""
    latencies: list[float] = []
    done = asyncio.Event()
    remaining = len(subscribers)

    def read(raw: str) -> None:
        nonlocal remaining
        if not raw:
            return  # closed early: the run times out, every delta was not delivered
        frame = orjson.loads(raw)
        kind = frame.get("type")
        if kind == "stream.delta":
            latencies.append((time.perf_counter_ns()
                              - int(frame["delta"].split(" ", 1)[0])) / 1e6)
        elif kind == "stream.completed":
            remaining -= 1
            if remaining == 0:
                done.set()

    for client in subscribers:
        client.on_frame = read
    producer = await http.ws_connect(f"{base}/api/v1/sessions/{hot}/ws",
                                     headers={"X-Api-Key": key})
    await producer.send_str('{"type":"stream.start","ref":"s","role":"assistant"}')
    started: dict[str, Any] = {}
    async with asyncio.timeout(REPLY_TIMEOUT_S):
        while started.get("ref") != "s":
            started = orjson.loads((await producer.receive()).data)
    stream_id = started["stream_id"]
    began = time.perf_counter()
    next_at = began
    for _ in range(tokens):
        await producer.send_str(orjson.dumps({
            "type": "stream.delta", "stream_id": stream_id,
            "delta": f"{time.perf_counter_ns()} tok "}).decode())
        next_at += 1.0 / rate
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    await producer.send_str(orjson.dumps({"type": "stream.end", "ref": "e",
                                          "stream_id": stream_id}).decode())
    async with asyncio.timeout(REPLY_TIMEOUT_S):
        await done.wait()
    elapsed = time.perf_counter() - began
    await producer.close()
    for client in subscribers:
        client.on_frame = None
    return latencies, len(latencies) / elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=10_000,
                        help="idle subscribed WebSockets held to each server")
    parser.add_argument("--hot", type=int, default=1_000,
                        help="of those, subscribers of the session the answer streams into")
    parser.add_argument("--tokens", type=int, default=200, help="deltas in the answer")
    parser.add_argument("--rate", type=float, default=20.0, help="deltas/s")
    parser.add_argument("--serve-cmd", default=None,
                        help="command that serves the app ({port} is replaced)")
    return parser.parse_args()


async def main() -> None:
    args = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.connections + 1000
    if hard < needed:
        raise SystemExit(f"needs {needed} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))  # children too
    key = apikeys.make_key()[1]
    name = f"chat_bench_scale_{secrets.token_hex(4)}"
    url = await harness.create_database(name)
    env = {**os.environ, "DATABASE_URL": url, "CHAT_API_KEYS": f"bench:{key}",
           "CHAT_RATE_LIMIT_PER_S": "1000000", "CHAT_RATE_LIMIT_BURST": "1000000",
           "CHAT_WS_MAX_CONNECTIONS_PER_TENANT": str(args.connections * 2),
           # every client is on loopback: no per-address cap, room for them all
           "CHAT_MAX_CONNECTIONS_PER_IP": "0",
           "CHAT_MAX_CONNECTIONS": str(args.connections + 1000),
           "CHAT_LOG_LEVEL": "WARNING"}
    env.pop("REDIS_URL", None)
    logdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    print(f"load average at start {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    try:
        fport, sport = harness.free_port(), harness.free_port()
        flog, slog = logdir / "floor.log", logdir / "service.log"
        with harness.process([sys.executable, __file__, "--floor-server", str(fport)], env,
                             flog) as floor, \
             harness.process(harness.service_cmd(args.serve_cmd, sport), env, slog) as service:
            fbase, sbase = f"http://127.0.0.1:{fport}", f"http://127.0.0.1:{sport}"
            await harness.wait_ready(fbase + "/", floor, flog, any_answer=True)
            await harness.wait_ready(sbase + "/healthz", service, slog)
            cold = args.connections - args.hot
            sessions = await harness.make_sessions(sbase, key, 1 + max(1, cold // 10))
            hot, others = sessions[0], sessions[1:]
            plan = [hot] * args.hot + [others[i % len(others)] for i in range(cold)]
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                floor_kib, floor_ws = await measure_idle(http, fbase, key, floor.pid, plan)
                for client in floor_ws:
                    await client.close()
                service_kib, service_ws = await measure_idle(http, sbase, key, service.pid,
                                                             plan)
                print(f"idle: {args.connections} subscribed WebSockets; server memory per "
                      f"connection: service {service_kib:.1f} KiB, raw aiohttp "
                      f"{floor_kib:.1f} KiB ({service_kib / floor_kib:.2f}x)")
                server_cpu, client_cpu = cpu_seconds(service.pid) or 0.0, time.process_time()
                latencies, delivered = await stream(http, sbase, key, hot,
                                                    service_ws[:args.hot], args.tokens,
                                                    args.rate)
                # CPU per delivery: what the fan-out costs, whatever the machine's load
                server_us = ((cpu_seconds(service.pid) or 0.0) - server_cpu) * 1e6 / max(
                    1, len(latencies))
                client_us = (time.process_time() - client_cpu) * 1e6 / max(1, len(latencies))
                for client in service_ws:
                    await client.close()
    finally:
        await harness.drop_database(name)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(f"stream: {args.tokens} deltas at {args.rate:g}/s to {args.hot} subscribers: "
          f"{len(latencies)} delivered ({delivered:,.0f}/s), p50 {p50:.1f} ms, "
          f"p99 {p99:.1f} ms, mean {statistics.fmean(latencies):.1f} ms; CPU per delivery: "
          f"server {server_us:.1f} µs, client {client_us:.1f} µs")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    ok_mem = service_kib <= GOAL_KIB_PER_CONNECTION
    ok_p99 = p99 < GOAL_P99_MS and len(latencies) == args.tokens * args.hot
    print(f"goal 3 memory: ≤ {GOAL_KIB_PER_CONNECTION:g} KiB per idle subscribed WebSocket "
          f"at {args.connections}: {service_kib:.1f} KiB … {'met' if ok_mem else 'MISSED'}")
    print(f"goal 3 stream: p99 < {GOAL_P99_MS:g} ms to {args.hot} subscribers at "
          f"{args.rate:g} tokens/s, every delta delivered: {p99:.1f} ms … "
          f"{'met' if ok_p99 else 'MISSED'}")
    print(f"server logs: {logdir}")


if __name__ == "__main__":
    if "--floor-server" in sys.argv:
        port = int(sys.argv[sys.argv.index("--floor-server") + 1])
        web.run_app(idle_app(), host="127.0.0.1", port=port, print=None,
                    loop=harness.new_loop())
    else:
        harness.run(main())
