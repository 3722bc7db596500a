"""Checks of client input that more than one route needs: user ids, new messages,
tool calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chat_storage.runtime.settings import Settings
from chat_storage.server.errors import ApiError
from chat_storage.server.limits import check_json, check_text
from chat_storage.server.schemas import MessageCreate, ToolCall
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


def _refuse(field: str, message: str) -> ApiError:
    return ApiError(400, "request body is invalid", errors=[{"field": field, "message": message}])


def check_tool_fields(role: str, tool_calls: Sequence[ToolCall] | None,
                      tool_call_id: str | None, settings: Settings,
                      prefix: str = "") -> list[dict[str, Any]] | None:
    """The tool calls of a message of ``role``, as stored; 400 unless they fit it.

    ``tool_calls`` only on an assistant message, each with its own ``id`` (a reply
    names its call by it), at most the content limit in all (arguments are content);
    ``tool_call_id`` on every ``tool`` message and on no other.
    """
    if tool_calls is not None and role != "assistant":
        raise _refuse(f"{prefix}tool_calls", "is only allowed on assistant messages")
    if role == "tool" and tool_call_id is None:
        raise _refuse(f"{prefix}tool_call_id", "is required on tool messages")
    if role != "tool" and tool_call_id is not None:
        raise _refuse(f"{prefix}tool_call_id", "is only allowed on tool messages")
    if tool_calls is None:
        return None
    seen: dict[str, int] = {}
    for i, call in enumerate(tool_calls):
        first = seen.setdefault(call.id, i)
        if first != i:
            raise _refuse(f"{prefix}tool_calls.{i}.id",
                          f"repeats the id of tool_calls.{first}: ids must be unique")
    calls = [call.model_dump() for call in tool_calls]
    check_json(f"{prefix}tool_calls", calls, settings.max_content_bytes)
    return calls


def to_new_message(body: MessageCreate, settings: Settings, prefix: str = "") -> NewMessage:
    """Check the size limits of ``body`` and make it a storable message."""
    check_text(f"{prefix}content", body.content, settings.max_content_bytes)
    tool_calls = check_tool_fields(body.role, body.tool_calls, body.tool_call_id, settings,
                                   prefix)
    context = None if body.context is None else [
        c.model_dump(exclude_none=True) for c in body.context
    ]
    check_json(f"{prefix}context", context, settings.max_context_bytes)
    check_json(f"{prefix}metadata", body.metadata, settings.max_metadata_bytes)
    usage = None if body.usage is None else body.usage.model_dump(exclude_none=True)
    return NewMessage(
        id=new_id(), role=body.role, content=body.content, sender_id=body.sender_id,
        parent_id=body.parent_id, context=context, metadata=body.metadata, usage=usage,
        attachment_ids=tuple(body.attachment_ids), tool_calls=tool_calls,
        tool_call_id=body.tool_call_id,
    )
