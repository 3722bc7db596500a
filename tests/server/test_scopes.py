"""API-key scopes: every route of the app, called with an admin, a write and a read key.

The routes come from the running app's own endpoint list (every route table it
registered), so a new route is in the matrix the moment it exists. What each route
should need is written here independently of the route tables: a route whose declared
scope drifts from the contract of docs/api.md ("Credentials") fails.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from chat_storage.server.routing import ENDPOINTS_KEY, Endpoint
from chat_storage.storage import apikeys
from chat_storage.storage.principal import SCOPES, Scope
from tests.conftest import Tenant

_PATH_PARAM = re.compile(r"\{(\w+)(?::[^{}]*)?\}")

# the tenant's own decisions: not for an app's `write` key
ADMIN_ONLY = {("DELETE", "/api/v1/users/{user_id}/sessions")}
# GETs that still need `write`: the WebSocket creates messages and streams answers
WRITE_GETS = {("GET", "/api/v1/sessions/{session_id}/ws")}
# POSTs that need only `read`: a ticket carries its key's scope to the stream it opens
READ_POSTS = {("POST", "/api/v1/sessions/{session_id}/ws-tickets")}


def expected_scope(method: str, path: str) -> Scope:
    """What docs/api.md says a key needs for ``method path``."""
    if (method, path) in ADMIN_ONLY:
        return "admin"
    if method in ("GET", "HEAD") and (method, path) not in WRITE_GETS:
        return "read"
    if (method, path) in READ_POSTS:
        return "read"
    return "write"


def reaches(held: Scope, needed: Scope) -> bool:
    order = ["read", "write", "admin"]
    return order.index(held) >= order.index(needed)


def concrete(path: str, user_id: str) -> str:
    """``path`` with its parameters filled: a user id, else a random (absent) UUID."""
    return _PATH_PARAM.sub(
        lambda m: user_id if m.group(1) == "user_id" else str(uuid.uuid4()), path)


@pytest.fixture
async def keys(pool: asyncpg.Pool, tenant: Tenant) -> dict[Scope, str]:
    """A key of every scope for ``tenant``."""
    out: dict[Scope, str] = {}
    async with pool.acquire() as conn:
        for scope in SCOPES:
            out[scope] = (await apikeys.create_key(conn, tenant.name, name=scope,
                                                   scope=scope)).key
    return out


def endpoints(client: Any) -> list[Endpoint]:
    app: web.Application = client.app
    found = app[ENDPOINTS_KEY]
    # every route under /api/v1 is declared in a route table, so it is in this matrix
    declared = {(ep.method, ep.path) for ep in found}
    for route in app.router.routes():
        info = route.resource.canonical if route.resource is not None else ""
        if info.startswith("/api/v1/"):
            assert (route.method, info) in declared, f"{route.method} {info} is in no route table"
    return found


async def test_every_route_answers_403_exactly_where_the_scope_is_missing(
    client: Any, keys: dict[Scope, str]
) -> None:
    found = endpoints(client)
    assert len(found) > 20
    seen_403 = 0
    for ep in found:
        for held, key in keys.items():
            needed = expected_scope(ep.method, ep.path) if ep.auth else None
            url = concrete(ep.path, f"scope-user-{uuid.uuid4().hex[:8]}")
            body = {} if ep.body is not None else None
            async with client.request(ep.method, url, json=body,
                                      headers={"X-Api-Key": key}) as resp:
                await resp.read()
                where = f"{ep.method} {ep.path} with a {held} key"
                if needed is not None and not reaches(held, needed):
                    assert resp.status == 403, f"{where}: {resp.status}, wanted 403"
                    message = (await resp.json())["message"]
                    assert f"needs {needed!r}" in message, f"{where}: {message}"
                    seen_403 += 1
                else:
                    assert resp.status not in (401, 403), f"{where}: {resp.status}"
    assert seen_403 > 0


async def test_the_openapi_document_names_each_operation_s_scope(client: Any) -> None:
    async with client.get("/openapi.json") as resp:
        doc = await resp.json()
    for ep in endpoints(client):
        path = _PATH_PARAM.sub(r"{\1}", ep.path)
        operation = doc["paths"][path][ep.method.lower()]
        if ep.auth:
            assert operation["x-required-scope"] == expected_scope(ep.method, ep.path), path
        else:
            assert "x-required-scope" not in operation, path


async def test_a_read_key_reads_and_watches_but_cannot_write(
    client: Any, tenant: Tenant, keys: dict[Scope, str]
) -> None:
    made = await client.post("/api/v1/sessions", json={"user_id": "u1"}, headers=tenant.headers)
    assert made.status == 201
    sid = (await made.json())["id"]
    read = {"X-Api-Key": keys["read"]}
    assert (await client.get(f"/api/v1/sessions/{sid}", headers=read)).status == 200
    assert (await client.get(f"/api/v1/sessions/{sid}/messages", headers=read)).status == 200
    wrote = await client.post(f"/api/v1/sessions/{sid}/messages",
                              json={"role": "user", "content": "hi"}, headers=read)
    assert wrote.status == 403
    assert (await client.get(f"/api/v1/sessions/{sid}/ws", headers=read)).status == 403

    # a read key's ticket carries its scope: it opens the event stream, not the WebSocket
    async def read_ticket() -> str:
        made = await client.post(f"/api/v1/sessions/{sid}/ws-tickets", headers=read)
        assert made.status == 201
        ticket: str = (await made.json())["ticket"]
        return ticket

    events = await client.get(f"/api/v1/sessions/{sid}/events?ticket={await read_ticket()}")
    assert events.status == 200
    events.close()
    refused = await client.get(f"/api/v1/sessions/{sid}/ws?ticket={await read_ticket()}")
    assert refused.status == 403
    assert "needs 'write'" in (await refused.json())["message"]

    # a write key's ticket opens the WebSocket
    write = {"X-Api-Key": keys["write"]}
    ticket = await client.post(f"/api/v1/sessions/{sid}/ws-tickets", headers=write)
    assert ticket.status == 201
    ws = await client.ws_connect(
        f"/api/v1/sessions/{sid}/ws?ticket={(await ticket.json())['ticket']}")
    await ws.send_json({"type": "ping"})
    assert (await ws.receive_json(timeout=10))["type"] == "pong"
    await ws.close()
