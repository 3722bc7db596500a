"""A revoked API key loses its open streams within the key-cache time
(server/revocation.py), over real sockets: its WebSockets (by header or by ticket)
close with 4401 and its event streams end with an ``unauthorized`` error event, while
another key's streams go on."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

from chat_storage.runtime.settings import Settings
from chat_storage.storage import apikeys
from tests.conftest import Tenant
from tests.support.streamkit import connect, new_session, parse_sse, recv, subscribe

CACHE_S = 0.5
WITHIN_S = CACHE_S * 2 + 1.0  # one check interval, its query, slack for a busy machine


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, api_key_cache_s=CACHE_S)


async def _second_key(pool: asyncpg.Pool, tenant: Tenant) -> Tenant:
    async with pool.acquire() as conn:
        made = await apikeys.create_key(conn, tenant.name, name="second")
    return Tenant(tenant.name, tenant.id, made.key, made.id)


async def test_a_revoked_keys_streams_are_closed(
    client: Any, tenant: Tenant, pool: asyncpg.Pool,
) -> None:
    other = await _second_key(pool, tenant)
    sid = await new_session(client, tenant)
    by_header = await connect(client, tenant, sid)
    r = await client.post(f"/api/v1/sessions/{sid}/ws-tickets", headers=tenant.headers)
    by_ticket = await client.ws_connect(
        f"/api/v1/sessions/{sid}/ws?ticket={(await r.json())['ticket']}")
    kept = await connect(client, other, sid)
    for ws in (by_header, by_ticket, kept):
        await subscribe(ws)
        await ws.send_json({"type": "ping", "ref": "p"})
        assert (await recv(ws))["type"] == "pong"
    events = await client.get(f"/api/v1/sessions/{sid}/events", headers=tenant.headers)
    assert events.status == 200
    await events.content.readuntil(b"\n\n")  # the retry line: the stream is open

    async with pool.acquire() as conn:
        await apikeys.revoke_key(conn, tenant.key_id)
    revoked_at = time.monotonic()

    for ws in (by_header, by_ticket):
        msg = await ws.receive(timeout=WITHIN_S)
        assert msg.type == aiohttp.WSMsgType.CLOSE, (msg.type, msg.data)
        assert msg.data == 4401 and msg.extra == "API key revoked"
    async with asyncio.timeout(WITHIN_S):
        rest = (await events.content.read()).decode()
    assert parse_sse(rest)[-1]["event"] == "error"
    assert '"code":"unauthorized"' in parse_sse(rest)[-1]["data"]
    assert time.monotonic() - revoked_at < WITHIN_S

    # the other key's socket is untouched
    await kept.send_json({"type": "ping", "ref": "p2"})
    assert (await recv(kept))["type"] == "pong"
    await kept.close()
