"""What ``restore`` (and ``backup``) refuse, and that each refusal leaves the target as it was.

Each check is a guard of runtime/restore.py: a backup of a newer schema, a target that
is not empty, a damaged dump, a manifest of another format, and restored rows that
differ from the manifest's counts or checksums. Real Postgres, the real command, a
backup directory and the local object store.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chat_storage.runtime.pgtools import connection
from chat_storage.runtime.settings import DEFAULT_MIGRATIONS_DIR
from chat_storage.storage import db
from tests.conftest import ADMIN_URL, make_tenant
from tests.support import backupkit, scratch

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def backup(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One backup of a small database (a tenant, its key): the directory and its env."""
    async def make() -> tuple[str, str]:
        name = f"chat_bk_r_{secrets.token_hex(4)}"
        url = await scratch.create(ADMIN_URL, name, DEFAULT_MIGRATIONS_DIR)
        pool = await db.create_pool(url, min_size=1, max_size=1)
        try:
            await make_tenant(pool, "r")
        finally:
            await pool.close()
        return name, url

    name, url = asyncio.run(make())
    base = tmp_path_factory.mktemp("backup")
    env = {"DATABASE_URL": url, "CHAT_DATA_DIR": str(base / "data")}
    done = backupkit.cli("backup", "--to", str(base / "b"), **env)
    assert done.returncode == 0, done.stderr
    yield base / "b", env
    asyncio.run(scratch.drop(ADMIN_URL, name))


@pytest.fixture
async def empty_db() -> AsyncIterator[str]:
    name = f"chat_bk_e_{secrets.token_hex(4)}"
    url = await scratch.create(ADMIN_URL, name)
    yield url
    await scratch.drop(ADMIN_URL, name)


async def relations(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        found: int = await conn.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public'")
        return found
    finally:
        await conn.close()


def altered(source: Path, into: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the backup ``source`` whose manifest ``change`` edited."""
    shutil.copytree(source, into)
    manifest = json.loads((into / "manifest.json").read_text())
    change(manifest)
    (into / "manifest.json").write_text(json.dumps(manifest))
    return into


def restore(location: Path, url: str, tmp_path: Path) -> Any:
    return backupkit.cli("restore", "--from", str(location), DATABASE_URL=url,
                         CHAT_DATA_DIR=str(tmp_path / "data"))


async def test_a_plain_restore_works_and_a_second_one_is_refused(
    backup: Any, empty_db: str, tmp_path: Path
) -> None:
    location, _ = backup
    assert restore(location, empty_db, tmp_path).returncode == 0
    before = await backupkit.rows(empty_db)
    again = restore(location, empty_db, tmp_path)
    assert again.returncode == 1
    assert "not empty" in again.stderr and "Traceback" not in again.stderr
    assert await backupkit.rows(empty_db) == before


def bump_schema(m: dict[str, Any]) -> None:
    m["schema_version"] += 1


def other_format(m: dict[str, Any]) -> None:
    m["format"] = "chat-storage-backup/99"


def damage_dump(location: Path) -> None:
    dump = location / "database.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))


@pytest.mark.parametrize(("change", "damage", "said"), [
    (bump_schema, None, "newer than this release"),
    (other_format, None, "format"),
    (None, damage_dump, "is damaged"),
])
async def test_a_refused_backup_leaves_the_target_empty(
    backup: Any, empty_db: str, tmp_path: Path, change: Any, damage: Any, said: str
) -> None:
    location, _ = backup
    copy = altered(location, tmp_path / "copy", change or (lambda m: None))
    if damage is not None:
        damage(copy)
    done = restore(copy, empty_db, tmp_path)
    assert done.returncode == 1
    assert said in done.stderr and "Traceback" not in done.stderr
    assert await relations(empty_db) == 0


def fewer_tenants(m: dict[str, Any]) -> None:
    m["tables"]["tenants"] -= 1


def another_checksum(m: dict[str, Any]) -> None:
    tenant = next(t for t in m["tenants"] if t != "-")
    m["tenants"][tenant] = "0" * 64


@pytest.mark.parametrize(("change", "said"), [
    (fewer_tenants, "in the rows of tenants"),
    (another_checksum, "tenants differ from the backup's checksums"),
])
async def test_restored_rows_that_differ_from_the_manifest_fail_the_restore(
    backup: Any, empty_db: str, tmp_path: Path, change: Any, said: str
) -> None:
    location, _ = backup
    done = restore(altered(location, tmp_path / "copy", change), empty_db, tmp_path)
    assert done.returncode == 1
    assert said in done.stderr


def test_a_backup_never_overwrites_one_and_keeps_its_files_private(backup: Any) -> None:
    location, env = backup
    manifest = (location / "manifest.json").read_bytes()
    again = backupkit.cli("backup", "--to", str(location), **env)
    assert again.returncode == 1 and "already holds a backup" in again.stderr
    assert (location / "manifest.json").read_bytes() == manifest
    assert stat.S_IMODE(location.stat().st_mode) == 0o700
    for path in location.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_password_goes_to_the_tools_in_the_environment_not_on_the_command_line() -> None:
    bare, env = connection("postgresql://app:s%3Acret@db.internal:5433/chat?sslmode=require")
    assert bare == "postgresql://app@db.internal:5433/chat?sslmode=require"
    assert env == {"PGPASSWORD": "s:cret"}
    assert connection("postgresql://app@127.0.0.1/chat") == ("postgresql://app@127.0.0.1/chat", {})
