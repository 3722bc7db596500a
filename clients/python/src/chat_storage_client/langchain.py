"""LangChain chat history stored in chat-storage: ``ChatStorageMessageHistory``.

A drop-in ``BaseChatMessageHistory`` (``pip install 'chat-storage-client[langchain]'``),
so ``RunnableWithMessageHistory`` works unchanged. Give it a sync :class:`Client` for
both the sync and the async methods (the async ones run on the client's own loop and
do not block yours), or an :class:`AsyncClient` for the async methods alone.

What is kept: the message type (human → ``user``, ai → ``assistant``, system, tool),
the content, usage (``usage_metadata`` and the model in ``response_metadata`` become
the message's ``usage``), RAG sources (``additional_kwargs["context"]``, a list of
``{source_id, title?, uri?, snippet?, score?, metadata?}``, become its ``context``), and
everything else of the LangChain message (``name``, ``id``, ``response_metadata``, other
``additional_kwargs``, list content) under ``metadata["langchain"]``. An AI message's
tool calls (id, name, args) and a tool message's ``tool_call_id`` go in the message's
own fields (docs/api.md, "Tool calls"), so other clients of the session read them; under
``metadata["langchain"]`` instead for a server whose ``/openapi.json`` lacks them, or
calls without an id (LangChain allows that; the API does not).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import AIMessage, BaseMessage, message_to_dict, messages_from_dict

from chat_storage_client.client import AsyncClient
from chat_storage_client.models import Message, MessageUsage, Role
from chat_storage_client.sync import Client

ROLES: dict[str, Role] = {"human": "user", "ai": "assistant", "system": "system",
                          "tool": "tool"}
TYPES: dict[str, str] = {"user": "human", "assistant": "ai", "system": "system",
                         "tool": "tool"}
KEY = "langchain"  # the metadata key of what the API has no field for
# message fields the API stores itself, not repeated under metadata["langchain"]
OWN_FIELDS = frozenset({"content", "usage_metadata", "type"})


def to_api(message: BaseMessage, *, native_tools: bool = False) -> dict[str, Any]:
    """The body of ``messages.create`` for a LangChain message (``native_tools``: the
    server stores ``tool_calls`` and ``tool_call_id`` as fields)."""
    role = ROLES.get(message.type)
    if role is None:
        raise ValueError(f"chat-storage stores human, ai, system and tool messages, "
                         f"not {message.type!r}")
    data = message_to_dict(message)["data"]
    content = message.content if isinstance(message.content, str) else message.text
    kept = {k: v for k, v in data.items() if v not in (None, {}, []) and k not in OWN_FIELDS}
    if not isinstance(message.content, str):
        kept["content"] = message.content  # blocks: the API keeps their text
    extra = dict(kept.get("additional_kwargs") or {})
    context = extra.pop("context", None)
    if extra:
        kept["additional_kwargs"] = extra
    else:
        kept.pop("additional_kwargs", None)
    body: dict[str, Any] = {"role": role, "content": content}
    if native_tools:
        calls = kept.get("tool_calls")
        # the API needs each call's id (a tool message names it); LangChain allows none,
        # and such calls stay under metadata, as with a server without tool calls
        if calls and all(c.get("id") for c in calls):
            body["tool_calls"] = [{"id": c["id"], "name": c["name"],
                                   "arguments": c.get("args") or {}} for c in calls]
            del kept["tool_calls"]
        if role == "tool" and kept.get("tool_call_id"):
            body["tool_call_id"] = kept.pop("tool_call_id")
    if context is not None:
        body["context"] = list(context)
    usage = _usage(message)
    if usage:
        body["usage"] = usage
    if kept:
        body["metadata"] = {KEY: kept}
    return body


def from_api(message: Message) -> BaseMessage:
    """The LangChain message for a stored message."""
    kept = dict((message.get("metadata") or {}).get(KEY) or {})
    data: dict[str, Any] = {"content": message["content"], **kept}
    data.setdefault("id", message["id"])
    if message.get("context"):
        data["additional_kwargs"] = {**(data.get("additional_kwargs") or {}),
                                     "context": message["context"]}
    usage = message.get("usage") or {}
    kind = TYPES[message["role"]]
    if kind == "ai" and {"prompt_tokens", "completion_tokens"} <= usage.keys():
        data["usage_metadata"] = {
            "input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
            "total_tokens": usage.get("total_tokens",
                                      usage["prompt_tokens"] + usage["completion_tokens"])}
    calls = message.get("tool_calls")
    if kind == "ai" and calls and "tool_calls" not in data:
        data["tool_calls"] = [{"id": c["id"], "name": c["name"], "args": c["arguments"],
                               "type": "tool_call"} for c in calls]
    if kind == "tool":
        data.setdefault("tool_call_id", message.get("tool_call_id") or "")
    return messages_from_dict([{"type": kind, "data": data}])[0]


def _usage(message: BaseMessage) -> MessageUsage:
    usage: MessageUsage = {}
    counts = getattr(message, "usage_metadata", None)
    if counts:
        usage["prompt_tokens"] = counts["input_tokens"]
        usage["completion_tokens"] = counts["output_tokens"]
        usage["total_tokens"] = counts["total_tokens"]
    model = (message.response_metadata or {}).get("model_name") if isinstance(
        message, AIMessage) else None
    if isinstance(model, str) and usage:
        usage["model"] = model[:200]
    return usage


def _visible(messages: Sequence[Message]) -> list[BaseMessage]:
    return [from_api(m) for m in messages if m["status"] != "deleted"]


class ChatStorageMessageHistory(BaseChatMessageHistory):
    """The messages of one chat-storage session as a LangChain chat history.

    ``clear()`` makes each message a ``deleted`` tombstone (the session and its ``seq``
    numbers stay); the history then reads as empty.
    """

    def __init__(self, session_id: str, *, client: Client | AsyncClient) -> None:
        self.session_id = session_id
        self.client = client

    # ------------------------------------------------------------ sync
    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return _visible(list(self._sync().messages.list(self.session_id, page_size=200)))

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        client = self._sync()
        client.check_version()  # once per client: learns whether tool calls are fields
        bodies = [to_api(m, native_tools=client.stores_tool_calls) for m in messages]
        if bodies:
            client.messages.create_many(self.session_id, bodies)

    def clear(self) -> None:
        client = self._sync()
        for message in list(client.messages.list(self.session_id, page_size=200)):
            if message["status"] != "deleted":
                client.messages.delete(self.session_id, message["id"])

    # ------------------------------------------------------------ async
    async def aget_messages(self) -> list[BaseMessage]:
        async def get(client: AsyncClient) -> list[Message]:
            return await client.messages.list(self.session_id, page_size=200).to_list()

        return _visible(await self._call(get))

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        async def add(client: AsyncClient) -> None:
            await client.check_version()  # once: learns whether tool calls are fields
            bodies = [to_api(m, native_tools=client.stores_tool_calls) for m in messages]
            if bodies:
                await client.messages.create_many(self.session_id, bodies)

        await self._call(add)

    async def aclear(self) -> None:
        async def clear(client: AsyncClient) -> None:
            async for message in client.messages.list(self.session_id, page_size=200):
                if message["status"] != "deleted":
                    await client.messages.delete(self.session_id, message["id"])

        await self._call(clear)

    # ------------------------------------------------------------ internals
    def _sync(self) -> Client:
        if not isinstance(self.client, Client):
            raise TypeError("the sync methods need a chat_storage_client.Client; an "
                            "AsyncClient serves aget_messages, aadd_messages and aclear")
        return self.client

    async def _call(self, call: Any) -> Any:
        if isinstance(self.client, AsyncClient):
            return await call(self.client)
        return await self.client.call_async(call)


__all__ = ["ChatStorageMessageHistory", "from_api", "to_api"]
