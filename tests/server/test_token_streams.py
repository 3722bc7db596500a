"""Streams opened with a bearer token end when the token no longer would verify
(server/credential_watch.py), against a real server process over real sockets: a user
token's signing key retired, the token expired, an OIDC issuer's key withdrawn. Each
closes the WebSocket with 4401 (an event stream: an ``unauthorized`` error event), as a
revoked API key does, while the streams of other credentials go on."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest

from chat_storage.server import credential_watch
from chat_storage.storage import signing_keys, tenants
from chat_storage.storage.sealing import Sealer
from tests.conftest import TEST_SECRET_KEY, Tenant
from tests.support.bearer import bearer
from tests.support.idp import Idp
from tests.support.procs import replica_env, running
from tests.support.streamkit import parse_sse, recv_until, start, subscribe

CACHE_S = 0.5  # CHAT_API_KEY_CACHE_S: the sweep's interval
JWKS_S = 1.0  # CHAT_OIDC_JWKS_CACHE_S
WITHIN_S = CACHE_S * 2 + 2.0  # one sweep, its query, slack for a busy machine
ENV = {"CHAT_API_KEY_CACHE_S": str(CACHE_S), "CHAT_TOKEN_LEEWAY_S": "0",
       "CHAT_OIDC_JWKS_CACHE_S": str(JWKS_S), "CHAT_SECRET_KEY": TEST_SECRET_KEY}


@pytest.fixture
async def http(tmp_path: Path, database_url: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of a server process of its own, sweeping every ``CACHE_S``."""
    async with running(tmp_path, replica_env(database_url, **ENV)) as (server,), \
            aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as session:
        yield session


async def _session(http: aiohttp.ClientSession, tenant: Tenant, user: str = "alice") -> str:
    r = await http.post("/api/v1/sessions", json={"user_id": user}, headers=tenant.headers)
    assert r.status == 201, await r.text()
    sid: str = (await r.json())["id"]
    return sid


async def _mint(http: aiohttp.ClientSession, tenant: Tenant) -> str:
    r = await http.post("/api/v1/tokens", json={"user_id": "alice"}, headers=tenant.headers)
    assert r.status == 201, await r.text()
    token: str = (await r.json())["token"]
    return token


async def _open(http: aiohttp.ClientSession, sid: str,
                headers: dict[str, str]) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"/api/v1/sessions/{sid}/ws", headers=headers)
    await subscribe(ws)
    await _alive(ws)
    return ws


async def _alive(ws: aiohttp.ClientWebSocketResponse) -> None:
    ref = uuid.uuid4().hex[:8]
    await ws.send_json({"type": "ping", "ref": ref})
    frames = await recv_until(ws, lambda f: f.get("ref") == ref)
    assert frames[-1] == {"type": "pong", "ref": ref}


async def _closed(ws: aiohttp.ClientWebSocketResponse, reason: str, within_s: float) -> None:
    """The next non-text frame, within ``within_s``, closes with 4401 for ``reason``."""
    async with asyncio.timeout(within_s):
        msg = await ws.receive()
        while msg.type == aiohttp.WSMsgType.TEXT:  # the session's live events before it
            msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE, (msg.type, msg.data)
    assert (msg.data, msg.extra) == (4401, reason)


async def test_retired_signing_key_ends_its_tokens_streams(
    http: aiohttp.ClientSession, tenant: Tenant, pool: asyncpg.Pool,
) -> None:
    sid = await _session(http, tenant)
    token = await _mint(http, tenant)
    by_header = await _open(http, sid, bearer(token))
    r = await http.post(f"/api/v1/sessions/{sid}/ws-tickets", headers=bearer(token))
    assert r.status == 201, await r.text()
    ticket = (await r.json())["ticket"]
    by_ticket = await http.ws_connect(f"/api/v1/sessions/{sid}/ws?ticket={ticket}")
    await subscribe(by_ticket)
    await _alive(by_ticket)
    by_key = await _open(http, sid, tenant.headers)
    events = await http.get(f"/api/v1/sessions/{sid}/events", headers=bearer(token))
    assert events.status == 200
    await events.content.readuntil(b"\n\n")  # the retry line: the stream is open
    await start(by_key, role="assistant")  # an answer in progress, for the ui-stream
    answer = await http.get(f"/api/v1/sessions/{sid}/ui-stream", headers=bearer(token))
    assert answer.status == 200
    await answer.content.readuntil(b"\n\n")  # its first part: the stream is open

    async with pool.acquire() as conn:
        assert await signing_keys.rotate(conn, tenant.name) is not None
    rotated_at = time.monotonic()

    for ws in (by_header, by_ticket):
        await _closed(ws, credential_watch.RETIRED, WITHIN_S)
    async with asyncio.timeout(WITHIN_S):
        rest = parse_sse((await events.content.read()).decode())
    assert rest[-1]["event"] == "error" and '"code":"unauthorized"' in rest[-1]["data"]
    async with asyncio.timeout(WITHIN_S):
        parts = (await answer.content.read()).decode()
    assert parts.endswith('"errorText":"token\'s signing key retired"}\n\ndata: [DONE]\n\n'), parts
    assert time.monotonic() - rotated_at < WITHIN_S
    await _alive(by_key)  # the API key's socket is untouched
    await by_key.close()


async def test_expiry_ends_a_tokens_stream(
    http: aiohttp.ClientSession, tenant: Tenant, pool: asyncpg.Pool,
) -> None:
    sid = await _session(http, tenant)
    longer = await _mint(http, tenant)  # 900 s, and makes the tenant's signing key
    kid = jwt.get_unverified_header(longer)["kid"]
    async with pool.acquire() as conn:  # a token of 3 s, as the server signs them
        key = await signing_keys.active_key(conn, tenant.id, Sealer(TEST_SECRET_KEY.encode()))
    assert key.kid == kid
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "chat-storage", "aud": "chat-storage", "tid": str(tenant.id), "sub": "alice",
        "scope": "read write stream", "iat": now, "exp": now + 3, "jti": uuid.uuid4().hex}
    short = jwt.encode(claims, key.secret, algorithm="HS256", headers={"kid": kid})
    expiring = await _open(http, sid, bearer(short))
    kept = await _open(http, sid, bearer(longer))
    events = await http.get(f"/api/v1/sessions/{sid}/events", headers=bearer(short))
    assert events.status == 200
    await events.content.readuntil(b"\n\n")

    await _closed(expiring, credential_watch.EXPIRED, 3 + WITHIN_S)
    assert time.time() >= claims["exp"]  # not before its time
    async with asyncio.timeout(WITHIN_S):
        rest = parse_sse((await events.content.read()).decode())
    assert rest[-1]["event"] == "error" and "token expired" in rest[-1]["data"]
    await _alive(kept)
    await kept.close()


async def test_withdrawn_issuer_key_ends_its_tokens_streams(
    http: aiohttp.ClientSession, idp: Idp, tenant: Tenant, pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await tenants.update_tenant(conn, tenant.name, oidc_issuer=idp.issuer,
                                    oidc_audience="chat-app")
    sid = await _session(http, tenant)
    withdrawn = await _open(http, sid, bearer(idp.token("rsa-1")))
    kept = await _open(http, sid, bearer(idp.token("ec-1")))

    idp.published.remove("rsa-1")
    await _closed(withdrawn, credential_watch.WITHDRAWN, JWKS_S + WITHIN_S)
    await _alive(kept)
    await kept.close()
