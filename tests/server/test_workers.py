"""Several real server processes on one Postgres and one Redis.

- ``serve --workers 2``: two worker processes share the port (each serves requests,
  seen in each worker's own /metrics port), a killed worker is restarted, SIGTERM
  stops everything cleanly; without REDIS_URL it refuses to start (exit 2); without
  DATABASE_URL the parent runs the embedded Postgres once for all workers.
- Separate ``serve`` processes (replicas): concurrent writers to one session through
  2 and then 3 of them get gap-free seq; the rate limit is shared (one burst in all).
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from chat_storage.runtime.settings import Settings
from chat_storage.server.workers import Supervisor
from tests.conftest import REDIS_URL, Tenant
from tests.support.procs import (
    ROOT,
    SHUTDOWN_TIMEOUT_S,
    Server,
    alive,
    clean_env,
    cli_command,
    free_port,
    metric_total,
    replica_env,
    running,
    worker_pids,
)

REQUEST_TIMEOUT_S = 20.0


async def new_session(base: str, tenant: Tenant) -> str:
    async with aiohttp.ClientSession() as http, http.post(
        f"{base}/api/v1/sessions", json={"user_id": "u1"}, headers=tenant.headers
    ) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])


# -- serve --workers N --------------------------------------------------------------------


async def test_workers_share_the_port_restart_and_stop(
    database_url: str, tenant: Tenant, tmp_path: Path
) -> None:
    env = replica_env(database_url)
    async with running(tmp_path, env, workers=2, metrics=True) as (server,):
        first = worker_pids(server.pid)
        assert len(first) == 2, first
        # a new connection per request: the kernel spreads connections over the workers
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)
        ) as http:
            for _ in range(40):
                async with http.post(f"{server.base}/api/v1/sessions", json={"user_id": "w"},
                                     headers=tenant.headers) as r:
                    assert r.status == 201, await r.text()
            served = []
            for i in range(2):  # each worker's own /metrics port
                async with http.get(f"http://127.0.0.1:{server.metrics_port + i}/metrics") as r:
                    assert r.status == 200
                    served.append(metric_total(await r.text(), "chat_http_requests_total",
                                               method="POST", route="/api/v1/sessions"))
        assert sum(served) == 40
        assert min(served) > 0, f"one worker got every connection: {served}"

        # a worker that dies is replaced, and the service keeps answering
        os.kill(first[0], signal.SIGKILL)
        async with asyncio.timeout(30):
            while True:
                now = worker_pids(server.pid)
                if len(now) == 2 and first[0] not in now:
                    break
                await asyncio.sleep(0.05)
        assert first[1] in now  # the other worker was left alone
        async with asyncio.timeout(30):
            while server.listening() < 3:  # noqa: ASYNC110 - the new worker's log line
                await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http:
            for i in range(2):  # the new worker took over its slot's metrics port
                async with http.get(f"http://127.0.0.1:{server.metrics_port + i}/metrics") as r:
                    assert r.status == 200
            async with http.get(f"{server.base}/readyz") as r:
                assert r.status == 200
        assert "worker exited unexpectedly; restarting" in server.log()

        workers = worker_pids(server.pid)
        # idle workers exit at once; a parent that missed their exit would wait out its
        # deadline (the workers' shutdown timeout plus STOP_MARGIN_S) and be SIGKILLed here
        assert await server.stop(within_s=SHUTDOWN_TIMEOUT_S) == 0, server.log()[-5000:]
        # the parent waited for its workers: none is left behind
        assert not [pid for pid in workers if alive(pid)]


def test_supervisor_wait_sees_a_worker_that_exited_before_it_looked() -> None:
    """The race behind stops that sat out their whole deadline: a worker exits (and is
    reaped) between the supervisor's check and its wait; the wait must still return."""
    supervisor = Supervisor(Settings(), workers=1)
    worker = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    worker.start()
    worker.join(30)
    assert worker.exitcode == 0  # exited and reaped: only its sentinel can tell now
    began = time.monotonic()
    supervisor._wait(60.0, [worker])
    assert time.monotonic() - began < 30, "waited for a worker that had already exited"
    supervisor._wake_r.close()
    supervisor._wake_w.close()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A 0700 directory outside ``/tmp/pytest-of-<user>`` (see tests/storage/test_embedded)."""
    path = Path(tempfile.mkdtemp(prefix="chat-workers-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_workers_on_the_embedded_database(tmp_path: Path, data_dir: Path) -> None:
    """No DATABASE_URL: the parent starts Postgres once, prints one key, stops it at the end."""
    env = {"CHAT_DATA_DIR": str(data_dir), "REDIS_URL": REDIS_URL,
           "CHAT_REDIS_PREFIX": f"test{secrets.token_hex(4)}"}
    async with running(tmp_path, env, workers=2) as (server,):
        keys = set(re.findall(r"cs_[A-Za-z0-9_-]+", server.log()))
        assert len(keys) == 1, server.log()[-3000:]  # printed by the parent alone
        (key,) = keys
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as http:
            for _ in range(10):  # whichever worker answers, it reaches the same database
                async with http.post(f"{server.base}/api/v1/sessions", json={"user_id": "me"},
                                     headers={"X-Api-Key": key}) as r:
                    assert r.status == 201, await r.text()
        assert server.log().count("embedded postgres started") == 1
        assert await server.stop(within_s=SHUTDOWN_TIMEOUT_S) == 0, server.log()[-5000:]
    assert not (data_dir / "pg" / "postmaster.pid").exists()  # stopped with the parent


@pytest.mark.parametrize(
    ("env", "variable"),
    [({}, "REDIS_URL"), ({"CHAT_INGEST_MODE": "async"}, "CHAT_INGEST_MODE")],
    ids=["workers", "async-ingest"],
)
def test_needs_redis_exits_2(database_url: str, env: dict[str, str], variable: str) -> None:
    args = ["--workers", "2"] if not env else []
    result = subprocess.run(
        [*cli_command(), "serve", "--port", str(free_port()), *args],
        env=clean_env(DATABASE_URL=database_url, **env), cwd=ROOT, capture_output=True,
        text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chat-storage: error: "), result.stderr
    assert variable in lines[0] and "REDIS_URL" in lines[0]


# -- separate replicas --------------------------------------------------------------------


async def _write_through(servers: list[Server], tenant: Tenant, sid: str,
                         per_server: int) -> list[dict[str, Any]]:
    """``per_server`` messages through each server, 8 at a time per server; the 201 bodies."""
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async def one(server: Server, n: int) -> dict[str, Any]:
            async with http.post(f"{server.base}/api/v1/sessions/{sid}/messages",
                                 json={"role": "user", "content": f"{server.port}/{n}"},
                                 headers=tenant.headers) as r:
                body: dict[str, Any] = await r.json()
                assert r.status == 201, body
                return body

        async def writer(server: Server, lane: int) -> list[dict[str, Any]]:
            return [await one(server, n) for n in range(lane, per_server, 8)]

        lanes = await asyncio.gather(*(writer(s, lane) for s in servers for lane in range(8)))
    return [body for lane in lanes for body in lane]


async def test_concurrent_writers_through_replicas_get_gap_free_seq(
    database_url: str, tenant: Tenant, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with running(tmp_path, replica_env(database_url), 3) as servers:
        for through in (servers[:2], servers):
            sid = await new_session(through[0].base, tenant)
            answered = await _write_through(through, tenant, sid, per_server=40)
            rows = await pool.fetch(
                "SELECT id, seq, content FROM messages WHERE session_id = $1 ORDER BY seq",
                uuid.UUID(sid))
            total = 40 * len(through)
            assert [r["seq"] for r in rows] == list(range(1, total + 1))
            assert sorted(str(r["id"]) for r in rows) == sorted(b["id"] for b in answered)
            by_id = {str(r["id"]): r for r in rows}
            for body in answered:  # every 201 told the seq and content that were stored
                assert by_id[body["id"]]["seq"] == body["seq"]
                assert by_id[body["id"]]["content"] == body["content"]
            # every server really took part
            ports = collections.Counter(r["content"].split("/")[0] for r in rows)
            assert set(ports) == {str(s.port) for s in through}
            last_seq = await pool.fetchval("SELECT last_seq FROM sessions WHERE id = $1",
                                           uuid.UUID(sid))
            assert last_seq == total


async def test_rate_limit_is_shared_across_replicas(
    database_url: str, tenant: Tenant, tmp_path: Path
) -> None:
    # a refill of one token per 100 s: during the test only the burst is available
    env = replica_env(database_url, CHAT_RATE_LIMIT_BURST="10", CHAT_RATE_LIMIT_PER_S="0.01")
    async with running(tmp_path, env, 2) as servers, aiohttp.ClientSession() as http:
        statuses: dict[int, list[int]] = {s.port: [] for s in servers}
        for i in range(30):
            server = servers[i % 2]
            async with http.get(f"{server.base}/api/v1/sessions",
                                headers=tenant.headers) as r:
                statuses[server.port].append(r.status)
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) > 0
    allowed = [s for codes in statuses.values() for s in codes if s == 200]
    limited = [s for codes in statuses.values() for s in codes if s == 429]
    # one bucket for both processes: 10 in all (a bucket per process would allow 20)
    assert (len(allowed), len(limited)) == (10, 20), statuses
    for codes in statuses.values():  # both processes used the same bucket
        assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}
