"""Fire drills: break what an alert watches and see the alert fire, then resolve, in a
real Prometheus scraping a real ``chat-storage serve`` on a throwaway Postgres and Redis.

The rules are the repository's (tests/support/promserver.py ``drill_rules``), with their
``for:`` and range windows shortened to seconds for the drill only. Each drill's check
is its runbook's Verify step: the alert's state in Prometheus' ``/api/v1/alerts``. The
time to fire and to resolve of every drill is printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from chat_storage.storage import db
from tests.conftest import Tenant, make_tenant
from tests.support.procs import RedisServer, Server
from tests.support.promserver import PROMETHEUS, Postgres, Prometheus, drill_rules

FIRE_TIMEOUT_S = 60.0
RESOLVE_TIMEOUT_S = 60.0
# outside CI only: in CI (.ci/run installs both) a missing tool fails the drills instead
pytestmark = pytest.mark.skipif(
    (PROMETHEUS is None or shutil.which("helm") is None) and not os.environ.get("CI"),
    reason="needs prometheus and helm (.ci/run installs both)")


class Traffic:
    """A steady client: a write every 50 ms and a readiness probe every 0.5 s (the kubelet)."""

    def __init__(self, base: str, key: str, session_id: str) -> None:
        self.base, self.key, self.session_id = base, key, session_id
        self.statuses: list[int] = []

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            n = 0
            while not stop.is_set():
                n += 1
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.post(
                            f"{self.base}/api/v1/sessions/{self.session_id}/messages",
                            json={"role": "user", "content": "drill"},
                            headers={"X-Api-Key": self.key}) as r:
                        self.statuses.append(r.status)
                    if n % 10 == 0:
                        async with http.get(f"{self.base}/readyz") as r:
                            await r.read()
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def locked(dsn: str, hold_s: float | None) -> AsyncIterator[None]:
    """Another session locks ``sessions``: held throughout, or in ``hold_s`` pulses."""
    stop = asyncio.Event()

    async def pulse() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            while not stop.is_set():
                async with conn.transaction():
                    await conn.execute("LOCK TABLE sessions IN EXCLUSIVE MODE")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), hold_s or 3600)
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    task = asyncio.ensure_future(pulse())
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def drill(prom: Prometheus, alert: str, fault: Callable[[], Awaitable[None]],
                fix: Callable[[], Awaitable[None]], results: dict[str, tuple[float, float]],
                ) -> None:
    """Cause, wait for firing, remove, wait for resolved; record both times."""
    # a previous drill's fault may have fired it too (a lock slows commits): let it clear
    await prom.wait(alert, "inactive", RESOLVE_TIMEOUT_S)
    await fault()
    try:
        fired = await prom.wait(alert, "firing", FIRE_TIMEOUT_S)
    finally:
        await fix()
    resolved = await prom.wait(alert, "inactive", RESOLVE_TIMEOUT_S)
    results[alert] = (fired, resolved)
    print(f"drill {alert}: fired after {fired:.1f}s, resolved {resolved:.1f}s after the fix")


@dataclasses.dataclass
class Rig:
    """A throwaway Postgres and Redis, ``chat-storage serve`` replicas on them, a tenant
    with a session, steady traffic to the last replica, and a Prometheus scraping all."""

    pg: Postgres
    redis: RedisServer
    servers: list[Server]
    prom: Prometheus
    tenant: Tenant
    session_id: str
    traffic: Traffic
    results: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, env: dict[str, str], replicas: int = 1) -> AsyncIterator[Rig]:
    pg = Postgres()
    await asyncio.to_thread(pg.init)
    await asyncio.to_thread(pg.start)
    redis = RedisServer(tmp_path / "redis.log")
    await redis.start()
    servers = [Server(pg.url, tmp_path / f"server{i}.log", redis_url=redis.url, env=env)
               for i in range(replicas)]
    prom: Prometheus | None = None
    stop = asyncio.Event()
    traffic_task: asyncio.Future[None] | None = None
    try:
        for server in servers:
            await server.start()
        pool = await db.create_pool(pg.url, min_size=1, max_size=1)
        tenant = await make_tenant(pool)
        await pool.close()
        async with aiohttp.ClientSession() as http, http.post(
                f"{servers[-1].base}/api/v1/sessions", json={"user_id": "drill"},
                headers=tenant.headers) as r:
            assert r.status == 201
            session_id = (await r.json())["id"]
        traffic = Traffic(servers[-1].base, tenant.key, session_id)
        traffic_task = asyncio.ensure_future(traffic.run(stop))
        prom = Prometheus(tmp_path, [f"127.0.0.1:{s.port}" for s in servers],
                          drill_rules(2, 10))
        await prom.start()
        yield Rig(pg, redis, servers, prom, tenant, session_id, traffic)
    except BaseException:
        for server in servers:
            print(server.log()[-3000:])
        if prom is not None:
            print(prom.log()[-2000:])
        raise
    finally:
        stop.set()
        if traffic_task is not None:
            await asyncio.wait_for(traffic_task, 10)
        if prom is not None:
            await prom.stop()
        for server in servers:
            await server.kill()
        await redis.stop()
        await asyncio.to_thread(pg.remove)


async def test_alerts_fire_and_resolve(tmp_path: Path) -> None:
    start = time.monotonic()
    env = {"CHAT_WRITE_TIMEOUT_S": "1", "CHAT_DB_ACQUIRE_TIMEOUT_S": "1",
           "CHAT_DB_CONNECT_TIMEOUT_S": "1"}
    async with rig(tmp_path, env) as r:
        pulses = contextlib.AsyncExitStack()

        async def lock(hold_s: float | None) -> None:
            await pulses.enter_async_context(locked(r.pg.url, hold_s))

        await drill(r.prom, "ChatStorageSlowCommits", lambda: lock(0.4), pulses.aclose,
                    r.results)
        await drill(r.prom, "ChatStorageHighErrorRatio", lambda: lock(None), pulses.aclose,
                    r.results)
        await drill(r.prom, "ChatStorageRedisFailing", r.redis.stop, r.redis.start, r.results)
        await drill(r.prom, "ChatStorageDatabaseUnavailable",
                    lambda: asyncio.to_thread(r.pg.stop), lambda: asyncio.to_thread(r.pg.start),
                    r.results)
        print(f"fire drills: {len(r.results)} alerts in {time.monotonic() - start:.0f}s")
        assert set(r.results) == {"ChatStorageHighErrorRatio", "ChatStorageSlowCommits",
                                  "ChatStorageRedisFailing", "ChatStorageDatabaseUnavailable"}


async def test_ingest_lag_and_a_dead_replicas_streams_fire_and_resolve(tmp_path: Path) -> None:
    """Two replicas in async ingest mode on one throwaway Postgres and Redis:
    ``ChatStorageIngestLagGrowing`` while the consumers cannot commit (``sessions`` is
    locked), then ``ChatStorageStreamsSwept`` when a replica is SIGKILLed mid-answer and
    the other stores its stream ``interrupted``."""
    start = time.monotonic()
    # an orphaned stream is swept after about 1 + 3 + 5 s without its replica
    env = {"CHAT_INGEST_MODE": "async", "CHAT_STREAM_GRACE_S": "1",
           "CHAT_DB_ACQUIRE_TIMEOUT_S": "1", "CHAT_DB_CONNECT_TIMEOUT_S": "1"}
    async with rig(tmp_path, env, replicas=2) as r, aiohttp.ClientSession() as http:
        doomed = r.servers[0]
        held = contextlib.AsyncExitStack()

        async def lock() -> None:
            await held.enter_async_context(locked(r.pg.url, None))

        await drill(r.prom, "ChatStorageIngestLagGrowing", lock, held.aclose, r.results)
        assert 202 in r.traffic.statuses  # accepted while the consumers were stuck

        async def kill_a_replica_mid_answer() -> None:
            ws = await http.ws_connect(f"{doomed.base}/api/v1/sessions/{r.session_id}/ws",
                                       headers=r.tenant.headers)
            await ws.send_json({"type": "stream.start", "ref": "s"})
            async with asyncio.timeout(10):
                frame: dict[str, object] = {}
                while frame.get("ref") != "s":
                    frame = await ws.receive_json()
            assert frame["type"] == "stream.started", frame
            await ws.send_json({"type": "stream.delta", "stream_id": frame["stream_id"],
                                "delta": "half an answer"})
            doomed.signal(signal.SIGKILL)
            await doomed.exited(10)
            await ws.close()

        async def nothing_to_fix() -> None:
            """The stream is stored `interrupted`: the alert resolves on its own."""

        await drill(r.prom, "ChatStorageStreamsSwept", kill_a_replica_mid_answer,
                    nothing_to_fix, r.results)
        print(f"fire drills: {len(r.results)} alerts in {time.monotonic() - start:.0f}s")
        assert set(r.results) == {"ChatStorageIngestLagGrowing", "ChatStorageStreamsSwept"}
