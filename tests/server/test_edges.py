"""The edge: the error body of every layer, auth, request ids, rate limits, access log."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import uuid
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.server.logs import JsonFormatter
from chat_storage.storage import apikeys
from tests.conftest import Tenant, make_tenant

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
SESSIONS = "/api/v1/sessions"


async def assert_error(r: Any, status: int, phrase: str, path: str,
                       code: str) -> dict[str, Any]:
    """``r`` is an error response with exactly the body of docs/api.md; return the body."""
    assert r.status == status, await r.text()
    assert r.content_type == "application/json"
    body: dict[str, Any] = await r.json()
    assert set(body) == {"timestamp", "path", "status", "error", "code", "message",
                         "request_id", "errors"}
    assert body["code"] == code
    assert isinstance(body["errors"], list)
    assert RFC3339_Z.match(body["timestamp"]), body["timestamp"]
    stamp = dt.datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 300
    assert body["path"] == path
    assert body["status"] == status
    assert body["error"] == phrase
    assert isinstance(body["message"], str) and body["message"]
    assert body["request_id"] == r.headers["X-Request-ID"]
    return body


async def test_unknown_route_is_404(client: Any, tenant: Tenant) -> None:
    r = await client.get("/nope")
    body = await assert_error(r, 404, "Not Found", "/nope", "not_found")
    assert body["errors"] == []
    r = await client.get("/api/v1/nope", headers=tenant.headers)
    await assert_error(r, 404, "Not Found", "/api/v1/nope", "not_found")


async def test_wrong_method_is_405_with_allow(client: Any, tenant: Tenant) -> None:
    r = await client.put("/healthz")
    await assert_error(r, 405, "Method Not Allowed", "/healthz", "not_found")
    assert "GET" in r.headers["Allow"]
    r = await client.put(SESSIONS, json={}, headers=tenant.headers)
    await assert_error(r, 405, "Method Not Allowed", SESSIONS, "not_found")
    assert {"GET", "POST"} <= set(re.split(r",\s*", r.headers["Allow"]))


@pytest.fixture
def small_body_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, max_body_bytes=1024)


async def test_body_over_the_limit_is_413(
    aiohttp_client: Any, small_body_settings: Settings, tenant: Tenant
) -> None:
    client = await aiohttp_client(create_app(small_body_settings))
    r = await client.post(SESSIONS, json={"user_id": "u", "title": "x" * 100},
                          headers=tenant.headers)
    assert r.status == 201, "a body under the limit is accepted"
    r = await client.post(SESSIONS, json={"user_id": "u", "metadata": {"x": "y" * 2000}},
                          headers=tenant.headers)
    await assert_error(r, 413, "Request Entity Too Large", SESSIONS, "payload_too_large")


async def test_wrong_content_type_is_415(client: Any, tenant: Tenant) -> None:
    r = await client.post(SESSIONS, data=b'{"user_id": "u"}',
                          headers={**tenant.headers, "Content-Type": "text/plain"})
    await assert_error(r, 415, "Unsupported Media Type", SESSIONS, "unsupported_media_type")


async def test_invalid_json_is_400(client: Any, tenant: Tenant) -> None:
    r = await client.post(SESSIONS, data=b'{"user_id": "u",',
                          headers={**tenant.headers, "Content-Type": "application/json"})
    await assert_error(r, 400, "Bad Request", SESSIONS, "validation_failed")


async def test_unknown_field_is_400_with_field_errors(client: Any, tenant: Tenant) -> None:
    r = await client.post(SESSIONS, json={"user_id": "u", "tenant_id": str(uuid.uuid4())},
                          headers=tenant.headers)
    body = await assert_error(r, 400, "Bad Request", SESSIONS, "validation_failed")
    assert body["errors"] == [{"field": "tenant_id", "message": "unknown field"}]
    r = await client.post(SESSIONS, json={"user_id": "u", "title": "t" * 201},
                          headers=tenant.headers)
    body = await assert_error(r, 400, "Bad Request", SESSIONS, "validation_failed")
    assert body["errors"] == [{"field": "title", "message": "must be at most 200 characters"}]


async def test_missing_key_is_401_with_challenge(client: Any) -> None:
    r = await client.get(SESSIONS)
    await assert_error(r, 401, "Unauthorized", SESSIONS, "unauthorized")
    # both challenges, one header (RFC 9110 §11.6.1): a key or a bearer token
    assert r.headers["WWW-Authenticate"] == "ApiKey, Bearer"


@pytest.mark.parametrize("key", ["nonsense", "cs_0123456789abcdef_wrongsecret"])
async def test_unknown_key_is_403(client: Any, key: str) -> None:
    r = await client.get(SESSIONS, headers={"X-Api-Key": key})
    await assert_error(r, 403, "Forbidden", SESSIONS, "forbidden")


async def test_right_key_id_wrong_secret_is_403(client: Any, tenant: Tenant) -> None:
    r = await client.get(SESSIONS, headers={"X-Api-Key": tenant.key + "x"})
    await assert_error(r, 403, "Forbidden", SESSIONS, "forbidden")


@pytest.fixture
def uncached_key_settings(settings: Settings) -> Settings:
    # no key cache, so a revocation is seen by the very next request
    return dataclasses.replace(settings, api_key_cache_s=0.0)


async def test_revoked_key_is_403(
    aiohttp_client: Any, uncached_key_settings: Settings, pool: asyncpg.Pool
) -> None:
    client = await aiohttp_client(create_app(uncached_key_settings))
    tenant = await make_tenant(pool, "revoked")
    r = await client.get(SESSIONS, headers=tenant.headers)
    assert r.status == 200
    async with pool.acquire() as conn:
        await apikeys.revoke_key(conn, tenant.key_id)
    r = await client.get(SESSIONS, headers=tenant.headers)
    await assert_error(r, 403, "Forbidden", SESSIONS, "forbidden")


async def test_unexpected_exception_is_500_without_internals(
    aiohttp_client: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)

    # TEST-ONLY route, added to this app before it starts; no real route raises on purpose.
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError(
            "SELECT secret FROM api_keys WHERE id = 1 -- connect to 10.1.2.3:5432 failed")

    app.router.add_get("/test-only/boom", boom)
    client = await aiohttp_client(app)
    caplog.set_level(logging.ERROR, logger="chat_storage.server.middlewares")
    r = await client.get("/test-only/boom", headers={"X-Request-ID": "boom-1"})
    body = await assert_error(r, 500, "Internal Server Error", "/test-only/boom", "internal")
    assert body["request_id"] == "boom-1"
    text = await r.text()
    for leak in ("Traceback", "SELECT", "api_keys", "10.1.2.3", "RuntimeError", "boom("):
        assert leak not in text
    logged = [rec for rec in caplog.records if rec.name == "chat_storage.server.middlewares"
              and rec.exc_info is not None and rec.exc_info[0] is RuntimeError]
    assert len(logged) == 1
    assert logged[0].levelno == logging.ERROR
    exc_info = logged[0].exc_info
    assert exc_info is not None and "Traceback" in logging.Formatter().formatException(exc_info)


async def test_request_id_valid_is_echoed_invalid_is_replaced(
    client: Any, tenant: Tenant
) -> None:
    r = await client.get(SESSIONS, headers={**tenant.headers, "X-Request-ID": "abc-123.x:y"})
    assert r.status == 200
    assert r.headers["X-Request-ID"] == "abc-123.x:y"
    for bad in ("has spaces", "x" * 200, "semi;colon", "<script>"):
        r = await client.get(SESSIONS, headers={**tenant.headers, "X-Request-ID": bad})
        assert r.status == 200
        assert r.headers["X-Request-ID"] != bad
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", r.headers["X-Request-ID"])
    r = await client.get("/healthz")  # also without a key, and on non-API routes
    assert r.headers["X-Request-ID"]
    # errors carry it in the body too
    r = await client.get("/api/v1/nope", headers={**tenant.headers, "X-Request-ID": "e-1"})
    assert (await r.json())["request_id"] == "e-1" == r.headers["X-Request-ID"]


@pytest.fixture
def tight_limit_settings(settings: Settings) -> Settings:
    # Burst 2 and a refill so slow (one token per 50 s) that the third request is over
    # the limit however slowly this machine runs: nothing here depends on timing.
    return dataclasses.replace(settings, rate_limit_per_s=0.02, rate_limit_burst=2)


async def test_rate_limit_is_429_with_retry_after(
    aiohttp_client: Any, tight_limit_settings: Settings, tenant: Tenant, other_tenant: Tenant
) -> None:
    client = await aiohttp_client(create_app(tight_limit_settings))
    answers = [await client.get(SESSIONS, headers=tenant.headers) for _ in range(3)]
    assert [r.status for r in answers] == [200, 200, 429]
    for r in answers:
        assert r.headers["RateLimit-Limit"] == "2"
        assert r.headers["RateLimit-Policy"] == "0.02;w=1;burst=2"
        assert int(r.headers["RateLimit-Reset"]) > 0
    assert [r.headers["RateLimit-Remaining"] for r in answers] == ["1", "0", "0"]
    limited = answers[2]
    await assert_error(limited, 429, "Too Many Requests", SESSIONS, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    # a 429 stored nothing
    r = await client.post(SESSIONS, json={"user_id": "u"}, headers=tenant.headers)
    assert r.status == 429
    # the bucket is per key: another key is not limited
    r = await client.get(SESSIONS, headers=other_tenant.headers)
    assert r.status == 200
    assert r.headers["RateLimit-Remaining"] == "1"


async def test_access_log_has_one_json_line_per_request(
    client: Any, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat_storage.access")
    # format at emit time, as the real handler does: request_id comes from the context
    caplog.handler.setFormatter(JsonFormatter())
    ids = [f"log-{i}-{uuid.uuid4().hex[:8]}" for i in range(3)]
    await client.get(SESSIONS, headers={**tenant.headers, "X-Request-ID": ids[0]})
    await client.post(SESSIONS, json={"user_id": "u"},
                      headers={**tenant.headers, "X-Request-ID": ids[1]})
    await client.get(SESSIONS, headers={"X-Request-ID": ids[2]})  # 401: no tenant
    lines = [orjson.loads(line) for line in caplog.text.splitlines()
             if line.startswith("{") and '"chat_storage.access"' in line]
    by_id = {rid: [line for line in lines if line.get("request_id") == rid] for rid in ids}
    assert all(len(found) == 1 for found in by_id.values()), by_id
    first, second, third = (by_id[rid][0] for rid in ids)
    assert (first["tenant"], first["route"], first["status"]) == (tenant.name, SESSIONS, 200)
    assert (second["method"], second["status"]) == ("POST", 201)
    assert (third["tenant"], third["status"]) == (None, 401)
    for line in (first, second, third):
        assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0
    records = [rec for rec in caplog.records if rec.name == "chat_storage.access"]
    assert len(records) == 3
    assert [rec.status for rec in records] == [200, 201, 401]  # type: ignore[attr-defined]
    assert records[0].tenant == tenant.name  # type: ignore[attr-defined]
    assert records[0].route == SESSIONS  # type: ignore[attr-defined]
