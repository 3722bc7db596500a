"""Serving a sealed file of the local store (an encrypted tenant's attachment), opened.

The owner's data key is looked up by the id in the file's header. The chunks a request
covers are authenticated once before the response starts (so a changed or cut file
answers a clean 500 with the error body, not a 200 that breaks off), then opened again
as they are sent: memory stays at one chunk. A single byte range (``Range: bytes=a-b``,
``bytes=a-``, ``bytes=-n``) is served as a 206 from the chunks it covers; a range that is
not satisfiable, or several ranges, answer 416. ``Content-Length`` is the plain length.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web
from prometheus_client import Counter

from chat_storage.server.errors import ApiError
from chat_storage.server.handlers import run
from chat_storage.server.state import keyring_of
from chat_storage.storage import attachments
from chat_storage.storage.crypto.files import Damaged, Header, Opener

log = logging.getLogger(__name__)
DAMAGED = Counter("chat_sealed_files_damaged_total",
                  "Sealed files of the local store that did not open (changed or cut)")


def _range(request: web.Request, size: int) -> tuple[int, int] | None:
    """The plain bytes ``[start, stop)`` asked for; ``None`` for the whole file."""
    if "Range" not in request.headers:
        return None
    try:
        asked = request.http_range
    except ValueError:
        asked = None
    if asked is None or asked.start is None:
        raise ApiError(416, "only one byte range (bytes=a-b, a- or -n) is served",
                       headers={"Content-Range": f"bytes */{size}"})
    start = max(0, size + asked.start) if asked.start < 0 else asked.start
    stop = size if asked.stop is None else min(asked.stop, size)
    if start >= size or start >= stop:
        raise ApiError(416, f"the range is outside the file's {size} bytes",
                       headers={"Content-Range": f"bytes */{size}"})
    return start, stop


def _check(opener: Opener, path: Path, start: int, stop: int) -> None:
    """Authenticate every chunk of ``[start, stop)`` (blocking)."""
    with path.open("rb") as f:
        for _ in opener.read(f, start, stop):
            pass


async def serve(request: web.Request, path: Path, header: Header, object_key: str,
                headers: Mapping[str, str]) -> web.StreamResponse:
    """The response for the sealed file at ``path`` (stored under ``object_key``)."""
    tenant_id = attachments.tenant_of(object_key)
    keyring = keyring_of(request)
    if tenant_id is None or keyring is None:
        log.error("a sealed file and no key to open it", extra={"object_key": object_key})
        raise ApiError(500, "this file is encrypted and cannot be opened by this server")
    found = await run(request, lambda conn: keyring.by_ids(conn, {header.data_key_id}))
    key = found.get(header.data_key_id)
    if key is None:  # shredded: the owner was erased
        raise ApiError(404, "file not found")
    span = _range(request, header.size)
    start, stop = span or (0, header.size)
    try:
        opener = Opener(header, key, tenant_id, object_key)
        if header.size:
            await asyncio.to_thread(_check, opener, path, start, stop)
    except Damaged as exc:
        DAMAGED.inc()
        log.error("a sealed file does not open", extra={"object_key": object_key,
                                                         "reason": str(exc)})
        raise ApiError(500, "the stored file is damaged and cannot be served") from None
    response = web.StreamResponse(status=200 if span is None else 206, headers=headers)
    response.content_length = stop - start
    if span is not None:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{header.size}"
    response.headers["Accept-Ranges"] = "bytes"
    await response.prepare(request)
    if header.size and request.method != "HEAD":  # HEAD: the headers GET would have
        f = await asyncio.to_thread(path.open, "rb")
        try:
            chunks = opener.read(f, start, stop)
            while (plain := await asyncio.to_thread(next, chunks, None)) is not None:
                await response.write(plain)
        except Damaged as exc:  # changed since the check: cut the response short
            DAMAGED.inc()
            log.error("a sealed file stopped opening while it was sent",
                      extra={"object_key": object_key, "reason": str(exc)})
            response.force_close()
            return response
        finally:
            f.close()
    await response.write_eof()
    return response
