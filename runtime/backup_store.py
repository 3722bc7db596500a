"""Where a backup lives: a directory, or a prefix of an S3 bucket (``s3://bucket/prefix``).

A backup is a few named files: ``manifest.json``, ``database.dump`` and
``objects/<key>`` for each attachment file. The S3 location uses the service's S3
endpoint and credentials (``S3_ENDPOINT_URL``, ``S3_ACCESS_KEY_ID``, ...), in a bucket
that should be another than ``S3_BUCKET`` (see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Protocol

from chat_storage.runtime.settings import Settings
from chat_storage.storage.objects import S3Store

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")


class BackupLocationError(OSError):
    """The location is malformed, missing, or holds what it must not."""


def check_name(name: str) -> str:
    """``name`` if it is a relative path of plain parts (no ``..``, no leading ``/``)."""
    parts = name.split("/")
    if not parts or not all(_PART.match(p) for p in parts):
        raise BackupLocationError(f"refusing the file name {name!r} in a backup")
    return name


class BackupStore(Protocol):
    """The files of one backup."""

    where: str

    async def exists(self, name: str) -> bool: ...
    async def put_bytes(self, name: str, data: bytes) -> None: ...
    async def put_file(self, name: str, path: Path) -> None: ...
    async def get_bytes(self, name: str) -> bytes: ...
    async def get_file(self, name: str, path: Path) -> None: ...
    async def close(self) -> None: ...


class DirBackupStore:
    """A backup in a directory of this machine (made if it does not exist).

    It holds every conversation: its directories are ``0700`` and its files ``0600``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    async def exists(self, name: str) -> bool:
        return self._path(name).exists()

    async def put_bytes(self, name: str, data: bytes) -> None:
        path = self._path(name)
        await asyncio.to_thread(_write, path, data)

    async def put_file(self, name: str, path: Path) -> None:
        target = self._path(name)
        await asyncio.to_thread(_copy, path, target)

    async def get_bytes(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise BackupLocationError(f"{path} does not exist") from None

    async def get_file(self, name: str, path: Path) -> None:
        source = self._path(name)
        if not source.exists():
            raise BackupLocationError(f"{source} does not exist")
        await asyncio.to_thread(shutil.copyfile, source, path)

    async def close(self) -> None:
        return None


def _private_file(path: Path) -> Path:
    """A new ``.partial`` file beside ``path``, readable by its owner alone."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    partial.touch(mode=0o600)
    return partial


def _write(path: Path, data: bytes) -> None:
    partial = _private_file(path)
    partial.write_bytes(data)
    partial.replace(path)


def _copy(source: Path, path: Path) -> None:
    partial = _private_file(path)
    shutil.copyfile(source, partial)
    partial.replace(path)


class S3BackupStore:
    """A backup under ``prefix/`` in an S3 bucket."""

    def __init__(self, store: S3Store, prefix: str) -> None:
        self._store = store
        self._prefix = prefix.strip("/")
        self.where = f"s3://{store.bucket}/{self._prefix}"

    def _key(self, name: str) -> str:
        check_name(name)
        return f"{self._prefix}/{name}" if self._prefix else name

    async def exists(self, name: str) -> bool:
        return await self._store.stat(self._key(name)) is not None

    async def put_bytes(self, name: str, data: bytes) -> None:
        await self._store.put(self._key(name), data, "application/octet-stream")

    async def put_file(self, name: str, path: Path) -> None:
        await self._store.put_file(self._key(name), path, "application/octet-stream")

    async def get_bytes(self, name: str) -> bytes:
        if not await self.exists(name):
            raise BackupLocationError(f"{self.where}/{name} does not exist")
        return b"".join([chunk async for chunk in self._store.read(self._key(name))])

    async def get_file(self, name: str, path: Path) -> None:
        if not await self.exists(name):
            raise BackupLocationError(f"{self.where}/{name} does not exist")
        with path.open("wb") as out:
            async for chunk in self._store.read(self._key(name)):
                out.write(chunk)

    async def close(self) -> None:
        await self._store.close()


async def open_location(location: str, settings: Settings) -> BackupStore:
    """The backup store ``location`` names: ``s3://bucket[/prefix]`` or a directory."""
    if not location.startswith("s3://"):
        if "://" in location:
            raise BackupLocationError(f"{location!r}: give a directory or s3://bucket/prefix")
        return DirBackupStore(Path(location))  # the shell expands ~
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    if not bucket:
        raise BackupLocationError(f"{location!r} names no bucket")
    store = await S3Store.open(
        bucket, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key)
    try:
        await store.check()
    except BaseException:
        await store.close()
        raise
    return S3BackupStore(store, prefix)
