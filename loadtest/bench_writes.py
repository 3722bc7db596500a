"""Benchmark of the durable write path (a benchmark, not a test: it prints figures).

Creates a fresh database on the local Postgres, starts the service on it (and, for
comparison, a trivial aiohttp server that stores nothing) as separate processes,
drives message writes with many concurrent aiohttp clients and prints messages/s and
p50/p99 latency for:

- ``ceiling``      an aiohttp JSON POST handler that stores nothing (one process's limit)
- ``http-quiet``   single-message POST, spread over many quiet sessions
- ``http-hot``     single-message POST, every client writing to one session
- ``http-paced``   ``--concurrency`` writers sending ``--paced-rate`` messages/s in all on
                   a schedule: the latency a chat UI sees at a given load (p99 goal)
- ``batch``        the batch endpoint (``--batch-size`` messages per request)
- ``ws``           WebSocket ``message.create`` → ``ack``, one in flight per socket
- ``ws-pipe``      WebSocket ``message.create`` with ``--ws-window`` in flight per socket
                   (acks carry the ref, so a producer need not wait a round trip each)
- ``langchain``    langchain-postgres ``PostgresChatMessageHistory.add_messages`` from
                   ``--lc-threads`` threads (pip install -e '.[bench]')

Every 201/ack is a committed message (fsync on). Run it on a quiet machine:

    .venv/bin/python loadtest/bench_writes.py --duration 10 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtest import bench_clients as clients  # noqa: E402
from loadtest.bench_clients import Result  # noqa: E402
from storage import db, migrations, tenants  # noqa: E402

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MODES = ("ceiling", "http-quiet", "http-hot", "http-paced", "batch", "ws", "ws-pipe",
         "langchain")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark of durable message writes.")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per mode")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before each mode")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent clients")
    p.add_argument("--sessions", type=int, default=2000, help="quiet sessions")
    p.add_argument("--batch-size", type=int, default=20, help="messages per batch request")
    p.add_argument("--paced-rate", type=float, default=500.0,
                   help="messages/s offered in all by the http-paced writers")
    p.add_argument("--ws-window", type=int, default=32,
                   help="ws-pipe: message.create frames in flight per socket")
    p.add_argument("--lc-threads", type=int, default=16, help="LangChain writer threads")
    p.add_argument("--pool", type=int, default=20, help="the service's CHAT_DB_POOL_MAX")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    p.add_argument("--serve-cmd", default=None,
                   help="command that serves the app ({port} is replaced); default: "
                        "chat-storage serve")
    p.add_argument("--keep-db", action="store_true", help="do not drop the database")
    return p.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def db_url(name: str) -> str:
    return f"{ADMIN_URL.rpartition('/')[0]}/{name}"


async def create_database() -> tuple[str, str, str]:
    """A fresh migrated database with one tenant; returns (name, url, api key)."""
    name = f"chat_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    pool = await db.create_pool(db_url(name), min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await migrations.migrate(conn, ROOT / "sql")
            await tenants.create_tenant(conn, "bench")
            key = (await tenants.create_key(conn, "bench", name="bench")).key
    finally:
        await pool.close()
    return name, db_url(name), key


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` for the duration of the block; its output goes to ``log``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{url}: server exited:\n{tail(log)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url}: not ready after 60 s:\n{tail(log)}")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def service_cmd(args: argparse.Namespace, port: int) -> list[str]:
    if args.serve_cmd:
        return [part.replace("{port}", str(port)) for part in args.serve_cmd.split()]
    return [str(Path(sys.executable).parent / "chat-storage"), "serve", "--port", str(port)]


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    print()
    print(f"concurrency {args.concurrency}, {args.duration:g} s per mode, "
          f"{args.sessions} quiet sessions, batch {args.batch_size}, "
          f"LangChain {args.lc_threads} threads, {os.cpu_count()} CPUs")
    print(f"{'mode':<12} {'msgs/s':>10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>8} {'server CPU ms/req':>18}")
    for r in results:
        print(f"{r.name:<12} {r.messages_per_s:>10.0f} {r.requests_per_s:>10.0f} "
              f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.error_summary:>8} "
              f"{r.cpu_ms_per_request:>18.3f}")
    by = {r.name: r for r in results}
    print()
    if "ceiling" in by and "http-quiet" in by:
        ratio = by["http-quiet"].messages_per_s / by["ceiling"].requests_per_s
        print(f"HTTP ingest vs ceiling:  {ratio:6.1%}   (goal >= 60%)  "
              f"{'met' if ratio >= 0.6 else 'MISSED'}")
    for ws_mode in ("ws", "ws-pipe"):
        if ws_mode in by and "langchain" in by and by["langchain"].messages_per_s:
            ratio = by[ws_mode].messages_per_s / by["langchain"].messages_per_s
            print(f"{ws_mode} vs LangChain history: {ratio:6.1f}x   (goal >= 10x)  "
                  f"{'met' if ratio >= 10 else 'MISSED'}")
    for name in ("http-quiet", "http-paced"):
        if name in by:
            p99 = by[name].p99_ms
            print(f"p99 {name:<10} {args.concurrency} writers: {p99:6.1f} ms (goal < 25 ms)  "
                  f"{'met' if p99 < 25 else 'MISSED'}")


async def main() -> None:
    args = parse_args()
    args.server_pid = None
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes: {', '.join(sorted(unknown))}")
    name, url, key = await create_database()
    logdir = Path(tempfile.mkdtemp(prefix="bench_writes_"))
    results: list[Result] = []
    try:
        env = {**os.environ, "DATABASE_URL": url, "CHAT_LOG_LEVEL": "WARNING",
               "CHAT_RATE_LIMIT_PER_S": "1000000000", "CHAT_RATE_LIMIT_BURST": "1000000000",
               "CHAT_DB_POOL_MAX": str(args.pool), "PYTHONPATH": str(ROOT)}
        if "ceiling" in modes:
            port = free_port()
            cmd = [sys.executable, str(ROOT / "loadtest" / "ceiling_server.py"), "--port",
                   str(port)]
            with process(cmd, env, logdir / "ceiling.log") as proc:
                base = f"http://127.0.0.1:{port}"
                await wait_ready(f"{base}/healthz", proc, logdir / "ceiling.log")
                args.server_pid = proc.pid
                results.append(await clients.run_http(
                    "ceiling", base, key, [secrets.token_hex(8)], args, batch=0))
        service_modes = [m for m in modes if m not in ("ceiling", "langchain")]
        if service_modes:
            port = free_port()
            with process(service_cmd(args, port), env, logdir / "service.log") as proc:
                base = f"http://127.0.0.1:{port}"
                await wait_ready(f"{base}/readyz", proc, logdir / "service.log")
                print(f"service pid {proc.pid} on {base}", flush=True)
                args.server_pid = proc.pid
                quiet = await clients.create_sessions(base, key, args.sessions)
                hot = await clients.create_sessions(base, key, 1)
                for mode in service_modes:
                    result = await clients.run_service_mode(mode, base, key, quiet, hot, args)
                    if result is not None:
                        results.append(result)
        if "langchain" in modes:
            result = await asyncio.to_thread(clients.run_langchain, url, args)
            if result is not None:
                results.append(result)
    finally:
        if not args.keep_db:
            await drop_database(name)
    print_table(results, args)
    print(f"\nserver logs: {logdir}")


if __name__ == "__main__":
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
