"""The WebSocket's edges: tickets, Origin, frame size, bad frames, connection limits."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from chat_storage.runtime.settings import Settings
from tests.conftest import Tenant
from tests.support.streamkit import connect, new_session, recv, subscribe


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, ws_max_frame_bytes=4096, max_content_bytes=1000,
                               ws_max_connections_per_tenant=3)


async def _ticket(client: Any, tenant: Tenant, sid: str) -> str:
    r = await client.post(f"/api/v1/sessions/{sid}/ws-tickets", headers=tenant.headers)
    assert r.status == 201, await r.text()
    body = await r.json()
    assert body["expires_at"].endswith("Z")
    return str(body["ticket"])


async def _handshake_status(client: Any, path: str, **kwargs: Any) -> int:
    try:
        ws = await client.ws_connect(path, **kwargs)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_ticket_opens_once(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    ticket = await _ticket(client, tenant, sid)
    ws = await client.ws_connect(f"/api/v1/sessions/{sid}/ws?ticket={ticket}")
    await ws.send_json({"type": "message.create", "ref": "c", "role": "user", "content": "x"})
    assert (await recv(ws))["type"] == "ack"
    await ws.close()
    assert await _handshake_status(client, f"/api/v1/sessions/{sid}/ws?ticket={ticket}") == 403


async def test_ticket_is_bound_to_its_session_and_expires(
    client: Any, tenant: Tenant, other_tenant: Tenant, pool: asyncpg.Pool
) -> None:
    sid = await new_session(client, tenant)
    other_sid = await new_session(client, tenant)
    ticket = await _ticket(client, tenant, sid)
    # shown for another session: refused, and not used up
    assert await _handshake_status(client, f"/api/v1/sessions/{other_sid}/ws?ticket={ticket}") \
        == 403
    assert await _handshake_status(client, f"/api/v1/sessions/{sid}/ws?ticket={ticket}") == 101
    # another tenant cannot get a ticket for this session
    r = await client.post(f"/api/v1/sessions/{sid}/ws-tickets", headers=other_tenant.headers)
    assert r.status == 404
    # an expired ticket is refused
    ticket = await _ticket(client, tenant, sid)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE ws_tickets SET expires_at = now() - interval '1 second' "
                           "WHERE session_id = $1", uuid.UUID(sid))
    assert await _handshake_status(client, f"/api/v1/sessions/{sid}/ws?ticket={ticket}") == 403
    assert await _handshake_status(client, f"/api/v1/sessions/{sid}/ws?ticket=wst_bogus") == 403
    # a ticket is no key for anything else
    ticket = await _ticket(client, tenant, sid)
    r = await client.get(f"/api/v1/sessions/{sid}?ticket={ticket}")
    assert r.status == 401


async def test_origin_checked_before_upgrade(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    path = f"/api/v1/sessions/{sid}/ws"
    assert await _handshake_status(client, path, headers={
        **tenant.headers, "Origin": "https://evil.example"}) == 403
    own = f"http://{client.host}:{client.port}"
    assert await _handshake_status(client, path, headers={**tenant.headers, "Origin": own}) \
        == 101
    assert await _handshake_status(client, path, headers=tenant.headers) == 101


async def test_cors_origins_setting(aiohttp_client: Any, settings: Settings,
                                    tenant: Tenant) -> None:
    from chat_storage.server.app import create_app

    client = await aiohttp_client(create_app(dataclasses.replace(
        settings, cors_origins=("https://chat.example",))))
    sid = await new_session(client, tenant)
    path = f"/api/v1/sessions/{sid}/ws"
    assert await _handshake_status(client, path, headers={
        **tenant.headers, "Origin": "https://chat.example"}) == 101
    assert await _handshake_status(client, path, headers={
        **tenant.headers, "Origin": "https://evil.example"}) == 403
    # the server's own page keeps its WebSocket when other origins are listed
    assert await _handshake_status(client, path, headers={
        **tenant.headers, "Origin": f"http://{client.host}:{client.port}"}) == 101


async def test_oversize_frame_closes_1009(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    ws = await connect(client, tenant, sid)
    await ws.send_str('{"type":"ping","ref":"' + "x" * 5000 + '"}')
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009


async def test_bad_frames_get_errors_and_the_connection_stays(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    ws = await connect(client, tenant, sid)
    # every refusal has the REST code validation_failed; errors name the field at fault
    cases = [
        ("not json", None),
        ("[1, 2]", None),
        ('{"type": "nope", "ref": "r1"}', "type"),
        ('{"type": "message.create", "ref": "r2", "role": "robot", "content": "x"}', "role"),
        ('{"type": "message.create", "role": "user", "content": "x", "admin": true}', "admin"),
        ('{"type": "stream.delta", "stream_id": 5, "delta": "x"}', None),
        ('{"type": "subscribe", "after_seq": -1}', "after_seq"),
    ]
    for raw, field in cases:
        await ws.send_str(raw)
        err = await recv(ws)
        assert err["type"] == "error" and err["code"] == "validation_failed", (raw, err)
        assert [e["field"] for e in err.get("errors", [])] == ([field] if field else []), err
    await ws.send_json({"type": "message.create", "ref": "r3", "role": "robot", "content": "x"})
    err = await recv(ws)
    assert err["ref"] == "r3" and err["errors"] == [
        {"field": "role", "message": "must be one of 'user', 'assistant', 'system' or 'tool'"}]
    await ws.send_json({"type": "ping", "ref": "alive"})
    assert await recv(ws) == {"type": "pong", "ref": "alive"}
    await subscribe(ws)
    await subscribe(ws, ref="again")
    err = await recv(ws)
    assert err["code"] == "conflict" and err["ref"] == "again"
    assert "already subscribed" in err["message"]


async def test_binary_frame_closes_1008(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    ws = await connect(client, tenant, sid)
    await ws.send_bytes(b"\x00\x01")
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008


async def test_per_tenant_connection_limit(client: Any, tenant: Tenant,
                                           other_tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    open_ = [await connect(client, tenant, sid) for _ in range(3)]
    assert await _handshake_status(client, f"/api/v1/sessions/{sid}/ws",
                                   headers=tenant.headers) == 429
    other_sid = await new_session(client, other_tenant)
    assert await _handshake_status(client, f"/api/v1/sessions/{other_sid}/ws",
                                   headers=other_tenant.headers) == 101
    await open_[0].close()
    # the slot is freed when the server has seen the close; poll within a deadline
    for _ in range(200):
        status = await _handshake_status(client, f"/api/v1/sessions/{sid}/ws",
                                         headers=tenant.headers)
        if status == 101:
            break
        await asyncio.sleep(0.02)  # bounded poll: the server frees the slot on its own
    assert status == 101


async def test_stream_content_limit_and_nul(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    ws = await connect(client, tenant, sid)
    await ws.send_json({"type": "stream.start", "ref": "s"})
    stream_id = (await recv(ws))["stream_id"]
    await ws.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": "a\x00b"})
    assert (await recv(ws))["code"] == "validation_failed"
    await ws.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": "é" * 300})
    await ws.send_json({"type": "stream.delta", "stream_id": stream_id, "delta": "é" * 300})
    err = await recv(ws)
    assert err["code"] == "payload_too_large"  # 600 bytes + 600 bytes > 1000
    await ws.send_json({"type": "stream.end", "ref": "e", "stream_id": stream_id})
    done = await recv(ws)
    assert done["type"] == "stream.completed" and done["message"]["content"] == "é" * 300
