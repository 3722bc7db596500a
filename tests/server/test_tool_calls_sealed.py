"""An encrypted tenant's tool calls: sealed with the content, never plain in Postgres.

A database of this test alone (a tenant with encryption on must not outlive the test in
the run's shared one), a real app on a real socket, and ``pg_dump`` to see what is stored.
"""

from __future__ import annotations

import dataclasses
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from chat_storage.runtime.settings import DEFAULT_MIGRATIONS_DIR, Settings
from chat_storage.server.app import create_app
from chat_storage.storage import db
from tests.conftest import ADMIN_URL, make_tenant
from tests.support import scratch
from tests.support.pgdump import data_dump
from tests.support.streamkit import connect, new_session, recv_until, start


@pytest.fixture
async def own_database() -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    name = f"chat_tools_{secrets.token_hex(4)}"
    url = await scratch.create(ADMIN_URL, name, DEFAULT_MIGRATIONS_DIR)
    pool = await db.create_pool(url, min_size=1, max_size=2)
    try:
        yield url, pool
    finally:
        await pool.close()
        await scratch.drop(ADMIN_URL, name)


async def test_tool_calls_of_an_encrypted_tenant_are_sealed(
        aiohttp_client: Any, settings: Settings,
        own_database: tuple[str, asyncpg.Pool]) -> None:
    url, pool = own_database
    tenant = await make_tenant(pool, "sealed")
    await pool.execute("UPDATE tenants SET encrypted = true WHERE id = $1", tenant.id)
    client = await aiohttp_client(create_app(dataclasses.replace(
        settings, database_url=url, encryption_kek=f"local:{secrets.token_hex(32)}")))
    secret = {name: f"{name}-{secrets.token_hex(8)}"
              for name in ("name", "arg", "key", "id", "streamed_arg", "reply")}
    calls = [{"id": secret["id"], "name": secret["name"],
              "arguments": {secret["key"]: secret["arg"]}}]
    sid = await new_session(client, tenant)
    r = await client.post(f"/api/v1/sessions/{sid}/messages/batch", headers=tenant.headers,
                          json={"messages": [
                              {"role": "assistant", "content": "", "tool_calls": calls},
                              {"role": "tool", "content": secret["reply"],
                               "tool_call_id": secret["id"]}]})
    assert r.status == 201, await r.text()
    producer = await connect(client, tenant, sid)
    stream_id = (await start(producer))["stream_id"]
    streamed = [{"id": "call_s", "name": "search",
                 "arguments": {"q": secret["streamed_arg"]}}]
    await producer.send_json({"type": "stream.end", "ref": "e", "stream_id": stream_id,
                              "tool_calls": streamed})
    done = (await recv_until(producer, lambda f: f.get("ref") == "e"))[-1]
    assert done["type"] == "stream.completed" and done["message"]["tool_calls"] == streamed
    await producer.close()

    r = await client.get(f"/api/v1/sessions/{sid}/messages", headers=tenant.headers)
    page = (await r.json())["data"]
    assert [(m["tool_calls"], m["tool_call_id"]) for m in page] == [
        (calls, None), (None, secret["id"]), (streamed, None)]
    rows = await pool.fetch("SELECT sealed IS NOT NULL AS sealed, tool_calls, tool_call_id "
                            "FROM messages WHERE session_id = $1", uuid.UUID(sid))
    assert [tuple(r) for r in rows] == [(True, None, None)] * 3  # the plain columns: empty
    dump = data_dump(url)
    leaked = [name for name, value in secret.items() if value in dump]
    assert leaked == []
