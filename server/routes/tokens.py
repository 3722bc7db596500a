"""User tokens: a tenant's backend mints one for a user (docs/auth.md)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, Field

from chat_storage.server.auth import principal_of
from chat_storage.server.errors import ApiError
from chat_storage.server.handlers import actor_name, request_id, run
from chat_storage.server.jsonio import json_response, parse_body
from chat_storage.server.routing import RouteTable
from chat_storage.server.schemas import Error, Strict, Text
from chat_storage.server.tokens import DEFAULT_TTL_S, MAX_SESSION_IDS, MAX_TTL_S, TOKENS_KEY
from chat_storage.storage import sessions
from chat_storage.storage.audit_log import audit
from chat_storage.storage.principal import TOKEN_SCOPES, TokenScope

routes = RouteTable("tokens")


class TokenCreate(Strict):
    """A token for ``user_id``: ``scopes`` (default all three), ``session_ids`` (default
    every session of the user, also those made later), ``ttl_s`` (default 900)."""

    user_id: Annotated[Text, Field(min_length=1, max_length=128)]
    scopes: Annotated[list[TokenScope], Field(min_length=1, max_length=3)] = Field(
        default_factory=lambda: list(TOKEN_SCOPES))
    session_ids: Annotated[list[uuid.UUID], Field(min_length=1,
                                                  max_length=MAX_SESSION_IDS)] | None = None
    ttl_s: Annotated[int, Field(ge=60, le=MAX_TTL_S)] = DEFAULT_TTL_S


class TokenCreated(BaseModel):
    token: str
    user_id: str
    scopes: list[TokenScope]
    session_ids: list[uuid.UUID] | None
    expires_at: dt.datetime


@routes.post("/api/v1/tokens", body=TokenCreate, tenant_wide=True,
             responses={201: TokenCreated, 400: Error, 403: Error, 503: Error})
async def create_token(request: web.Request) -> web.Response:
    """Mint a short-lived token for one user (for their browser or app)."""
    body = await parse_body(request, TokenCreate)
    tenant_id = principal_of(request).tenant_id
    scopes = [s for s in TOKEN_SCOPES if s in body.scopes]
    session_ids = None if body.session_ids is None else list(dict.fromkeys(body.session_ids))
    if session_ids is not None:
        ids = session_ids
        owned = await run(request, lambda conn: sessions.owned_of(
            conn, tenant_id, body.user_id, ids))
        missing = [i for i, s in enumerate(ids) if s not in owned]
        if missing:
            raise ApiError(400, "request body is invalid", errors=[
                {"field": f"session_ids.{i}", "message": "is not a session of this user"}
                for i in missing])
    token, expires_at = await request.app[TOKENS_KEY].mint(
        tenant_id, body.user_id, scopes, session_ids, body.ttl_s)
    await run(request, lambda conn: audit(  # a key used for an admin action: who, for whom
        conn, tenant_id, actor_name(request), "token.mint", f"user:{body.user_id}",
        {"scopes": scopes, "ttl_s": body.ttl_s,
         "sessions": None if session_ids is None else len(session_ids)}, request_id(request)))
    return json_response({"token": token, "user_id": body.user_id, "scopes": scopes,
                          "session_ids": session_ids, "expires_at": expires_at}, status=201,
                         headers={"Cache-Control": "no-store"})
