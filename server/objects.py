"""The object store subsystem: S3 when ``S3_BUCKET`` is set, else a local directory.

With the local store this module also serves its URLs: ``PUT /objects/{token}``
stores an upload (only the announced file: size, type and SHA-256 are in the signed
token) and ``GET /objects/{token}`` serves a download. They take no API key: the
signed, expiring token is the grant, as a presigned S3 URL is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from chat_storage.server.errors import ApiError
from chat_storage.server.routes.common import run
from chat_storage.server.settings import SETTINGS_KEY, Settings
from chat_storage.storage import attachments
from chat_storage.storage.objects import (
    CHUNK_BYTES,
    LocalStore,
    ObjectStore,
    content_disposition,
    discard_keys,
    open_store,
)
from chat_storage.storage.objects.local import PREFIX, BadToken, UploadRefused

OBJECTS_KEY = web.AppKey("objects", ObjectStore)
LOCAL_KEY = web.AppKey("local_objects", LocalStore)


async def store_from_settings(settings: Settings) -> ObjectStore:
    """:func:`storage.objects.open_store` for ``settings``."""
    return await open_store(
        data_dir=settings.data_dir, s3_bucket=settings.s3_bucket,
        s3_endpoint_url=settings.s3_endpoint_url, s3_public_url=settings.s3_public_url,
        s3_region=settings.s3_region, s3_access_key_id=settings.s3_access_key_id,
        s3_secret_access_key=settings.s3_secret_access_key,
        local_signing_key=settings.object_signing_key,
    )


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
    # a URL outlives its attachment: once the row is deleted, store nothing (no orphan)
    if not await run(request, lambda conn: attachments.exists(conn, key)):
        raise ApiError(404, "attachment not found")
    if request.headers.get("Content-Type", "") != mime:
        raise ApiError(400, f"Content-Type must be {mime}, as announced")
    if request.content_length is not None and request.content_length != size:
        raise ApiError(400, f"Content-Length must be {size}, as announced")
    try:
        await store.write(key, _chunks(request), size=size, sha256=str(claims["h"]))
    except UploadRefused as exc:
        raise ApiError(400, str(exc)) from None
    return web.Response(status=200)


async def download(request: web.Request) -> web.StreamResponse:
    """Serve a file with a URL from ``GET …/attachments/{aid}``."""
    store, claims = _local(request, "GET")
    path = store.path(str(claims["k"]))
    if not path.is_file():
        raise ApiError(404, "file not found")
    return web.FileResponse(path, headers={
        "Content-Type": str(claims["t"]),
        "Content-Disposition": content_disposition(str(claims["n"])),
        "Cache-Control": "private, max-age=60",
        "X-Content-Type-Options": "nosniff",
    })


def setup(app: web.Application) -> None:
    """Open the store at start (``app[OBJECTS_KEY]``), close it at the end."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store = await store_from_settings(app[SETTINGS_KEY])
        app[OBJECTS_KEY] = store
        if isinstance(store, LocalStore):
            app[LOCAL_KEY] = store
        yield
        await store.close()

    app.cleanup_ctx.append(ctx)
    app.router.add_put(PREFIX + "{token}", upload)
    app.router.add_get(PREFIX + "{token}", download)
