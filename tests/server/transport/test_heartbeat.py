"""WebSocket heartbeats from the process's one timer: a silent peer is pinged, then
dropped; a peer that answers stays; the server answers the client's own pings."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import aiohttp
import pytest

from chat_storage.runtime.settings import Settings
from chat_storage.server.transport.heartbeat import HEARTBEATS_KEY
from tests.conftest import Tenant
from tests.support.streamkit import new_session, recv

HEARTBEAT_S = 0.4


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, ws_heartbeat_s=HEARTBEAT_S)


async def test_a_silent_peer_is_pinged_then_dropped(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    # autoping off: this client reads the ping but never answers it
    ws = await client.ws_connect(f"/api/v1/sessions/{sid}/ws", headers=tenant.headers,
                                 autoping=False)
    opened = time.monotonic()
    msg = await ws.receive(timeout=5 * HEARTBEAT_S)
    assert msg.type == aiohttp.WSMsgType.PING
    pinged = time.monotonic()
    # silent for between half a heartbeat and a whole one before the ping
    assert HEARTBEAT_S / 2 * 0.9 <= pinged - opened <= HEARTBEAT_S * 4  # 4: a loaded machine
    msg = await ws.receive(timeout=5 * HEARTBEAT_S)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE,
                        aiohttp.WSMsgType.ERROR)
    # given up half a heartbeat after the ping, as aiohttp's own heartbeat does
    assert HEARTBEAT_S / 2 * 0.9 <= time.monotonic() - pinged <= HEARTBEAT_S * 4


async def test_a_peer_that_answers_stays_open(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    ws = await client.ws_connect(f"/api/v1/sessions/{sid}/ws", headers=tenant.headers,
                                 autoping=False)
    pings = 0
    deadline = time.monotonic() + 6 * HEARTBEAT_S  # past the point a silent peer is dropped
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            break
        assert msg.type == aiohttp.WSMsgType.PING, msg
        pings += 1
        await ws.pong(msg.data)
    assert pings >= 2
    await ws.send_json({"type": "ping", "ref": "still"})
    assert await recv(ws) == {"type": "pong", "ref": "still"}
    assert len(client.server.app[HEARTBEATS_KEY]) == 1
    await ws.close()


async def test_the_clients_ping_gets_its_pong(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    ws = await client.ws_connect(f"/api/v1/sessions/{sid}/ws", headers=tenant.headers,
                                 autoping=False)
    await ws.ping(b"are you there")
    msg = await ws.receive(timeout=HEARTBEAT_S / 4)  # before any heartbeat ping
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"are you there")
    await ws.close()
