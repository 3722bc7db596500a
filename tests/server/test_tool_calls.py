"""Tool calls through a running app on a real socket: an assistant message's
``tool_calls`` and a tool message's ``tool_call_id`` stored, read back, streamed (WebSocket
and SSE), exported in every format, accepted asynchronously, and refused with a 400 that
names the field when they do not fit the message."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import uuid
from typing import Any

import asyncpg
import pytest

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.storage import tenants
from tests.conftest import REDIS_URL, Tenant
from tests.support.streamkit import DEADLINE_S, connect, new_session, recv_until, start

CALLS = [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
         {"id": "call_2", "name": "lookup", "arguments": {"q": {"nested": [1, "two"]}}}]
ASSISTANT = {"role": "assistant", "content": "", "tool_calls": CALLS}
TOOL = {"role": "tool", "content": '{"temp_c": 18}', "tool_call_id": "call_1"}


def _messages(sid: str) -> str:
    return f"/api/v1/sessions/{sid}/messages"


async def _post(client: Any, tenant: Tenant, path: str, body: Any, status: int = 201) -> Any:
    r = await client.post(path, json=body, headers=tenant.headers)
    assert r.status == status, await r.text()
    return await r.json()


def _tool_fields(message: dict[str, Any]) -> tuple[Any, Any]:
    return message["tool_calls"], message["tool_call_id"]


async def test_rest_stores_and_returns_tool_calls_and_replies(
        client: Any, tenant: Tenant, pool: asyncpg.Pool) -> None:
    sid = await new_session(client, tenant)
    user = await _post(client, tenant, _messages(sid), {"role": "user", "content": "weather?"})
    assert _tool_fields(user) == (None, None)
    made = await _post(client, tenant, _messages(sid), ASSISTANT)
    assert _tool_fields(made) == (CALLS, None)
    reply = await _post(client, tenant, _messages(sid), TOOL)
    assert _tool_fields(reply) == (None, "call_1") and reply["role"] == "tool"
    batch = await _post(client, tenant, _messages(sid) + "/batch", {"messages": [
        {**ASSISTANT, "tool_calls": [{**CALLS[0], "id": "call_9"}]},
        {**TOOL, "tool_call_id": "call_9"}]})
    assert [_tool_fields(m) for m in batch["data"]] == [
        ([{**CALLS[0], "id": "call_9"}], None), (None, "call_9")]

    r = await client.get(_messages(sid), headers=tenant.headers)
    page = (await r.json())["data"]
    assert [_tool_fields(m) for m in page] == [
        (None, None), (CALLS, None), (None, "call_1"), ([{**CALLS[0], "id": "call_9"}], None),
        (None, "call_9")]
    r = await client.get(f"{_messages(sid)}/{made['id']}", headers=tenant.headers)
    assert await r.json() == made
    async with pool.acquire() as conn:  # stored in their own columns, as sent
        row = await conn.fetchrow("SELECT tool_calls, tool_call_id FROM messages "
                                  "WHERE id = $1", uuid.UUID(reply["id"]))
        assert row is not None and row["tool_call_id"] == "call_1"
        stored = await conn.fetchval("SELECT tool_calls FROM messages WHERE id = $1",
                                     uuid.UUID(made["id"]))
    assert stored == CALLS

    # a tombstone erases the calls with the content
    r = await client.delete(f"{_messages(sid)}/{made['id']}", headers=tenant.headers)
    assert r.status == 204
    r = await client.get(f"{_messages(sid)}/{made['id']}", headers=tenant.headers)
    assert _tool_fields(await r.json()) == (None, None)


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"role": "user", "content": "x", "tool_calls": CALLS}, "tool_calls",
     "only allowed on assistant"),
    ({"role": "tool", "content": "x"}, "tool_call_id", "required on tool messages"),
    ({"role": "assistant", "content": "x", "tool_call_id": "c"}, "tool_call_id",
     "only allowed on tool messages"),
    ({**ASSISTANT, "tool_calls": [CALLS[0], CALLS[0]]}, "tool_calls.1.id", "repeats the id"),
    ({**ASSISTANT, "tool_calls": []}, "tool_calls", "must not be empty"),
    ({**ASSISTANT, "tool_calls": [{**CALLS[0], "id": ""}]}, "tool_calls.0.id", "must not be empty"),
    ({**ASSISTANT, "tool_calls": [{**CALLS[0], "name": ""}]}, "tool_calls.0.name",
     "must not be empty"),
    ({**ASSISTANT, "tool_calls": [{"id": "c", "name": "f"}]}, "tool_calls.0.arguments",
     "is required"),
    ({**ASSISTANT, "tool_calls": [{**CALLS[0], "arguments": "{}"}]}, "tool_calls.0.arguments",
     "object"),
    ({**ASSISTANT, "tool_calls": [{**CALLS[0], "extra": 1}]}, "tool_calls.0.extra",
     "unknown field"),
    ({**ASSISTANT, "tool_calls": [{**CALLS[0], "name": "n" * 257}]}, "tool_calls.0.name",
     "at most 256"),
    ({**ASSISTANT, "tool_calls": [{**CALLS[0], "id": f"c{i}"} for i in range(129)]},
     "tool_calls", "at most 128 items"),
    ({**ASSISTANT, "tool_calls": [{**CALLS[0], "arguments": {"blob": "x" * 300_000}}]},
     "tool_calls", "must be at most 262144 bytes"),
])
async def test_tool_fields_that_do_not_fit_are_refused_with_the_field(
        client: Any, tenant: Tenant, body: dict[str, Any], field: str, words: str) -> None:
    sid = await new_session(client, tenant)
    error = await _post(client, tenant, _messages(sid), body, status=400)
    assert error["code"] == "validation_failed", error
    assert [e["field"] for e in error["errors"]] == [field], error
    assert words in error["errors"][0]["message"], error
    # in a batch the field is named by its place; nothing of the batch is stored
    error = await _post(client, tenant, _messages(sid) + "/batch",
                        {"messages": [{"role": "user", "content": "ok"}, body]}, status=400)
    assert [e["field"] for e in error["errors"]] == [f"messages.1.{field}"], error
    r = await client.get(_messages(sid), headers=tenant.headers)
    assert (await r.json())["data"] == []


async def test_websocket_creates_and_streams_tool_calls(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    watcher = await connect(client, tenant, sid)
    await watcher.send_json({"type": "subscribe", "after_seq": 0, "ref": "sub"})
    producer = await connect(client, tenant, sid)
    await producer.send_json({"type": "message.create", "ref": "c1", **ASSISTANT})
    ack = (await recv_until(producer, lambda f: f.get("ref") == "c1"))[-1]
    assert ack["type"] == "ack" and _tool_fields(ack["message"]) == (CALLS, None)
    await producer.send_json({"type": "message.create", "ref": "c2", **TOOL})
    ack = (await recv_until(producer, lambda f: f.get("ref") == "c2"))[-1]
    assert ack["type"] == "ack" and _tool_fields(ack["message"]) == (None, "call_1")
    # a bad one is an error frame naming the field; the connection stays open
    await producer.send_json({"type": "message.create", "ref": "bad", "role": "tool",
                              "content": "x"})
    error = (await recv_until(producer, lambda f: f.get("ref") == "bad"))[-1]
    assert error["type"] == "error" and error["code"] == "validation_failed"
    assert error["errors"] == [{"field": "tool_call_id",
                                "message": "is required on tool messages"}]

    stream_id = (await start(producer, ref="s1", role="assistant"))["stream_id"]
    await producer.send_json({"type": "stream.delta", "stream_id": stream_id,
                              "delta": "let me check"})
    await producer.send_json({"type": "stream.end", "ref": "e1", "stream_id": stream_id,
                              "tool_calls": [CALLS[1]]})
    done = (await recv_until(producer, lambda f: f.get("ref") == "e1"))[-1]
    assert done["type"] == "stream.completed", done
    assert done["message"]["content"] == "let me check"
    assert _tool_fields(done["message"]) == ([CALLS[1]], None)

    # a tool answer may be streamed too: its tool_call_id is given when it starts
    tool_stream = (await start(producer, ref="s2", role="tool",
                               tool_call_id="call_2"))["stream_id"]
    await producer.send_json({"type": "stream.end", "ref": "e2", "stream_id": tool_stream,
                              "tool_calls": CALLS})  # not on a tool message: refused
    refused = (await recv_until(producer, lambda f: f.get("ref") == "e2"))[-1]
    assert refused["type"] == "error" and refused["code"] == "validation_failed", refused
    await producer.send_json({"type": "stream.end", "ref": "e3", "stream_id": tool_stream})
    done = (await recv_until(producer, lambda f: f.get("ref") == "e3"))[-1]
    assert _tool_fields(done["message"]) == (None, "call_2")
    await producer.send_json({"type": "stream.start", "ref": "s3", "role": "tool"})
    refused = (await recv_until(producer, lambda f: f.get("ref") == "s3"))[-1]
    assert refused["type"] == "error" and refused["errors"][0]["field"] == "tool_call_id"

    seen = await recv_until(watcher, lambda f: f["type"] == "stream.completed"
                            and f["message"]["role"] == "tool")
    created = [f["message"] for f in seen if f["type"] == "message.created"]
    assert [_tool_fields(m) for m in created] == [(CALLS, None), (None, "call_1")]
    completed = [f["message"] for f in seen if f["type"] == "stream.completed"]
    assert [_tool_fields(m) for m in completed] == [([CALLS[1]], None), (None, "call_2")]
    r = await client.get(_messages(sid), headers=tenant.headers)
    assert [_tool_fields(m) for m in (await r.json())["data"]] == [
        (CALLS, None), (None, "call_1"), ([CALLS[1]], None), (None, "call_2")]
    await producer.close()
    await watcher.close()


async def _sse_until(resp: Any, kind: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(DEADLINE_S):
        while True:
            block = (await resp.content.readuntil(b"\n\n")).decode()
            data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
            if data:
                out.append(json.loads(data[0]))
                if out[-1]["type"] == kind:
                    return out


async def test_sse_carries_tool_calls(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    await _post(client, tenant, _messages(sid), ASSISTANT)  # replayed on connect
    resp = await client.get(f"/api/v1/sessions/{sid}/events", headers=tenant.headers)
    assert resp.status == 200
    producer = await connect(client, tenant, sid)
    stream_id = (await start(producer))["stream_id"]
    await producer.send_json({"type": "stream.end", "stream_id": stream_id,
                              "tool_calls": [CALLS[0]]})
    events = await _sse_until(resp, "stream.completed")
    assert _tool_fields(events[0]["message"]) == (CALLS, None)
    assert _tool_fields(events[-1]["message"]) == ([CALLS[0]], None)
    resp.close()
    await producer.close()


async def test_every_export_format_carries_tool_calls(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant, user_id="exporter")
    await _post(client, tenant, _messages(sid) + "/batch", {"messages": [
        {"role": "user", "content": "weather in Paris?"}, ASSISTANT, TOOL]})
    r = await client.get(f"/api/v1/sessions/{sid}/export?format=json", headers=tenant.headers)
    messages = (await r.json())["messages"]
    assert [_tool_fields(m) for m in messages] == [(None, None), (CALLS, None), (None, "call_1")]
    r = await client.get(f"/api/v1/sessions/{sid}/export?format=jsonl", headers=tenant.headers)
    lines = [json.loads(line) for line in (await r.text()).splitlines()]
    assert [_tool_fields(m) for m in lines if m["type"] == "message"] == [
        (None, None), (CALLS, None), (None, "call_1")]
    r = await client.get("/api/v1/users/exporter/export", headers=tenant.headers)
    lines = [json.loads(line) for line in (await r.text()).splitlines()]
    assert [_tool_fields(m) for m in lines if m["type"] == "message"] == [
        (None, None), (CALLS, None), (None, "call_1")]
    r = await client.get(f"/api/v1/sessions/{sid}/export?format=markdown",
                         headers=tenant.headers)
    markdown = await r.text()
    assert "## 2 · assistant\n" in markdown and "## 3 · tool\n" in markdown
    assert "Tool calls:\n\n1. `get_weather` (call call_1)\n" in markdown
    assert '   > {"city":"Paris","days":2}\n' in markdown
    assert "In answer to tool call call_1.\n" in markdown


async def test_async_ingestion_keeps_tool_calls(
        aiohttp_client: Any, settings: Settings, tenant: Tenant) -> None:
    app = create_app(dataclasses.replace(settings, redis_url=REDIS_URL, ingest_mode="async",
                                         redis_prefix=f"test{secrets.token_hex(4)}"))
    client = await aiohttp_client(app)
    sid = await new_session(client, tenant)
    accepted = await _post(client, tenant, _messages(sid) + "/batch",
                           {"messages": [ASSISTANT, TOOL]}, status=202)
    ids = [m["id"] for m in accepted["data"]]
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(DEADLINE_S):
        while len(got) < 2:  # stored by the in-app consumer shortly after
            got = []
            for mid in ids:
                r = await client.get(f"{_messages(sid)}/{mid}", headers=tenant.headers)
                if r.status == 200:
                    got.append(await r.json())
            if len(got) < 2:
                await asyncio.sleep(0.05)
    assert [_tool_fields(m) for m in got] == [(CALLS, None), (None, "call_1")]


async def test_redaction_reaches_tool_replies_and_arguments(
        client: Any, pool: asyncpg.Pool, tenant: Tenant) -> None:
    async with pool.acquire() as conn:
        await tenants.update_tenant(conn, tenant.name, redact_pii=True)
    sid = await new_session(client, tenant)
    calls = [{"id": "call_1", "name": "find_customer",
              "arguments": {"email": "jane.roe@example.org", "n": 3,
                            "more": ["ip 203.0.113.7"]}}]
    made = await _post(client, tenant, _messages(sid), {**ASSISTANT, "tool_calls": calls})
    assert made["tool_calls"] == [{"id": "call_1", "name": "find_customer",
                                   "arguments": {"email": "<EMAIL>", "n": 3,
                                                 "more": ["ip <IP>"]}}]
    reply = await _post(client, tenant, _messages(sid), {
        "role": "tool", "tool_call_id": "call_1", "content": "owner: jane.roe@example.org"})
    assert reply["content"] == "owner: <EMAIL>"
    producer = await connect(client, tenant, sid)
    stream_id = (await start(producer))["stream_id"]
    await producer.send_json({"type": "stream.end", "ref": "e", "stream_id": stream_id,
                              "tool_calls": calls})
    done = (await recv_until(producer, lambda f: f.get("ref") == "e"))[-1]
    assert done["message"]["tool_calls"][0]["arguments"]["email"] == "<EMAIL>"
    await producer.close()
    async with pool.acquire() as conn:
        stored = await conn.fetch("SELECT content, tool_calls::text AS calls FROM messages "
                                  "WHERE session_id = $1", uuid.UUID(sid))
    assert stored and not any("jane.roe" in (r["content"] + (r["calls"] or ""))
                              for r in stored)
