"""CORS over a real socket: preflights, actual responses (errors and 429 too), the list
the WebSocket's Origin check shares. The browser's side is in tests/web/test_cors.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
import pytest

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.server.cors import ALLOW_HEADERS, EXPOSE_HEADERS
from tests.conftest import Tenant
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
