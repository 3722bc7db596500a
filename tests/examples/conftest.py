"""Fixtures of the examples' tests: a real chat-storage server, a tenant, and a helper
that runs an example as a process of its own (the client from clients/python/src)."""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import TEST_SECRET_KEY, Tenant, make_tenant
from tests.support.procs import Server, clean_env

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CLIENT_SRC = ROOT / "clients" / "python" / "src"
if str(CLIENT_SRC) not in sys.path:  # as tests/clients/conftest.py: the client's source
    sys.path.insert(0, str(CLIENT_SRC))


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    proc = Server(database_url, tmp_path / f"server-{secrets.token_hex(3)}.log",
                  env={"CHAT_SECRET_KEY": TEST_SECRET_KEY})  # it mints user tokens
    await proc.start()
    try:
        yield proc
    finally:
        await proc.kill()


@pytest.fixture
async def tenant(pool: asyncpg.Pool) -> Tenant:
    return await make_tenant(pool, "example")


def example_env(server: Server, tenant: Tenant) -> dict[str, str]:
    """What an example reads: the server's URL and the tenant's key."""
    return clean_env(CHAT_STORAGE_URL=server.base, CHAT_STORAGE_API_KEY=tenant.key,
                     PYTHONPATH=str(CLIENT_SRC))
