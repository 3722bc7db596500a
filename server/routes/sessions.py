"""Sessions: create, read, list, rename/favorite, delete, user erasure."""

from __future__ import annotations

from aiohttp import web

from server import idempotency
from server.auth import principal_of
from server.jsonio import json_response, read_json, validate
from server.limits import check_json
from server.routes.common import path_uuid, run
from server.routing import RouteTable
from server.schemas import Error, Session, SessionCreate
from server.settings import SETTINGS_KEY
from storage import sessions

routes = RouteTable("sessions")
SESSION_PATH = "/api/v1/sessions/{session_id}"


@routes.post("/api/v1/sessions", body=SessionCreate, idempotent=True,
             responses={201: Session, 400: Error, 409: Error, 422: Error})
async def create_session(request: web.Request) -> web.Response:
    """Create a session."""
    raw = await read_json(request)
    body = validate(SessionCreate, raw)
    check_json("metadata", body.metadata, request.app[SETTINGS_KEY].max_metadata_bytes)
    claim = await idempotency.begin(request, raw)
    if isinstance(claim, web.Response):
        return claim
    tenant_id = principal_of(request).tenant_id
    try:
        session = await run(request, lambda conn: sessions.create(
            conn, tenant_id, user_id=body.user_id, title=body.title,
            metadata=body.metadata, ttl_s=body.ttl_s, idem=claim,
        ))
    except BaseException:
        await idempotency.release(request, claim)
        raise
    return json_response(session, status=201,
                         headers={"Location": f"/api/v1/sessions/{session['id']}"})


@routes.get(SESSION_PATH, responses={200: Session, 404: Error})
async def get_session(request: web.Request) -> web.Response:
    """Get a session."""
    session_id = path_uuid(request, "session_id", "session")
    tenant_id = principal_of(request).tenant_id
    return json_response(await run(request, lambda conn: sessions.get(conn, tenant_id, session_id)))


