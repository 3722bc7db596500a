"""Throwaway databases: made migrated or empty, dropped even with connections open."""

from __future__ import annotations

import secrets

import asyncpg

from chat_storage.runtime.settings import DEFAULT_MIGRATIONS_DIR
from tests.conftest import ADMIN_URL
from tests.support import scratch


async def _exists(name: str) -> bool:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        return bool(await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await admin.close()


async def test_create_migrated_then_drop_with_a_connection_still_open() -> None:
    name = f"chat_test_scratch_{secrets.token_hex(4)}"
    url = await scratch.create(ADMIN_URL, name, DEFAULT_MIGRATIONS_DIR)
    assert url == scratch.url_of(ADMIN_URL, name) and url.endswith(f"/{name}")
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT to_regclass('messages') IS NOT NULL")
        await scratch.drop(ADMIN_URL, name)  # FORCE: the open connection does not stop it
    finally:
        await conn.close()
    assert not await _exists(name)
    await scratch.drop(ADMIN_URL, name)  # dropping what is gone is not an error


async def test_create_without_migrations_is_empty() -> None:
    name = f"chat_test_scratch_{secrets.token_hex(4)}"
    url = await scratch.create(ADMIN_URL, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT to_regclass('messages')") is None
        finally:
            await conn.close()
    finally:
        await scratch.drop(ADMIN_URL, name)
