"""``chat-storage restore``: a backup into the empty database of ``DATABASE_URL``.

Checked before anything is written: the manifest (its format), the schema version (a
backup of a newer release is refused: this code could not serve it), the target (it
must hold no table, view or sequence: a restore never merges), the dump's size and
SHA-256. ``pg_restore`` then loads it in one transaction, so a failure leaves the
database empty. Afterwards the row counts and the per-tenant checksums are computed
again and compared with the manifest, and every attachment file is checked against
its SHA-256 as it is put back into the service's object store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import tempfile
import time
from pathlib import Path

import asyncpg

from chat_storage.runtime import pgtools
from chat_storage.runtime.backup import COPY_AT_ONCE, database_dsn, file_digest, tool
from chat_storage.runtime.backup_store import BackupStore, open_location
from chat_storage.runtime.manifest import (
    DATABASE_DUMP,
    MANIFEST,
    OBJECTS_DIR,
    Manifest,
    ObjectEntry,
)
from chat_storage.runtime.objects import store_from_settings
from chat_storage.runtime.settings import Settings
from chat_storage.storage import migrations, snapshot
from chat_storage.storage.objects import ObjectStore


class RestoreError(Exception):
    """The backup cannot be restored here, or what was restored differs from it."""


@dataclasses.dataclass(frozen=True, slots=True)
class RestoreReport:
    """What ``restore`` printed."""

    location: str
    schema_version: int
    rows: int
    tenants: int
    objects: int
    object_bytes: int
    seconds: float


async def restore(settings: Settings, location: str) -> RestoreReport:
    """Restore the backup at ``location`` into the settings' (empty) database and store."""
    started = time.monotonic()
    source = await open_location(location, settings)
    try:
        manifest = Manifest.from_json(await source.get_bytes(MANIFEST))
        newest = max((m.version for m in migrations.discover(settings.migrations_dir)),
                     default=0)
        if manifest.schema_version > newest:
            raise RestoreError(
                f"the backup has schema version {manifest.schema_version:04d}, newer than "
                f"this release's {newest:04d}: restore it with the release that made it")
        dsn = await database_dsn(settings)
        await _check_empty(dsn, settings)
        with tempfile.TemporaryDirectory(prefix="chat-restore-") as scratch:
            dump = Path(scratch) / DATABASE_DUMP
            await source.get_file(DATABASE_DUMP, dump)
            digest, size = await asyncio.to_thread(file_digest, dump)
            if (digest, size) != (manifest.dump_sha256, manifest.dump_bytes):
                raise RestoreError(f"{DATABASE_DUMP} is damaged: {size} bytes and a SHA-256 "
                                   "other than the manifest's")
            await pgtools.run(
                tool("pg_restore", settings),
                ["--exit-on-error", "--single-transaction", "--no-owner", "--no-privileges",
                 str(dump)], dsn=dsn)
        await _check_rows(dsn, settings, manifest)
        await _put_objects(settings, source, manifest)
        return RestoreReport(
            location=source.where, schema_version=manifest.schema_version,
            rows=sum(manifest.tables.values()), tenants=len(manifest.tenants),
            objects=len(manifest.objects),
            object_bytes=sum(o.size for o in manifest.objects),
            seconds=round(time.monotonic() - started, 3))
    finally:
        await source.close()


async def _check_empty(dsn: str, settings: Settings) -> None:
    conn = await asyncpg.connect(dsn, timeout=settings.db_connect_timeout_s)
    try:
        found = await snapshot.user_relations(conn)
    finally:
        await conn.close()
    if found:
        raise RestoreError(f"the target database is not empty ({found} tables, views or "
                           "sequences): restore only into a new, empty database")


async def _check_rows(dsn: str, settings: Settings, manifest: Manifest) -> None:
    """Compare the restored rows with the manifest; :class:`RestoreError` naming what differs."""
    conn = await asyncpg.connect(dsn, timeout=settings.db_connect_timeout_s)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await snapshot.fix_text_forms(conn)
            names = await snapshot.tables(conn)
            counts = await snapshot.row_counts(conn, names)
            checksums = await snapshot.tenant_checksums(conn, names)
    finally:
        await conn.close()
    wrong = sorted(t for t in counts.keys() | manifest.tables.keys()
                   if counts.get(t) != manifest.tables.get(t))
    if wrong:
        raise RestoreError("the restored database differs from the backup in the rows of "
                           + ", ".join(wrong))
    tenants = sorted(t for t in checksums.keys() | manifest.tenants.keys()
                     if checksums.get(t) != manifest.tenants.get(t))
    if tenants:
        raise RestoreError(f"the restored rows of {len(tenants)} tenants differ from the "
                           f"backup's checksums (first: {tenants[0]})")


async def _put_objects(settings: Settings, source: BackupStore, manifest: Manifest) -> None:
    if not manifest.objects:
        return
    store = await store_from_settings(settings)
    try:
        for start in range(0, len(manifest.objects), COPY_AT_ONCE):
            batch = manifest.objects[start:start + COPY_AT_ONCE]
            await asyncio.gather(*(_put_one(source, store, entry) for entry in batch))
    finally:
        await store.close()


async def _put_one(source: BackupStore, store: ObjectStore, entry: ObjectEntry) -> None:
    data = await source.get_bytes(f"{OBJECTS_DIR}/{entry.key}")
    if hashlib.sha256(data).hexdigest() != entry.sha256 or len(data) != entry.size:
        raise RestoreError(f"the backup's file of {entry.key} is damaged")
    await store.put(entry.key, data, entry.mime)

