"""The migrations runner against real Postgres, each test on a new, empty database."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from chat_storage.runtime.settings import DEFAULT_MIGRATIONS_DIR
from chat_storage.storage import locks, migrations
from chat_storage.storage.errors import MigrationError
from tests.support import scratch

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ALL_VERSIONS = [m.version for m in migrations.discover(DEFAULT_MIGRATIONS_DIR)]


@pytest.fixture
async def empty_db() -> AsyncIterator[str]:
    """The URL of a new database with nothing in it, dropped after the test."""
    name = f"chat_test_migr_{secrets.token_hex(4)}"
    url = await scratch.create(ADMIN_URL, name)
    try:
        yield url
    finally:
        await scratch.drop(ADMIN_URL, name)


@pytest.fixture
def sql_copy(tmp_path: Path) -> Path:
    """A copy of ``sql/`` that a test may edit."""
    return Path(shutil.copytree(DEFAULT_MIGRATIONS_DIR, tmp_path / "sql"))


def first_file(directory: Path) -> Path:
    return sorted(directory.glob("*.sql"))[0]


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


async def applied_rows(conn: asyncpg.Connection) -> list[tuple[int, str, str]]:
    rows = await conn.fetch(
        "SELECT version, checksum, applied_at::text FROM schema_migrations ORDER BY version"
    )
    return [(r["version"], r["checksum"], r["applied_at"]) for r in rows]


async def test_applied_twice_is_a_noop(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        assert await migrations.pending(conn, DEFAULT_MIGRATIONS_DIR) == ALL_VERSIONS
        assert await migrations.migrate(conn, DEFAULT_MIGRATIONS_DIR) == ALL_VERSIONS
        before = await applied_rows(conn)
        assert [row[0] for row in before] == ALL_VERSIONS

        assert await migrations.migrate(conn, DEFAULT_MIGRATIONS_DIR) == []
        assert await applied_rows(conn) == before
        assert await migrations.pending(conn, DEFAULT_MIGRATIONS_DIR) == []
    finally:
        await conn.close()


async def test_a_new_file_is_applied_alone(empty_db: str, sql_copy: Path) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        await migrations.migrate(conn, sql_copy)
        version = ALL_VERSIONS[-1] + 1
        (sql_copy / f"{version:04d}_extra_table.sql").write_text("CREATE TABLE extra (x int);\n")
        assert await migrations.pending(conn, sql_copy) == [version]
        assert await migrations.migrate(conn, sql_copy) == [version]
        assert await conn.fetchval("SELECT to_regclass('extra') IS NOT NULL")
    finally:
        await conn.close()


async def test_edited_applied_migration_raises(empty_db: str, sql_copy: Path) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        await migrations.migrate(conn, sql_copy)
        append(first_file(sql_copy), "\n-- a harmless-looking edit\n")
        with pytest.raises(MigrationError, match="edited after it was applied"):
            await migrations.migrate(conn, sql_copy)
        # the advisory lock was released despite the error
        other = await asyncpg.connect(empty_db)
        try:
            assert await other.fetchval("SELECT pg_try_advisory_lock($1)", locks.MIGRATIONS_LOCK)
        finally:
            await other.close()
    finally:
        await conn.close()


async def test_failed_migration_is_rolled_back(empty_db: str, sql_copy: Path) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        await migrations.migrate(conn, sql_copy)
        version = ALL_VERSIONS[-1] + 1
        (sql_copy / f"{version:04d}_broken.sql").write_text(
            "CREATE TABLE half_done (x int);\nSELEC oops;\n"
        )
        with pytest.raises(MigrationError, match="failed"):
            await migrations.migrate(conn, sql_copy)
        assert not await conn.fetchval("SELECT to_regclass('half_done') IS NOT NULL")
        assert [row[0] for row in await applied_rows(conn)] == ALL_VERSIONS
    finally:
        await conn.close()


def test_badly_named_file_is_refused(sql_copy: Path) -> None:
    (sql_copy / "2_no_padding.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        migrations.discover(sql_copy)


async def test_concurrent_migrations_apply_once(empty_db: str) -> None:
    """Two replicas starting together: the advisory lock lets one apply each file."""
    first, second = await asyncpg.connect(empty_db), await asyncpg.connect(empty_db)
    try:
        results = await asyncio.gather(
            migrations.migrate(first, DEFAULT_MIGRATIONS_DIR),
            migrations.migrate(second, DEFAULT_MIGRATIONS_DIR),
        )
        assert sorted(results, key=len) == [[], ALL_VERSIONS]
        assert [row[0] for row in await applied_rows(first)] == ALL_VERSIONS
    finally:
        await first.close()
        await second.close()
