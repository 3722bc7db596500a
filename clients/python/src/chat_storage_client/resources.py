"""Sessions and messages over REST: thin, typed calls of the contract's routes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast
from urllib.parse import quote

from chat_storage_client.models import (
    ContextItem,
    Feedback,
    JsonObject,
    Message,
    MessageUsage,
    Role,
    SearchHit,
    Session,
    ToolCall,
)
from chat_storage_client.pages import AsyncPager
from chat_storage_client.transport import Transport

API = "/api/v1"
ExportFormat = Literal["json", "jsonl", "markdown"]


def _sid(session_id: str) -> str:
    return f"{API}/sessions/{quote(str(session_id), safe='')}"


def _drop_none(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


class Sessions:
    """``client.sessions``: create, get, list, update, delete, export."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    async def create(self, user_id: str, *, title: str | None = None,
                     metadata: JsonObject | None = None, ttl_s: int | None = None) -> Session:
        """Create a session (201)."""
        body = _drop_none({"user_id": user_id, "title": title, "metadata": metadata,
                           "ttl_s": ttl_s})
        return cast(Session, (await self._t.request("POST", f"{API}/sessions", json=body)).body)

    async def get(self, session_id: str) -> Session:
        """One session (NotFound if absent or another tenant's)."""
        return cast(Session, (await self._t.request("GET", _sid(session_id))).body)

    def list(self, *, user_id: str | None = None, favorite: bool | None = None,
             q: str | None = None, page_size: int = 100,
             max_items: int | None = None) -> AsyncPager[Session]:
        """Every session matching, newest activity first (``async for``)."""
        params = {"user_id": user_id, "favorite": favorite, "q": q}
        return AsyncPager(self._page, params, page_size=page_size, max_items=max_items)

    async def _page(self, params: Mapping[str, Any]) -> Any:
        return (await self._t.request("GET", f"{API}/sessions", params=params)).body

    async def update(self, session_id: str, *, title: str | None = None,
                     favorite: bool | None = None, metadata: JsonObject | None = None,
                     ttl_s: int | None = None) -> Session:
        """Rename, (un)favorite, replace metadata or set a time to live."""
        body = _drop_none({"title": title, "favorite": favorite, "metadata": metadata,
                           "ttl_s": ttl_s})
        return cast(Session, (await self._t.request("PATCH", _sid(session_id), json=body)).body)

    async def delete(self, session_id: str) -> None:
        """Erase the session, its messages and attachments."""
        await self._t.request("DELETE", _sid(session_id))

    async def export(self, session_id: str, format: ExportFormat = "json") -> str:
        """The whole session as text in ``format`` (json, jsonl or markdown)."""
        answer = await self._t.request("GET", _sid(session_id) + "/export",
                                       params={"format": format}, raw=True)
        return answer.text


class Messages:
    """``client.messages``: create, get, list, update, delete, search."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    async def create(self, session_id: str, role: Role, content: str, *,
                     sender_id: str | None = None, parent_id: str | None = None,
                     context: Sequence[ContextItem] | None = None,
                     metadata: JsonObject | None = None, usage: MessageUsage | None = None,
                     attachment_ids: Sequence[str] | None = None,
                     tool_calls: Sequence[ToolCall] | None = None,
                     tool_call_id: str | None = None) -> Message:
        """Store a message; answered once it is durable. ``tool_calls``/``tool_call_id``
        are sent only when given (a server without tool calls refuses them with 400)."""
        body = message_body(role, content, sender_id=sender_id, parent_id=parent_id,
                            context=context, metadata=metadata, usage=usage,
                            attachment_ids=attachment_ids, tool_calls=tool_calls,
                            tool_call_id=tool_call_id)
        path = _sid(session_id) + "/messages"
        return cast(Message, (await self._t.request("POST", path, json=body)).body)

    async def create_many(self, session_id: str,
                          messages: Sequence[Mapping[str, Any]]) -> list[Message]:
        """Store up to 500 messages at once, all or nothing, consecutive ``seq``."""
        path = _sid(session_id) + "/messages/batch"
        answer = await self._t.request("POST", path, json={"messages": list(messages)})
        return cast(list[Message], answer.body["data"])

    async def get(self, session_id: str, message_id: str) -> Message:
        """One message."""
        path = f"{_sid(session_id)}/messages/{quote(str(message_id), safe='')}"
        return cast(Message, (await self._t.request("GET", path)).body)

    def list(self, session_id: str, *, after_seq: int | None = None,
             before_seq: int | None = None, order: Literal["asc", "desc"] = "asc",
             leaf: str | None = None, page_size: int = 100,
             max_items: int | None = None) -> AsyncPager[Message]:
        """The session's messages in ``seq`` order (``async for``); ``leaf``: one branch."""
        path = _sid(session_id) + "/messages"
        params = {"after_seq": after_seq, "before_seq": before_seq, "order": order,
                  "leaf": leaf}

        async def page(query: Mapping[str, Any]) -> Any:
            return (await self._t.request("GET", path, params=query)).body

        return AsyncPager(page, params, page_size=page_size, max_items=max_items)

    async def update(self, session_id: str, message_id: str, *,
                     metadata: JsonObject | None = None,
                     feedback: Feedback | None = None) -> Message:
        """Replace metadata or set feedback (content is immutable)."""
        path = f"{_sid(session_id)}/messages/{quote(str(message_id), safe='')}"
        body = _drop_none({"metadata": metadata, "feedback": feedback})
        return cast(Message, (await self._t.request("PATCH", path, json=body)).body)

    async def delete(self, session_id: str, message_id: str) -> None:
        """Make the message a ``deleted`` tombstone (its ``seq`` is kept)."""
        path = f"{_sid(session_id)}/messages/{quote(str(message_id), safe='')}"
        await self._t.request("DELETE", path)

    def search(self, q: str, *, user_id: str | None = None, session_id: str | None = None,
               page_size: int = 100, max_items: int | None = None) -> AsyncPager[SearchHit]:
        """Full-text search over the tenant's (or a user's, a session's) messages."""
        params = {"q": q, "user_id": user_id, "session_id": session_id}

        async def page(query: Mapping[str, Any]) -> Any:
            return (await self._t.request("GET", f"{API}/search", params=query)).body

        return AsyncPager(page, params, page_size=page_size, max_items=max_items)


def message_body(role: Role, content: str, **fields: Any) -> dict[str, Any]:
    """A message's JSON body: the given fields, unset ones left out."""
    body = _drop_none({"role": role, "content": content, **fields})
    for key in ("context", "attachment_ids", "tool_calls"):
        if key in body:
            body[key] = list(body[key])
    return body
