"""A request's deadline (server/deadlines.py) ends when its response starts: a
WebSocket or an event stream outlives it, over a real socket. (While the database does
not answer, the deadline itself is pinned by tests/server/test_frozen_db.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from chat_storage.runtime.settings import Settings
from tests.conftest import Tenant
from tests.support.streamkit import connect, new_session, recv, subscribe

DEADLINE_S = 0.3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, request_timeout_s=DEADLINE_S)


async def test_streams_outlive_the_request_deadline(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    ws = await connect(client, tenant, sid)
    await subscribe(ws)
    events = await client.get(f"/api/v1/sessions/{sid}/events", headers=tenant.headers)
    assert events.status == 200
    await asyncio.sleep(DEADLINE_S * 3)  # the deadline's time passing is the point
    await ws.send_json({"type": "ping", "ref": "p"})
    assert (await recv(ws))["type"] == "pong"
    r = await client.post(f"/api/v1/sessions/{sid}/messages", json={"role": "user",
                                                                  "content": "late"},
                          headers=tenant.headers)
    assert r.status == 201
    async with asyncio.timeout(5):
        while b"late" not in (chunk := await events.content.readline()):
            assert chunk, "the event stream ended"
    await ws.close()
    events.close()


async def test_a_slow_upload_to_a_local_store_url_has_no_deadline(
    aiohttp_client: Any, settings: Settings, tenant: Tenant,
) -> None:
    from chat_storage.server.app import create_app
    from tests.server.test_attachments import create

    client = await aiohttp_client(create_app(dataclasses.replace(settings,
                                                                 write_timeout_s=DEADLINE_S)))
    sid = await new_session(client, tenant)
    data = b"x" * 4096
    created = await create(client, tenant, sid, data)
    target = created["upload"]

    async def slowly() -> Any:  # the body takes three deadlines to arrive
        for i in range(4):
            await asyncio.sleep(DEADLINE_S)
            yield data[i * 1024:(i + 1) * 1024]

    headers = {k: v for k, v in target["headers"].items() if k.lower() != "content-length"}
    async with client.session.request(target["method"], target["url"], data=slowly(),
                                      headers=headers) as r:
        assert r.status == 200, await r.text()
