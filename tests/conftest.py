"""Shared fixtures: a fresh database per test run, a real server per test, tenants.

Tests talk to the real Postgres (``TEST_DATABASE_URL``, default the local server) and
the real Redis (``TEST_REDIS_URL``). Each pytest run creates its own database and drops
it at the end, so runs never see each other's rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from chat_storage.runtime.settings import DEFAULT_MIGRATIONS_DIR, Settings
from chat_storage.server.app import create_app
from chat_storage.storage import apikeys, db, tenants
from chat_storage.supervisor import Supervisor
from tests.support import scratch

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def db_url(name: str) -> str:
    """The admin URL with its database replaced by ``name``."""
    return scratch.url_of(ADMIN_URL, name)


async def create_database(name: str) -> str:
    return await scratch.create(ADMIN_URL, name, DEFAULT_MIGRATIONS_DIR)


async def drop_database(name: str) -> None:
    await scratch.drop(ADMIN_URL, name)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated database of this test run's own."""
    name = f"chat_test_{os.getpid()}_{secrets.token_hex(4)}"
    url = asyncio.run(create_database(name))
    yield url
    asyncio.run(drop_database(name))


async def delete_keys(client: Redis, prefix: str) -> None:
    """Delete every key under ``prefix`` (``prefix:*``)."""
    async for key in client.scan_iter(match=f"{prefix}:*", count=500):
        await client.delete(key)


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    value = f"chat-test-{os.getpid()}-{secrets.token_hex(4)}"
    yield value
    client = Redis.from_url(REDIS_URL)
    try:
        await delete_keys(client, value)
    finally:
        await client.aclose()


@pytest.fixture
async def tasks() -> AsyncIterator[Supervisor]:
    """The owner of a test's background tasks; whatever is left is cancelled at the end."""
    supervisor = Supervisor()
    yield supervisor
    await supervisor.close(5.0)


# the server secret of test servers (seals the keys that sign user tokens)
TEST_SECRET_KEY = "test-secret-" + "0" * 32


@pytest.fixture
def settings(database_url: str, tmp_path: Any) -> Settings:
    """Settings for a test server: generous rate limits, small pool."""
    return Settings(
        database_url=database_url, data_dir=tmp_path, rate_limit_per_s=10_000.0,
        rate_limit_burst=10_000, db_pool_min=1, db_pool_max=10, actor_idle_s=30.0,
        secret_key=TEST_SECRET_KEY,
    )


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test database, for checking what the server stored."""
    p = await db.create_pool(database_url, min_size=1, max_size=4)
    yield p
    await p.close()


@dataclasses.dataclass(frozen=True)
class Tenant:
    name: str
    id: uuid.UUID
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.key}


async def make_tenant(pool: asyncpg.Pool, prefix: str = "t") -> Tenant:
    """A new tenant with one key."""
    name = f"{prefix}-{secrets.token_hex(6)}"
    async with pool.acquire() as conn:
        tenant_id = await tenants.create_tenant(conn, name)
        created = await apikeys.create_key(conn, name, name="test")
    return Tenant(name, tenant_id, created.key, created.id)


@pytest.fixture
async def tenant(pool: asyncpg.Pool) -> Tenant:
    return await make_tenant(pool, "a")


@pytest.fixture
async def other_tenant(pool: asyncpg.Pool) -> Tenant:
    return await make_tenant(pool, "b")


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> TestClient:  # type: ignore[type-arg]
    """A client of a real server on a real socket, running the whole app."""
    return await aiohttp_client(create_app(settings))


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto S3 server of this test run (see tests/support/motoserver.py)."""
    from tests.support import motoserver

    with motoserver.running(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture
async def s3_bucket(s3_endpoint: str) -> AsyncIterator[str]:
    """A new, empty bucket on the moto server."""
    from tests.support import motoserver

    async with motoserver.bucket(s3_endpoint) as name:
        yield name
