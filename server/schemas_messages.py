"""The message models: a message's parts (context, usage, feedback, tool calls), the
bodies that create and update messages, and a message as the API returns it.

Re-exported by :mod:`.schemas`, where handlers and the OpenAPI document take them from.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from chat_storage.server.schema_types import JsonObject, Role, Status, Strict, Text


class LinkedAttachment(BaseModel):
    """An attachment as a message object lists it."""

    id: uuid.UUID
    name: str
    mime: str
    size: int
    sha256: str
    status: Literal["pending", "ready"]


class ContextItem(Strict):
    """One retrieved passage an answer was built from."""

    source_id: Annotated[Text, Field(min_length=1, max_length=512)]
    title: Text | None = None
    uri: Annotated[Text, Field(max_length=4096)] | None = None
    snippet: Text | None = None
    score: float | None = None
    metadata: JsonObject | None = None


class MessageUsage(Strict):
    model: Annotated[Text, Field(max_length=200)] | None = None
    prompt_tokens: Annotated[int, Field(ge=0)] | None = None
    completion_tokens: Annotated[int, Field(ge=0)] | None = None
    total_tokens: Annotated[int, Field(ge=0)] | None = None


class Feedback(Strict):
    rating: Literal[1, -1]
    comment: Annotated[Text, Field(max_length=4000)] | None = None


MAX_TOOL_CALLS = 128  # per message; OpenAI's parallel calls are a handful
ToolCallId = Annotated[Text, Field(min_length=1, max_length=256)]


class ToolCall(Strict):
    """A call an assistant message makes: ``arguments`` is a JSON object (not a string)."""

    id: ToolCallId
    name: Annotated[Text, Field(min_length=1, max_length=256)]
    arguments: JsonObject


ToolCalls = Annotated[list[ToolCall], Field(min_length=1, max_length=MAX_TOOL_CALLS)]


class MessageCreate(Strict):
    """``tool_calls`` only on an assistant message; ``tool_call_id`` on every ``tool``
    message and on no other (checked by ``server.inputs``, which names the field)."""

    role: Role
    content: Text
    sender_id: Annotated[Text, Field(min_length=1, max_length=128)] | None = None
    parent_id: uuid.UUID | None = None
    context: list[ContextItem] | None = None
    metadata: JsonObject = Field(default_factory=dict)
    usage: MessageUsage | None = None
    attachment_ids: Annotated[list[uuid.UUID], Field(max_length=32)] = Field(default_factory=list)
    tool_calls: ToolCalls | None = None
    tool_call_id: ToolCallId | None = None


class MessageBatch(Strict):
    messages: Annotated[list[MessageCreate], Field(min_length=1, max_length=500)]


class MessageUpdate(Strict):
    """``feedback: null`` removes the feedback."""

    metadata: JsonObject | None = None
    feedback: Feedback | None = None


class Message(BaseModel):
    id: uuid.UUID
    session_id: uuid.UUID
    seq: int
    parent_id: uuid.UUID | None
    role: Role
    content: str
    sender_id: str | None
    context: list[JsonObject] | None
    metadata: JsonObject
    usage: JsonObject | None
    feedback: JsonObject | None
    status: Status
    created_at: dt.datetime
    completed_at: dt.datetime | None
    attachments: list[LinkedAttachment]  # in the order they were linked; empty when none
    tool_calls: list[ToolCall] | None  # an assistant's calls; null when it made none
    tool_call_id: str | None  # on a tool message: the call it answers


class MessageList(BaseModel):
    data: list[Message]


class SearchHit(BaseModel):
    session_id: uuid.UUID
    message_id: uuid.UUID
    seq: int
    role: Role
    snippet: str
    created_at: dt.datetime
