"""ChatStorageChatStore against a real server: LlamaIndex's ``BaseChatStore`` contract.

What ``SimpleChatStore`` does with a dict, done with sessions: a key is one session of
the store's user, found by its metadata; indexes count the messages not deleted; the
async variants and ``ChatMemoryBuffer`` (with a token limit) work on it unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chat_storage_client import AsyncClient, Client, NotFound
from chat_storage_client.llama_index import ChatStorageChatStore
from llama_index.core.llms import ChatMessage, MessageRole, TextBlock
from llama_index.core.memory import ChatMemoryBuffer

from tests.conftest import Tenant
from tests.support.procs import Server


@pytest.fixture
def client(server: Server, tenant: Tenant) -> Iterator[Client]:
    with Client(server.base, api_key=tenant.key) as c:
        yield c


def _conversation() -> list[ChatMessage]:
    return [
        ChatMessage(role="developer", content="Answer from the sources."),
        ChatMessage(role="user", content="How tall is a zebra?"),
        ChatMessage(role="assistant", content="",
                    additional_kwargs={"tool_calls": [{"id": "c1", "name": "lookup",
                                                       "arguments": {"q": "zebra"}}]}),
        ChatMessage(role="tool", content="1.4 m", additional_kwargs={"tool_call_id": "c1"}),
        ChatMessage(role="assistant", blocks=[TextBlock(text="About"), TextBlock(text="1.4 m.")],
                    additional_kwargs={"context": [{"source_id": "wiki/zebra", "score": 0.9}],
                                       "model": "m-1"}),
    ]


def test_messages_round_trip_with_roles_blocks_and_kwargs(client: Client) -> None:
    store = ChatStorageChatStore(client=client, user_id="ann")
    given = _conversation()
    store.set_messages("trip", given)
    assert store.get_messages("trip") == given
    # as the API stores them: its roles, the text, RAG sources as the message's context
    stored = list(client.messages.list(store.session_id("trip")))
    assert [(m["role"], m["content"]) for m in stored] == [
        ("system", "Answer from the sources."), ("user", "How tall is a zebra?"),
        ("assistant", ""), ("tool", "1.4 m"), ("assistant", "About\n1.4 m.")]
    assert stored[4]["context"] == [{"source_id": "wiki/zebra", "score": 0.9}]
    # tool calls in the API's shape are the message's own fields, not metadata
    assert stored[2]["tool_calls"] == [{"id": "c1", "name": "lookup",
                                        "arguments": {"q": "zebra"}}]
    assert stored[3]["tool_call_id"] == "c1"
    assert stored[2]["metadata"] == stored[3]["metadata"] == {}
    assert stored[0]["metadata"] == {"llama_index": {"role": "developer"}}
    assert stored[1]["metadata"] == {}  # nothing the API has no field for
    store.add_message("trip", ChatMessage(role="user", content="And a horse?"))
    assert store.get_messages("trip")[-1] == ChatMessage(role=MessageRole.USER,
                                                         content="And a horse?")


def test_a_key_is_one_session_of_the_stores_user(client: Client) -> None:
    ann = ChatStorageChatStore(client=client, user_id="ann-keys")
    assert ann.get_messages("work") == []  # reading makes no session
    assert ann.get_keys() == []
    ann.add_message("work", ChatMessage(content="w1"))
    ann.add_message("home", ChatMessage(content="h1"))
    # another store of the same user (another process, say) finds the same sessions
    again = ChatStorageChatStore(client=client, user_id="ann-keys")
    assert sorted(again.get_keys()) == ["home", "work"]
    again.add_message("work", ChatMessage(content="w2"))
    assert [m.content for m in ann.get_messages("work")] == ["w1", "w2"]
    session = client.sessions.get(ann.session_id("work"))
    assert (session["user_id"], session["title"]) == ("ann-keys", "work")
    assert session["metadata"] == {"llama_index_key": "work"}
    # another user's store sees none of them
    bob = ChatStorageChatStore(client=client, user_id="bob-keys")
    assert bob.get_keys() == [] and bob.get_messages("work") == []
    # sessions without the key's metadata (made by other code) are not keys
    client.sessions.create("ann-keys", title="work")
    assert sorted(ChatStorageChatStore(client=client, user_id="ann-keys").get_keys()) == [
        "home", "work"]


def test_of_two_sessions_made_for_one_key_at_once_the_older_is_the_keys(
        client: Client) -> None:
    older = client.sessions.create("ann-race", metadata={"llama_index_key": "k"})
    client.messages.create(older["id"], "user", "first")
    newer = client.sessions.create("ann-race", metadata={"llama_index_key": "k"})
    client.messages.create(newer["id"], "user", "second")  # newest activity: listed first
    store = ChatStorageChatStore(client=client, user_id="ann-race")
    assert store.get_messages("k") == [ChatMessage(content="first")]
    assert store.session_id("k") == older["id"] and store.get_keys() == ["k"]


def test_deleting_makes_tombstones_and_indexes_count_what_remains(client: Client) -> None:
    store = ChatStorageChatStore(client=client, user_id="ann-del")
    store.set_messages("k", [ChatMessage(content=t) for t in ["a", "b", "c", "d"]])
    assert store.delete_message("k", 1) == ChatMessage(content="b")
    assert store.delete_message("k", 1) == ChatMessage(content="c")  # was index 2
    assert store.delete_message("k", 5) is None
    assert store.delete_message("k", -3) is None
    assert store.delete_last_message("k") == ChatMessage(content="d")
    assert [m.content for m in store.get_messages("k")] == ["a"]
    sid = store.session_id("k")
    assert [(m["seq"], m["status"], m["content"]) for m in client.messages.list(sid)] == [
        (1, "complete", "a"), (2, "deleted", ""), (3, "deleted", ""), (4, "deleted", "")]
    assert store.delete_message("missing", 0) is None
    assert store.delete_last_message("missing") is None
    # delete_messages: the session itself, and the key with it
    assert store.delete_messages("k") == [ChatMessage(content="a")]
    with pytest.raises(NotFound):
        client.sessions.get(sid)
    assert store.get_keys() == [] and store.get_messages("k") == []
    assert store.delete_messages("k") is None


def test_set_messages_keeps_the_common_start(client: Client) -> None:
    store = ChatStorageChatStore(client=client, user_id="ann-set")
    a, b, c, x = (ChatMessage(content=t) for t in "abcx")
    store.set_messages("k", [a, b])
    sid = store.session_id("k")
    first = [m["id"] for m in client.messages.list(sid)]
    store.set_messages("k", [a, b, c])  # a chat engine's memory.set(history + [new])
    stored = list(client.messages.list(sid))
    assert [m["id"] for m in stored[:2]] == first and len(stored) == 3
    store.set_messages("k", [a, x])
    assert [(m["content"], m["status"]) for m in client.messages.list(sid)] == [
        ("a", "complete"), ("", "deleted"), ("", "deleted"), ("x", "complete")]
    assert store.get_messages("k") == [a, x]
    store.set_messages("k", [])
    assert store.get_messages("k") == [] and store.get_keys() == ["k"]


def test_a_session_deleted_elsewhere_is_made_again(client: Client) -> None:
    store = ChatStorageChatStore(client=client, user_id="ann-gone")
    store.add_message("k", ChatMessage(content="before"))
    client.sessions.delete(store.session_id("k"))  # e.g. the user erased the chat
    assert store.get_messages("k") == []
    store.add_message("k", ChatMessage(content="after"))
    assert [m.content for m in store.get_messages("k")] == ["after"]


@pytest.mark.parametrize("kind", ["async", "sync-client"])
async def test_async_methods(server: Server, tenant: Tenant, kind: str) -> None:
    async with AsyncClient(server.base, api_key=tenant.key) as aclient:
        sync = Client(server.base, api_key=tenant.key) if kind == "sync-client" else None
        try:
            store = ChatStorageChatStore(client=sync or aclient, user_id=f"ann-{kind}")
            given = _conversation()
            await store.aset_messages("k", given[:3])
            await store.async_add_message("k", given[3])
            await store.async_add_message("k", given[4])
            assert await store.aget_messages("k") == given
            assert await store.aget_keys() == ["k"]
            assert await store.adelete_message("k", 0) == given[0]
            assert await store.adelete_last_message("k") == given[4]
            assert await store.aget_messages("k") == given[1:4]
            sid = await store.asession_id("k")
            assert (await aclient.sessions.get(sid))["last_seq"] == 5  # tombstones keep seq
            assert await store.adelete_messages("k") == given[1:4]
            assert await store.aget_keys() == []
        finally:
            if sync is not None:
                sync.close()


async def test_an_async_client_refuses_the_sync_methods_clearly(
        server: Server, tenant: Tenant) -> None:
    async with AsyncClient(server.base, api_key=tenant.key) as aclient:
        store = ChatStorageChatStore(client=aclient, user_id="ann")
        with pytest.raises(TypeError, match=r"need a chat_storage_client\.Client"):
            store.get_messages("k")


def _turns() -> list[ChatMessage]:
    return [ChatMessage(role=r, content=t) for r, t in [
        ("user", "one two"), ("assistant", "three four"), ("user", "five six"),
        ("assistant", "seven eight"), ("user", "nine")]]


async def test_chat_memory_buffer_keeps_the_newest_turns_within_its_token_limit(
        client: Client) -> None:
    store = ChatStorageChatStore(client=client, user_id="ann-memory")
    # whitespace tokens, so the counts below are plain to see
    memory = ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key="chat",
                                            token_limit=5, tokenizer_fn=str.split)
    turns = _turns()
    for message in turns[:3]:
        memory.put(message)
    for message in turns[3:]:
        await memory.aput(message)
    # 9 tokens in all; the newest that fit in 5 and do not start with an answer
    assert memory.get() == turns[2:]
    assert await memory.aget() == turns[2:]
    assert memory.get_all() == turns
    # a fresh buffer on the same key reads the same history back from the server
    later = ChatMemoryBuffer.from_defaults(
        chat_store=ChatStorageChatStore(client=client, user_id="ann-memory"),
        chat_store_key="chat", token_limit=100, tokenizer_fn=str.split)
    assert later.get() == turns
    memory.reset()
    assert later.get() == [] and store.get_keys() == []


def test_a_tool_reply_that_names_no_call_still_round_trips(client: Client) -> None:
    store = ChatStorageChatStore(client=client, user_id="ann")
    given = [ChatMessage(role="function", content="42", additional_kwargs={"name": "calc"}),
             ChatMessage(role="tool", content="ok")]
    store.set_messages("legacy", given)
    assert store.get_messages("legacy") == given
    stored = list(client.messages.list(store.session_id("legacy")))
    assert [m["role"] for m in stored] == ["tool", "tool"]
