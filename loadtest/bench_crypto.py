"""Cost of encryption at rest (issue 15; a benchmark, not a test: it prints figures).

One service process with ``CHAT_ENCRYPTION_KEK`` set and two tenants on a fresh
database: ``plain`` and ``sealed`` (``--encryption on``). Each round measures, for each
tenant in turn (the order alternates between rounds):

- ``write`` single-message POSTs over ``--sessions`` sessions (100 users), durable;
- ``read``  ``GET …/messages?limit=50`` pages of the same sessions, once they hold
  messages (each sealed row is opened: one AES-GCM decryption per message).

Server CPU per request is the service process's CPU time (``/proc/<pid>/stat``) over
the requests answered. Prints every run and the median sealed/plain ratio per phase,
after the CPU time of sealing and opening one message in this process (what the
service adds per message, whatever the load of the machine).

    .venv/bin/python loadtest/bench_crypto.py --rounds 3 --duration 8
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chat_storage.storage import apikeys, db, tenants
from chat_storage.storage.crypto.envelope import associated, open_sealed
from chat_storage.storage.crypto.keyring import DataKey
from chat_storage.storage.crypto.rows import seal_message
from chat_storage.storage.crypto.switch import set_encryption
from loadtest import bench_clients as clients
from loadtest import harness
from loadtest.bench_clients import Result

TENANTS = ("plain", "sealed")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Server CPU per write and read, encryption on/off.")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per phase")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before each phase")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    p.add_argument("--sessions", type=int, default=200, help="sessions per tenant")
    p.add_argument("--kek", default=f"local:{secrets.token_hex(32)}",
                   help="CHAT_ENCRYPTION_KEK of the service (default: a random local key)")
    return p.parse_args()


async def prepare() -> tuple[str, str, dict[str, str]]:
    """A fresh migrated database with the two tenants; (name, url, key per tenant)."""
    name = f"chat_bench_crypto_{os.getpid()}_{secrets.token_hex(3)}"
    url = await harness.create_database(name)
    pool = await db.create_pool(url, min_size=1, max_size=1)
    keys = {}
    try:
        async with pool.acquire() as conn:
            for tenant in TENANTS:
                await tenants.create_tenant(conn, tenant)
                keys[tenant] = (await apikeys.create_key(conn, tenant, name="bench")).key
            await set_encryption(conn, "sealed", True)
    finally:
        await pool.close()
    return name, url, keys


async def run_reads(name: str, base: str, key: str, sessions: list[str],
                    args: argparse.Namespace) -> Result:
    """GET a page of 50 messages, round-robin over ``sessions``."""
    turn = itertools.count()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers={"X-Api-Key": key}, timeout=timeout) as http:
        async def one(worker: int) -> tuple[int, str | None]:
            session = sessions[next(turn) % len(sessions)]
            try:
                async with http.get(f"{base}/api/v1/sessions/{session}/messages",
                                    params={"limit": "50"}) as r:
                    await r.read()
                    return (1, None) if r.status == 200 else (0, str(r.status))
            except (aiohttp.ClientError, TimeoutError) as exc:
                return 0, type(exc).__name__

        return await clients.drive(name, args, args.concurrency, one)


def cpu_us(call: Callable[[], object], n: int = 50_000) -> float:
    """CPU µs (this process's, not wall time) per call of ``call``."""
    start = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - start) / n * 1e6


def micro() -> None:
    """The CPU cost of sealing and opening one message (AES-256-GCM, JSON, nonce)."""
    key = DataKey(uuid.uuid4(), AESGCM(os.urandom(32)))
    t, s, m = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ad = associated(t, s, m)
    for label, fields in (
            ("216-char message", {"content": "x" * 216, "context": None, "metadata": {}}),
            ("6 KB message", {"content": "y" * 4000, "context": [{"doc": "z" * 2000}],
                              "metadata": {"a": 1}})):
        sealed = seal_message(key, t, s, m, fields)
        print(f"{label}: seal {cpu_us(lambda f=fields: seal_message(key, t, s, m, f)):.1f} µs "
              f"CPU, open {cpu_us(lambda b=sealed: open_sealed(key.aead, b, ad)):.1f} µs CPU",
              flush=True)


async def main() -> None:
    args = parse_args()
    micro()
    name, url, keys = await prepare()
    logdir = Path(tempfile.mkdtemp(prefix="bench_crypto_"))
    runs: dict[str, list[float]] = {}
    try:
        env = {**os.environ, "DATABASE_URL": url, "CHAT_LOG_LEVEL": "WARNING",
               "CHAT_RATE_LIMIT_PER_S": "1000000000", "CHAT_RATE_LIMIT_BURST": "1000000000",
               "CHAT_ENCRYPTION_KEK": args.kek, "CHAT_MAINTENANCE_INTERVAL_S": "0",
               "PYTHONPATH": str(harness.ROOT)}
        port = harness.free_port()
        with harness.process(harness.service_cmd(None, port), env,
                             logdir / "service.log") as proc:
            base = f"http://127.0.0.1:{port}"
            await harness.wait_ready(f"{base}/readyz", proc, logdir / "service.log")
            args.server_pid = proc.pid
            sessions = {t: await clients.create_sessions(base, keys[t], args.sessions)
                        for t in TENANTS}
            for r in range(args.rounds):
                order = TENANTS if r % 2 == 0 else TENANTS[::-1]
                for phase in ("write", "read"):
                    for tenant in order:
                        label = f"{phase} {tenant}"
                        if phase == "write":
                            result = await clients.run_http(label, base, keys[tenant],
                                                            sessions[tenant], args, batch=0)
                        else:
                            result = await run_reads(label, base, keys[tenant],
                                                     sessions[tenant], args)
                        runs.setdefault(label, []).append(result.cpu_ms_per_request)
    finally:
        await harness.drop_database(name)
    print(f"\nserver CPU ms per request ({args.rounds} rounds, {args.duration} s each, "
          f"{args.concurrency} clients, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    for label, values in runs.items():
        print(f"  {label:<14} " + "  ".join(f"{v:.3f}" for v in values)
              + f"   median {statistics.median(values):.3f}")
    for phase in ("write", "read"):
        ratios = [s / p for s, p in zip(runs[f"{phase} sealed"], runs[f"{phase} plain"],
                                        strict=True)]
        print(f"  {phase}: sealed / plain = " + ", ".join(f"{x:.3f}" for x in ratios)
              + f"; median {statistics.median(ratios):.3f}")
    print(f"\nserver log: {logdir}")


if __name__ == "__main__":
    harness.run(main())
