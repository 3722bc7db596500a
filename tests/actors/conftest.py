"""Fixtures of the actor tests: a registry on the real test database, sessions, a
cuttable proxy in front of Postgres, and a way to hold a session's row lock (which
makes every commit to that session wait, so a test can fill a mailbox on purpose)."""

from __future__ import annotations

import contextlib
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from chat_storage.actors.write.committer import Committer
from chat_storage.actors.write.config import WriteConfig
from chat_storage.actors.write.protocols import BatchSink, CommitListener
from chat_storage.actors.write.registry import Registry
from chat_storage.actors.write.shared import SharedCommitter
from chat_storage.storage import db, sessions
from chat_storage.storage.ids import new_id
from chat_storage.storage.messages import NewMessage, WriteGroup
from chat_storage.supervisor import Supervisor
from loadtest.direct import DirectCommitter
from tests.conftest import Tenant
from tests.support.pgproxy import PgProxy

MakeRegistry = Callable[..., Awaitable[Registry]]


def msg(content: str, **fields: Any) -> WriteGroup:
    """A write of one user message."""
    return WriteGroup([NewMessage(id=new_id(), role=fields.pop("role", "user"),
                                  content=content, **fields)])


def metric(name: str, **labels: str) -> float:
    """The current value of a sample of the process's Prometheus registry (0 if absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def new_session(pool: asyncpg.Pool, tenant: Tenant) -> uuid.UUID:
    async with pool.acquire() as conn:
        session = await sessions.create(conn, tenant.id, user_id="u1")
    return uuid.UUID(str(session["id"]))


async def stored(pool: asyncpg.Pool, session_id: uuid.UUID) -> list[asyncpg.Record]:
    """The session's messages in seq order."""
    return list(await pool.fetch(
        "SELECT id, seq, content FROM messages WHERE session_id = $1 ORDER BY seq", session_id))


@contextlib.asynccontextmanager
async def row_locked(pool: asyncpg.Pool, session_id: uuid.UUID) -> AsyncIterator[None]:
    """Hold the session's row lock: commits to it wait until the block ends."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session_id)
        yield


@pytest.fixture
async def make_registry(pool: asyncpg.Pool, tasks: Supervisor) -> AsyncIterator[MakeRegistry]:
    """Build started registries (on ``pool`` unless told otherwise); closed at the end."""
    made: list[Registry] = []

    async def make(*, on: asyncpg.Pool | None = None, idle_s: float = 30.0,
                   write_timeout_s: float = 10.0, shared: bool = True,
                   listener: CommitListener | None = None, **config: Any) -> Registry:
        cfg = WriteConfig(**config)
        committer = Committer(on or pool, cfg)
        # shared=False: one transaction per session batch (the benchmarks' comparison)
        sink: BatchSink = (SharedCommitter(committer, cfg, tasks) if shared
                           else DirectCommitter(committer, tasks))
        registry = Registry(sink, cfg, tasks=tasks, listener=listener, idle_s=idle_s,
                            write_timeout_s=write_timeout_s)
        registry.start()
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.close(5.0)


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[PgProxy]:
    """A proxy in front of the test database's server."""
    parts = urllib.parse.urlsplit(database_url)
    p = PgProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await p.start()
    yield p
    await p.close()


@pytest.fixture
async def proxied_pool(database_url: str, proxy: PgProxy) -> AsyncIterator[asyncpg.Pool]:
    """A pool whose connections go through ``proxy``."""
    parts = urllib.parse.urlsplit(database_url)
    url = urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    p = await db.create_pool(url, min_size=1, max_size=4)
    yield p
    p.terminate()
