"""Fixtures of the client tests: a real ``chat-storage serve`` process and a tenant.

The client is its own distribution (clients/python). The main test extra cannot name
it by a relative path (pip needs an absolute ``file://`` URL there), so these tests
import it from ``clients/python/src`` (put on ``sys.path`` here), and
tests/clients/test_package.py checks that ``pip install ./clients/python`` builds and
installs it into a fresh virtual environment.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import Tenant, make_tenant
from tests.support.cutproxy import CutProxy
from tests.support.procs import Server

CLIENT_ROOT = Path(__file__).resolve().parents[2] / "clients" / "python"
if str(CLIENT_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(CLIENT_ROOT / "src"))


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    """``chat-storage serve`` on the test database, on a loopback port of its own."""
    proc = Server(database_url, tmp_path / f"server-{secrets.token_hex(3)}.log",
                  env={"CHAT_STREAM_GRACE_S": "30"})
    await proc.start()
    try:
        yield proc
    finally:
        await proc.kill()


@pytest.fixture
async def tenant(pool: asyncpg.Pool) -> Tenant:
    return await make_tenant(pool, "sdk")


@pytest.fixture
async def proxy(server: Server) -> AsyncIterator[CutProxy]:
    """A proxy in front of ``server`` whose connections the test can cut."""
    p = await CutProxy(server.port).start()
    try:
        yield p
    finally:
        await p.close()
