"""Request and response models. Handlers validate with them; OpenAPI is generated from them.

Request models forbid unknown fields (no mass assignment). Limits that are settings
(content, context and metadata sizes) are checked by :mod:`server.limits`. The
building blocks are in :mod:`.schema_types`, the message models in
:mod:`.schemas_messages`; every model is importable from here.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool

from chat_storage.server.errors import ErrorCode
from chat_storage.server.schema_types import JsonObject, Role, Status, Strict, Text
from chat_storage.server.schemas_messages import (
    MAX_TOOL_CALLS,
    ContextItem,
    Feedback,
    LinkedAttachment,
    Message,
    MessageBatch,
    MessageCreate,
    MessageList,
    MessageUpdate,
    MessageUsage,
    SearchHit,
    ToolCall,
    ToolCallId,
    ToolCalls,
)

# every model, also those that live in .schema_types and .schemas_messages
__all__ = [
    "MAX_TOOL_CALLS", "Attachment", "AttachmentCreate", "AttachmentCreated",
    "AttachmentDownload", "AttachmentListQuery", "AttachmentPage", "ContextItem", "Error",
    "ExportQuery", "Feedback", "FeedbackQuery", "FieldError", "HistoryQuery", "JsonObject",
    "LinkedAttachment", "Message", "MessageBatch", "MessageCreate", "MessageList",
    "MessagePage", "MessageUpdate", "MessageUsage", "PageQuery", "Role", "SearchHit",
    "SearchPage", "SearchQuery", "Session", "SessionCreate", "SessionListQuery",
    "SessionPage", "SessionUpdate", "SessionUsage", "Status", "Strict", "Text", "ToolCall",
    "ToolCallId", "ToolCalls", "UploadTarget",
]


# ---------------------------------------------------------------- sessions

class SessionCreate(Strict):
    user_id: Annotated[Text, Field(min_length=1, max_length=128)]
    title: Annotated[Text, Field(max_length=200)] = ""
    metadata: JsonObject = Field(default_factory=dict)
    ttl_s: Annotated[int, Field(ge=1, le=10 * 365 * 86400)] | None = None


def _not_null(schema: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Document ``fields`` of a model's JSON schema without their ``null`` and default."""
    props = schema["properties"]
    for name in fields:
        prop = props[name]
        prop.pop("default", None)
        rest = [s for s in prop.pop("anyOf", []) if s != {"type": "null"}]
        if len(rest) == 1:
            prop.update(rest[0])
        elif rest:
            prop["anyOf"] = rest


_NOT_NULL = ("title", "favorite", "metadata")


class SessionUpdate(Strict):
    """Any subset; ``ttl_s: null`` makes the session permanent again."""

    # absent means unchanged; the route refuses a null title, favorite or metadata, so
    # the document says neither null nor a default for them (absent is not null)
    model_config = ConfigDict(extra="forbid",
                              json_schema_extra=lambda schema: _not_null(schema, _NOT_NULL))

    title: Annotated[Text, Field(max_length=200)] | None = None
    favorite: StrictBool | None = None  # JSON true or false, not 0 or "yes"
    metadata: JsonObject | None = None
    ttl_s: Annotated[int, Field(ge=1, le=10 * 365 * 86400)] | None = None


class SessionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Session(BaseModel):
    id: uuid.UUID
    user_id: str
    title: str
    favorite: bool
    metadata: JsonObject
    message_count: int
    last_seq: int
    usage: SessionUsage
    expires_at: dt.datetime | None
    last_message_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


# ---------------------------------------------------------------- attachments

def _file_name(value: str) -> str:
    if any(c in value for c in "/\\") or not value.isprintable() or value in {".", ".."}:
        raise ValueError("must be a file name: printable, without / or \\")
    return value


class AttachmentCreate(Strict):
    """A file about to be uploaded; its size and SHA-256 are checked on completion."""

    name: Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_file_name)]
    mime: Annotated[str, Field(max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/"
                                                       r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")]
    size: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$"), AfterValidator(str.lower)]


class Attachment(BaseModel):
    id: uuid.UUID
    session_id: uuid.UUID
    message_id: uuid.UUID | None
    name: str
    mime: str
    size: int
    sha256: str
    status: Literal["pending", "ready"]
    created_at: dt.datetime


class AttachmentDownload(Attachment):
    """``download_url`` is null until the upload is complete."""

    download_url: str | None


class UploadTarget(BaseModel):
    """Send ``method`` to ``url`` with exactly ``headers`` and the file as the body."""

    url: str
    method: Literal["PUT"]
    headers: dict[str, str]
    expires_at: dt.datetime


class AttachmentCreated(BaseModel):
    attachment: Attachment
    upload: UploadTarget


# ---------------------------------------------------------------- pages and queries

class PageQuery(BaseModel):
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Annotated[str, Field(min_length=1, max_length=1024)] | None = None


class SessionListQuery(PageQuery):
    user_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    favorite: bool | None = None
    q: Annotated[Text, Field(min_length=1, max_length=200)] | None = None


class HistoryQuery(PageQuery):
    after_seq: Annotated[int, Field(ge=0)] | None = None
    before_seq: Annotated[int, Field(ge=1)] | None = None
    order: Literal["asc", "desc"] = "asc"
    leaf: uuid.UUID | None = None


class FeedbackQuery(PageQuery):
    rating: Literal["1", "-1"] | None = None
    since: dt.datetime | None = None
    user_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None


class SearchQuery(PageQuery):
    q: Annotated[Text, Field(min_length=1, max_length=500)]
    user_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    session_id: uuid.UUID | None = None


class AttachmentListQuery(PageQuery):
    status: Literal["pending", "ready"] | None = None


class ExportQuery(BaseModel):
    format: Literal["json", "jsonl", "markdown"] = "json"


class SessionPage(BaseModel):
    data: list[Session]
    next_cursor: str | None
    has_more: bool


class MessagePage(BaseModel):
    data: list[Message]
    next_cursor: str | None
    has_more: bool


class AttachmentPage(BaseModel):
    data: list[Attachment]
    next_cursor: str | None
    has_more: bool


class SearchPage(BaseModel):
    data: list[SearchHit]
    next_cursor: str | None
    has_more: bool


class FieldError(BaseModel):
    field: str
    message: str


class Error(BaseModel):
    """The body of every error response; ``errors`` is ``[]`` when no single field is at
    fault."""

    timestamp: dt.datetime
    path: str
    status: int
    error: str
    code: ErrorCode
    message: str
    request_id: str
    errors: list[FieldError]
