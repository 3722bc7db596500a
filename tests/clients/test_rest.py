"""Sessions and messages through the SDK against a real server: calls, pages, errors."""

from __future__ import annotations

import pytest
from chat_storage_client import (
    AsyncClient,
    Client,
    Forbidden,
    NotFound,
    ValidationFailed,
)

from tests.conftest import Tenant
from tests.support.procs import Server


async def test_sessions_round_trip_and_paginate(server: Server, tenant: Tenant) -> None:
    async with AsyncClient(server.base, api_key=tenant.key) as client:
        made = [await client.sessions.create("u1", title=f"t{i}", metadata={"i": i})
                for i in range(5)]
        await client.sessions.create("u2", title="other")
        # 5 sessions in pages of 2: three requests, each seen once, newest first
        listed = [s async for s in client.sessions.list(user_id="u1", page_size=2)]
        assert [s["id"] for s in listed] == [s["id"] for s in reversed(made)]
        assert await client.sessions.list(user_id="u1", max_items=3).to_list() == listed[:3]
        got = await client.sessions.get(made[0]["id"])
        assert got["title"] == "t0" and got["metadata"] == {"i": 0}
        updated = await client.sessions.update(made[0]["id"], title="renamed", favorite=True)
        assert (updated["title"], updated["favorite"]) == ("renamed", True)
        favorites = [s["id"] async for s in client.sessions.list(favorite=True, user_id="u1")]
        assert favorites == [made[0]["id"]]
        assert client.server_version == "1"
        await client.sessions.delete(made[0]["id"])
        with pytest.raises(NotFound) as caught:
            await client.sessions.get(made[0]["id"])
        assert caught.value.status == 404 and caught.value.code == "not_found"
        assert caught.value.request_id and caught.value.body["request_id"] == \
            caught.value.request_id


async def test_messages_round_trip_search_and_export(server: Server, tenant: Tenant) -> None:
    async with AsyncClient(server.base, api_key=tenant.key) as client:
        sid = (await client.sessions.create("u1"))["id"]
        question = await client.messages.create(sid, "user", "What is a zebra?")
        answer = await client.messages.create(
            sid, "assistant", "A striped horse.", parent_id=question["id"],
            context=[{"source_id": "doc-1", "title": "Zebras", "score": 0.9}],
            usage={"model": "m", "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
        batch = await client.messages.create_many(sid, [
            {"role": "user", "content": f"more {i}"} for i in range(3)])
        assert [m["seq"] for m in batch] == [3, 4, 5]
        listed = [m async for m in client.messages.list(sid, page_size=2)]
        assert [m["seq"] for m in listed] == [1, 2, 3, 4, 5]
        assert listed[1]["context"] == [{"source_id": "doc-1", "title": "Zebras", "score": 0.9}]
        newest = await client.messages.list(sid, order="desc", max_items=1).to_list()
        assert newest[0]["seq"] == 5
        rated = await client.messages.update(sid, answer["id"], feedback={"rating": 1})
        assert rated["feedback"] == {"rating": 1}
        assert (await client.messages.get(sid, answer["id"]))["feedback"] == {"rating": 1}
        hits = [h async for h in client.messages.search("striped", session_id=sid)]
        assert [h["message_id"] for h in hits] == [answer["id"]]
        assert "A striped horse." in await client.sessions.export(sid, "markdown")
        await client.messages.delete(sid, question["id"])
        assert (await client.messages.get(sid, question["id"]))["status"] == "deleted"
        assert (await client.sessions.get(sid))["usage"]["total_tokens"] == 7


async def test_errors_carry_the_body_and_request_id(server: Server, tenant: Tenant) -> None:
    async with AsyncClient(server.base, api_key=tenant.key) as client:
        with pytest.raises(ValidationFailed) as caught:
            await client.sessions.create("u1", title="x" * 201)
        err = caught.value
        assert err.status == 400 and err.code == "validation_failed"
        assert [e["field"] for e in err.errors] == ["title"]
        assert err.request_id and err.request_id in str(err)
    async with AsyncClient(server.base, api_key="not-a-key") as stranger:
        with pytest.raises(Forbidden) as refused:
            await stranger.sessions.create("u1")
        assert refused.value.status == 403


def test_sync_client_has_the_same_shape(server: Server, tenant: Tenant) -> None:
    with Client(server.base, api_key=tenant.key) as client:
        sid = client.sessions.create("u1", title="sync")["id"]
        for i in range(3):
            client.messages.create(sid, "user", f"m{i}")
        assert [m["content"] for m in client.messages.list(sid, page_size=2)] == [
            "m0", "m1", "m2"]
        with client.stream_answer(sid) as answer:
            answer.write("Hello, ")
            answer.write("world")
            answer.stream.usage = {"completion_tokens": 2}
        stored = client.messages.get(sid, answer.stream.message_id)
        assert (stored["content"], stored["status"]) == ("Hello, world", "complete")
        assert stored["usage"] == {"completion_tokens": 2}
        events = client.watch(sid)
        seen = [next(events) for _ in range(4)]
        events.close()  # type: ignore[attr-defined]
        assert [e["message"]["seq"] for e in seen] == [1, 2, 3, 4]
        assert seen[3]["message"]["content"] == "Hello, world"
        with pytest.raises(NotFound):
            client.sessions.get("00000000-0000-7000-8000-000000000000")
        with pytest.raises(ValueError), client.stream_answer(sid) as broken:
            broken.write("part")
            raise ValueError("the model failed")
        aborted = client.messages.get(sid, broken.stream.message_id)
        assert (aborted["status"], aborted["content"]) == ("aborted", "part")
