"""Checks of client input that more than one route needs: user ids, new messages."""

from __future__ import annotations

from chat_storage.runtime.settings import Settings
from chat_storage.server.errors import ApiError
from chat_storage.server.limits import check_json, check_text
from chat_storage.server.schemas import MessageCreate
from chat_storage.storage.ids import new_id
from chat_storage.storage.messages import NewMessage

MAX_USER_ID = 128


def check_user_id(user_id: str, field: str = "user_id") -> str:
    """``user_id`` if it could name a user (1 to 128 characters, no NUL); else 400."""
    if not 1 <= len(user_id) <= MAX_USER_ID or "\x00" in user_id:
        raise ApiError(400, "request is invalid", errors=[{
            "field": field,
            "message": f"must be 1 to {MAX_USER_ID} characters without NUL"}])
    return user_id


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
