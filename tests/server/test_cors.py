"""CORS over a real socket: preflights, actual responses (errors and 429 too), the
rule the WebSocket's Origin check shares, for CHAT_CORS_ORIGINS and a tenant's own list.
The browser's side is in tests/web/test_cors.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.server.cors import ALLOW_HEADERS, EXPOSE_HEADERS
from tests.conftest import Tenant
from tests.support.origins import listed, unique_origin
from tests.support.streamkit import new_session

ALLOWED = "https://app.example"
OTHER = "https://evil.example"
SESSIONS = "/api/v1/sessions"


def _preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "x-api-key,content-type,idempotency-key"}


def _cors_headers(r: aiohttp.ClientResponse) -> set[str]:
    return {h for h in r.headers if h.lower().startswith("access-control-")}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, cors_origins=(ALLOWED, "http://127.0.0.1:9"))


async def test_preflight_from_an_allowed_origin_needs_no_key(client: Any) -> None:
    for path in (SESSIONS, "/api/v1/sessions/whatever/messages", "/objects/some-token"):
        r = await client.options(path, headers=_preflight(ALLOWED))
        assert r.status == 204, (path, await r.text())
        assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert r.headers["Access-Control-Allow-Headers"] == ALLOW_HEADERS
        assert {"POST", "GET", "PUT", "PATCH", "DELETE"} <= {
            m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")}
        assert int(r.headers["Access-Control-Max-Age"]) > 0
        assert "Access-Control-Allow-Credentials" not in r.headers
        assert "Origin" in r.headers["Vary"]
        assert r.headers["X-Request-ID"]
        assert "RateLimit-Limit" not in r.headers  # not rate limited, not authenticated
    # the origin is compared as browsers send it: case-insensitively
    r = await client.options(SESSIONS, headers=_preflight("HTTPS://APP.example"))
    assert r.status == 204


async def test_preflight_from_another_origin_gets_no_cors_header(client: Any) -> None:
    for origin in (OTHER, "null", f"{ALLOWED}:8443", "http://app.example"):
        r = await client.options(SESSIONS, headers=_preflight(origin))
        assert r.status == 403, origin
        assert _cors_headers(r) == set(), origin
        assert (await r.json())["status"] == 403


async def test_options_without_preflight_headers_is_no_preflight(client: Any) -> None:
    r = await client.options(SESSIONS, headers={"Origin": ALLOWED})
    assert r.status == 401  # an ordinary request: the API wants its key first


async def test_actual_responses_to_an_allowed_origin(client: Any, tenant: Tenant) -> None:
    headers = {**tenant.headers, "Origin": ALLOWED}
    r = await client.post(SESSIONS, json={"user_id": "u"}, headers=headers)
    assert r.status == 201
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert r.headers["Access-Control-Expose-Headers"] == EXPOSE_HEADERS
    assert "Access-Control-Allow-Credentials" not in r.headers
    exposed = {h.strip() for h in EXPOSE_HEADERS.split(",")}
    # what a page needs after a write is exposed, and it is there to read
    assert {"Location", "X-Request-ID", "RateLimit-Remaining"} <= exposed
    assert {"Location", "X-Request-ID", "RateLimit-Remaining"} <= set(r.headers)
    r = await client.get(SESSIONS, headers=headers)
    assert r.status == 200
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Origin" in r.headers["Vary"]


async def test_errors_to_an_allowed_origin_carry_the_headers(client: Any,
                                                             tenant: Tenant) -> None:
    # 401 (no key, refused before any handler), 403 (bad key), 404, 405 (no route matched)
    cases = [("GET", SESSIONS, {}, 401), ("GET", SESSIONS, {"X-Api-Key": "cs_bad"}, 403),
             ("GET", f"{SESSIONS}/00000000-0000-0000-0000-000000000000", tenant.headers, 404),
             ("DELETE", SESSIONS, tenant.headers, 405)]
    for method, path, headers, status in cases:
        r = await client.request(method, path, headers={**headers, "Origin": ALLOWED})
        assert r.status == status, (method, path)
        assert r.headers["Access-Control-Allow-Origin"] == ALLOWED, status
        assert r.headers["Access-Control-Expose-Headers"] == EXPOSE_HEADERS, status


async def test_responses_to_another_origin_have_no_cors_header(client: Any,
                                                               tenant: Tenant) -> None:
    for headers in ({**tenant.headers, "Origin": OTHER}, tenant.headers, {"Origin": OTHER}):
        r = await client.get(SESSIONS, headers=headers)
        assert _cors_headers(r) == set()
        assert "Origin" in r.headers["Vary"]  # a cache must not serve it to ALLOWED


async def test_a_429_to_an_allowed_origin_is_readable(aiohttp_client: Any, settings: Settings,
                                                      tenant: Tenant) -> None:
    client = await aiohttp_client(create_app(dataclasses.replace(
        settings, rate_limit_per_s=0.02, rate_limit_burst=1)))
    headers = {**tenant.headers, "Origin": ALLOWED}
    statuses = [(await client.get(SESSIONS, headers=headers)) for _ in range(2)]
    limited = statuses[-1]
    assert limited.status == 429
    assert limited.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Retry-After" in limited.headers["Access-Control-Expose-Headers"]
    # a preflight is never limited: the bucket is empty, the answer is still 204
    r = await client.options(SESSIONS, headers=_preflight(ALLOWED))
    assert r.status == 204


async def test_any_origin(aiohttp_client: Any, settings: Settings, tenant: Tenant) -> None:
    client = await aiohttp_client(create_app(dataclasses.replace(settings, cors_origins=("*",))))
    r = await client.options(SESSIONS, headers=_preflight(OTHER))
    assert (r.status, r.headers["Access-Control-Allow-Origin"]) == (204, "*")
    r = await client.get(SESSIONS, headers={**tenant.headers, "Origin": OTHER})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in r.headers


async def test_no_list_no_cors(aiohttp_client: Any, settings: Settings, tenant: Tenant) -> None:
    client = await aiohttp_client(create_app(dataclasses.replace(settings, cors_origins=())))
    r = await client.options(SESSIONS, headers=_preflight(ALLOWED))
    assert r.status == 403 and _cors_headers(r) == set()
    r = await client.get(SESSIONS, headers={**tenant.headers, "Origin": ALLOWED})
    assert r.status == 200 and _cors_headers(r) == set()
    assert "Vary" not in r.headers  # nothing depends on Origin


async def _handshake_status(client: Any, path: str, headers: dict[str, str]) -> int:
    try:
        ws = await client.ws_connect(path, headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_the_websocket_origin_check_uses_the_same_list(client: Any,
                                                             tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    path = f"/api/v1/sessions/{sid}/ws"
    own = f"http://{client.host}:{client.port}"
    for origin, status in ((ALLOWED, 101), ("http://127.0.0.1:9", 101), (own, 101),
                           (OTHER, 403), ("http://app.example", 403)):
        assert await _handshake_status(client, path, {**tenant.headers, "Origin": origin}) \
            == status, origin


# --- a tenant's own origins (tenants update --cors-origins)

async def _bearer(client: Any, tenant: Tenant, user_id: str = "u") -> dict[str, str]:
    r = await client.post("/api/v1/tokens", json={"user_id": user_id}, headers=tenant.headers)
    assert r.status == 201, await r.text()
    return {"Authorization": f"Bearer {(await r.json())['token']}"}


async def test_a_tenant_origin_reads_only_its_tenants_answers(
    client: Any, pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant,
) -> None:
    own = unique_origin()
    async with listed(pool, tenant, own):
        # a preflight has no credential: any tenant's origin gets its allowance
        r = await client.options(SESSIONS, headers=_preflight(own))
        assert (r.status, r.headers["Access-Control-Allow-Origin"]) == (204, own)
        # the tenant's own callers, by key and by user token: readable
        for headers in (tenant.headers, await _bearer(client, tenant)):
            r = await client.get(SESSIONS, headers={**headers, "Origin": own})
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == own
            assert r.headers["Access-Control-Expose-Headers"] == EXPOSE_HEADERS
        # another tenant's caller from that page: answered, but not readable there
        for headers in (other_tenant.headers, await _bearer(client, other_tenant)):
            r = await client.get(SESSIONS, headers={**headers, "Origin": own})
            assert r.status == 200
            assert _cors_headers(r) == set()
            assert "Origin" in r.headers["Vary"]
        # before authentication nothing of a tenant is in the answer: a listed page may
        # read its 401 (and so learn to get a new token)
        for headers, status in (({}, 401), ({"Authorization": "Bearer x.y.z"}, 401),
                                ({"X-Api-Key": "cs_bad"}, 403)):
            r = await client.get(SESSIONS, headers={**headers, "Origin": own})
            assert r.status == status
            assert r.headers["Access-Control-Allow-Origin"] == own, status


async def test_a_tenant_origin_is_unknown_to_the_global_list(
    aiohttp_client: Any, settings: Settings, pool: asyncpg.Pool, tenant: Tenant,
) -> None:
    own, stranger = unique_origin(), unique_origin()
    async with listed(pool, tenant, own):
        client = await aiohttp_client(create_app(dataclasses.replace(settings,
                                                                     cors_origins=())))
        r = await client.options(SESSIONS, headers=_preflight(stranger))
        assert r.status == 403 and _cors_headers(r) == set()
        r = await client.get(SESSIONS, headers={**tenant.headers, "Origin": stranger})
        assert r.status == 200 and _cors_headers(r) == set()
        r = await client.get(SESSIONS, headers={**tenant.headers, "Origin": own})
        assert r.headers["Access-Control-Allow-Origin"] == own


async def test_a_changed_tenant_list_applies_within_the_cache_time(
    aiohttp_client: Any, settings: Settings, pool: asyncpg.Pool, tenant: Tenant,
) -> None:
    client = await aiohttp_client(create_app(dataclasses.replace(
        settings, cors_origins=(), api_key_cache_s=0.2)))
    own = unique_origin()
    r = await client.options(SESSIONS, headers=_preflight(own))
    assert r.status == 403  # read and cached: not listed
    async with listed(pool, tenant, own):
        statuses = []
        deadline = time.monotonic() + 5.0
        for _ in range(100):  # bounded: 5 s or 100 tries, about 0.2 s is expected
            r = await client.options(SESSIONS, headers=_preflight(own))
            statuses.append(r.status)
            if r.status == 204 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert statuses[-1] == 204, statuses


async def test_the_websocket_origin_check_uses_the_tenants_list(
    client: Any, pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant,
) -> None:
    own = unique_origin()
    async with listed(pool, tenant, own):
        sid = await new_session(client, tenant)
        path = f"/api/v1/sessions/{sid}/ws"
        assert await _handshake_status(client, path, {**tenant.headers, "Origin": own}) == 101
        assert await _handshake_status(
            client, path, {**await _bearer(client, tenant, "u1"), "Origin": own}) == 101
        # a ticket stands for its tenant too
        r = await client.post(f"{path.removesuffix('/ws')}/ws-tickets", headers=tenant.headers)
        ticket = (await r.json())["ticket"]
        assert await _handshake_status(client, f"{path}?ticket={ticket}", {"Origin": own}) == 101
        # another tenant's page may not open this tenant's streams, nor the reverse
        other_sid = await new_session(client, other_tenant)
        other_path = f"/api/v1/sessions/{other_sid}/ws"
        assert await _handshake_status(
            client, other_path, {**other_tenant.headers, "Origin": own}) == 403
        assert await _handshake_status(
            client, path, {**tenant.headers, "Origin": unique_origin()}) == 403


async def test_a_ticket_refused_for_its_origin_is_not_used_up(
    client: Any, pool: asyncpg.Pool, tenant: Tenant,
) -> None:
    own, stranger = unique_origin(), unique_origin()
    async with listed(pool, tenant, own):
        sid = await new_session(client, tenant)
        base = f"/api/v1/sessions/{sid}"
        r = await client.post(f"{base}/ws-tickets", headers=tenant.headers)
        url = f"{base}/ws?ticket={(await r.json())['ticket']}"
        assert await _handshake_status(client, url, {"Origin": stranger}) == 403
        assert await _handshake_status(client, url, {"Origin": own}) == 101
        assert await _handshake_status(client, url, {"Origin": own}) == 403  # used now
