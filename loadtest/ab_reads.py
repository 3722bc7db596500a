"""Same-run A/B of two servers' CPU per read, in short alternating rounds.

On a shared, loaded machine a long interval per server (``bench_reads.py
--baseline-cmd``) drifts with everyone else's load; many short rounds that alternate
which server goes first, compared pairwise, do not. Reads a database that
``bench_reads.py --keep-db`` loaded (its name is printed there, or list them with
``psql -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'chat_bench_reads%'"``),
with a fresh API key of its ``bench`` tenant.

    .venv/bin/python loadtest/ab_reads.py --db chat_bench_reads_… --mode latest \\
        --base-cmd "/work/main/.venv/bin/chat-storage serve --port {port}"

Prints each server's median CPU µs per request and the median (and quartiles) of the
rounds' new/base ratios. Run it once with the same command for both sides: that A/A
ratio is the noise floor of the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chat_storage.storage import apikeys, db
from loadtest import harness, readdata
from loadtest.bench_clients import cpu_seconds


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A/B of two servers' CPU per read.")
    p.add_argument("--db", required=True, help="a database loaded by bench_reads --keep-db")
    p.add_argument("--mode", choices=("latest", "sessions", "session"), default="latest")
    p.add_argument("--base-cmd", required=True, help="the baseline ({port} is replaced)")
    p.add_argument("--new-cmd", default=None, help="default: this checkout's chat-storage")
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--seconds", type=float, default=2.0, help="per server and round")
    p.add_argument("--concurrency", type=int, default=4)
    return p.parse_args()


async def paths(url: str, mode: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        sessions = [r[0] for r in await conn.fetch(
            "SELECT id FROM sessions WHERE user_id NOT IN ($1, $2) LIMIT 2000",
            readdata.BUSY_USER, readdata.DEEP_USER)]
    finally:
        await conn.close()
    if mode == "sessions":
        return [f"/api/v1/sessions?user_id={readdata.BUSY_USER}&limit=50"]
    if mode == "session":
        return [f"/api/v1/sessions/{s}" for s in sessions]
    return [f"/api/v1/sessions/{s}/messages?order=desc&limit=50" for s in sessions]


async def new_key(url: str) -> str:
    pool = await db.create_pool(url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            return (await apikeys.create_key(conn, "bench", name="ab")).key
    finally:
        await pool.close()


async def drive(http: aiohttp.ClientSession, base: str, choices: list[str], seconds: float,
                concurrency: int) -> int:
    """GET random paths back to back for ``seconds``; the number of 200s."""
    done = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < end:
            async with http.get(base + random.choice(choices)) as r:
                await r.read()
                if r.status != 200:
                    raise SystemExit(f"{base}: {r.status}")
                done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def main() -> None:
    args = parse_args()
    url = harness.db_url(args.db)
    key = await new_key(url)
    choices = await paths(url, args.mode)
    env = {**os.environ, "DATABASE_URL": url, "CHAT_LOG_LEVEL": "WARNING",
           "CHAT_RATE_LIMIT_PER_S": "1000000000", "CHAT_RATE_LIMIT_BURST": "1000000000",
           "PYTHONPATH": str(harness.ROOT)}
    logdir = Path(tempfile.mkdtemp(prefix="ab_reads_"))
    servers: dict[str, tuple[int, str]] = {}
    per: dict[str, list[float]] = {"base": [], "new": []}
    ratios: list[float] = []
    with contextlib.ExitStack() as stack:
        for label, cmd in (("base", args.base_cmd), ("new", args.new_cmd)):
            port = harness.free_port()
            proc = stack.enter_context(harness.process(
                harness.service_cmd(cmd, port), env, logdir / f"{label}.log"))
            servers[label] = (proc.pid, f"http://127.0.0.1:{port}")
            await harness.wait_ready(f"{servers[label][1]}/readyz", proc,
                                     logdir / f"{label}.log")
        async with aiohttp.ClientSession(headers={"X-Api-Key": key}) as http:
            for _, base in servers.values():  # warm-up: caches, prepared statements
                await drive(http, base, choices, 1.0, args.concurrency)
            for n in range(args.rounds):
                got: dict[str, float] = {}
                for label in ("base", "new") if n % 2 == 0 else ("new", "base"):
                    pid, base = servers[label]
                    before = cpu_seconds(pid) or 0.0
                    requests = await drive(http, base, choices, args.seconds, args.concurrency)
                    got[label] = ((cpu_seconds(pid) or 0.0) - before) * 1e6 / max(requests, 1)
                    per[label].append(got[label])
                ratios.append(got["new"] / got["base"])
    low, _, high = statistics.quantiles(ratios, n=4)
    base_us, new_us = statistics.median(per["base"]), statistics.median(per["new"])
    print(f"{args.mode}: server CPU µs per request, median base {base_us:.0f}, new "
          f"{new_us:.0f}; new/base {statistics.median(ratios):.3f} "
          f"(quartiles {low:.3f} to {high:.3f}, {args.rounds} rounds of {args.seconds:g} s, "
          f"{args.concurrency} clients); load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    harness.run(main())
