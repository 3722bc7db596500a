"""Attachments: announce a file, upload it straight to the object store, complete, read.

1. ``POST …/attachments`` with the file's name, type, size and SHA-256 answers a
   ``pending`` attachment and an upload target (a presigned URL, valid
   ``CHAT_UPLOAD_URL_S``). A size over ``CHAT_MAX_ATTACHMENT_BYTES`` is refused
   (413) before any URL is made.
2. The client sends the file to that URL; it never passes through this service's API.
3. ``POST …/attachments/{aid}/complete`` checks the stored object's size and SHA-256
   and answers it ``ready`` (409 if no file or another file is there).
4. A ready attachment is linked to a message through ``attachment_ids`` when the
   message is stored; ``GET …/attachments/{aid}`` answers it with a download URL.

``GET …/attachments`` lists a session's attachments, oldest first, a keyset page.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg
from aiohttp import web

from chat_storage.server import idempotency, pagination
from chat_storage.server.auth import principal_of
from chat_storage.server.errors import ApiError
from chat_storage.server.handlers import path_uuid, run
from chat_storage.server.jsonio import json_response, parse_query, read_json, validate
from chat_storage.server.routing import RouteTable
from chat_storage.server.schemas import (
    Attachment,
    AttachmentCreate,
    AttachmentCreated,
    AttachmentDownload,
    AttachmentListQuery,
    AttachmentPage,
    Error,
)
from chat_storage.server.state import OBJECTS_KEY, SERVICES_KEY, SETTINGS_KEY
from chat_storage.storage import attachments
from chat_storage.storage.idempotency import record_response
from chat_storage.storage.ids import new_id
from chat_storage.storage.objects import Mismatch, verify

routes = RouteTable("attachments")
ATTACHMENTS_PATH = "/api/v1/sessions/{session_id}/attachments"
ATTACHMENT_PATH = ATTACHMENTS_PATH + "/{aid}"


def _absolute(request: web.Request, url: str) -> str:
    """The local store's URLs are paths on this service: make them absolute."""
    return f"{request.url.origin()}{url}" if url.startswith("/") else url


@routes.post(ATTACHMENTS_PATH, body=AttachmentCreate, idempotent=True,
             responses={201: AttachmentCreated, 400: Error, 404: Error, 409: Error,
                        413: Error, 422: Error})
async def create_attachment(request: web.Request) -> web.Response:
    """Announce a file and get the URL to upload it to."""
    session_id = path_uuid(request, "session_id", "session")
    raw = await read_json(request)
    body = validate(AttachmentCreate, raw)
    settings = request.app[SETTINGS_KEY]
    if body.size > settings.max_attachment_bytes:
        raise ApiError(413, f"attachments are limited to {settings.max_attachment_bytes} bytes",
                       errors=[{"field": "size", "message":
                                f"must be at most {settings.max_attachment_bytes}"}])

    def location(answer: Mapping[str, Any]) -> str:  # for the first answer and a replay
        return f"{request.path}/{answer['attachment']['id']}"

    claim = await idempotency.begin(request, raw, location=location)
    if isinstance(claim, web.Response):
        return claim
    tenant_id = principal_of(request).tenant_id
    attachment_id = new_id()
    # the name is often the person's own (passport-of-jane.doe@….pdf): redacted if asked
    name = await request.app[SERVICES_KEY].privacy.title(tenant_id, body.name)
    try:
        # the key is known before the row exists, so the answer (with its URL) can be
        # recorded for the Idempotency-Key in the row's own transaction
        upload = await request.app[OBJECTS_KEY].upload_url(
            attachments.object_key(tenant_id, session_id, attachment_id), size=body.size,
            mime=body.mime, sha256=body.sha256, expires_s=settings.upload_url_s)

        async def store(conn: asyncpg.Connection) -> dict[str, Any]:
            async with conn.transaction():
                row = await attachments.create(
                    conn, tenant_id, session_id, attachment_id, name=name,
                    mime=body.mime, size=body.size, sha256=body.sha256)
                answer = {"attachment": attachments.to_json(row), "upload": {
                    "url": _absolute(request, upload.url), "method": upload.method,
                    "headers": dict(upload.headers), "expires_at": upload.expires_at}}
                if claim is not None:
                    await record_response(conn, claim, 201, answer)
                return answer

        answer = await run(request, store)
    except BaseException:
        await idempotency.release(request, claim)
        raise
    return json_response(answer, status=201, headers={"Location": location(answer)})


@routes.get(ATTACHMENTS_PATH, query=AttachmentListQuery,
            responses={200: AttachmentPage, 400: Error, 404: Error})
async def list_attachments(request: web.Request) -> web.Response:
    """List a session's attachments, oldest first (filter by status)."""
    session_id = path_uuid(request, "session_id", "session")
    query = parse_query(request, AttachmentListQuery)
    tenant_id = principal_of(request).tenant_id
    # the cursor is only valid for the same tenant, session and filter
    scope = pagination.scope_of("GET " + ATTACHMENTS_PATH, tenant_id, session_id, query.status)
    key = pagination.decode(query.cursor, scope, (dt.datetime, uuid.UUID))
    after = None if key is None else (key[0], key[1])
    rows = await run(request, lambda conn: attachments.list_for_session(
        conn, tenant_id, session_id, status=query.status, after=after, limit=query.limit + 1))

    def key_of(item: dict[str, Any]) -> list[Any]:
        return [item["created_at"], str(item["id"])]

    return json_response(pagination.page([attachments.to_json(r) for r in rows], query.limit,
                                         scope, key_of))


async def _load(request: web.Request) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, asyncpg.Record]:
    """The tenant, session id, attachment id and attachment row the path names."""
    session_id = path_uuid(request, "session_id", "session")
    attachment_id = path_uuid(request, "aid", "attachment")
    tenant_id = principal_of(request).tenant_id
    row = await run(request, lambda conn: attachments.get(
        conn, tenant_id, session_id, attachment_id))
    return tenant_id, session_id, attachment_id, row


@routes.post(ATTACHMENT_PATH + "/complete",
             responses={200: Attachment, 404: Error, 409: Error})
async def complete_attachment(request: web.Request) -> web.Response:
    """Check the uploaded file against what was announced and mark it ready."""
    tenant_id, session_id, attachment_id, row = await _load(request)
    if row["status"] != "ready":
        try:
            await verify(request.app[OBJECTS_KEY], row["object_key"], size=row["size"],
                         sha256=row["sha256"])
        except Mismatch as exc:
            raise ApiError(409, f"upload is not complete: {exc}") from None
        row = await run(request, lambda conn: attachments.mark_ready(
            conn, tenant_id, session_id, attachment_id))
    return json_response(attachments.to_json(row))


@routes.get(ATTACHMENT_PATH, responses={200: AttachmentDownload, 404: Error})
async def get_attachment(request: web.Request) -> web.Response:
    """Get an attachment, with a short-lived download URL once it is ready."""
    *_, row = await _load(request)
    url = None
    if row["status"] == "ready":
        url = _absolute(request, await request.app[OBJECTS_KEY].download_url(
            row["object_key"], name=row["name"], mime=row["mime"],
            expires_s=request.app[SETTINGS_KEY].download_url_s))
    return json_response({**attachments.to_json(row), "download_url": url},
                         headers={"Cache-Control": "no-store"})
