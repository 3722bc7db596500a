"""LlamaIndex chat store kept in chat-storage: ``ChatStorageChatStore``.

A ``BaseChatStore`` of ``llama_index.core`` (``pip install 'chat-storage-client[llama-index]'``),
so ``ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key=key)`` and the chat
engines work unchanged.

**Keys.** A store belongs to one ``user_id``; a key names one of that user's sessions:
the session whose metadata has ``{"llama_index_key": key}``, created (titled ``key``) on
the first write. ``get_keys()`` lists the keys of the user's sessions; ``session_id(key)``
gives the session, for streaming an answer into it or watching it with the SDK. Finding
a key reads the user's session list once per store; two stores writing a new key at the
same instant may make two sessions, and then the older one is the key's.

**Deleting.** ``delete_message(key, idx)`` and ``delete_last_message(key)`` make the
message a ``deleted`` tombstone (docs/api.md: content erased, ``seq`` kept); tombstones
are not read back, so indexes count the messages that remain, as in a list.
``delete_messages(key)`` deletes the session itself, and the key is gone from
``get_keys()``. ``set_messages`` keeps the stored messages the new list starts with,
makes the rest tombstones and appends the new tail in one all-or-nothing batch.

**What is kept.** Roles ``user``, ``assistant``, ``system`` and ``tool`` are the API's
own; ``developer``, ``function``, ``chatbot`` and ``model`` are stored as the nearest of
them (system, tool, assistant, assistant) and read back as they were. The text is the
message's ``content``; RAG sources in ``additional_kwargs["context"]`` (a list of
``{source_id, …}``) are its ``context``; the rest of ``additional_kwargs`` and content
blocks other than one text block (images, …) are kept under ``metadata["llama_index"]``,
which the server caps (``CHAT_MAX_METADATA_BYTES``, 16 KiB a message). Tool calls in
the API's shape (``additional_kwargs["tool_calls"]`` as ``[{id, name, arguments}]``) and
a tool message's ``additional_kwargs["tool_call_id"]`` are the message's own
``tool_calls`` / ``tool_call_id``; a tool message with no call id is stored with
``llama_index:none``, which is not read back.

Give it a sync :class:`Client`: it serves the sync and the async methods, and
``ChatMemoryBuffer.aget`` runs the sync ``get_messages`` in a thread. An
:class:`AsyncClient` serves the async methods alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from llama_index.core.base.llms.types import ChatMessage, TextBlock
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.storage.chat_store.base import BaseChatStore

from chat_storage_client.client import AsyncClient
from chat_storage_client.errors import NotFound
from chat_storage_client.models import Message, Role
from chat_storage_client.sync import Client

T = TypeVar("T")

ROLES: dict[str, Role] = {"user": "user", "assistant": "assistant", "system": "system",
                          "tool": "tool", "developer": "system", "function": "tool",
                          "chatbot": "assistant", "model": "assistant"}
KEY = "llama_index"  # the message metadata key of what the API has no field for
SESSION_KEY = "llama_index_key"  # the session metadata key naming a store key
MAX_BATCH = 500  # messages per create_many (the API's limit)
MAX_ID = 256  # the API's longest tool call id
NO_CALL_ID = "llama_index:none"  # a tool message that named no call (a legacy "function")


def to_api(message: ChatMessage) -> dict[str, Any]:
    """The body of ``messages.create`` for a LlamaIndex message."""
    role = message.role.value
    dumped = message.model_dump(mode="json")
    kept: dict[str, Any] = {}
    if ROLES[role] != role:
        kept["role"] = role
    extra = dict(dumped.get("additional_kwargs") or {})
    context = extra.get("context")
    if _is_context(context):
        del extra["context"]
    if not (len(message.blocks) == 1 and isinstance(message.blocks[0], TextBlock)):
        kept["blocks"] = dumped["blocks"]
    body: dict[str, Any] = {"role": ROLES[role], "content": message.content or ""}
    if _is_context(context):
        body["context"] = context
    body.update(_tool_fields(body["role"], extra))
    if extra:
        kept["additional_kwargs"] = extra
    if kept:
        body["metadata"] = {KEY: kept}
    return body


def from_api(message: Message) -> ChatMessage:
    """The LlamaIndex message for a stored message (written by this store or not)."""
    kept = (message.get("metadata") or {}).get(KEY) or {}
    extra = dict(kept.get("additional_kwargs") or {})
    if message.get("context"):
        extra.setdefault("context", message["context"])
    if message.get("tool_calls"):
        extra.setdefault("tool_calls", message["tool_calls"])
    if message.get("tool_call_id") not in (None, NO_CALL_ID):
        extra.setdefault("tool_call_id", message["tool_call_id"])
    data: dict[str, Any] = {"role": kept.get("role") or message["role"],
                            "additional_kwargs": extra}
    if "blocks" in kept:
        return ChatMessage.model_validate({**data, "blocks": kept["blocks"]})
    return ChatMessage(content=message["content"], **data)


def _tool_fields(role: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The API's ``tool_calls`` / ``tool_call_id`` taken out of ``extra`` (a message's
    ``additional_kwargs``) where they have the API's shape; other shapes (a provider's
    own, such as OpenAI's ``function`` objects) stay in ``extra``, kept in metadata."""
    calls, call_id = extra.get("tool_calls"), extra.get("tool_call_id")
    if role == "assistant" and isinstance(calls, list) and calls and all(
            isinstance(c, dict) and set(c) == {"id", "name", "arguments"}
            and isinstance(c["id"], str) and c["id"] and isinstance(c["name"], str)
            and c["name"] and isinstance(c["arguments"], dict) for c in calls):
        del extra["tool_calls"]
        return {"tool_calls": calls}
    if role != "tool":
        return {}
    if isinstance(call_id, str) and 0 < len(call_id) <= MAX_ID:
        del extra["tool_call_id"]
        return {"tool_call_id": call_id}
    return {"tool_call_id": NO_CALL_ID}  # the API needs one; this one is not read back


def _is_context(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, dict) and isinstance(item.get("source_id"), str) for item in value)


async def _visible(client: AsyncClient, session_id: str) -> list[Message]:
    messages = await client.messages.list(session_id, page_size=200).to_list()
    return [m for m in messages if m["status"] != "deleted"]


class ChatStorageChatStore(BaseChatStore):
    """The chat-storage sessions of one user as a LlamaIndex chat store (see the module)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: Client | AsyncClient = Field(exclude=True, description="the chat-storage client")
    user_id: str = Field(description="the chat-storage user whose sessions the keys name")
    _sessions: dict[str, str] = PrivateAttr(default_factory=dict)  # key -> session id
    _lock: asyncio.Lock | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "ChatStorageChatStore"

    # ------------------------------------------------------------ sync
    def set_messages(self, key: str, messages: list[ChatMessage]) -> None:
        self._sync(lambda c: self._set(c, key, messages))

    def get_messages(self, key: str) -> list[ChatMessage]:
        return self._sync(lambda c: self._get(c, key))

    def add_message(self, key: str, message: ChatMessage) -> None:
        self._sync(lambda c: self._add(c, key, message))

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        return self._sync(lambda c: self._delete_all(c, key))

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        return self._sync(lambda c: self._delete_one(c, key, idx))

    def delete_last_message(self, key: str) -> ChatMessage | None:
        return self._sync(lambda c: self._delete_one(c, key, -1))

    def get_keys(self) -> list[str]:
        return self._sync(self._keys)

    def session_id(self, key: str) -> str:
        """The id of the key's session, created if it has none yet."""
        return self._sync(lambda c: self._ensure(c, key))

    # ------------------------------------------------------------ async
    async def aset_messages(self, key: str, messages: list[ChatMessage]) -> None:
        await self._async(lambda c: self._set(c, key, messages))

    async def aget_messages(self, key: str) -> list[ChatMessage]:
        return await self._async(lambda c: self._get(c, key))

    async def async_add_message(self, key: str, message: ChatMessage) -> None:
        await self._async(lambda c: self._add(c, key, message))

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        return await self._async(lambda c: self._delete_all(c, key))

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        return await self._async(lambda c: self._delete_one(c, key, idx))

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        return await self._async(lambda c: self._delete_one(c, key, -1))

    async def aget_keys(self) -> list[str]:
        return await self._async(self._keys)

    async def asession_id(self, key: str) -> str:
        """The id of the key's session, created if it has none yet."""
        return await self._async(lambda c: self._ensure(c, key))

    # ------------------------------------------------------------ the work, once
    async def _get(self, c: AsyncClient, key: str) -> list[ChatMessage]:
        sid = await self._find(c, key)
        try:
            return [] if sid is None else [from_api(m) for m in await _visible(c, sid)]
        except NotFound:  # deleted elsewhere since it was cached: look again
            self._sessions.pop(key, None)
            sid = await self._find(c, key)
            return [] if sid is None else [from_api(m) for m in await _visible(c, sid)]

    async def _set(self, c: AsyncClient, key: str, messages: Sequence[ChatMessage]) -> None:
        wanted = [to_api(m) for m in messages]
        sid, stored = await self._writable(c, key)
        same = 0
        for old, new in zip(stored, wanted, strict=False):
            if to_api(from_api(old)) != new:
                break
            same += 1
        for old in stored[same:]:
            await c.messages.delete(sid, old["id"])
        for start in range(same, len(wanted), MAX_BATCH):
            await c.messages.create_many(sid, wanted[start:start + MAX_BATCH])

    async def _add(self, c: AsyncClient, key: str, message: ChatMessage) -> None:
        body = to_api(message)
        sid = await self._ensure(c, key)
        try:
            await c.messages.create(sid, **body)
        except NotFound:  # deleted elsewhere since it was cached: a new session
            self._sessions.pop(key, None)
            await c.messages.create(await self._ensure(c, key), **body)

    async def _delete_all(self, c: AsyncClient, key: str) -> list[ChatMessage] | None:
        sid = await self._find(c, key)
        if sid is None:
            return None
        self._sessions.pop(key, None)
        try:
            gone = [from_api(m) for m in await _visible(c, sid)]
            await c.sessions.delete(sid)
        except NotFound:
            return None
        return gone

    async def _delete_one(self, c: AsyncClient, key: str, idx: int) -> ChatMessage | None:
        sid = await self._find(c, key)
        if sid is None:
            return None
        stored = await _visible(c, sid)
        if not -len(stored) <= idx < len(stored):
            return None
        await c.messages.delete(sid, stored[idx]["id"])
        return from_api(stored[idx])

    async def _keys(self, c: AsyncClient) -> list[str]:
        keys: dict[str, None] = {}
        async for session in c.sessions.list(user_id=self.user_id):
            key = (session.get("metadata") or {}).get(SESSION_KEY)
            if isinstance(key, str):
                keys[key] = None
        return list(keys)

    async def _writable(self, c: AsyncClient, key: str) -> tuple[str, list[Message]]:
        """The key's session (made if need be) and its messages."""
        sid = await self._ensure(c, key)
        try:
            return sid, await _visible(c, sid)
        except NotFound:  # deleted elsewhere since it was cached: a new session
            self._sessions.pop(key, None)
            return await self._ensure(c, key), []

    async def _find(self, c: AsyncClient, key: str) -> str | None:
        """The key's session id (cached after the first lookup), or None."""
        return await self._lookup(c, key, create=False)

    async def _ensure(self, c: AsyncClient, key: str) -> str:
        """The key's session id; the session is created if the key has none."""
        sid = await self._lookup(c, key, create=True)
        if sid is None:  # pragma: no cover - _lookup(create=True) always gives one
            raise RuntimeError(f"no session for key {key!r}")
        return sid

    async def _lookup(self, c: AsyncClient, key: str, *, create: bool) -> str | None:
        if key in self._sessions:
            return self._sessions[key]
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one lookup (and create) per key at a time
            if key not in self._sessions:
                found = [s async for s in c.sessions.list(user_id=self.user_id)
                         if (s.get("metadata") or {}).get(SESSION_KEY) == key]
                if found:
                    self._sessions[key] = min(found, key=lambda s: s["created_at"])["id"]
                elif create:
                    made = await c.sessions.create(self.user_id, title=key[:200],
                                                   metadata={SESSION_KEY: key})
                    self._sessions[key] = made["id"]
            return self._sessions.get(key)

    # ------------------------------------------------------------ internals
    def _sync(self, call: Callable[[AsyncClient], Awaitable[T]]) -> T:
        if not isinstance(self.client, Client):
            raise TypeError("the sync methods need a chat_storage_client.Client; an "
                            "AsyncClient serves the async ones (aget_messages, ...)")
        return self.client.call(call)

    async def _async(self, call: Callable[[AsyncClient], Awaitable[T]]) -> T:
        if isinstance(self.client, AsyncClient):
            return await call(self.client)
        return await self.client.call_async(call)


__all__ = ["ChatStorageChatStore", "from_api", "to_api"]
