"""Helpers shared by the route handlers: path ids, database calls, who is asking."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import asyncpg
from aiohttp import web

from chat_storage.server.errors import not_found
from chat_storage.server.state import POOL_KEY, SETTINGS_KEY
from chat_storage.storage import db
from chat_storage.storage.ids import parse_uuid

T = TypeVar("T")


def path_uuid(request: web.Request, name: str, what: str) -> uuid.UUID:
    """The UUID in path segment ``name``; a malformed one is as absent as a missing one."""
    value = parse_uuid(request.match_info[name])
    if value is None:
        raise not_found(what)
    return value


async def run(request: web.Request, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run ``fn`` on a pooled connection (503 when the database is unavailable)."""
    return await db.call(
        request.app[POOL_KEY], fn,
        acquire_timeout_s=request.app[SETTINGS_KEY].db_acquire_timeout_s,
    )


async def read(request: web.Request, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """:func:`run` for ``fn`` that only runs ``SELECT`` statements (no transaction, no
    ``SET``): its connection skips the pool's reset query (:func:`db.read`)."""
    return await db.read(
        request.app[POOL_KEY], fn,
        acquire_timeout_s=request.app[SETTINGS_KEY].db_acquire_timeout_s,
    )


def message_location(message: Mapping[str, Any]) -> str:
    """The ``Location`` of a created (or accepted) message, from its body: the first
    answer and an idempotent replay of it get it from the same place."""
    return f"/api/v1/sessions/{message['session_id']}/messages/{message['id']}"


def request_id(request: web.Request) -> str:
    from chat_storage.server.middlewares import REQUEST_ID_KEY

    rid: str = request.get(REQUEST_ID_KEY, "")
    return rid


def actor_name(request: web.Request) -> str:
    """Who to name in the audit log: the API key's id, or the user of a user token."""
    from chat_storage.server.auth import principal_of

    principal = principal_of(request)
    if principal.user_id is not None:
        return f"{principal.credential}:{principal.user_id}"
    return f"key:{principal.key_id}"
