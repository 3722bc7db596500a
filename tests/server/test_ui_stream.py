"""``GET …/ui-stream``: an answer in the Vercel AI SDK's UI message stream protocol.

The parts are checked here as bytes on the wire; tests/examples/test_ai_sdk.py reads the
same routes with the ``ai`` npm package's own parser.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import aiohttp

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.server.transport.uistream import INTERRUPTED
from tests.conftest import Tenant
from tests.server.test_edges import assert_error
from tests.support.bearer import bearer, session_of
from tests.support.streamkit import DEADLINE_S, connect, new_session, recv_until, start

SESSIONS = "/api/v1/sessions"


async def _parts(resp: aiohttp.ClientResponse, until: str = "[DONE]") -> list[Any]:
    """The ``data:`` of each event (parsed; ``[DONE]`` as is) up to the one ``until`` names
    (a part type, or ``[DONE]``); keep-alive comments are skipped."""
    out: list[Any] = []
    async with asyncio.timeout(DEADLINE_S):
        while True:
            block = (await resp.content.readuntil(b"\n\n")).decode()
            assert block.endswith("\n\n"), (block, out)  # not cut short
            if block.startswith(":"):
                continue
            assert block.startswith("data: ") and block.count("\n") == 2, block
            data = block[len("data: "):-2]
            out.append(data if data == "[DONE]" else json.loads(data))
            if data == until or (isinstance(out[-1], dict) and out[-1]["type"] == until):
                return out


def _text(parts: list[Any]) -> str:
    return "".join(p["delta"] for p in parts if isinstance(p, dict) and p["type"] == "text-delta")


def _check_headers(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert resp.headers["Cache-Control"] == "no-cache"


async def _sync(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Every frame sent before has been handled by the server."""
    await ws.send_json({"type": "ping", "ref": "sync"})
    await recv_until(ws, lambda f: f.get("ref") == "sync")


async def test_a_finished_answer_is_served_at_once(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    r = await client.post(f"{SESSIONS}/{sid}/messages", headers=tenant.headers,
                          json={"role": "assistant", "content": "héllo 👋 world"})
    mid = (await r.json())["id"]
    resp = await client.get(f"{SESSIONS}/{sid}/messages/{mid}/ui-stream", headers=tenant.headers)
    _check_headers(resp)
    body = await resp.text()
    tid = f"{mid}-text"
    assert body == "".join(f"data: {json.dumps(p, ensure_ascii=False, separators=(',', ':'))}\n\n"
                           for p in (
        {"type": "start", "messageId": mid}, {"type": "text-start", "id": tid},
        {"type": "text-delta", "id": tid, "delta": "héllo 👋 world"},
        {"type": "text-end", "id": tid}, {"type": "finish", "finishReason": "stop"},
    )) + "data: [DONE]\n\n"


async def test_a_live_answer_is_served_from_its_beginning_to_its_end(client: Any,
                                                                     tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    producer = await connect(client, tenant, sid)
    started = await start(producer, role="assistant")
    stream_id, mid = started["stream_id"], started["message_id"]
    sent = ""
    for piece in ("Hel", "lo, ", "wörld"):
        sent += piece
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": piece})
    await _sync(producer)  # the reader joins with "Hello, wörld" streamed already
    resp = await client.get(f"{SESSIONS}/{sid}/messages/{mid}/ui-stream", headers=tenant.headers)
    _check_headers(resp)
    head = await _parts(resp, until="text-delta")
    assert head[:2] == [{"type": "start", "messageId": mid},
                        {"type": "text-start", "id": f"{mid}-text"}]
    assert _text(head) == sent  # what it missed, as one delta
    for i in range(20):
        piece = f" <{i}>"
        sent += piece
        await producer.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": piece})
    await producer.send_json({"type": "stream.end", "ref": "e", "stream_id": stream_id})
    rest = await _parts(resp)
    assert _text(head + rest) == sent  # nothing missed, nothing twice
    assert rest[-3:] == [{"type": "text-end", "id": f"{mid}-text"},
                         {"type": "finish", "finishReason": "stop"}, "[DONE]"]
    assert await resp.content.read() == b""  # the response ends with the answer
    # the session's route has no answer in progress any more
    r = await client.get(f"{SESSIONS}/{sid}/ui-stream", headers=tenant.headers)
    assert r.status == 204
    await producer.close()


async def test_the_session_route_follows_its_answer_in_progress(client: Any,
                                                                tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    r = await client.get(f"{SESSIONS}/{sid}/ui-stream", headers=tenant.headers)
    assert r.status == 204 and await r.read() == b""  # nothing to resume
    producer = await connect(client, tenant, sid)
    await producer.send_json({"type": "message.create", "ref": "q", "role": "user",
                              "content": "question"})
    await recv_until(producer, lambda f: f.get("ref") == "q")
    r = await client.get(f"{SESSIONS}/{sid}/ui-stream", headers=tenant.headers)
    assert r.status == 204  # a stored question is not an answer in progress
    started = await start(producer, role="assistant")
    resp = await client.get(f"{SESSIONS}/{sid}/ui-stream", headers=tenant.headers)
    _check_headers(resp)
    assert (await _parts(resp, until="text-start"))[0] == {
        "type": "start", "messageId": started["message_id"]}
    await producer.send_json({"type": "stream.delta", "stream_id": started["stream_id"],
                              "delta": "answer"})
    await producer.send_json({"type": "stream.end", "stream_id": started["stream_id"]})
    rest = await _parts(resp)
    assert _text(rest) == "answer" and rest[-2] == {"type": "finish", "finishReason": "stop"}
    await producer.close()


async def test_an_aborted_answer_ends_with_the_abort_part(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    producer = await connect(client, tenant, sid)
    started = await start(producer, role="assistant")
    stream_id, mid = started["stream_id"], started["message_id"]
    await producer.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": "half"})
    path = f"{SESSIONS}/{sid}/messages/{mid}/ui-stream"
    resp = await client.get(path, headers=tenant.headers)
    await _parts(resp, until="text-start")
    await producer.send_json({"type": "stream.abort", "ref": "a", "stream_id": stream_id,
                              "reason": "user pressed stop"})
    live = await _parts(resp)
    stored = await _parts(await client.get(path, headers=tenant.headers))
    for parts in (live, stored):
        assert _text(parts) == "half"
        assert parts[-3:] == [{"type": "text-end", "id": f"{mid}-text"},
                              {"type": "abort", "reason": "user pressed stop"}, "[DONE]"]
        assert not any(isinstance(p, dict) and p["type"] == "finish" for p in parts)
    await producer.close()


async def test_an_interrupted_answer_ends_with_an_error_part(aiohttp_client: Any,
                                                             settings: Settings,
                                                             tenant: Tenant) -> None:
    client = await aiohttp_client(create_app(dataclasses.replace(settings, stream_grace_s=0.3)))
    sid = await new_session(client, tenant)
    producer = await connect(client, tenant, sid)
    started = await start(producer, role="assistant")
    await producer.send_json({"type": "stream.delta", "stream_id": started["stream_id"],
                              "delta": "cut short"})
    await _sync(producer)
    path = f"{SESSIONS}/{sid}/messages/{started['message_id']}/ui-stream"
    resp = await client.get(path, headers=tenant.headers)
    head = await _parts(resp, until="text-delta")
    await producer.close()  # gone past the grace period: stored interrupted
    live = head + await _parts(resp)
    stored = await _parts(await client.get(path, headers=tenant.headers))
    for parts in (live, stored):
        assert _text(parts) == "cut short", parts
        assert parts[-2:] == [{"type": "error", "errorText": INTERRUPTED}, "[DONE]"]


async def test_a_quiet_answer_is_kept_alive_with_comments(aiohttp_client: Any,
                                                          settings: Settings,
                                                          tenant: Tenant) -> None:
    client = await aiohttp_client(create_app(dataclasses.replace(
        settings, ws_heartbeat_s=0.2, stream_grace_s=60.0)))
    sid = await new_session(client, tenant)
    # the producer leaves (its answer is held for it) so that the WebSocket's own
    # heartbeat, as short as the stream's here, cannot cut it under load meanwhile
    producer = await connect(client, tenant, sid)
    stream_id = (await start(producer, role="assistant"))["stream_id"]
    await producer.close()
    resp = await client.get(f"{SESSIONS}/{sid}/ui-stream", headers=tenant.headers)
    await _parts(resp, until="text-start")
    async with asyncio.timeout(DEADLINE_S):  # nothing streams: only comments come
        assert await resp.content.readuntil(b"\n\n") == b": keep-alive\n\n"
    producer = await connect(client, tenant, sid)
    await producer.send_json({"type": "stream.resume", "ref": "r", "stream_id": stream_id})
    await producer.send_json({"type": "stream.end", "stream_id": stream_id})
    assert (await _parts(resp))[-2:] == [{"type": "finish", "finishReason": "stop"}, "[DONE]"]
    await producer.close()


async def test_unknown_sessions_and_messages_are_404(client: Any, tenant: Tenant,
                                                     other_tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    other = await new_session(client, tenant)
    r = await client.post(f"{SESSIONS}/{sid}/messages", headers=tenant.headers,
                          json={"role": "assistant", "content": "x"})
    mid = (await r.json())["id"]
    missing = "0190a6b2-0000-7000-8000-000000000000"
    cases = [
        (f"{SESSIONS}/{sid}/messages/{missing}/ui-stream", tenant),
        (f"{SESSIONS}/{sid}/messages/not-a-uuid/ui-stream", tenant),
        (f"{SESSIONS}/{other}/messages/{mid}/ui-stream", tenant),  # another session's
        (f"{SESSIONS}/{missing}/messages/{mid}/ui-stream", tenant),
        (f"{SESSIONS}/{sid}/messages/{mid}/ui-stream", other_tenant),  # another tenant's
        (f"{SESSIONS}/{missing}/ui-stream", tenant),
        (f"{SESSIONS}/{sid}/ui-stream", other_tenant),
    ]
    for path, who in cases:
        await assert_error(await client.get(path, headers=who.headers), 404, "Not Found",
                           path, "not_found")
    r = await client.get(f"{SESSIONS}/{sid}/ui-stream", headers=tenant.headers,
                         params={"after_seq": "1"})
    assert r.status == 400 and (await r.json())["code"] == "unknown_parameter"


async def test_credentials_as_for_the_event_stream(client: Any, tenant: Tenant) -> None:
    sid = await session_of(client, tenant, "alice")
    bobs = await session_of(client, tenant, "bob")
    r = await client.post(f"{SESSIONS}/{sid}/messages", headers=tenant.headers,
                          json={"role": "assistant", "content": "for alice"})
    path = f"{SESSIONS}/{sid}/messages/{(await r.json())['id']}/ui-stream"
    r = await client.get(path)
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("ApiKey")
    r = await client.get(path, headers={"X-Api-Key": "cs_unknown"})
    assert r.status == 403

    async def token(scopes: list[str]) -> str:
        r = await client.post("/api/v1/tokens", headers=tenant.headers,
                              json={"user_id": "alice", "scopes": scopes})
        assert r.status == 201, await r.text()
        return str((await r.json())["token"])

    streamer = await token(["stream"])
    r = await client.get(path, headers=bearer(streamer))
    _check_headers(r)
    assert _text(await _parts(r)) == "for alice"
    r = await client.get(f"{SESSIONS}/{bobs}/ui-stream", headers=bearer(streamer))
    assert r.status == 404  # another user's session
    r = await client.get(path, headers=bearer(await token(["read", "write"])))
    assert r.status == 403 and (await r.json())["code"] == "forbidden"  # no stream scope


async def test_a_page_of_an_allowed_origin_may_read_it(aiohttp_client: Any, settings: Settings,
                                                      tenant: Tenant) -> None:
    page = "https://app.example"
    client = await aiohttp_client(create_app(dataclasses.replace(settings, cors_origins=(page,))))
    sid = await new_session(client, tenant)
    producer = await connect(client, tenant, sid)
    started = await start(producer, role="assistant")
    headers = {**tenant.headers, "Origin": page}
    for path in (f"{SESSIONS}/{sid}/ui-stream",
                 f"{SESSIONS}/{sid}/messages/{started['message_id']}/ui-stream"):
        resp = await client.get(path, headers=headers)
        _check_headers(resp)  # a live answer: the headers go out before the body
        assert resp.headers["Access-Control-Allow-Origin"] == page
        resp.close()
    r = await client.get(f"{SESSIONS}/{sid}/ui-stream", headers={**headers,
                                                                  "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    r.close()
    await producer.close()
