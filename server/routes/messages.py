"""Messages: create (through the session actor), batch, history, one, edit, tombstone."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server import idempotency
from server.auth import principal_of
from server.errors import ApiError
from server.jsonio import json_response, read_json, validate
from server.limits import check_json, check_text
from server.routes.common import path_uuid
from server.routing import RouteTable
from server.schemas import Error, Message, MessageBatch, MessageCreate, MessageList
from server.settings import SETTINGS_KEY, Settings
from server.writer import REGISTRY_KEY
from storage.ids import new_id
from storage.messages import NewMessage, WriteGroup

routes = RouteTable("messages")
MESSAGES_PATH = "/api/v1/sessions/{session_id}/messages"


def to_new_message(body: MessageCreate, settings: Settings, prefix: str = "") -> NewMessage:
    """Check the size limits of ``body`` and make it a storable message."""
    if body.attachment_ids:
        raise ApiError(400, "request body is invalid", errors=[{
            "field": f"{prefix}attachment_ids", "message": "attachments are not supported yet"}])
    check_text(f"{prefix}content", body.content, settings.max_content_bytes)
    context = None if body.context is None else [
        c.model_dump(exclude_none=True) for c in body.context
    ]
    check_json(f"{prefix}context", context, settings.max_context_bytes)
    check_json(f"{prefix}metadata", body.metadata, settings.max_metadata_bytes)
    usage = None if body.usage is None else body.usage.model_dump(exclude_none=True)
    return NewMessage(
        id=new_id(), role=body.role, content=body.content, sender_id=body.sender_id,
        parent_id=body.parent_id, context=context, metadata=body.metadata, usage=usage,
    )


async def _write(request: web.Request, raw: Any, group: WriteGroup) -> list[dict[str, Any]]:
    session_id = path_uuid(request, "session_id", "session")
    registry = request.app[REGISTRY_KEY]
    try:
        return await registry.write(principal_of(request).tenant_id, session_id, group)
    except BaseException:
        await idempotency.release(request, group.idem)
        raise


@routes.post(MESSAGES_PATH, body=MessageCreate, idempotent=True,
             responses={201: Message, 400: Error, 404: Error, 409: Error, 422: Error, 503: Error})
async def create_message(request: web.Request) -> web.Response:
    """Add a message; answered 201 only after it is committed."""
    session_id = path_uuid(request, "session_id", "session")
    raw = await read_json(request)
    message = to_new_message(validate(MessageCreate, raw), request.app[SETTINGS_KEY])
    claim = await idempotency.begin(request, raw)
    if isinstance(claim, web.Response):
        return claim
    stored = await _write(request, raw, WriteGroup([message], idem=claim))
    return json_response(stored[0], status=201, headers={
        "Location": f"/api/v1/sessions/{session_id}/messages/{stored[0]['id']}"})


@routes.post(MESSAGES_PATH + "/batch", body=MessageBatch, idempotent=True,
             responses={201: MessageList, 400: Error, 404: Error, 409: Error, 422: Error,
                        503: Error})
async def create_batch(request: web.Request) -> web.Response:
    """Add up to 500 messages at once: all or nothing, consecutive seq."""
    path_uuid(request, "session_id", "session")
    raw = await read_json(request)
    body = validate(MessageBatch, raw)
    settings = request.app[SETTINGS_KEY]
    new = [to_new_message(m, settings, f"messages.{i}.") for i, m in enumerate(body.messages)]
    claim = await idempotency.begin(request, raw)
    if isinstance(claim, web.Response):
        return claim
    stored = await _write(request, raw, WriteGroup(new, idem=claim, wrap=True))
    return json_response({"data": stored}, status=201)
