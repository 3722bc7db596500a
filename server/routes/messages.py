"""Messages: create (through the session mailbox), batch, history, one, edit, tombstone."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from chat_storage.server import erasure, idempotency, ingest, objects, pagination, streaming
from chat_storage.server.auth import principal_of
from chat_storage.server.errors import ApiError
from chat_storage.server.handlers import (
    actor_name,
    message_location,
    path_uuid,
    read,
    request_id,
    run,
)
from chat_storage.server.inputs import to_new_message
from chat_storage.server.jsonio import json_response, parse_query, read_json, validate
from chat_storage.server.limits import check_json
from chat_storage.server.routing import RouteTable
from chat_storage.server.schemas import (
    Error,
    HistoryQuery,
    Message,
    MessageBatch,
    MessageCreate,
    MessageList,
    MessagePage,
    MessageUpdate,
)
from chat_storage.server.state import REGISTRY_KEY, SERVICES_KEY, SETTINGS_KEY, keyring_of
from chat_storage.storage import history, messages
from chat_storage.storage.errors import InvalidReference
from chat_storage.storage.messages import WriteGroup
from chat_storage.storage.writes import Stored

routes = RouteTable("messages")
MESSAGES_PATH = "/api/v1/sessions/{session_id}/messages"
MESSAGE_PATH = MESSAGES_PATH + "/{message_id}"
# not `batch`: that is its own resource (POST only), and a GET of it matching this one
# would make its 405's Allow list methods the document does not give it
_MESSAGE_ROUTE = MESSAGES_PATH + "/{message_id:(?!batch(?:/|$))[^/]+}"


async def _write(request: web.Request, session_id: uuid.UUID,
                 group: WriteGroup) -> Stored:
    registry = request.app[REGISTRY_KEY]
    try:
        return await registry.write(principal_of(request).tenant_id, session_id, group)
    except BaseException:
        await idempotency.release(request, group.idem)
        raise


@routes.post(MESSAGES_PATH, body=MessageCreate, idempotent=True,
             responses={201: Message, 202: ingest.MessageAccepted, 400: Error, 404: Error,
                        409: Error, 422: Error, 503: Error})
async def create_message(request: web.Request) -> web.Response:
    """Add a message; answered 201 only after it is committed (202 in async ingest mode)."""
    session_id = path_uuid(request, "session_id", "session")
    raw = await read_json(request)
    message = to_new_message(validate(MessageCreate, raw), request.app[SETTINGS_KEY])
    [message] = await request.app[SERVICES_KEY].privacy.apply(
        principal_of(request).tenant_id, [message])  # PII redacted, if its tenant asks
    claim = await idempotency.begin(request, raw, location=message_location)
    if isinstance(claim, web.Response):
        return claim
    if ingest.is_async(request.app):  # CHAT_INGEST_MODE=async: 202 once queued in Redis
        return await ingest.accept(request, session_id, [message], claim=claim)
    stored = await _write(request, session_id, WriteGroup([message], idem=claim))
    return json_response(stored[0], status=201,
                         headers={"Location": message_location(stored[0])})


@routes.post(MESSAGES_PATH + "/batch", body=MessageBatch, idempotent=True,
             responses={201: MessageList, 202: ingest.MessageAcceptedList, 400: Error,
                        404: Error, 409: Error, 422: Error, 503: Error})
async def create_batch(request: web.Request) -> web.Response:
    """Add up to 500 messages at once: all or nothing, consecutive seq (202 when async)."""
    session_id = path_uuid(request, "session_id", "session")
    raw = await read_json(request)
    body = validate(MessageBatch, raw)
    settings = request.app[SETTINGS_KEY]
    new = list(await request.app[SERVICES_KEY].privacy.apply(
        principal_of(request).tenant_id,
        [to_new_message(m, settings, f"messages.{i}.") for i, m in enumerate(body.messages)]))
    claim = await idempotency.begin(request, raw)
    if isinstance(claim, web.Response):
        return claim
    if ingest.is_async(request.app):  # CHAT_INGEST_MODE=async: 202 once queued in Redis
        return await ingest.accept(request, session_id, new, claim=claim, wrap=True)
    stored = await _write(request, session_id, WriteGroup(new, idem=claim, wrap=True))
    return json_response({"data": stored}, status=201)


@routes.get(MESSAGES_PATH, query=HistoryQuery,
            responses={200: MessagePage, 400: Error, 404: Error})
async def list_messages(request: web.Request) -> web.Response:
    """List a session's messages in seq order, or only the branch that ends at ``leaf``."""
    session_id = path_uuid(request, "session_id", "session")
    query = parse_query(request, HistoryQuery)
    tenant_id = principal_of(request).tenant_id
    scope = pagination.scope_of("messages", tenant_id, session_id, query.order, query.leaf,
                                query.after_seq, query.before_seq)
    key = pagination.decode(query.cursor, scope, (int,))
    after_seq, before_seq = query.after_seq, query.before_seq
    if key is not None:
        # the cursor's seq is inside the requested range: it narrows it
        if query.order == "asc":
            after_seq = key[0]
        else:
            before_seq = key[0]
    try:
        rows = await read(request, lambda conn: history.history(
            conn, tenant_id, session_id, limit=query.limit + 1,
            descending=query.order == "desc", after_seq=after_seq, before_seq=before_seq,
            leaf=query.leaf, keyring=keyring_of(request),
        ))
    except InvalidReference as exc:
        raise ApiError(400, "query is invalid",
                       errors=[{"field": exc.field, "message": exc.message}]) from None
    streaming.overlay_live(request, tenant_id, session_id, rows)  # content streamed so far
    return json_response(pagination.page(rows, query.limit, scope, lambda m: [m["seq"]]))


@routes.get(MESSAGE_PATH, router_path=_MESSAGE_ROUTE, responses={200: Message, 404: Error})
async def get_message(request: web.Request) -> web.Response:
    """Get one message (a tombstone too)."""
    session_id = path_uuid(request, "session_id", "session")
    message_id = path_uuid(request, "message_id", "message")
    tenant_id = principal_of(request).tenant_id
    message = await read(request, lambda conn: messages.get(
        conn, tenant_id, session_id, message_id, keyring_of(request)))
    streaming.overlay_live(request, tenant_id, session_id, [message])  # content streamed so far
    return json_response(message)


@routes.patch(MESSAGE_PATH, router_path=_MESSAGE_ROUTE, body=MessageUpdate,
              responses={200: Message, 400: Error, 404: Error, 409: Error})
async def update_message(request: web.Request) -> web.Response:
    """Change a message's metadata or feedback (``feedback: null`` clears it).

    Content is immutable. A tombstone cannot be changed (409).
    """
    session_id = path_uuid(request, "session_id", "session")
    message_id = path_uuid(request, "message_id", "message")
    body = validate(MessageUpdate, await read_json(request))
    check_json("metadata", body.metadata, request.app[SETTINGS_KEY].max_metadata_bytes)
    changes: dict[str, Any] = {}
    tenant_id = principal_of(request).tenant_id
    if body.metadata is not None:  # PII redacted, if its tenant asks
        changes["metadata"] = await request.app[SERVICES_KEY].privacy.metadata(
            tenant_id, body.metadata)
    # absent leaves feedback alone; an explicit null removes it
    if "feedback" in body.model_fields_set:
        changes["feedback"] = (None if body.feedback is None
                               else body.feedback.model_dump(exclude_none=True))
    return json_response(await run(request, lambda conn: messages.update(
        conn, tenant_id, session_id, message_id, keyring=keyring_of(request), **changes)))


@routes.delete(MESSAGE_PATH, router_path=_MESSAGE_ROUTE,
               responses={204: None, 404: Error, 409: Error, 503: Error})
async def delete_message(request: web.Request) -> web.Response:
    """Erase a message, leaving a ``deleted`` tombstone that keeps its seq. Audited."""
    session_id = path_uuid(request, "session_id", "session")
    message_id = path_uuid(request, "message_id", "message")
    tenant_id = principal_of(request).tenant_id
    actor, rid = actor_name(request), request_id(request)
    keys = await run(request, lambda conn: messages.tombstone(
        conn, tenant_id, session_id, message_id, actor=actor, request_id=rid))
    await objects.discard(request.app, keys, f"message:{message_id}")
    await erasure.scrub_message(request.app, tenant_id, session_id, message_id)
    return web.Response(status=204)
