"""Several real server processes on one Postgres and one Redis.

- ``serve --workers 2``: two worker processes share the port (each serves requests,
  seen in each worker's own /metrics port), a killed worker is restarted, SIGTERM
  stops everything cleanly; without REDIS_URL it refuses to start (exit 2); without
  DATABASE_URL the parent runs the embedded Postgres once for all workers.
- Separate ``serve`` processes (replicas): concurrent writers to one session through
  2 and then 3 of them get gap-free seq; the rate limit is shared (one burst in all).

The :class:`Server` helper here is also used by tests/actors/test_ingest.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import REDIS_URL, Tenant

ROOT = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 60.0
REQUEST_TIMEOUT_S = 20.0
SHUTDOWN_TIMEOUT_S = 8.0


def cli_command() -> list[str]:
    """The installed console script, or the module when it is not installed."""
    script = Path(sys.executable).parent / "chat-storage"
    return [str(script)] if script.exists() else [sys.executable, "-m", "server.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any chat-storage setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CHAT_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(extra)
    return env


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(n: int = 1) -> int:
    """The first of ``n`` consecutive ports that are free right now."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first: int = s.getsockname()[1]
        if first + n <= 65536 and all(_port_free(first + i) for i in range(1, n)):
            return first
    raise RuntimeError("no free consecutive ports")


def worker_pids(parent: int) -> list[int]:
    """The worker processes (multiprocessing spawn children) of ``parent``, from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"spawn_main" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return sorted(pids)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Server:
    """``chat-storage serve`` as a subprocess (with ``workers > 1``: the parent of workers)."""

    def __init__(self, log_path: Path, env: dict[str, str], *, workers: int = 1,
                 metrics: bool = False) -> None:
        self.log_path = log_path
        self.env = env
        self.workers = workers
        self.metrics = metrics  # one metrics port per worker: metrics_port + i
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.metrics_port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self) -> None:
        """Start on free ports; return once /readyz answers 200 (a taken port is retried)."""
        for _attempt in range(3):
            self.port = free_ports()
            # with workers, INFO: readiness is every worker's "listening" line
            level = "INFO" if self.workers > 1 else "WARNING"
            env = {"CHAT_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S), "CHAT_LOG_LEVEL": level,
                   **self.env}
            if self.metrics:
                self.metrics_port = free_ports(self.workers)
                env["CHAT_METRICS_PORT"] = str(self.metrics_port)
            with self.log_path.open("ab") as log:
                self.proc = await asyncio.create_subprocess_exec(
                    *cli_command(), "serve", "--port", str(self.port),
                    "--workers", str(self.workers), cwd=ROOT, env=clean_env(**env),
                    stdout=log, stderr=asyncio.subprocess.STDOUT)
            if await self._ready():
                return
            if "already in use" not in self.log():
                break
        pytest.fail(f"server did not start:\n{self.log()[-5000:]}")

    async def _ready(self) -> bool:
        assert self.proc is not None
        async with aiohttp.ClientSession() as http, asyncio.timeout(START_DEADLINE_S):
            while self.proc.returncode is None:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.base}/readyz") as r:
                        if r.status == 200 and self.listening() >= self.workers:
                            return True
                await asyncio.sleep(0.05)
        return False

    def listening(self) -> int:
        """How many times a process of this server logged that it is listening."""
        if self.workers == 1:
            return 1  # /readyz answered: the one process is
        return sum(1 for line in self.log().splitlines() if '"msg":"listening"' in line)

    async def stop(self) -> int:
        """SIGTERM and the exit status (killed and failed if it does not exit in time)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), SHUTDOWN_TIMEOUT_S + 15)
        except TimeoutError:
            await self.kill()
            pytest.fail(f"server did not stop on SIGTERM:\n{self.log()[-5000:]}")

    async def kill(self) -> None:
        """SIGKILL (the process alone: a workers parent's children stop by themselves)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def running(tmp_path: Path, env: dict[str, str], count: int = 1, *, workers: int = 1,
                  metrics: bool = False) -> AsyncIterator[list[Server]]:
    """``count`` started servers, stopped (or killed) at the end; logs shown on failure."""
    servers = [Server(tmp_path / f"server{i}-{secrets.token_hex(3)}.log", env,
                      workers=workers, metrics=metrics) for i in range(count)]
    try:
        await asyncio.gather(*(s.start() for s in servers))
        yield servers
    except BaseException:
        for server in servers:
            print(f"--- {server.log_path.name}\n{server.log()[-5000:]}")
        raise
    finally:
        for server in servers:
            await server.kill()


def replica_env(database_url: str, **extra: str) -> dict[str, str]:
    """Settings of servers that share this run's database and a Redis prefix of their own."""
    return {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL,
            "CHAT_REDIS_PREFIX": f"test{secrets.token_hex(4)}", "CHAT_DB_POOL_MAX": "8",
            "CHAT_RATE_LIMIT_PER_S": "100000", "CHAT_RATE_LIMIT_BURST": "100000", **extra}


async def new_session(base: str, tenant: Tenant) -> str:
    async with aiohttp.ClientSession() as http, http.post(
        f"{base}/api/v1/sessions", json={"user_id": "u1"}, headers=tenant.headers
    ) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


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
        assert await server.stop() == 0, server.log()[-5000:]
        # the parent waited for its workers: none is left behind
        assert not [pid for pid in workers if alive(pid)]


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
        assert await server.stop() == 0, server.log()[-5000:]
    assert not (data_dir / "pg" / "postmaster.pid").exists()  # stopped with the parent


@pytest.mark.parametrize(
    ("env", "variable"),
    [({}, "REDIS_URL"), ({"CHAT_INGEST_MODE": "async"}, "CHAT_INGEST_MODE")],
    ids=["workers", "async-ingest"],
)
def test_needs_redis_exits_2(database_url: str, env: dict[str, str], variable: str) -> None:
    args = ["--workers", "2"] if not env else []
    result = subprocess.run(
        [*cli_command(), "serve", "--port", str(free_ports()), *args],
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
