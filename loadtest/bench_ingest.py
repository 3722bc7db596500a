"""Benchmark of async ingestion (``CHAT_INGEST_MODE=async``, issue 12 goal 4).

Starts the aiohttp no-op POST (the ceiling) and the service in async ingest mode (a
fresh database; the shared Redis under a key prefix of this run, deleted at the end)
as separate processes, and measures, ``--runs`` times:

- ``noop``     the ceiling's POST: server CPU per request
- ``accept``   single-message POSTs answered 202 by ``--concurrency`` clients: server CPU
               per accepted message. The consumer runs in the same process and persists
               meanwhile, so its share (``consume``'s CPU per message times the messages
               it stored in the window) is taken out; both figures are printed.
- ``consume``  ``--consume`` entries appended straight to the ingest stream by this
               process (as the accepting server writes them, without HTTP): the server's
               persisted messages/s until the stream is empty, and its CPU per message
- ``copy``     Postgres' own rate: the same number of message rows by binary ``COPY``
               into ``messages``, ``--copy-batch`` rows per transaction (the consumer's
               batch), one connection

Goals (median of the runs' same-run ratios): accept CPU <= 1.5x the no-op's, consumer
persisted messages/s >= 0.5x COPY's.

    .venv/bin/python loadtest/bench_ingest.py            # about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chat_storage.storage.ids import new_id
from chat_storage.storage.ingest import Entry, IngestStream
from chat_storage.storage.messages import NewMessage
from loadtest import bench_clients as clients
from loadtest import harness
from loadtest.bench_writes import create_database

POLL_S = 0.02
APPENDS_IN_FLIGHT = 64


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark of async ingestion.")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of accept and noop")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before each")
    p.add_argument("--runs", type=int, default=3, help="runs (goals: median of ratios)")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent HTTP clients")
    p.add_argument("--sessions", type=int, default=200, help="sessions written to")
    p.add_argument("--consume", type=int, default=20_000,
                   help="entries appended for the consume phase")
    p.add_argument("--ingest-batch", type=int, default=None,
                   help="the service's CHAT_INGEST_BATCH (default: the service's default)")
    p.add_argument("--copy-batch", type=int, default=None,
                   help="rows per COPY transaction (default: --ingest-batch, else 100, the "
                        "service's default batch)")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="seconds to wait for the stream to empty")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--pool", type=int, default=20, help="the service's CHAT_DB_POOL_MAX")
    p.add_argument("--serve-cmd", default=None,
                   help="command that serves the app ({port} is replaced)")
    args = p.parse_args()
    if args.copy_batch is None:
        args.copy_batch = args.ingest_batch or 100
    return args


@dataclasses.dataclass
class Run:
    """One run's figures."""

    noop_us: float = float("nan")  # ceiling server CPU per request
    accept_us: float = float("nan")  # service CPU per 202, consumer's share included
    accept_net_us: float = float("nan")  # the same without the consumer's share
    accepted_per_s: float = 0.0
    accept_p99_ms: float = float("nan")
    consume_us: float = float("nan")  # service CPU per persisted message
    consume_db_us: float = float("nan")  # Postgres CPU per persisted message
    consumed_per_s: float = 0.0
    copy_per_s: float = 0.0
    copy_db_us: float = float("nan")  # Postgres CPU per COPY row
    errors: int = 0


class Rig:
    """The database, the stream and the two servers of one benchmark."""

    def __init__(self, args: argparse.Namespace, url: str, key: str, prefix: str) -> None:
        self.args, self.url, self.key = args, url, key
        self.redis = Redis.from_url(args.redis_url, max_connections=APPENDS_IN_FLIGHT + 4)
        self.stream = IngestStream(self.redis, prefix=prefix, max_backlog=10**9)
        self.conn: asyncpg.Connection | None = None
        self.tenant_id = uuid.UUID(int=0)

    async def persisted(self) -> int:
        assert self.conn is not None
        return int(await self.conn.fetchval(
            "SELECT count(*) FROM messages WHERE tenant_id = $1", self.tenant_id))

    async def backlog(self) -> int:
        return int(await self.redis.xlen(self.stream.keys.ingest_stream))

    async def drained(self) -> None:
        """Wait until every accepted entry is stored (the stream is empty), bounded."""
        deadline = time.perf_counter() + self.args.drain_timeout
        while await self.backlog():
            if time.perf_counter() > deadline:
                raise SystemExit(f"ingest stream not drained in {self.args.drain_timeout} s")
            await asyncio.sleep(POLL_S)

    @contextlib.asynccontextmanager
    async def count_window(self, into: list[int]) -> AsyncIterator[None]:
        """Append the messages persisted while the block runs to ``into``."""
        before = await self.persisted()
        yield
        into.append(await self.persisted() - before)


async def consume(rig: Rig, sessions: list[str], server_pid: int
                  ) -> tuple[float, float, float]:
    """Append ``--consume`` one-message entries; (persisted/s, server and Postgres CPU µs
    per message)."""
    n = rig.args.consume
    entries = [Entry(rig.tenant_id, uuid.UUID(sessions[i % len(sessions)]),
                     [NewMessage(id=new_id(), role="user", content=clients.CONTENT + str(i))])
               for i in range(n)]
    before = await rig.persisted()
    db0 = clients.postgres_cpu()
    cpu0, began = clients.cpu_seconds(server_pid), time.perf_counter()
    for start in range(0, n, APPENDS_IN_FLIGHT):  # Redis is not the bottleneck
        await asyncio.gather(*(rig.stream.append(e)
                               for e in entries[start:start + APPENDS_IN_FLIGHT]))
    await rig.drained()
    seconds, cpu1 = time.perf_counter() - began, clients.cpu_seconds(server_pid)
    db_s = clients.postgres_delta(db0, clients.postgres_cpu())
    stored = await rig.persisted() - before
    if stored != n:
        print(f"  consume: {stored} of {n} entries stored (dead-lettered?)", flush=True)
    cpu = (cpu1 or 0.0) - (cpu0 or 0.0)
    db_us = float("nan") if db_s is None else db_s * 1e6 / max(stored, 1)
    print(f"  consume      {stored / seconds:9.0f} msgs/s persisted in {seconds:.2f} s, "
          f"server CPU {cpu * 1e6 / max(stored, 1):.0f} µs/msg, Postgres {db_us:.0f}",
          flush=True)
    return stored / seconds, cpu * 1e6 / max(stored, 1), db_us


async def copy_rate(rig: Rig, session: str) -> tuple[float, float]:
    """Rows/s of binary COPY into ``messages`` in ``--copy-batch`` row transactions, and
    Postgres CPU µs per row."""
    assert rig.conn is not None
    n, batch, sid = rig.args.consume, rig.args.copy_batch, uuid.UUID(session)
    at = dt.datetime.now(dt.UTC)
    rows = [(new_id(), rig.tenant_id, sid, i + 1, "user", clients.CONTENT + str(i), at)
            for i in range(n)]
    db0, began = clients.postgres_cpu(), time.perf_counter()
    for start in range(0, n, batch):
        async with rig.conn.transaction():
            await rig.conn.copy_records_to_table(
                "messages", records=rows[start:start + batch],
                columns=("id", "tenant_id", "session_id", "seq", "role", "content",
                         "created_at"))
    seconds = time.perf_counter() - began
    db_s = clients.postgres_delta(db0, clients.postgres_cpu())
    db_us = float("nan") if db_s is None else db_s * 1e6 / n
    print(f"  copy         {n / seconds:9.0f} rows/s ({batch} per transaction), Postgres "
          f"CPU {db_us:.0f} µs/row", flush=True)
    return n / seconds, db_us


async def one_run(rig: Rig, ceiling: tuple[int, str], service: tuple[int, str],
                  sessions: list[str], copy_session: str) -> Run:
    args, run = rig.args, Run()
    args.server_pid = ceiling[0]
    noop = await clients.run_http("noop", ceiling[1], rig.key, [secrets.token_hex(8)], args,
                                  batch=0)
    run.noop_us = noop.cpu_ms_per_request * 1000
    await rig.drained()
    run.consumed_per_s, run.consume_us, run.consume_db_us = await consume(rig, sessions,
                                                                          service[0])
    stored_in_window: list[int] = []
    args.server_pid = service[0]
    accept = await clients.run_http("accept", service[1], rig.key, sessions, args, batch=0,
                                    ok=202, window=lambda: rig.count_window(stored_in_window))
    run.errors += sum(accept.errors.values()) + sum(noop.errors.values())
    run.accepted_per_s, run.accept_p99_ms = accept.messages_per_s, accept.p99_ms
    if accept.messages and accept.server_cpu_s is not None:
        run.accept_us = accept.server_cpu_s * 1e6 / accept.messages
        consumer_s = run.consume_us * stored_in_window[0] / 1e6
        run.accept_net_us = (accept.server_cpu_s - consumer_s) * 1e6 / accept.messages
        print(f"  accept: {stored_in_window[0]} messages persisted in the window; without "
              f"that share {run.accept_net_us:.0f} µs per 202", flush=True)
    await rig.drained()
    run.copy_per_s, run.copy_db_us = await copy_rate(rig, copy_session)
    return run


def report(runs: list[Run], args: argparse.Namespace) -> None:
    print(f"\n{args.concurrency} HTTP clients, {args.duration:g} s per mode, consume and "
          f"copy {args.consume:,} messages (ingest batch {args.ingest_batch or 'default'}, "
          f"COPY {args.copy_batch} rows per transaction); {os.cpu_count()} CPUs")
    print(f"{'run':<4} {'noop µs':>8} {'accept µs':>10} {'net µs':>7} {'202/s':>7} "
          f"{'p99 ms':>7} {'consume µs':>10} {'pg µs':>6} {'persisted/s':>11} "
          f"{'COPY rows/s':>11} {'pg µs':>6} {'errors':>6}")
    for n, r in enumerate(runs, 1):
        print(f"{n:<4} {r.noop_us:>8.0f} {r.accept_us:>10.0f} {r.accept_net_us:>7.0f} "
              f"{r.accepted_per_s:>7.0f} {r.accept_p99_ms:>7.2f} {r.consume_us:>10.0f} "
              f"{r.consume_db_us:>6.0f} {r.consumed_per_s:>11.0f} {r.copy_per_s:>11.0f} "
              f"{r.copy_db_us:>6.0f} {r.errors:>6}")

    def goal(text: str, f: Callable[[Run], float], ok: Callable[[float], bool]) -> None:
        values = [f(r) for r in runs]
        value = statistics.median(values)
        each = " / ".join(f"{v:.2f}" for v in values)
        print(f"goal {text}: {value:.2f} (runs {each})  {'met' if ok(value) else 'MISSED'}")

    print(f"\nmedian of {len(runs)} runs; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    goal("4 async accept server CPU per message <= 1.5x no-op POST (consumer's share "
         "taken out)", lambda r: r.accept_net_us / r.noop_us, lambda v: v <= 1.5)
    print("info accept server CPU per message with the consumer's share / no-op POST: "
          f"{statistics.median(r.accept_us / r.noop_us for r in runs):.2f}x")
    goal("4 consumer persisted msgs/s >= 0.5x Postgres' batched COPY", lambda r:
         r.consumed_per_s / r.copy_per_s, lambda v: v >= 0.5)


async def main() -> None:
    args = parse_args()
    print(f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} CPUs", flush=True)
    name, url, key = await create_database()
    prefix = f"bench-ingest-{secrets.token_hex(4)}"
    rig = Rig(args, url, key, prefix)
    logdir = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": args.redis_url,
           "CHAT_REDIS_PREFIX": prefix, "CHAT_INGEST_MODE": "async",
           "CHAT_INGEST_MAX_BACKLOG": str(10**9), "CHAT_LOG_LEVEL": "WARNING",
           "CHAT_RATE_LIMIT_PER_S": "1000000000", "CHAT_RATE_LIMIT_BURST": "1000000000",
           "CHAT_DB_POOL_MAX": str(args.pool), "PYTHONPATH": str(harness.ROOT)}
    if args.ingest_batch is not None:
        env["CHAT_INGEST_BATCH"] = str(args.ingest_batch)
    runs: list[Run] = []
    try:
        rig.conn = await asyncpg.connect(url)
        rig.tenant_id = await rig.conn.fetchval("SELECT id FROM tenants WHERE name = 'bench'")
        with contextlib.ExitStack() as stack:
            cport, port = harness.free_port(), harness.free_port()
            ceiling = stack.enter_context(harness.process(
                [sys.executable, str(harness.ROOT / "loadtest" / "ceiling_server.py"),
                 "--port", str(cport)], env, logdir / "ceiling.log"))
            service = stack.enter_context(harness.process(
                harness.service_cmd(args.serve_cmd, port), env, logdir / "service.log"))
            cbase, base = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{port}"
            await harness.wait_ready(f"{cbase}/healthz", ceiling, logdir / "ceiling.log")
            await harness.wait_ready(f"{base}/readyz", service, logdir / "service.log")
            sessions = await clients.create_sessions(base, key, args.sessions)
            for n in range(args.runs):
                print(f"run {n + 1} of {args.runs}", flush=True)
                copy_session = (await clients.create_sessions(base, key, 1))[0]
                runs.append(await one_run(rig, (ceiling.pid, cbase), (service.pid, base),
                                          sessions, copy_session))
    finally:
        if rig.conn is not None:
            await rig.conn.close()
        async for k in rig.redis.scan_iter(match=f"{prefix}:*"):
            await rig.redis.delete(k)
        await rig.redis.aclose()
        await harness.drop_database(name)
    report(runs, args)
    print(f"\nserver logs: {logdir}")


if __name__ == "__main__":
    harness.run(main())
