"""Reads across a tenant's sessions: full-text search and the feedback list."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from aiohttp import web

from chat_storage.server import pagination
from chat_storage.server.auth import principal_of
from chat_storage.server.errors import ApiError
from chat_storage.server.handlers import read
from chat_storage.server.jsonio import json_response, parse_query
from chat_storage.server.routing import RouteTable
from chat_storage.server.schemas import Error, FeedbackQuery, MessagePage, SearchPage, SearchQuery
from chat_storage.server.state import keyring_of
from chat_storage.storage import history

routes = RouteTable("search")
CURSOR_SHAPE = (dt.datetime, uuid.UUID)


def _key(at: dt.datetime, item_id: Any) -> list[Any]:
    # asyncpg's UUID type is not one orjson knows: send the text form
    return [at, str(item_id)]


def _before(key: list[Any] | None) -> tuple[dt.datetime, uuid.UUID] | None:
    return None if key is None else (key[0], key[1])


@routes.get("/api/v1/search", query=SearchQuery,
            responses={200: SearchPage, 400: Error, 409: Error})
async def search(request: web.Request) -> web.Response:
    """Find messages by words in their content, newest first.

    ``q`` takes web-search syntax (``"exact phrase"``, ``or``, ``-exclude``) and matches
    English word stems ("running" finds "runs"). ``snippet`` is a short plain-text
    excerpt around the match. Deleted messages are never found. A tenant whose content
    is encrypted at rest cannot be searched (409, docs/security.md).
    """
    query = parse_query(request, SearchQuery)
    tenant_id = principal_of(request).tenant_id
    scope = pagination.scope_of("search", tenant_id, query.q, query.user_id, query.session_id)
    before = _before(pagination.decode(query.cursor, scope, CURSOR_SHAPE))
    hits = await read(request, lambda conn: history.search(
        conn, tenant_id, query.q, limit=query.limit + 1, user_id=query.user_id,
        session_id=query.session_id, before=before,
    ))
    return json_response(pagination.page(
        hits, query.limit, scope, lambda h: _key(h["created_at"], h["message_id"])))


@routes.get("/api/v1/feedback", query=FeedbackQuery,
            responses={200: MessagePage, 400: Error})
async def list_feedback(request: web.Request) -> web.Response:
    """Messages that have feedback, most recent feedback first.

    ``rating`` keeps one verdict (1 or -1), ``since`` (RFC 3339) keeps feedback given at
    or after that time, ``user_id`` keeps messages of that user's sessions.
    """
    query = parse_query(request, FeedbackQuery)
    if query.since is not None and query.since.utcoffset() is None:
        raise ApiError(400, "query is invalid", errors=[{
            "field": "since", "message": "must be an RFC 3339 time with a time zone offset"}])
    tenant_id = principal_of(request).tenant_id
    rating = None if query.rating is None else int(query.rating)
    since = None if query.since is None else query.since.astimezone(dt.UTC)
    scope = pagination.scope_of("feedback", tenant_id, rating,
                                since.isoformat() if since else None, query.user_id)
    before = _before(pagination.decode(query.cursor, scope, CURSOR_SHAPE))
    rows = await read(request, lambda conn: history.feedback(
        conn, tenant_id, limit=query.limit + 1, rating=rating, since=since,
        user_id=query.user_id, before=before, keyring=keyring_of(request),
    ))
    given_at = {m["id"]: at for m, at in rows}
    return json_response(pagination.page(
        [m for m, _ in rows], query.limit, scope, lambda m: _key(given_at[m["id"]], m["id"])))
