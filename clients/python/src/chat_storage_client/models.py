"""The API's objects as TypedDicts: plain dicts at run time, typed for mypy and IDEs.

They mirror the schemas of the server's ``/openapi.json`` (tests/clients check that they
do not drift). ``tool_calls`` and ``tool_call_id`` (docs/api.md, "Tool calls") are null
on a message without them.
"""

from typing import Any, Literal, NotRequired, TypedDict

Role = Literal["user", "assistant", "system", "tool"]
Status = Literal["complete", "streaming", "aborted", "interrupted", "deleted"]
JsonObject = dict[str, Any]

class SessionUsage(TypedDict):
    """A session's token usage: the sum over its messages."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Session(TypedDict):
    """A conversation."""

    id: str
    user_id: str
    title: str
    favorite: bool
    metadata: JsonObject
    message_count: int
    last_seq: int
    usage: SessionUsage
    expires_at: str | None
    last_message_at: str | None
    created_at: str
    updated_at: str


class ContextItem(TypedDict):
    """One retrieved passage an answer was built from (RAG sources)."""

    source_id: str
    title: NotRequired[str | None]
    uri: NotRequired[str | None]
    snippet: NotRequired[str | None]
    score: NotRequired[float | None]
    metadata: NotRequired[JsonObject | None]


class MessageUsage(TypedDict, total=False):
    """An answer's token usage."""

    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


class Feedback(TypedDict):
    """The end user's verdict on an answer."""

    rating: Literal[1, -1]
    comment: NotRequired[str | None]


class LinkedAttachment(TypedDict):
    """An attachment as a message lists it."""

    id: str
    name: str
    mime: str
    size: int
    sha256: str
    status: Literal["pending", "ready"]


class ToolCall(TypedDict):
    """A call an assistant message asks for (``arguments``: a JSON object)."""

    id: str
    name: str
    arguments: JsonObject


class Message(TypedDict):
    """A message of a session; ``seq`` is its position (1, 2, 3, …)."""

    id: str
    session_id: str
    seq: int
    parent_id: str | None
    role: Role
    content: str
    sender_id: str | None
    context: list[JsonObject] | None
    metadata: JsonObject
    usage: JsonObject | None
    feedback: JsonObject | None
    status: Status
    created_at: str
    completed_at: str | None
    attachments: list[LinkedAttachment]
    tool_calls: list[ToolCall] | None  # an assistant's calls
    tool_call_id: str | None  # on a tool message: the call it answers


class SearchHit(TypedDict):
    """A full-text search result."""

    session_id: str
    message_id: str
    seq: int
    role: Role
    snippet: str
    created_at: str


# what the server sends over the WebSocket (``type`` plus the frame's fields)
Event = dict[str, Any]
