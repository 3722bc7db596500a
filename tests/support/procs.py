"""Real processes for tests that must kill things: ``chat-storage serve`` and redis-server.

A :class:`Server` is the real command on a free loopback port (optionally with
``--workers N``), its output in a log file; :meth:`Server.start` returns once ``/readyz``
answers 200 (bounded), and :func:`running` starts and kills a few of them. A
:class:`RedisServer` is a private, throw-away ``redis-server`` (no persistence) that a
test may stop and restart — never the shared one the other tests use. A
:class:`Cluster` is several servers as replicas (one database, one Redis, a key prefix
of their own); tests/support/procws.py talks WebSocket to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.conftest import REDIS_URL, delete_keys

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 8.0  # what running() gives servers to drain on SIGTERM
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

# what every test server gets unless the test says otherwise: quiet logs, limits out of
# the way, a small pool (several servers share one Postgres)
BASE_ENV = {
    "CHAT_LOG_LEVEL": "WARNING",
    "CHAT_RATE_LIMIT_PER_S": "100000",
    "CHAT_RATE_LIMIT_BURST": "100000",
    "CHAT_DB_POOL_MAX": "8",
}


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive loopback ports that are free right now."""
    for _ in range(100):
        first = free_port()
        if first + n <= 65536 and all(_port_free(first + i) for i in range(1, n)):
            return first
    raise RuntimeError("no free consecutive ports")


def cli_command() -> list[str]:
    """The installed ``chat-storage`` console script, or the module when it is not installed."""
    script = Path(sys.executable).parent / "chat-storage"
    return [str(script)] if script.exists() else [sys.executable, "-m", "chat_storage.server.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any chat-storage setting (nor OTEL_* tracing), plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CHAT_", "OTEL_")) and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(extra)
    return env


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
    """Whether a process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` (Prometheus text) whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


class Server:
    """``chat-storage serve`` on the test database, started and stopped by the test.

    The environment is this one without chat-storage settings, then :data:`BASE_ENV`,
    then ``env``; ``database_url=None`` runs the embedded Postgres. With ``workers > 1``
    it is the parent of the workers, and ``metrics`` gives each worker a metrics port
    (``metrics_port + i``). ``nofile``: the process's ``RLIMIT_NOFILE`` (soft, hard).
    Each :meth:`start` picks a new port. ``root`` runs the code of another checkout (an
    older release: tests/test_rollback.py), unmeasured by coverage.
    """

    def __init__(self, database_url: str | None, log_path: Path, *, app_name: str | None = None,
                 redis_url: str | None = None, env: Mapping[str, str] | None = None,
                 workers: int = 1, metrics: bool = False,
                 nofile: tuple[int, int] | None = None, root: Path = ROOT) -> None:
        if database_url is not None and app_name is not None:
            sep = "&" if "?" in database_url else "?"
            database_url = f"{database_url}{sep}application_name={app_name}"
        self.database_url = database_url
        self.log_path = log_path
        self.redis_url = redis_url
        self.env = dict(env or {})
        self.workers = workers
        self.metrics = metrics
        self.nofile = nofile
        self.root = root
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.metrics_port = 0
        self.base = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _environment(self) -> dict[str, str]:
        env = {**BASE_ENV, "CHAT_DATA_DIR": str(self.log_path.parent)}
        if self.workers > 1:  # INFO: readiness is every worker's "listening" line
            env["CHAT_LOG_LEVEL"] = "INFO"
        if self.database_url is not None:
            env["DATABASE_URL"] = self.database_url
        if self.redis_url is not None:
            env["REDIS_URL"] = self.redis_url
        env = clean_env(**{**env, **self.env})
        if self.root != ROOT:  # its package first on the path; its files are not ours
            env["PYTHONPATH"] = str(self.root)
            env = {k: v for k, v in env.items() if not k.startswith("COVERAGE_")}
        return env

    def _command(self) -> list[str]:
        if self.root == ROOT:
            return cli_command()
        return [sys.executable, "-m", "chat_storage.server.cli"]

    async def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the process and wait until ``/readyz`` answers 200 (a taken port is retried)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):
            self.port = free_port()
            env = self._environment()
            if self.metrics:
                self.metrics_port = free_ports(self.workers)
                env["CHAT_METRICS_PORT"] = str(self.metrics_port)
            with self.log_path.open("ab") as log:
                self.proc = await asyncio.create_subprocess_exec(
                    *self._command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                    "--workers", str(self.workers), cwd=self.root, env=env, stdout=log,
                    stderr=asyncio.subprocess.STDOUT, preexec_fn=self._limit)
            self.base = f"http://127.0.0.1:{self.port}"
            if await self._ready(ready_timeout_s):
                return
            if "already in use" not in self.log():
                break
        pytest.fail(f"the server did not start ({self.log_path}):\n{self.log()[-5000:]}")

    def _limit(self) -> None:
        """In the child, before it runs: its open-file limit."""
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    async def _ready(self, timeout_s: float) -> bool:
        """True once ``/readyz`` answers 200 (and every worker listens); False if it exited."""
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http, asyncio.timeout(timeout_s):
            while self.running:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
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

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exited(self, within_s: float) -> int:
        """The exit status, once the process ended (at most ``within_s`` from now)."""
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), within_s)

    async def kill(self) -> None:
        """SIGKILL (the process alone: a workers parent's children stop by themselves)."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            await self.proc.wait()

    async def stop(self, within_s: float = 30.0) -> int:
        """SIGTERM and the exit status; SIGKILL (and its status) if it takes over ``within_s``."""
        assert self.proc is not None
        if self.running:
            self.signal(signal.SIGTERM)
        try:
            return await self.exited(within_s)
        except TimeoutError:
            await self.kill()  # the status then tells SIGKILL: an `== 0` check fails
            assert self.proc.returncode is not None
            return self.proc.returncode

    def log(self) -> str:
        """What the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.asynccontextmanager
async def running(tmp_path: Path, env: Mapping[str, str], count: int = 1, *, workers: int = 1,
                  metrics: bool = False) -> AsyncIterator[list[Server]]:
    """``count`` started servers (settings from ``env`` alone), killed at the end.

    Their logs are printed on a failure (pytest shows them with it).
    """
    env = {"CHAT_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S), **env}
    servers = [Server(None, tmp_path / f"server{i}-{secrets.token_hex(3)}.log", env=env,
                      workers=workers, metrics=metrics) for i in range(count)]
    try:
        await asyncio.gather(*(s.start() for s in servers))
        yield servers
    except BaseException:
        for server in servers:  # without the access log, which would crowd the rest out
            lines = [x for x in server.log().splitlines() if '"chat_storage.access"' not in x]
            print(f"--- {server.log_path.name}\n" + "\n".join(lines)[-8000:])
        raise
    finally:
        await asyncio.gather(*(s.kill() for s in servers))


def replica_env(database_url: str, **extra: str) -> dict[str, str]:
    """Settings of servers that share this run's database and a Redis prefix of their own."""
    return {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL,
            "CHAT_REDIS_PREFIX": f"test{secrets.token_hex(4)}", **extra}


class RedisServer:
    """A private ``redis-server`` on a fixed free port: stop it and start it again there."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, ready_timeout_s: float = 10.0) -> None:
        """Start (again, empty: no persistence) and wait until it answers PING."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", stdout=log, stderr=asyncio.subprocess.STDOUT)
        client = Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            async with asyncio.timeout(ready_timeout_s):
                while True:
                    assert self.proc.returncode is None, f"redis exited; see {self.log_path}"
                    with contextlib.suppress(RedisError, OSError):
                        if await client.ping():
                            return
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        """SIGKILL: Redis crashes (a restart afterwards starts empty)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self, within_s: float = 10.0) -> None:
        """SIGTERM (redis exits at once without persistence); SIGKILL if it lingers."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), within_s)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class Cluster:
    """Replicas of one test: one database, one Redis, a Redis key prefix of their own."""

    def __init__(self, database_url: str, tmp_path: Path) -> None:
        self.database_url = database_url
        self.tmp_path = tmp_path
        self.prefix = f"chat-test-{os.getpid()}-{secrets.token_hex(4)}"
        self.servers: list[Server] = []

    async def start(self, n: int, *, redis_url: str = REDIS_URL,
                    env: dict[str, str] | None = None,
                    first_env: dict[str, str] | None = None) -> list[Server]:
        """Start ``n`` replicas at once; ``first_env`` is for the first one only."""
        new = []
        for i in range(n):
            extra = {"CHAT_REDIS_PREFIX": self.prefix, "CHAT_SHUTDOWN_TIMEOUT_S": "5",
                     **(env or {}), **((first_env or {}) if i == 0 else {})}
            log = self.tmp_path / f"replica{len(self.servers) + i}.log"
            new.append(Server(self.database_url, log, redis_url=redis_url, env=extra))
        self.servers += new
        await asyncio.gather(*(s.start() for s in new))
        return new

    async def close(self) -> None:
        """Kill every replica; delete the prefix's keys from the shared Redis."""
        await asyncio.gather(*(s.kill() for s in self.servers))
        client = Redis.from_url(REDIS_URL)
        try:
            await delete_keys(client, self.prefix)
        finally:
            await client.aclose()
