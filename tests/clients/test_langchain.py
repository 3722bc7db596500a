"""ChatStorageMessageHistory against a real server: LangChain's chat-history contract.

The installed langchain-tests has no standard tests for chat histories, so these are
their equivalent: what ``BaseChatMessageHistory`` promises (add, read back in order,
clear; sync and async), what RunnableWithMessageHistory needs, and the fields this
adapter keeps (types, tool calls, usage, response metadata, RAG sources).
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chat_storage_client import AsyncClient, Client
from chat_storage_client.langchain import ChatStorageMessageHistory
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from tests.clients.conftest import CLIENT_ROOT
from tests.conftest import Tenant
from tests.support.procs import Server, clean_env


@pytest.fixture
def client(server: Server, tenant: Tenant) -> Iterator[Client]:
    with Client(server.base, api_key=tenant.key) as c:
        yield c


def _conversation() -> list[BaseMessage]:
    return [
        SystemMessage("You answer from the sources."),
        HumanMessage("What is 2 + 2? Look it up."),
        AIMessage("", tool_calls=[{"id": "call-1", "name": "calc",
                                   "args": {"expr": "2 + 2"}}]),
        ToolMessage("4", tool_call_id="call-1", name="calc"),
        AIMessage("It is 4.", response_metadata={"model_name": "m-1", "finish": "stop"},
                  usage_metadata={"input_tokens": 10, "output_tokens": 3, "total_tokens": 13},
                  additional_kwargs={"context": [{"source_id": "math-101", "score": 0.5}]}),
    ]


def _same(stored: list[BaseMessage], given: list[BaseMessage]) -> None:
    assert len(stored) == len(given)
    for got, want in zip(stored, given, strict=True):
        assert type(got) is type(want)
        assert got.content == want.content
        assert got.additional_kwargs == want.additional_kwargs
        assert got.response_metadata == want.response_metadata
        if isinstance(want, AIMessage):
            assert isinstance(got, AIMessage)
            assert [(c["id"], c["name"], c["args"]) for c in got.tool_calls] == [
                (c["id"], c["name"], c["args"]) for c in want.tool_calls]
            assert got.usage_metadata == want.usage_metadata
        if isinstance(want, ToolMessage):
            assert isinstance(got, ToolMessage)
            assert (got.tool_call_id, got.name) == (want.tool_call_id, want.name)
        assert got.id  # each has the stored message's id


def test_sync_round_trip_keeps_types_tools_usage_and_sources(
        client: Client) -> None:
    sid = client.sessions.create("u1")["id"]
    history = ChatStorageMessageHistory(sid, client=client)
    assert history.messages == []
    given = _conversation()
    history.add_messages(given)
    _same(history.messages, given)
    stored = list(client.messages.list(sid))
    assert [m["role"] for m in stored] == ["system", "user", "assistant", "tool", "assistant"]
    assert stored[4]["usage"] == {"model": "m-1", "prompt_tokens": 10,
                                  "completion_tokens": 3, "total_tokens": 13}
    assert stored[4]["context"] == [{"source_id": "math-101", "score": 0.5}]
    history.add_user_message("and 3 + 3?")
    history.add_ai_message("6")
    assert [m.content for m in history.messages][-2:] == ["and 3 + 3?", "6"]
    history.clear()
    assert history.messages == []
    history.add_messages([HumanMessage("again")])
    assert [m.content for m in history.messages] == ["again"]


@pytest.mark.parametrize("kind", ["async", "sync-client"])
async def test_async_methods(server: Server, tenant: Tenant, kind: str) -> None:
    async with AsyncClient(server.base, api_key=tenant.key) as aclient:
        sid = (await aclient.sessions.create("u1"))["id"]
        sync = Client(server.base, api_key=tenant.key) if kind == "sync-client" else None
        try:
            history = ChatStorageMessageHistory(sid, client=sync or aclient)
            given = _conversation()
            await history.aadd_messages(given[:2])
            await history.aadd_messages(given[2:])
            _same(await history.aget_messages(), given)
            await history.aclear()
            assert await history.aget_messages() == []
        finally:
            if sync is not None:
                sync.close()


async def test_an_async_client_refuses_the_sync_methods_clearly(
        server: Server, tenant: Tenant) -> None:
    async with AsyncClient(server.base, api_key=tenant.key) as aclient:
        history = ChatStorageMessageHistory("any", client=aclient)
        with pytest.raises(TypeError, match=r"need a chat_storage_client\.Client"):
            history.add_messages([HumanMessage("x")])


def _chain(client: Client, seen: list[list[BaseMessage]]) -> Any:
    model = GenericFakeChatModel(messages=iter([AIMessage("Hi Ann."), AIMessage("Ann."),
                                                AIMessage("Yes."), AIMessage("Sure.")]))

    def remember(prompt: Any) -> Any:
        seen.append(prompt.to_messages())
        return prompt

    prompt = ChatPromptTemplate.from_messages([
        ("system", "Be brief."), MessagesPlaceholder("history"), ("human", "{question}")])
    return RunnableWithMessageHistory(
        prompt | remember | model,
        lambda session_id: ChatStorageMessageHistory(session_id, client=client),
        input_messages_key="question", history_messages_key="history")


async def test_runnable_with_message_history_works_unchanged(client: Client) -> None:
    sid = client.sessions.create("u1")["id"]
    seen: list[list[BaseMessage]] = []
    chain = _chain(client, seen)
    config = {"configurable": {"session_id": sid}}
    assert chain.invoke({"question": "I am Ann."}, config=config).content == "Hi Ann."
    assert (await chain.ainvoke({"question": "Who am I?"}, config=config)).content == "Ann."
    # the second call's prompt held the first exchange, read back from the server
    assert [m.content for m in seen[1]] == ["Be brief.", "I am Ann.", "Hi Ann.", "Who am I?"]
    assert [(m["role"], m["content"]) for m in client.messages.list(sid)] == [
        ("user", "I am Ann."), ("assistant", "Hi Ann."),
        ("user", "Who am I?"), ("assistant", "Ann.")]


async def test_the_readme_switch_from_postgres_runs(server: Server, tenant: Tenant,
                                                    tmp_path: Path) -> None:
    readme = (CLIENT_ROOT / "README.md").read_text().split("## LangChain", 1)[1]
    match = re.search(r"```python\n(.*?)```", readme, re.S)
    assert match is not None
    program = tmp_path / "switch.py"
    program.write_text(match.group(1))
    env = clean_env(CHAT_STORAGE_URL=server.base, CHAT_STORAGE_API_KEY=tenant.key,
                    PYTHONPATH=str(CLIENT_ROOT / "src"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(program), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "['Hi', 'Hello!']"


def test_tool_calls_go_in_their_own_fields_once_the_server_stores_them(client: Client) -> None:
    from chat_storage_client.langchain import from_api, to_api

    # this server does not serve them yet (issue 16, item 0): kept under metadata
    client.check_version()
    assert client.stores_tool_calls is False
    ai, tool = _conversation()[2:4]
    assert "tool_calls" not in to_api(ai) and to_api(ai)["metadata"]["langchain"]["tool_calls"]
    # a server that does: the contract's fields, read back from them
    body = to_api(ai, native_tools=True)
    assert body["tool_calls"] == [{"id": "call-1", "name": "calc",
                                   "arguments": {"expr": "2 + 2"}}]
    assert "tool_calls" not in body.get("metadata", {}).get("langchain", {})
    assert to_api(tool, native_tools=True)["tool_call_id"] == "call-1"
    stored: Any = {"id": "m1", "role": "assistant", "content": "", "context": None,
                   "metadata": body.get("metadata", {}), "usage": None,
                   "tool_calls": body["tool_calls"]}
    back = from_api(stored)
    assert isinstance(back, AIMessage)
    assert [(c["id"], c["name"], c["args"]) for c in back.tool_calls] == [
        ("call-1", "calc", {"expr": "2 + 2"})]
    tool_back = from_api({**stored, "role": "tool", "content": "4", "tool_calls": [],
                          "tool_call_id": "call-1", "metadata": {}})
    assert isinstance(tool_back, ToolMessage) and tool_back.tool_call_id == "call-1"
