"""Helpers shared by the route modules: path ids, DB calls, writes with idempotency,
message bodies made storable (REST and WebSocket alike)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from aiohttp import web

from chat_storage.server.database import POOL_KEY
from chat_storage.server.errors import not_found
from chat_storage.server.limits import check_json, check_text
from chat_storage.server.schemas import MessageCreate
from chat_storage.server.settings import SETTINGS_KEY, Settings
from chat_storage.storage import db
from chat_storage.storage.ids import new_id, parse_uuid
from chat_storage.storage.messages import NewMessage

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


def request_id(request: web.Request) -> str:
    from chat_storage.server.middlewares import REQUEST_ID_KEY

    rid: str = request.get(REQUEST_ID_KEY, "")
    return rid


def actor_name(request: web.Request) -> str:
    """Who to name in the audit log: the API key's id."""
    from chat_storage.server.auth import principal_of

    return f"key:{principal_of(request).key_id}"


def drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def to_new_message(body: MessageCreate, settings: Settings, prefix: str = "") -> NewMessage:
    """Check the size limits of ``body`` and make it a storable message."""
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
        attachment_ids=tuple(body.attachment_ids),
    )
