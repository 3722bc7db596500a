"""Benchmark of the read path (a benchmark, not a test: it prints figures).

Loads a scratch database by ``COPY`` (``loadtest/readdata.py``: ``--sessions`` x
``--per-session`` messages, one ``--deep``-message session, one user with
``--user-sessions`` sessions), starts the service and an aiohttp no-op GET (the
ceiling) as separate processes, and measures with ``--concurrency`` clients:

- ``noop``          the ceiling: an aiohttp GET that reads nothing (same URL shape)
- ``noop-page``     the same GET answering as many bytes as a real latest page (a floor:
                    what aiohttp and the loopback socket cost to send the page at all)
- ``latest``        newest 50 messages (``order=desc``) of a random ordinary session
- ``first``         newest 50 messages of the deep session
- ``deep``          page ~1,000 of the deep session, by cursor (``order=desc``)
- ``asc``           50 messages by cursor at a random place of the deep session, ``asc``
- ``sessions``      first page of the sessions of the user who has ``--user-sessions``
- ``sessions-deep`` a page ~150 pages down the same list, by cursor
- ``search``        full-text search, newest 50 hits of a word in 1% of messages
- ``langchain``     ``PostgresChatMessageHistory.get_messages`` of a random ordinary
                    session (``--per-session`` messages) from ``--lc-threads`` threads

Each mode runs ``--runs`` times (interleaved); goals use ratios of the same run, median
of the runs. CPU per operation: server (the service or the ceiling process), client
(this process; for langchain LangChain + psycopg) and Postgres (every local
``postgres`` process, so other work on the machine shows up there).

    .venv/bin/python loadtest/bench_reads.py              # a few minutes
    .venv/bin/python loadtest/bench_reads.py --full       # 1M messages over 10k sessions
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chat_storage.server import pagination
from chat_storage.storage import apikeys, db, tenants
from loadtest import bench_clients as clients
from loadtest import harness, readdata, readlangchain
from loadtest.bench_clients import Result

MODES = ("noop", "noop-page", "latest", "first", "deep", "asc", "sessions", "sessions-deep",
         "search", "langchain")
PAGE = 50


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark of history reads.")
    p.add_argument("--sessions", type=int, default=2000, help="ordinary sessions")
    p.add_argument("--per-session", type=int, default=100, help="messages per session")
    p.add_argument("--deep", type=int, default=100_000, help="messages of the deep session")
    p.add_argument("--user-sessions", type=int, default=10_000,
                   help="sessions of the one busy user")
    p.add_argument("--full", action="store_true",
                   help="the issue's sizes: 10,000 sessions x 100 messages (1M)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per mode and run")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds before each mode")
    p.add_argument("--runs", type=int, default=3, help="runs of every mode (median)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent HTTP clients")
    p.add_argument("--lc-threads", type=int, default=8, help="LangChain reader threads")
    p.add_argument("--pool", type=int, default=20, help="the service's CHAT_DB_POOL_MAX")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    p.add_argument("--serve-cmd", default=None,
                   help="command that serves the app ({port} is replaced)")
    p.add_argument("--baseline-cmd", default=None,
                   help="a second service to compare with in the same runs ({port} is "
                        "replaced), e.g. another checkout's chat-storage serve")
    p.add_argument("--keep-db", action="store_true", help="do not drop the database")
    args = p.parse_args()
    if args.full:
        args.sessions, args.per_session = 10_000, 100
    return args


async def prepare(args: argparse.Namespace) -> tuple[str, str, str, readdata.Loaded]:
    """A scratch database with the rows loaded; returns (name, url, api key, loaded)."""
    name = f"chat_bench_reads_{os.getpid()}_{secrets.token_hex(3)}"
    url = await harness.create_database(name)
    pool = await db.create_pool(url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as service_conn:
            await tenants.create_tenant(service_conn, "bench")
            key = (await apikeys.create_key(service_conn, "bench", name="bench")).key
    finally:
        await pool.close()
    conn = await asyncpg.connect(url)  # without the service's JSON codecs: COPY takes text
    try:
        tenant_id = await conn.fetchval("SELECT id FROM tenants WHERE name = 'bench'")
        loop = asyncio.get_running_loop()
        began = loop.time()
        loaded = await readdata.load(
            conn, tenant_id, sessions=args.sessions, per_session=args.per_session,
            deep=args.deep, user_sessions=args.user_sessions,
            langchain="langchain" in args.modes)
        print(f"loaded {loaded.messages:,} messages ({args.sessions:,} sessions x "
              f"{args.per_session}, one of {args.deep:,}), {args.user_sessions:,} sessions "
              f"of one user, in {loop.time() - began:.0f} s", flush=True)
        args.busy_keys = [tuple(r) for r in await conn.fetch(
            "SELECT activity_at, id FROM sessions WHERE user_id = $1 "
            "ORDER BY activity_at DESC, id DESC", readdata.BUSY_USER)]
    finally:
        await conn.close()
    return name, url, key, loaded


def paths(loaded: readdata.Loaded, args: argparse.Namespace) -> dict[str, list[str]]:
    """For each HTTP mode, the request paths its clients pick from at random."""
    tenant, deep = loaded.tenant_id, loaded.deep_session

    def history(session: uuid.UUID, order: str, seq: int | None = None) -> str:
        path = f"/api/v1/sessions/{session}/messages?order={order}&limit={PAGE}"
        if seq is None:
            return path
        scope = pagination.scope_of("messages", tenant, session, order, None, None, None)
        return f"{path}&cursor={pagination.encode(scope, [seq])}"

    deepest = min(1000, args.deep // PAGE)  # page 1,000 of a 100k session
    sessions_scope = pagination.scope_of("GET /api/v1/sessions", tenant,
                                         readdata.BUSY_USER, None, None)
    listing = f"/api/v1/sessions?user_id={readdata.BUSY_USER}&limit={PAGE}"
    far = args.busy_keys[min(len(args.busy_keys) // 2, 150 * PAGE)::PAGE][:20]
    return {
        "noop": [f"/api/v1/sessions/{s}/messages?order=desc&limit={PAGE}"
                 for s in loaded.sessions],
        "noop-page": [f"/api/v1/sessions/{s}/messages?order=desc&limit={PAGE}"
                      f"&pad={args.page_bytes}" for s in loaded.sessions],
        "latest": [history(s, "desc") for s in loaded.sessions],
        "first": [history(deep, "desc")],
        "deep": [history(deep, "desc", args.deep - PAGE * (page - 1) + 1)
                 for page in range(max(1, deepest - 20), deepest + 1)],
        "asc": [history(deep, "asc", random.randrange(args.deep - PAGE)) for _ in range(500)],
        "sessions": [listing],
        "sessions-deep": [f"{listing}&cursor={pagination.encode(sessions_scope, [k[0], str(k[1])])}"
                          for k in far],
        "search": [f"/api/v1/search?q={readdata.SEARCH_WORD}&limit={PAGE}"],
    }


async def page_bytes(base: str, key: str, loaded: readdata.Loaded) -> int:
    """The size of a latest page of an ordinary session (``noop-page`` answers as much)."""
    async with aiohttp.ClientSession(headers={"X-Api-Key": key}) as http, http.get(
            f"{base}/api/v1/sessions/{loaded.sessions[0]}/messages?order=desc&limit={PAGE}"
    ) as r:
        r.raise_for_status()
        return len(await r.read())


async def run_http(mode: str, base: str, key: str, choices: list[str],
                   args: argparse.Namespace) -> Result:
    """``--concurrency`` clients GET a random path of ``choices`` back to back."""
    async with aiohttp.ClientSession(
        headers={"X-Api-Key": key},
        connector=aiohttp.TCPConnector(limit=args.concurrency * 2),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as http:
        async def one(worker: int) -> tuple[int, str | None]:
            async with http.get(base + random.choice(choices)) as r:
                body = orjson.loads(await r.read())
                if r.status != 200:
                    return 0, str(r.status)
                return len(body["data"]), None

        return await clients.drive(mode, args, args.concurrency, one)


def report(runs: list[dict[str, Result]], args: argparse.Namespace) -> None:
    """Every run's table, then the goals as medians of same-run ratios."""
    for n, by in enumerate(runs, 1):
        print(f"\nrun {n}: {args.concurrency} HTTP clients, LangChain {args.lc_threads} "
              f"threads, {args.duration:g} s per mode")
        print(f"{'mode':<14} {'ops/s':>8} {'items/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'err':>4}"
              f" {'server µs/op':>12} {'client':>7} {'postgres':>8}")
        for r in by.values():
            per_op = [_per_op(r, w) for w in ("server", "client", "db")]
            print(f"{r.name:<14} {r.requests_per_s:>8.0f} {r.messages_per_s:>9.0f} "
                  f"{r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.error_summary:>4} "
                  f"{per_op[0]:>12.0f} {per_op[1]:>7.0f} {per_op[2]:>8.0f}")

    def median(f: object) -> tuple[float, str]:
        values = [f(by) for by in runs]  # type: ignore[operator]
        return statistics.median(values), " / ".join(f"{v:.2f}" for v in values)

    def goal(text: str, modes: tuple[str, ...], f: object, ok: object) -> None:
        if all(m in by for by in runs for m in modes):
            value, each = median(f)
            print(f"goal {text}: {value:.2f} (runs {each})  "
                  f"{'met' if ok(value) else 'MISSED'}")  # type: ignore[operator]

    sizes = (f"{args.sessions * args.per_session + args.deep:,} messages, "
             f"{args.sessions:,} + 1 sessions; deep session {args.deep:,}")
    print(f"\nmedian of {len(runs)} runs ({sizes}); load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cpu = _per_op
    goal("2 history page server CPU <= 2x no-op GET (latest/noop)", ("latest", "noop"),
         lambda b: cpu(b["latest"], "server") / cpu(b["noop"], "server"), lambda v: v <= 2)
    goal("2 messages/s >= 3x LangChain get_messages at 8 clients (latest/langchain)",
         ("latest", "langchain"),
         lambda b: b["latest"].messages_per_s / b["langchain"].messages_per_s,
         lambda v: v >= 3)
    for mode in ("latest", "deep", "asc"):
        goal(f"2 p99 < 20 ms ({mode}, ms)", (mode,), lambda b, m=mode: b[m].p99_ms,
             lambda v: v < 20)
    goal("2 flat: page 1,000 vs first page of the deep session, server CPU <= 1.25x",
         ("deep", "first"), lambda b: cpu(b["deep"], "server") / cpu(b["first"], "server"),
         lambda v: v <= 1.25)
    goal("2 flat: sessions page ~150 vs first page of a 10k-session user, server CPU "
         "<= 1.25x", ("sessions-deep", "sessions"),
         lambda b: cpu(b["sessions-deep"], "server") / cpu(b["sessions"], "server"),
         lambda v: v <= 1.25)
    for mode in ("latest", "first", "deep", "asc", "sessions", "sessions-deep", "search"):
        if all(mode in by and "base:" + mode in by for by in runs):
            value, each = median(lambda b, m=mode: cpu(b[m], "server") / cpu(b["base:" + m],
                                                                           "server"))
            print(f"A/B {mode} server CPU vs --baseline-cmd: {value:.2f}x (runs {each})")
            value, each = median(lambda b, m=mode: cpu(b[m], "db") / cpu(b["base:" + m], "db"))
            print(f"A/B {mode} Postgres CPU vs --baseline-cmd: {value:.2f}x (runs {each})")
    goal("2 floor: a no-op GET answering a page's bytes, server CPU / no-op GET "
         "(the goal's 2x is reachable only if this is well below 2)", ("noop-page", "noop"),
         lambda b: cpu(b["noop-page"], "server") / cpu(b["noop"], "server"), lambda v: v < 2)
    goal("2 history page server CPU <= 2x a no-op GET answering as many bytes "
         "(latest/noop-page)", ("latest", "noop-page"),
         lambda b: cpu(b["latest"], "server") / cpu(b["noop-page"], "server"),
         lambda v: v <= 2)
    for mode in ("first", "deep", "asc", "sessions", "sessions-deep", "search"):
        if all(mode in by and "noop" in by for by in runs):
            value, each = median(lambda b, m=mode: cpu(b[m], "server") / cpu(b["noop"], "server"))
            print(f"info {mode} server CPU / no-op GET: {value:.2f}x (runs {each})")


def _per_op(r: Result, which: str) -> float:
    """CPU µs per operation (page, list, search, get_messages) of server, client or db."""
    seconds = getattr(r, f"{which}_cpu_s")
    return float("nan") if seconds is None or not r.requests else seconds * 1e6 / r.requests


async def main() -> None:
    args = parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(MODES):
        raise SystemExit(f"unknown modes: {', '.join(sorted(set(modes) - set(MODES)))}")
    print(f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} CPUs", flush=True)
    name, url, key, loaded = await prepare(args)
    logdir = Path(tempfile.mkdtemp(prefix="bench_reads_"))
    env = {**os.environ, "DATABASE_URL": url, "CHAT_LOG_LEVEL": "WARNING",
           "CHAT_RATE_LIMIT_PER_S": "1000000000", "CHAT_RATE_LIMIT_BURST": "1000000000",
           "CHAT_DB_POOL_MAX": str(args.pool), "PYTHONPATH": str(harness.ROOT)}
    runs: list[dict[str, Result]] = []
    try:
        with contextlib.ExitStack() as stack:
            ceiling_port, port = harness.free_port(), harness.free_port()
            ceiling = stack.enter_context(harness.process(
                [sys.executable, str(harness.ROOT / "loadtest" / "ceiling_server.py"),
                 "--port", str(ceiling_port)], env, logdir / "ceiling.log"))
            servers = {"noop": (ceiling, f"http://127.0.0.1:{ceiling_port}")}
            await harness.wait_ready(f"{servers['noop'][1]}/healthz", ceiling,
                                     logdir / "ceiling.log")
            commands = {"": harness.service_cmd(args.serve_cmd, port)}
            if args.baseline_cmd:
                commands["base:"] = harness.service_cmd(args.baseline_cmd, harness.free_port())
            for label, cmd in commands.items():
                log = logdir / f"{label.strip(':') or 'service'}.log"
                proc = stack.enter_context(harness.process(cmd, env, log))
                server_port = cmd[cmd.index("--port") + 1] if "--port" in cmd else port
                servers[label] = (proc, f"http://127.0.0.1:{server_port}")
                await harness.wait_ready(f"{servers[label][1]}/readyz", proc, log)
            args.page_bytes = await page_bytes(servers[""][1], key, loaded)
            choices = paths(loaded, args)
            for n in range(args.runs):
                print(f"run {n + 1} of {args.runs}", flush=True)
                by: dict[str, Result] = {}
                for mode in modes:
                    if mode == "langchain":
                        result = await asyncio.to_thread(readlangchain.run, url, loaded, args)
                        if result is not None:
                            by[mode] = result
                        continue
                    labels = ["noop"] if mode.startswith("noop") else list(commands)
                    for label in labels[::-1] if n % 2 else labels:  # alternate who goes first
                        proc, server_base = servers[label]
                        args.server_pid = proc.pid
                        name_ = mode if label == "noop" else label + mode
                        by[name_] = await run_http(name_, server_base, key, choices[mode], args)
                runs.append(by)
    finally:
        if not args.keep_db:
            await harness.drop_database(name)
    report(runs, args)
    print(f"\nserver logs: {logdir}")


if __name__ == "__main__":
    harness.run(main())
