"""What the benchmarks in ``loadtest/`` share: databases, server processes, the event loop.

Each benchmark creates a fresh database on the local Postgres (``BENCH_DATABASE_URL``,
default the local server), starts the servers it measures as separate processes on
free loopback ports, waits (bounded) until they answer, and drops the database at the
end. Import it after putting the repository root on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import asyncpg

from chat_storage.storage import migrations

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
READY_TIMEOUT_S = 60


# ---------------------------------------------------------------- the database
def db_url(name: str) -> str:
    """The admin URL with its database replaced by ``name``."""
    return f"{ADMIN_URL.rpartition('/')[0]}/{name}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_database(name: str) -> str:
    """Create database ``name``, apply the migrations of ``sql/``; return its URL."""
    await _admin(f'CREATE DATABASE "{name}"')
    url = db_url(name)
    conn = await asyncpg.connect(url)
    try:
        await migrations.migrate(conn, ROOT / "sql")
    finally:
        await conn.close()
    return url


async def drop_database(name: str) -> None:
    """Drop database ``name``, closing whatever connections are still open on it."""
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------- the measured window
class Window(Protocol):
    """A load run whose tasks read these flags: count while ``measuring``, end on ``stopping``."""

    measuring: bool
    stopping: bool


async def measure(run: Window, warmup_s: float, duration_s: float,
                  producers: Sequence[asyncio.Task[Any]],
                  readers: Sequence[asyncio.Task[Any]]) -> float:
    """Warm up, count for ``duration_s``, then let the producers finish their turn and
    cancel the readers; return the seconds measured."""
    await asyncio.sleep(warmup_s)
    run.measuring = True
    started = time.perf_counter()
    await asyncio.sleep(duration_s)
    run.measuring = False
    seconds = time.perf_counter() - started
    run.stopping = True
    await asyncio.gather(*producers, return_exceptions=True)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    return seconds


async def make_sessions(base: str, key: str, n: int) -> list[str]:
    """``n`` sessions made one by one through the API of the server at ``base``."""
    async with aiohttp.ClientSession(headers={"X-Api-Key": key}) as http:
        ids = []
        for i in range(n):
            async with http.post(f"{base}/api/v1/sessions", json={"user_id": f"bench{i}"}) as r:
                ids.append(str((await r.json())["id"]))
        return ids


# ---------------------------------------------------------------- server processes
def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_cmd(serve_cmd: str | None, port: int) -> list[str]:
    """``serve_cmd`` with ``{port}`` replaced, or ``chat-storage serve`` of this venv."""
    if serve_cmd:
        return [part.replace("{port}", str(port)) for part in serve_cmd.split()]
    return [str(Path(sys.executable).parent / "chat-storage"), "serve", "--port", str(port)]


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


def tail(log: Path) -> str:
    """The end of a server's log, for the message when it did not come up."""
    return log.read_text(errors="replace")[-2000:]


async def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path,
                     any_answer: bool = False) -> None:
    """Poll ``url`` until it answers 200 (any non-5xx with ``any_answer``), at most 60 s.

    ``any_answer`` is for servers without a health route, whose 404 means "listening".
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{url}: server exited:\n{tail(log)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as r:
                    if r.status == 200 or (any_answer and r.status < 500):
                        return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url}: not ready after {READY_TIMEOUT_S} s:\n{tail(log)}")


# ---------------------------------------------------------------- the event loop
def new_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed (as the service runs), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to completion on a :func:`new_loop` loop, with the service's garbage
    collector settings (the load generator's own pauses would otherwise show up as
    server latency, and the ceiling server runs as the service does)."""
    from chat_storage.server.serving import tune_gc

    tune_gc()
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main)
