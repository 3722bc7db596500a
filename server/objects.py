"""The object store at the edge: deleting a request's files, and the local store's URLs.

With the local store (no ``S3_BUCKET``) this module serves its URLs: ``PUT /objects/{token}``
stores an upload (only the announced file: size, type and SHA-256 are in the signed
token) and ``GET /objects/{token}`` serves a download. They take no API key: the
signed, expiring token is the grant, as a presigned S3 URL is.

For an encrypted tenant the upload is sealed under the session owner's data key as it
is written, and a download opens it (``server.sealed_download``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import asyncpg
from aiohttp import web

from chat_storage.server import sealed_download
from chat_storage.server.errors import ApiError
from chat_storage.server.handlers import run
from chat_storage.server.state import LOCAL_KEY, OBJECTS_KEY, keyring_of
from chat_storage.storage import attachments
from chat_storage.storage.crypto.files import Damaged, Sealer, read_header
from chat_storage.storage.crypto.keyring import DataKey
from chat_storage.storage.objects import CHUNK_BYTES, LocalStore, content_disposition, discard_keys
from chat_storage.storage.objects.local import PREFIX, BadToken, UploadRefused

log = logging.getLogger(__name__)


async def discard(app: web.Application, keys: Sequence[str], target: str) -> None:
    """:func:`discard_keys` with the app's store."""
    await discard_keys(app[OBJECTS_KEY], keys, target)


def _local(request: web.Request, method: str) -> tuple[LocalStore, dict[str, object]]:
    store = request.app.get(LOCAL_KEY)
    if store is None:  # files are in S3; these URLs are not ours
        raise ApiError(404, "not found")
    try:
        return store, store.open_token(request.match_info["token"], method)
    except BadToken as exc:
        raise ApiError(403, str(exc)) from None


async def _chunks(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        yield chunk


async def upload(request: web.Request) -> web.Response:
    """Store an upload made with a URL from ``POST …/attachments``."""
    store, claims = _local(request, "PUT")
    size, mime, key = int(str(claims["s"])), str(claims["t"]), str(claims["k"])
    sha256 = str(claims["h"])
    keyring = keyring_of(request)

    async def owner(conn: asyncpg.Connection) -> tuple[bool, DataKey | None]:
        found = await attachments.owner_of(conn, key)
        if found is None or keyring is None:
            return found is not None, None
        return True, await keyring.for_session(conn, *found)

    # a URL outlives its attachment: once the row is deleted, store nothing (no orphan)
    exists, data_key = await run(request, owner)
    if not exists:
        raise ApiError(404, "attachment not found")
    if request.headers.get("Content-Type", "") != mime:
        raise ApiError(400, f"Content-Type must be {mime}, as announced")
    if request.content_length is not None and request.content_length != size:
        raise ApiError(400, f"Content-Length must be {size}, as announced")
    tenant_id = attachments.tenant_of(key)
    sealer = None if data_key is None or tenant_id is None else Sealer(
        data_key, tenant_id, key, size=size, sha256=sha256)
    try:
        await store.write(key, _chunks(request), size=size, sha256=sha256, sealer=sealer)
    except UploadRefused as exc:
        raise ApiError(400, str(exc)) from None
    return web.Response(status=200)


async def download(request: web.Request) -> web.StreamResponse:
    """Serve a file with a URL from ``GET …/attachments/{aid}``."""
    store, claims = _local(request, "GET")
    key = str(claims["k"])
    path = store.path(key)
    headers = {
        "Content-Type": str(claims["t"]),
        "Content-Disposition": content_disposition(str(claims["n"])),
        "Cache-Control": "private, max-age=60",
        "X-Content-Type-Options": "nosniff",
    }
    try:
        header = await asyncio.to_thread(read_header, path)
    except (FileNotFoundError, IsADirectoryError):
        raise ApiError(404, "file not found") from None
    except Damaged:
        sealed_download.DAMAGED.inc()
        log.error("a sealed file's header is damaged", extra={"object_key": key})
        raise ApiError(500, "the stored file is damaged and cannot be served") from None
    if header is None:
        return web.FileResponse(path, headers=headers)
    return await sealed_download.serve(request, path, header, key, headers)


def setup(app: web.Application) -> None:
    """Serve the local store's upload and download URLs (404 when files are in S3)."""
    app.router.add_put(PREFIX + "{token}", upload)
    app.router.add_get(PREFIX + "{token}", download)
