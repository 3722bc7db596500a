"""The error contract of docs/api.md 1.1: ``code`` and ``errors`` on every error body,
plain field messages, unknown query parameters refused, JSON for what aiohttp refuses
before routing, and idempotent replays that are byte-identical to the first answer."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import typing
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pydantic_core
import pytest
from aiohttp import web
from yarl import URL

from chat_storage.runtime.settings import Settings
from chat_storage.server import protocol
from chat_storage.server.app import create_app
from chat_storage.server.errors import CODES
from chat_storage.server.field_errors import FALLBACK, PLAIN, plain_message
from tests.conftest import Tenant
from tests.support.procs import replica_env, running

SESSIONS = "/api/v1/sessions"
BODY_KEYS = {"timestamp", "path", "status", "error", "code", "message", "request_id", "errors"}
# the words of a library that a client must never read
LIBRARY_WORDS = re.compile(r"Input should|Value should|Field required|after validation|"
                           r"pydantic|Extra inputs|Value error", re.IGNORECASE)


async def error_of(r: Any, status: int, code: str) -> dict[str, Any]:
    """``r`` is an error with ``status`` and ``code`` and exactly the contract's body."""
    assert r.status == status, await r.text()
    assert r.content_type == "application/json"
    body: dict[str, Any] = await r.json()
    assert set(body) == BODY_KEYS
    assert body["code"] == code and code in CODES
    assert body["status"] == status
    assert isinstance(body["errors"], list)
    assert body["request_id"] == r.headers["X-Request-ID"]
    for item in body["errors"]:
        assert set(item) == {"field", "message"}
        assert not LIBRARY_WORDS.search(item["message"]), item
    return body


async def new_session(client: Any, tenant: Tenant) -> str:
    r = await client.post(SESSIONS, json={"user_id": "u"}, headers=tenant.headers)
    assert r.status == 201, await r.text()
    return str((await r.json())["id"])


# ---------------------------------------------------------------- codes on real routes

async def test_unauthorized_forbidden_not_found(client: Any, tenant: Tenant) -> None:
    body = await error_of(await client.get(SESSIONS), 401, "unauthorized")
    assert body["errors"] == []
    await error_of(await client.get(SESSIONS, headers={"X-Api-Key": "nonsense"}), 403,
                   "forbidden")
    await error_of(await client.get(f"{SESSIONS}/{uuid.uuid4()}", headers=tenant.headers),
                   404, "not_found")
    await error_of(await client.get("/nope"), 404, "not_found")
    # no route for this method
    await error_of(await client.put(SESSIONS, json={}, headers=tenant.headers), 405,
                   "not_found")


async def test_validation_failed_names_the_field_in_plain_words(
    client: Any, tenant: Tenant
) -> None:
    r = await client.post(SESSIONS, json={"user_id": "u", "title": "t" * 201},
                          headers=tenant.headers)
    body = await error_of(r, 400, "validation_failed")
    assert body["errors"] == [{"field": "title", "message": "must be at most 200 characters"}]
    r = await client.post(SESSIONS, json={"title": "x", "ttl_s": 0, "admin": True},
                          headers=tenant.headers)
    body = await error_of(r, 400, "validation_failed")
    assert sorted(body["errors"], key=lambda e: e["field"]) == [
        {"field": "admin", "message": "unknown field"},
        {"field": "ttl_s", "message": "must be at least 1"},
        {"field": "user_id", "message": "is required"},
    ]
    sid = await new_session(client, tenant)
    r = await client.post(f"{SESSIONS}/{sid}/messages", headers=tenant.headers, json={
        "role": "robot", "content": 5, "parent_id": "x",
        "attachment_ids": [str(uuid.uuid4()) for _ in range(33)]})
    body = await error_of(r, 400, "validation_failed")
    assert {e["field"]: e["message"] for e in body["errors"]} == {
        "role": "must be one of 'user', 'assistant', 'system' or 'tool'",
        "content": "must be a string",
        "parent_id": "must be a UUID",
        "attachment_ids": "must have at most 32 items",
    }
    r = await client.get(SESSIONS, params={"limit": "many", "favorite": "maybe"},
                         headers=tenant.headers)
    body = await error_of(r, 400, "validation_failed")
    assert {e["field"]: e["message"] for e in body["errors"]} == {
        "limit": "must be an integer", "favorite": "must be true or false"}
    # an error of no single field: errors is there, and empty
    r = await client.post(SESSIONS, data=b"{", headers={**tenant.headers,
                                                       "Content-Type": "application/json"})
    assert (await error_of(r, 400, "validation_failed"))["errors"] == []


async def test_unsupported_media_type(client: Any, tenant: Tenant) -> None:
    r = await client.post(SESSIONS, data=b'{"user_id": "u"}',
                          headers={**tenant.headers, "Content-Type": "text/plain"})
    assert (await error_of(r, 415, "unsupported_media_type"))["errors"] == []


@pytest.fixture
def small_body_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, max_body_bytes=1024)


async def test_payload_too_large(
    aiohttp_client: Any, small_body_settings: Settings, tenant: Tenant
) -> None:
    client = await aiohttp_client(create_app(small_body_settings))
    r = await client.post(SESSIONS, json={"user_id": "u", "metadata": {"x": "y" * 2000}},
                          headers=tenant.headers)
    await error_of(r, 413, "payload_too_large")


@pytest.fixture
def tight_limit_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, rate_limit_per_s=0.02, rate_limit_burst=1)


async def test_rate_limited(
    aiohttp_client: Any, tight_limit_settings: Settings, tenant: Tenant
) -> None:
    client = await aiohttp_client(create_app(tight_limit_settings))
    assert (await client.get(SESSIONS, headers=tenant.headers)).status == 200
    await error_of(await client.get(SESSIONS, headers=tenant.headers), 429, "rate_limited")


async def test_idempotency_mismatch_and_conflict(client: Any, tenant: Tenant) -> None:
    headers = {**tenant.headers, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    assert (await client.post(SESSIONS, json={"user_id": "u"}, headers=headers)).status == 201
    r = await client.post(SESSIONS, json={"user_id": "other"}, headers=headers)
    await error_of(r, 422, "idempotency_mismatch")
    # a tombstone cannot be edited
    sid = await new_session(client, tenant)
    r = await client.post(f"{SESSIONS}/{sid}/messages", json={"role": "user", "content": "x"},
                          headers=tenant.headers)
    url = f"{SESSIONS}/{sid}/messages/{(await r.json())['id']}"
    assert (await client.delete(url, headers=tenant.headers)).status == 204
    r = await client.patch(url, json={"metadata": {"a": 1}}, headers=tenant.headers)
    await error_of(r, 409, "conflict")


# ---------------------------------------------------------------- unknown query parameters

async def test_unknown_query_parameters_are_refused(client: Any, tenant: Tenant) -> None:
    r = await client.get(SESSIONS, params={"limit": "2", "lmit": "3", "sort": "x"},
                         headers=tenant.headers)
    body = await error_of(r, 400, "unknown_parameter")
    assert body["errors"] == [{"field": "lmit", "message": "unknown parameter"},
                              {"field": "sort", "message": "unknown parameter"}]
    sid = await new_session(client, tenant)
    # a route without a query model takes no parameter at all
    for method, url in (("GET", f"{SESSIONS}/{sid}"), ("POST", SESSIONS),
                        ("GET", f"{SESSIONS}/{sid}/messages/{uuid.uuid4()}")):
        r = await client.request(method, url, params={"x": "1"}, json={"user_id": "u"},
                                 headers=tenant.headers)
        body = await error_of(r, 400, "unknown_parameter")
        assert body["errors"] == [{"field": "x", "message": "unknown parameter"}]
    # a ticket is a parameter of the streaming routes only
    r = await client.get(f"{SESSIONS}/{sid}/messages", params={"ticket": "t"},
                         headers=tenant.headers)
    await error_of(r, 400, "unknown_parameter")
    # auth comes first: no key, no hint about parameters
    await error_of(await client.get(SESSIONS, params={"bogus": "1"}), 401, "unauthorized")


async def test_a_query_that_is_not_utf8_once_decoded_is_refused(
    client: Any, tenant: Tenant
) -> None:
    # percent-encoded, so no parser refuses it; yarl would decode %ff to U+FFFD
    r = await client.get(URL(f"{SESSIONS}?q=%ff%fe&limit=2", encoded=True),
                         headers=tenant.headers)
    body = await error_of(r, 400, "validation_failed")
    assert body["errors"] == [{"field": "q", "message": "must be UTF-8 text"}]
    # real UTF-8, encoded, and a real U+FFFD are text
    r = await client.get(URL(f"{SESSIONS}?q=%C3%A9%EF%BF%BD+x", encoded=True),
                         headers=tenant.headers)
    assert r.status == 200, await r.text()


async def test_every_declared_parameter_is_still_taken(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    h = tenant.headers
    ok = [
        (SESSIONS, {"user_id": "u", "favorite": "false", "q": "x", "limit": "5"}),
        (f"{SESSIONS}/{sid}/messages", {"after_seq": "0", "before_seq": "9", "order": "desc",
                                        "limit": "5"}),
        ("/api/v1/search", {"q": "hello", "user_id": "u", "session_id": sid, "limit": "5"}),
        ("/api/v1/feedback", {"rating": "1", "user_id": "u", "limit": "5"}),
        (f"{SESSIONS}/{sid}/export", {"format": "jsonl"}),
    ]
    for url, params in ok:
        r = await client.get(url, params=params, headers=h)
        assert r.status == 200, (url, await r.text())
    # a cursor from a page is taken back
    await new_session(client, tenant)
    r = await client.get(SESSIONS, params={"limit": "1"}, headers=h)
    cursor = (await r.json())["next_cursor"]
    r = await client.get(SESSIONS, params={"limit": "1", "cursor": cursor}, headers=h)
    assert r.status == 200, await r.text()
    # the streaming routes take their ticket and position
    ticket = (await (await client.post(f"{SESSIONS}/{sid}/ws-tickets", headers=h)).json())
    async with client.get(f"{SESSIONS}/{sid}/events",
                          params={"ticket": ticket["ticket"], "after_seq": "0"}) as r:
        assert r.status == 200
        assert r.content_type == "text/event-stream"


# ---------------------------------------------------------------- plain words

def test_every_translated_type_is_a_pydantic_error_type() -> None:
    known = set(typing.get_args(pydantic_core.core_schema.ErrorType))
    assert set(PLAIN) - known == set()


def test_an_unknown_error_type_falls_back_to_plain_words() -> None:
    err = {"type": "some_future_type", "loc": ("x",), "msg": "Input should be a frobnicated "
           "value", "ctx": {"expected": "frob"}}
    assert plain_message(err) == FALLBACK
    # a context the template needs but the error lacks
    assert plain_message({"type": "string_too_long", "msg": "Value should have at most",
                          "ctx": {}}) == FALLBACK


def test_the_service_s_own_validator_messages_are_kept() -> None:
    class M(pydantic.BaseModel):
        name: str

        @pydantic.field_validator("name")
        @classmethod
        def no_slash(cls, value: str) -> str:
            if "/" in value:
                raise ValueError("must not contain /")
            return value

    with pytest.raises(pydantic.ValidationError) as caught:
        M.model_validate({"name": "a/b"})
    assert plain_message(caught.value.errors()[0]) == "must not contain /"


# ---------------------------------------------------------------- refused before routing

@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[str, int]]:
    """The app behind the runner ``chat-storage serve`` uses, on a real socket."""
    runner = protocol.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield host, port
    finally:
        await runner.cleanup()


async def raw_exchange(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, str],
                                                                          bytes]:
    """Send ``request`` as is (no client library would) and read one answer."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    finally:
        writer.close()
    return status, headers, body


@pytest.mark.parametrize("request_bytes", [
    b"GET /api/v1/sessions?q=\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/v1/sessions HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    b"GET /api/v1/sessions HTTP/1.1\r\nHost: x\r\nno-colon\r\n\r\n",
    b"GET /api/v1/sessions HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 10_000 + b"\r\n\r\n",
    b"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
    b"G@T /api/v1/sessions HTTP/1.1\r\nHost: x\r\n\r\n",
], ids=["non-utf8-query", "space-in-header-name", "header-without-colon", "header-too-long",
        "bad-content-length", "bad-method"])
async def test_a_request_refused_before_routing_gets_the_json_body(
    served: tuple[str, int], request_bytes: bytes
) -> None:
    status, headers, raw = await raw_exchange(served, request_bytes)
    assert status == 400
    assert headers["content-type"] == "application/json; charset=utf-8"
    body = orjson.loads(raw)
    assert set(body) == BODY_KEYS
    assert (body["status"], body["error"], body["code"], body["errors"], body["path"]) == (
        400, "Bad Request", "validation_failed", [], "")
    assert body["request_id"] == headers["x-request-id"]
    # plain words, not the parser's report quoting the request's bytes
    assert "b'" not in body["message"] and "^" not in body["message"]


async def test_chat_storage_serve_answers_a_refused_request_in_json(
    tmp_path: Path, database_url: str
) -> None:
    async with running(tmp_path, replica_env(database_url)) as (server,):
        status, headers, raw = await raw_exchange(
            ("127.0.0.1", server.port),
            b"GET /api/v1/sessions?q=\xff HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, headers["content-type"]) == (400, "application/json; charset=utf-8")
    assert orjson.loads(raw)["code"] == "validation_failed"


async def test_the_served_runner_still_serves_ordinary_requests(
    served: tuple[str, int], tenant: Tenant
) -> None:
    status, _, raw = await raw_exchange(served, (
        "GET /api/v1/sessions?bogus=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"X-Api-Key: {tenant.key}\r\n\r\n").encode())
    assert status == 400
    assert orjson.loads(raw)["code"] == "unknown_parameter"


async def test_a_body_announced_too_large_is_refused_before_it_is_read(
    served: tuple[str, int], tenant: Tenant
) -> None:
    # only two bytes of the announced 100 MB follow: the answer must not wait for more
    status, headers, raw = await raw_exchange(served, (
        "POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"X-Api-Key: {tenant.key}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000000\r\n\r\n{}").encode())
    assert status == 413
    assert headers["content-type"] == "application/json; charset=utf-8"
    body = orjson.loads(raw)
    assert (body["code"], body["errors"]) == ("payload_too_large", [])


# ---------------------------------------------------------------- byte-identical replay

async def replayed(client: Any, url: str, body: Any, headers: dict[str, str]) -> None:
    """Send ``body`` twice with one Idempotency-Key: the second answer is the first, byte
    for byte, with the same status, content type and Location."""
    headers = {**headers, "Idempotency-Key": f"bytes-{uuid.uuid4()}"}
    first = await client.post(url, json=body, headers=headers)
    assert first.status in (201, 202), await first.text()
    again = await client.post(url, json=body, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert again.status == first.status
    assert again.headers["Content-Type"] == first.headers["Content-Type"]
    assert again.headers.get("Location") == first.headers.get("Location")
    assert await again.read() == await first.read()


async def test_an_idempotent_replay_is_byte_identical(client: Any, tenant: Tenant) -> None:
    # keys whose order jsonb would change, numbers, unicode, nesting
    metadata = {"zeta": 1, "a": [1.5, {"y": None, "b": "é"}], "mid": {"z": True, "aa": 2}}
    await replayed(client, SESSIONS, {"user_id": "u", "title": "t", "metadata": metadata},
                   tenant.headers)
    sid = await new_session(client, tenant)
    await replayed(client, f"{SESSIONS}/{sid}/messages",
                   {"role": "user", "content": "hi ✓", "metadata": metadata,
                    "usage": {"prompt_tokens": 3, "model": "m"}}, tenant.headers)
    await replayed(client, f"{SESSIONS}/{sid}/messages/batch",
                   {"messages": [{"role": "user", "content": "a"},
                                 {"role": "assistant", "content": "b", "metadata": metadata}]},
                   tenant.headers)
