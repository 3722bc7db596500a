"""Real processes for tests that must kill things: ``chat-storage serve`` and redis-server.

A :class:`Server` is the real command on a free loopback port, its output in a log
file; :meth:`Server.start` returns once ``/readyz`` answers 200 (bounded). A
:class:`RedisServer` is a private, throw-away ``redis-server`` (no persistence) that a
test may stop and restart — never the shared one the other tests use. A
:class:`Cluster` is several servers as replicas (one database, one Redis, a key prefix
of their own), and a :class:`Reader` keeps reading a WebSocket of one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.conftest import REDIS_URL, Tenant

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
Frame = dict[str, Any]
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


def serve_command() -> list[str]:
    """``chat-storage serve`` of this virtualenv (or the module, if not installed)."""
    script = Path(sys.executable).parent / "chat-storage"
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "server.cli", "serve"]


class Server:
    """``chat-storage serve`` on the test database, started and stopped by the test.

    ``env`` adds to (and overrides) :data:`BASE_ENV`; ``REDIS_URL`` is taken from
    ``redis_url`` only, never inherited. Each :meth:`start` picks a new port.
    """

    def __init__(self, database_url: str, log_path: Path, *, app_name: str | None = None,
                 redis_url: str | None = None, env: Mapping[str, str] | None = None) -> None:
        sep = "&" if "?" in database_url else "?"
        self.database_url = (database_url if app_name is None
                             else f"{database_url}{sep}application_name={app_name}")
        self.log_path = log_path
        self.redis_url = redis_url
        self.env = dict(env or {})
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.base = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the process and wait until ``/readyz`` answers 200."""
        self.port = free_port()
        env = {**os.environ, **BASE_ENV, "DATABASE_URL": self.database_url,
               "CHAT_DATA_DIR": str(self.log_path.parent), **self.env}
        env.pop("REDIS_URL", None)
        if self.redis_url is not None:
            env["REDIS_URL"] = self.redis_url
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *serve_command(), "--host", "127.0.0.1", "--port", str(self.port), cwd=ROOT,
                env=env, stdout=log, stderr=asyncio.subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        await self._wait_ready(ready_timeout_s)

    async def _wait_ready(self, timeout_s: float) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http, asyncio.timeout(timeout_s):
            while True:
                assert self.running, f"the server exited; see {self.log_path}"
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.base}/readyz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exited(self, within_s: float) -> int:
        """The exit status, once the process ended (at most ``within_s`` from now)."""
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), within_s)

    async def kill(self) -> None:
        """SIGKILL (if still running) and reap."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            await self.proc.wait()

    async def stop(self, within_s: float = 30.0) -> None:
        """SIGTERM and wait for a graceful exit; SIGKILL if it takes over ``within_s``."""
        if not self.running:
            return
        self.signal(signal.SIGTERM)
        try:
            await self.exited(within_s)
        except TimeoutError:
            await self.kill()

    def log(self) -> str:
        """What the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


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
            async for key in client.scan_iter(match=f"{self.prefix}:*"):
                await client.delete(key)
        finally:
            await client.aclose()


class Reader:
    """Every frame of one WebSocket, read in the background, and waits on what came."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self.closed = False
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(msg.json())
                async with self._changed:
                    self._changed.notify_all()
        self.closed = True
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, pred: Callable[[list[Frame]], bool], deadline_s: float = 30) -> None:
        """Until ``pred(frames)`` holds; fails if the connection ends or time runs out."""
        async with asyncio.timeout(deadline_s), self._changed:
            await self._changed.wait_for(lambda: pred(self.frames) or self.closed)
        assert pred(self.frames), f"the connection ended: {self.frames[-3:]}"

    async def sync(self, ref: str) -> None:
        """Round trip through the server: what it sent before the pong has been read."""
        await self.ws.send_json({"type": "ping", "ref": ref})
        await self.wait(lambda fs: any(f.get("ref") == ref for f in fs))

    async def close(self) -> None:
        await self.ws.close()
        await self._task


async def new_session(http: aiohttp.ClientSession, server: Server, tenant: Tenant) -> str:
    async with http.post(f"{server.base}/api/v1/sessions", json={"user_id": "replicas"},
                         headers=tenant.headers) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])


async def open_ws(http: aiohttp.ClientSession, server: Server, tenant: Tenant,
                  sid: str) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(f"{server.base}/api/v1/sessions/{sid}/ws",
                                 headers=tenant.headers)


async def subscriber(http: aiohttp.ClientSession, server: Server, tenant: Tenant,
                     sid: str) -> Reader:
    """A subscribed reader, live (its feed listens to Redis) when this returns."""
    reader = Reader(await open_ws(http, server, tenant, sid))
    await reader.ws.send_json({"type": "subscribe", "after_seq": 0})
    await reader.sync("subscribed")
    return reader
