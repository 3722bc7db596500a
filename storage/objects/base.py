"""The object store's interface, and the helpers that work on any store.

Files never pass through the service's request handlers for the API: clients get
presigned URLs and talk to the store directly. Two stores have this shape:
:class:`storage.objects.s3.S3Store` (S3 or an S3-compatible server) and
:class:`storage.objects.local.LocalStore` (a directory; its URLs are signed by the
service and served by ``server.objects``).

A key is chosen by the service (``tenant/session/attachment``); a client never names one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol
from urllib.parse import quote

from prometheus_client import Counter

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
DELETE_FAILURES = Counter("chat_object_delete_failures_total",
                          "Objects of deleted rows that the store failed to delete (logged)")
STORE_ERRORS = Counter("chat_object_store_errors_total",
                       "Calls to the object store that failed, by operation", ["op"])


@dataclasses.dataclass(frozen=True, slots=True)
class Upload:
    """How to upload one file: send ``method`` to ``url`` with exactly these headers."""

    url: str
    method: str
    headers: Mapping[str, str]
    expires_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store says of a stored object; ``sha256`` (hex) when it keeps one."""

    size: int
    sha256: str | None = None


class ObjectStore(Protocol):
    async def upload_url(self, key: str, *, size: int, mime: str, sha256: str,
                         expires_s: int) -> Upload:
        """A URL that stores exactly this file under ``key``."""

    async def download_url(self, key: str, *, name: str, mime: str, expires_s: int) -> str:
        """A URL that reads ``key``, served as a download named ``name``."""

    async def stat(self, key: str) -> ObjectInfo | None:
        """The object's size (and checksum, if the store has one); None if absent."""

    def read(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes, in chunks."""

    async def put(self, key: str, data: bytes, mime: str) -> None:
        """Store ``data`` under ``key`` (for files the service makes, like archives)."""

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete ``keys``; a missing key is not an error."""

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix`` (a "directory" ending in ``/``)."""

    async def close(self) -> None:
        """Release connections."""


class Mismatch(Exception):
    """The stored object is not the file that was announced; the message says how."""


async def verify(store: ObjectStore, key: str, *, size: int, sha256: str) -> None:
    """Raise :class:`Mismatch` unless ``key`` holds ``size`` bytes hashing to ``sha256``.

    A store that reports the object's SHA-256 (S3 does, for uploads made with the
    checksum header its URLs require) is believed; otherwise the object is read and
    hashed here, which costs one download of at most the attachment size limit.
    """
    info = await store.stat(key)
    if info is None:
        raise Mismatch("no file was uploaded")
    if info.size != size:
        raise Mismatch(f"the uploaded file has {info.size} bytes, not {size}")
    digest = info.sha256
    if digest is None:
        h = hashlib.sha256()
        async for chunk in store.read(key):
            h.update(chunk)
        digest = h.hexdigest()
    if digest != sha256:
        raise Mismatch("the uploaded file's sha256 differs from the one announced")


async def discard_keys(store: ObjectStore, keys: Sequence[str], target: str) -> None:
    """Delete the objects of attachment rows that were just deleted (after the commit).

    A failure is logged with the keys, never raised: the rows are gone, and the caller
    has nothing to undo. An operator can delete the logged keys later.
    """
    if not keys:
        return
    try:
        await store.delete(keys)
    except Exception:
        DELETE_FAILURES.inc(len(keys))
        log.exception("objects could not be deleted",
                      extra={"target": target, "object_keys": list(keys)})


def expires_at(seconds: int) -> dt.datetime:
    """Now plus ``seconds``, to the second, in UTC."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=seconds)


def content_disposition(name: str) -> str:
    """A download header for ``name``: ASCII fallback plus the exact UTF-8 name."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
                       for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
