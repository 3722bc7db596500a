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
from chat_storage_client.langchain import ChatStorageMessageHistory, to_api
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


def test_tool_calls_round_trip_through_their_own_fields(client: Client) -> None:
    sid = client.sessions.create("agent")["id"]
    history = ChatStorageMessageHistory(sid, client=client)
    ai = AIMessage("", tool_calls=[
        {"id": "call-1", "name": "calc", "args": {"expr": "2 + 2"}},
        {"id": "call-2", "name": "search", "args": {"q": "sums", "k": [1, {"deep": True}]}}])
    tools = [ToolMessage("4", tool_call_id="call-1", name="calc"),
             ToolMessage("[]", tool_call_id="call-2")]
    history.add_messages([HumanMessage("2 + 2?"), ai, *tools])
    assert client.stores_tool_calls is True
    # stored as the contract's fields, where any client of the session reads them
    stored = list(client.messages.list(sid))
    assert stored[1]["tool_calls"] == [
        {"id": "call-1", "name": "calc", "arguments": {"expr": "2 + 2"}},
        {"id": "call-2", "name": "search", "arguments": {"q": "sums", "k": [1, {"deep": True}]}}]
    assert "tool_calls" not in stored[1]["metadata"].get("langchain", {})
    assert [(m["role"], m["tool_call_id"]) for m in stored[2:]] == [
        ("tool", "call-1"), ("tool", "call-2")]
    assert all("tool_call_id" not in m["metadata"].get("langchain", {}) for m in stored)
    back = history.messages
    assert isinstance(back[1], AIMessage)
    assert [(c["id"], c["name"], c["args"]) for c in back[1].tool_calls] == [
        (c["id"], c["name"], c["args"]) for c in ai.tool_calls]
    assert [(type(m), m.tool_call_id, m.name) for m in back[2:]] == [  # type: ignore[attr-defined]
        (ToolMessage, "call-1", "calc"), (ToolMessage, "call-2", None)]
    # a message written by another client with the fields alone reads back the same
    client.messages.create(sid, "assistant", "", tool_calls=[
        {"id": "call-3", "name": "calc", "arguments": {"expr": "1"}}])
    client.messages.create(sid, "tool", "1", tool_call_id="call-3")
    *_, made, answer = history.messages
    assert isinstance(made, AIMessage) and made.tool_calls[0]["args"] == {"expr": "1"}
    assert isinstance(answer, ToolMessage) and answer.tool_call_id == "call-3"


def test_tool_calls_stay_in_metadata_where_the_api_cannot_take_them(client: Client) -> None:
    # a call without an id (LangChain allows it; a tool message could not name it)
    no_id = AIMessage("", tool_calls=[{"id": None, "name": "calc", "args": {"x": 1}}])
    body = to_api(no_id, native_tools=True)
    assert "tool_calls" not in body and body["metadata"]["langchain"]["tool_calls"]
    # a server without the fields (older than contract 1.1): everything under metadata
    ai = _conversation()[2]
    assert "tool_calls" not in to_api(ai) and to_api(ai)["metadata"]["langchain"]["tool_calls"]
    sid = client.sessions.create("agent")["id"]
    history = ChatStorageMessageHistory(sid, client=client)
    history.add_messages([no_id])
    [back] = history.messages
    assert isinstance(back, AIMessage)
    assert [(c["id"], c["name"], c["args"]) for c in back.tool_calls] == [(None, "calc", {"x": 1})]
