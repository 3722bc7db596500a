"""Apply ``sql/NNNN_name.sql`` files in order, each once, in its own transaction.

Runs under a Postgres advisory lock so replicas starting together apply each file
exactly once. A checksum of every applied file is kept: editing a file after it was
applied stops start-up instead of leaving databases that differ silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from pathlib import Path

import asyncpg

from chat_storage.storage.errors import MigrationError
from chat_storage.storage.locks import MIGRATIONS_LOCK, advisory_lock

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file: its version number, name, text and checksum."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path) -> list[Migration]:
    """Read the migrations in ``directory``, ordered by version."""
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: expected NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations have version {version}")
        found[version] = Migration(version, match.group(2), path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def migrate(conn: asyncpg.Connection, directory: Path) -> list[int]:
    """Apply every pending migration; return the versions applied now."""
    migrations = discover(directory)
    async with advisory_lock(conn, MIGRATIONS_LOCK):
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version     integer PRIMARY KEY,
                name        text NOT NULL,
                checksum    text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {r["version"]: r for r in rows}
        done: list[int] = []
        for m in migrations:
            row = applied.get(m.version)
            if row is not None:
                if row["checksum"] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name} was edited after it was applied"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        m.version, m.name, m.checksum,
                    )
            except asyncpg.PostgresError as exc:
                # rolled back whole: the database stays at the previous version
                raise MigrationError(
                    f"migration {m.version:04d}_{m.name} failed: {exc}"
                ) from exc
            log.info("migration applied", extra={"version": m.version, "migration": m.name})
            done.append(m.version)
        return done


async def pending(conn: asyncpg.Connection, directory: Path) -> list[int]:
    """Versions not applied yet (for ``/readyz``); all of them if nothing is applied."""
    wanted = [m.version for m in discover(directory)]
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return wanted
    have = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [v for v in wanted if v not in have]


async def applied_versions(conn: asyncpg.Connection) -> list[int]:
    """The versions applied to this database, in order."""
    rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [r["version"] for r in rows]
