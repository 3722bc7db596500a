"""``chat-storage backup``: the database in one snapshot, its attachment files, a manifest.

One ``REPEATABLE READ`` transaction exports its snapshot; ``pg_dump --snapshot`` dumps
exactly that state while the same transaction reads the manifest's facts (row counts,
checksums per tenant, the attachment rows), so dump and manifest agree even while the
service keeps writing. Attachment files are immutable once uploaded; a file deleted
after the snapshot (its message tombstoned meanwhile) is listed as missing, not lost
silently. The manifest is written last: its presence marks a complete backup.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import tempfile
import time
from importlib import metadata
from pathlib import Path

import asyncpg

from chat_storage.runtime import pgtools
from chat_storage.runtime.backup_store import BackupLocationError, BackupStore, open_location
from chat_storage.runtime.manifest import (
    DATABASE_DUMP,
    MANIFEST,
    OBJECTS_DIR,
    Manifest,
    ObjectEntry,
)
from chat_storage.runtime.objects import store_from_settings
from chat_storage.runtime.settings import Settings
from chat_storage.storage import embedded, snapshot
from chat_storage.storage.crypto.files import parse_header
from chat_storage.storage.objects import ObjectStore

COPY_AT_ONCE = 8  # attachment files copied concurrently


class BackupError(Exception):
    """The backup cannot be made as asked; nothing was marked complete."""


@dataclasses.dataclass(frozen=True, slots=True)
class BackupReport:
    """What ``backup`` printed: where, how much, how long."""

    location: str
    schema_version: int
    rows: int
    tenants: int
    dump_bytes: int
    objects: int
    object_bytes: int
    missing_objects: int
    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class _Facts:
    schema_version: int
    postgres_version: str
    tables: dict[str, int]
    tenants: dict[str, str]
    objects: list[snapshot.StoredObject]


async def database_dsn(settings: Settings) -> str:
    """The DSN of the settings' database (starting the embedded server if it is used)."""
    if settings.database_url is not None:
        return settings.database_url
    return await asyncio.to_thread(embedded.start, settings.data_dir)


def tool(program: str, settings: Settings) -> str:
    """``pg_dump`` or ``pg_restore``, matching the embedded server when that is used."""
    return pgtools.find(program, data_dir=settings.data_dir if settings.embedded else None)


def service_version() -> str:
    """The installed chat-storage version, written into the manifest."""
    try:
        return metadata.version("chat-storage")
    except metadata.PackageNotFoundError:
        return "unknown"


async def backup(settings: Settings, location: str) -> BackupReport:
    """Back up the settings' database and attachment files to ``location``."""
    started = time.monotonic()
    target = await open_location(location, settings)
    try:
        if await target.exists(MANIFEST):
            raise BackupLocationError(f"{target.where} already holds a backup")
        with tempfile.TemporaryDirectory(prefix="chat-backup-") as scratch:
            dump = Path(scratch) / DATABASE_DUMP
            facts = await _dump(settings, dump)
            entries, missing = await _copy_objects(settings, target, facts.objects)
            digest, size = await asyncio.to_thread(file_digest, dump)
            await target.put_file(DATABASE_DUMP, dump)
        manifest = Manifest(
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            service_version=service_version(), postgres_version=facts.postgres_version,
            schema_version=facts.schema_version, dump_bytes=size, dump_sha256=digest,
            tables=facts.tables, tenants=facts.tenants, objects=entries,
            missing_objects=missing)
        await target.put_bytes(MANIFEST, manifest.to_json())
        return BackupReport(
            location=target.where, schema_version=facts.schema_version,
            rows=sum(facts.tables.values()), tenants=len(facts.tenants), dump_bytes=size,
            objects=len(entries), object_bytes=sum(e.size for e in entries),
            missing_objects=len(missing), seconds=round(time.monotonic() - started, 3))
    finally:
        await target.close()


async def _dump(settings: Settings, path: Path) -> _Facts:
    """``pg_dump`` of one snapshot into ``path``, and that snapshot's facts."""
    dsn = await database_dsn(settings)
    pg_dump = tool("pg_dump", settings)
    conn = await asyncpg.connect(dsn, timeout=settings.db_connect_timeout_s)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await snapshot.fix_text_forms(conn)
            version = await snapshot.schema_version(conn)
            if version is None:
                raise BackupError("the database has no chat-storage schema: nothing to back up")
            exported = await snapshot.export_snapshot(conn)
            proc = await pgtools.start(
                pg_dump, ["--format=custom", f"--snapshot={exported}", "--file", str(path),
                          *(f"--exclude-table-data={t}" for t in snapshot.NOT_BACKED_UP)],
                dsn=dsn)
            try:
                facts = await _read_facts(conn, version)
            except BaseException:
                proc.kill()
                await proc.wait()
                raise
            # the transaction stays open until pg_dump is done with its snapshot
            await pgtools.finish(pg_dump, proc)
            return facts
    finally:
        await conn.close()


async def _read_facts(conn: asyncpg.Connection, version: int) -> _Facts:
    names = await snapshot.tables(conn)
    return _Facts(
        schema_version=version,
        postgres_version=await snapshot.server_version(conn),
        tables=await snapshot.row_counts(conn, names),
        tenants=await snapshot.tenant_checksums(conn, names),
        objects=await snapshot.attachment_objects(conn),
    )


async def _copy_objects(settings: Settings, target: BackupStore,
                        wanted: list[snapshot.StoredObject],
                        ) -> tuple[list[ObjectEntry], list[str]]:
    """Copy the files of ``wanted`` into ``target``; the copied ones and the missing keys."""
    entries: list[ObjectEntry] = []
    missing: list[str] = []
    if not wanted:
        return entries, missing
    source = await store_from_settings(settings)
    try:
        for start in range(0, len(wanted), COPY_AT_ONCE):
            batch = wanted[start:start + COPY_AT_ONCE]
            copied = await asyncio.gather(*(_copy_one(source, target, o) for o in batch))
            for item, entry in zip(batch, copied, strict=True):
                if entry is None:
                    missing.append(item.key)
                else:
                    entries.append(entry)
    finally:
        await source.close()
    return entries, missing


async def _copy_one(source: ObjectStore, target: BackupStore,
                    item: snapshot.StoredObject) -> ObjectEntry | None:
    if await source.stat(item.key) is None:
        return None
    data = b"".join([chunk async for chunk in source.read(item.key)])
    digest = hashlib.sha256(data).hexdigest()
    # an encrypted tenant's file is copied sealed (no key goes into a backup): what it
    # holds is checked against the row by its header, the plain size and SHA-256
    sealed = parse_header(data)
    plain = (len(data), digest) if sealed is None else (sealed.size, sealed.sha256)
    if item.ready and plain != (item.size, item.sha256):
        raise BackupError(f"attachment file {item.key} differs from its row's size and "
                          "sha256: the object store holds another file than was uploaded")
    await target.put_bytes(f"{OBJECTS_DIR}/{item.key}", data)
    return ObjectEntry(key=item.key, mime=item.mime, size=len(data), sha256=digest)


def file_digest(path: Path) -> tuple[str, int]:
    """The SHA-256 (hex) and size of the file at ``path``."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
