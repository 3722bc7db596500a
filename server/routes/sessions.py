"""Sessions: create, read, list, rename/favorite, delete, user erasure."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from chat_storage.server import erasure, idempotency, objects, pagination
from chat_storage.server.auth import bind_user, principal_of
from chat_storage.server.errors import ApiError
from chat_storage.server.handlers import actor_name, path_uuid, read, request_id, run
from chat_storage.server.inputs import check_user_id
from chat_storage.server.jsonio import json_response, parse_query, read_json, validate
from chat_storage.server.limits import check_json
from chat_storage.server.routing import RouteTable
from chat_storage.server.schemas import (
    Error,
    Session,
    SessionCreate,
    SessionListQuery,
    SessionPage,
    SessionUpdate,
)
from chat_storage.server.state import OBJECTS_KEY, SERVICES_KEY, SETTINGS_KEY, keyring_of
from chat_storage.storage import retention, sessions

log = logging.getLogger(__name__)

routes = RouteTable("sessions")
SESSIONS_PATH = "/api/v1/sessions"
SESSION_PATH = "/api/v1/sessions/{session_id}"
USER_SESSIONS_PATH = "/api/v1/users/{user_id}/sessions"


@routes.post(SESSIONS_PATH, body=SessionCreate, idempotent=True,
             responses={201: Session, 400: Error, 409: Error, 422: Error})
async def create_session(request: web.Request) -> web.Response:
    """Create a session."""
    raw = await read_json(request)
    body = bind_user(request, validate(SessionCreate, raw))  # a user makes its own
    check_json("metadata", body.metadata, request.app[SETTINGS_KEY].max_metadata_bytes)
    claim = await idempotency.begin(request, raw, location=_location)
    if isinstance(claim, web.Response):
        return claim
    tenant_id = principal_of(request).tenant_id
    try:
        title = await request.app[SERVICES_KEY].privacy.title(tenant_id, body.title)
        session = await run(request, lambda conn: sessions.create(
            conn, tenant_id, user_id=body.user_id, title=title,
            metadata=body.metadata, ttl_s=body.ttl_s, idem=claim, keyring=keyring_of(request),
            actor=actor_name(request), request_id=request_id(request),
        ))
    except BaseException:
        await idempotency.release(request, claim)
        raise
    return json_response(session, status=201, headers={"Location": _location(session)})


def _location(session: Mapping[str, Any]) -> str:
    """A created session's ``Location``, for the first answer and a replay of it."""
    return f"{SESSIONS_PATH}/{session['id']}"


@routes.get(SESSIONS_PATH, query=SessionListQuery,
            responses={200: SessionPage, 400: Error, 409: Error})
async def list_sessions(request: web.Request) -> web.Response:
    """List sessions, most recent activity first (filter by user, favorite, title)."""
    query = parse_query(request, SessionListQuery)
    if query.user_id is not None:
        check_user_id(query.user_id)
    tenant_id = principal_of(request).tenant_id
    # the cursor is only valid for the same tenant and the same filters
    scope = pagination.scope_of("GET " + SESSIONS_PATH, tenant_id, query.user_id,
                                query.favorite, query.q)
    key = pagination.decode(query.cursor, scope, (dt.datetime, uuid.UUID))
    after = None if key is None else (key[0], key[1])
    listed = await read(request, lambda conn: sessions.list_sessions(
        conn, tenant_id, user_id=query.user_id, favorite=query.favorite, q=query.q,
        after=after, limit=query.limit + 1, keyring=keyring_of(request),
    ))
    keys = {item.session["id"]: item.key for item in listed}

    def key_of(session: dict[str, Any]) -> list[Any]:
        activity_at, session_id = keys[session["id"]]
        return [activity_at, str(session_id)]

    return json_response(pagination.page([i.session for i in listed], query.limit, scope,
                                         key_of))


@routes.get(SESSION_PATH, responses={200: Session, 404: Error})
async def get_session(request: web.Request) -> web.Response:
    """Get a session."""
    session_id = path_uuid(request, "session_id", "session")
    tenant_id = principal_of(request).tenant_id
    return json_response(await read(request, lambda conn: sessions.get(
        conn, tenant_id, session_id, keyring_of(request))))


@routes.patch(SESSION_PATH, body=SessionUpdate, responses={200: Session, 400: Error, 404: Error})
async def update_session(request: web.Request) -> web.Response:
    """Rename, favorite or unfavorite a session, replace its metadata or its TTL.

    Only the fields present in the body change. ``ttl_s: null`` makes the session
    permanent again (``expires_at`` becomes null); ``title``, ``favorite`` and
    ``metadata`` cannot be null. An empty body ``{}`` changes nothing and answers the
    session as it is, like any PATCH that sets no field.
    """
    session_id = path_uuid(request, "session_id", "session")
    body = validate(SessionUpdate, await read_json(request))
    given = body.model_fields_set
    nulls = [f for f in ("title", "favorite", "metadata")
             if f in given and getattr(body, f) is None]
    if nulls:
        raise ApiError(400, "request body is invalid",
                       errors=[{"field": f, "message": "must not be null"} for f in nulls])
    check_json("metadata", body.metadata, request.app[SETTINGS_KEY].max_metadata_bytes)
    tenant_id = principal_of(request).tenant_id
    if not given:
        return json_response(await run(request, lambda conn: sessions.get(
            conn, tenant_id, session_id, keyring_of(request))))
    changes = {field: getattr(body, field) for field in given}
    if "title" in changes:
        changes["title"] = await request.app[SERVICES_KEY].privacy.title(
            tenant_id, changes["title"])
    return json_response(await run(request, lambda conn: sessions.update(
        conn, tenant_id, session_id, keyring=keyring_of(request), **changes,
        actor=actor_name(request), request_id=request_id(request))))


async def _set_favorite(request: web.Request, favorite: bool) -> web.Response:
    session_id = path_uuid(request, "session_id", "session")
    tenant_id = principal_of(request).tenant_id
    return json_response(await run(request, lambda conn: sessions.update(
        conn, tenant_id, session_id, favorite=favorite, keyring=keyring_of(request))))


@routes.put(SESSION_PATH + "/favorite", responses={200: Session, 404: Error})
async def favorite_session(request: web.Request) -> web.Response:
    """Mark a session as a favorite (idempotent)."""
    return await _set_favorite(request, True)


@routes.delete(SESSION_PATH + "/favorite", responses={200: Session, 404: Error})
async def unfavorite_session(request: web.Request) -> web.Response:
    """Remove a session from the favorites (idempotent)."""
    return await _set_favorite(request, False)


@routes.delete(SESSION_PATH, responses={204: None, 404: Error, 503: Error})
async def delete_session(request: web.Request) -> web.Response:
    """Delete a session with its messages and attachments. Audited."""
    session_id = path_uuid(request, "session_id", "session")
    tenant_id = principal_of(request).tenant_id
    await erasure.drop_sessions(request.app, tenant_id, [session_id])
    keys = await run(request, lambda conn: sessions.delete(
        conn, tenant_id, session_id, actor=actor_name(request), request_id=request_id(request),
    ))
    await objects.discard(request.app, keys, f"session:{session_id}")
    await erasure.drop_sessions(request.app, tenant_id, [session_id])  # published meanwhile
    return web.Response(status=204)


@routes.delete(USER_SESSIONS_PATH, scope="admin", tenant_wide=True,  # the tenant's call
               responses={204: None, 400: Error, 503: Error})
async def erase_user(request: web.Request) -> web.Response:
    """Erase every session and message of a user (right to erasure). Audited.

    Their retention archives are deleted too; if the object store fails at that, the
    answer is 503 and a retry finishes the job (the rows are already gone).
    """
    user_id = check_user_id(request.match_info["user_id"])
    tenant_id = principal_of(request).tenant_id
    before = await run(request, lambda conn: sessions.ids_of_user(conn, tenant_id, user_id))
    await erasure.drop_sessions(request.app, tenant_id, before)
    erased = await run(request, lambda conn: sessions.erase_user(
        conn, tenant_id, user_id, actor=actor_name(request), request_id=request_id(request),
    ))
    log.info("user erased", extra={"sessions": erased.sessions, "messages": erased.messages})
    await objects.discard(request.app, erased.object_keys, f"user:{user_id}")
    await erasure.drop_sessions(request.app, tenant_id, erased.session_ids)
    store = request.app[OBJECTS_KEY]
    try:
        archived = await store.list_keys(retention.user_prefix(tenant_id, user_id))
        await store.delete(archived)
    except Exception:
        log.exception("archives of an erased user could not be deleted")
        raise ApiError(503, "the user's archives could not be erased; retry the request",
                       headers={"Retry-After": "5"}) from None
    return web.Response(status=204)
