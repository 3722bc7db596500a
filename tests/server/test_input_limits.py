"""Input the database cannot hold is a 400 (or 403) with the error body, never a 500.

Each case was a 500 before ``server.limits`` (issue 17, finding 1): JSON nested past
what the encoder takes, integers beyond 64 bits, NUL in a query, header bytes that are
not UTF-8, and signed local URLs whose claims are not the store's. The limits are
checked where bodies, queries and frames are parsed, so every route has them.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import uuid
from typing import Any

import orjson
import pytest

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.server.limits import MAX_JSON_DEPTH
from chat_storage.storage.usage import TOKENS_MAX
from tests.conftest import Tenant
from tests.server.test_edges import assert_error
from tests.support.streamkit import new_session

SESSIONS = "/api/v1/sessions"
INT64_MAX = 2**63 - 1


def nested(levels: int) -> Any:
    """An object ``levels`` deep (``{"a": {"a": … {}}}``)."""
    value: Any = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


async def assert_400(r: Any, field: str | None = None) -> dict[str, Any]:
    body = await assert_error(r, 400, "Bad Request", r.url.path, "validation_failed")
    if field is not None:
        assert [e["field"] for e in body["errors"]][:1] == [field], body
    return body


async def test_json_depth_is_limited_on_every_body(client: Any, tenant: Tenant) -> None:
    h = tenant.headers
    sid = await new_session(client, tenant)
    # the body is level 1 and metadata level 2: the deepest allowed body just fits
    r = await client.post(SESSIONS, json={"user_id": "u", "metadata": nested(MAX_JSON_DEPTH - 1)},
                          headers=h)
    assert r.status == 201, await r.text()
    too_deep = nested(MAX_JSON_DEPTH)
    r = await client.post(SESSIONS, json={"user_id": "u", "metadata": too_deep}, headers=h)
    await assert_400(r)
    for levels in (254, 300, 900):  # 254 and more failed the encoder: a 500
        r = await client.post(SESSIONS, json={"user_id": "u", "metadata": nested(levels)},
                              headers=h)
        await assert_400(r)
    message = {"role": "user", "content": "x"}
    r = await client.post(f"{SESSIONS}/{sid}/messages", json={**message, "metadata": too_deep},
                          headers=h)
    await assert_400(r)
    r = await client.post(f"{SESSIONS}/{sid}/messages", json={
        **message, "context": [{"source_id": "s", "metadata": nested(300)}]}, headers=h)
    await assert_400(r)
    r = await client.post(f"{SESSIONS}/{sid}/messages/batch", json={
        "messages": [{**message, "metadata": nested(300)}]}, headers=h)
    await assert_400(r)
    r = await client.patch(f"{SESSIONS}/{sid}", json={"metadata": nested(300)}, headers=h)
    await assert_400(r)
    r = await client.post(f"{SESSIONS}/{sid}/messages", json=message, headers=h)
    mid = (await r.json())["id"]
    r = await client.patch(f"{SESSIONS}/{sid}/messages/{mid}", json={"metadata": nested(300)},
                           headers=h)
    await assert_400(r)
    # nothing half-written: the session holds the one message
    r = await client.get(f"{SESSIONS}/{sid}", headers=h)
    assert (await r.json())["message_count"] == 1


@pytest.mark.parametrize("raw", ["9223372036854775808", "18446744073709551615",
                                 "18446744073709551616", "1e19", "-9223372036854775809"])
async def test_integers_beyond_64_bits_are_400(client: Any, tenant: Tenant, raw: str) -> None:
    sid = await new_session(client, tenant)
    body = '{"role": "assistant", "content": "x", "usage": {"prompt_tokens": RAW}}'.replace(
        "RAW", raw)
    r = await client.post(f"{SESSIONS}/{sid}/messages", data=body,
                          headers={**tenant.headers, "Content-Type": "application/json"})
    await assert_400(r, "usage.prompt_tokens")
    # in free-form metadata an integer must fit in 64 bits too; past 64 bits unsigned the
    # decoder reads a number as a float (as JavaScript does), stored as such
    meta = '{"user_id": "u", "metadata": {"n": RAW}}'.replace("RAW", raw)
    r = await client.post(SESSIONS, data=meta,
                          headers={**tenant.headers, "Content-Type": "application/json"})
    if isinstance(orjson.loads(raw), int):
        await assert_400(r, "metadata.n")
    else:
        assert r.status == 201, await r.text()
        assert (await r.json())["metadata"]["n"] == float(raw)


async def test_session_usage_saturates_instead_of_poisoning_the_session(
    client: Any, tenant: Tenant
) -> None:
    h = tenant.headers
    sid = await new_session(client, tenant)
    big = {"role": "assistant", "content": "x",
           "usage": {"prompt_tokens": INT64_MAX, "completion_tokens": INT64_MAX}}
    for _ in range(2):  # the second overflowed bigint: a 500, and every later write too
        r = await client.post(f"{SESSIONS}/{sid}/messages", json=big, headers=h)
        assert r.status == 201, await r.text()
    r = await client.post(f"{SESSIONS}/{sid}/messages/batch", json={"messages": [big, big]},
                          headers=h)
    assert r.status == 201, await r.text()
    r = await client.post(f"{SESSIONS}/{sid}/messages", json={"role": "user", "content": "y"},
                          headers=h)
    assert r.status == 201, await r.text()
    usage = (await (await client.get(f"{SESSIONS}/{sid}", headers=h)).json())["usage"]
    assert usage == {"prompt_tokens": TOKENS_MAX, "completion_tokens": TOKENS_MAX,
                     "total_tokens": TOKENS_MAX}


async def test_sequence_bounds_beyond_64_bits_are_400(client: Any, tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    for name in ("after_seq", "before_seq"):
        r = await client.get(f"{SESSIONS}/{sid}/messages", params={name: str(2**63)},
                             headers=tenant.headers)
        await assert_400(r, name)
    r = await client.get(f"{SESSIONS}/{sid}/messages", params={"after_seq": str(INT64_MAX)},
                         headers=tenant.headers)
    assert r.status == 200 and (await r.json())["data"] == []
    r = await client.get(f"{SESSIONS}/{sid}/events", params={"after_seq": str(2**64)},
                         headers=tenant.headers)
    await assert_400(r, "after_seq")


@pytest.mark.parametrize("path", ["/api/v1/search?q=x&user_id=a%00b",
                                  "/api/v1/feedback?user_id=%00",
                                  "/api/v1/sessions?user_id=u%00"])
async def test_nul_in_a_query_is_400(client: Any, tenant: Tenant, path: str) -> None:
    r = await client.get(path, headers=tenant.headers)
    await assert_400(r, "user_id")


async def test_a_cursor_with_an_integer_beyond_64_bits_is_400(client: Any,
                                                              tenant: Tenant) -> None:
    sid = await new_session(client, tenant)
    for _ in range(2):
        r = await client.post(f"{SESSIONS}/{sid}/messages", json={"role": "user", "content": "x"},
                              headers=tenant.headers)
        assert r.status == 201
    r = await client.get(f"{SESSIONS}/{sid}/messages", params={"limit": "1"},
                         headers=tenant.headers)
    cursor = (await r.json())["next_cursor"]
    data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    # the cursor is opaque, not signed: a client can forge one for its own list
    forged = base64.urlsafe_b64encode(orjson.dumps({**data, "k": [2**63]})).decode()
    r = await client.get(f"{SESSIONS}/{sid}/messages", params={"limit": "1", "cursor": forged},
                         headers=tenant.headers)
    await assert_400(r, "cursor")


async def raw_request(port: int, head: bytes) -> tuple[int, dict[str, Any]]:
    """Send ``head`` (a request without a body) on a new connection; status and JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(10):
            data = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), orjson.loads(body)


@pytest.mark.parametrize("header", ["X-Api-Key", "Idempotency-Key"])
async def test_header_bytes_that_are_not_utf8_are_400(client: Any, tenant: Tenant,
                                                      header: str) -> None:
    headers = {"X-Api-Key": tenant.key.encode(), "Idempotency-Key": b"k-1"}
    headers[header] = b"\xff\xfe-" + headers[header]
    lines = b"".join(b"%s: %s\r\n" % (name.encode(), value) for name, value in headers.items())
    body = b'{"user_id": "u"}'
    head = (b"POST /api/v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(body), lines, body))
    status, error = await raw_request(client.port, head)
    assert status == 400, error
    assert error["code"] == "validation_failed"
    assert error["errors"] == [{"field": header, "message": "must be UTF-8 text"}]


async def test_a_bad_idempotency_key_is_400_before_the_route_s_limits(
    client: Any, tenant: Tenant
) -> None:
    # schemathesis found a 413 (the attachment's size) for a key past 255 characters
    sid = await new_session(client, tenant)
    path = f"{SESSIONS}/{sid}/attachments"
    r = await client.post(path, json={"name": "a", "mime": "a/b", "size": 2**40,
                                      "sha256": "0" * 64},
                          headers={**tenant.headers, "Idempotency-Key": "k" * 256})
    await assert_400(r, "Idempotency-Key")


def forge(secret: bytes, claims: Any) -> str:
    """A local store URL token for ``claims`` (any JSON), signed with ``secret``."""
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    payload = b64(orjson.dumps(claims))
    return f"{payload}.{b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())}"


async def test_malformed_claims_of_a_signed_local_url_are_403(
    aiohttp_client: Any, settings: Settings
) -> None:
    secret = "objects-secret-of-this-test"
    client = await aiohttp_client(create_app(dataclasses.replace(
        settings, object_signing_key=secret)))
    far = 4_000_000_000
    put = {"m": "PUT", "k": f"t/{uuid.uuid4()}", "s": 1, "t": "text/plain", "h": "0" * 64,
           "exp": far}
    get = {"m": "GET", "k": f"t/{uuid.uuid4()}", "n": "a.txt", "t": "text/plain", "exp": far}
    bad: list[Any] = [
        [put], "PUT", None,
        {**put, "exp": "never"}, {**get, "exp": "never"},
        {**put, "k": "/etc/passwd"}, {**get, "k": "/etc/passwd"},
        {**put, "k": "a/../../etc"}, {**get, "k": "../x"},
        {k: v for k, v in put.items() if k != "k"}, {k: v for k, v in get.items() if k != "k"},
        {**put, "s": "1"}, {**put, "s": -1}, {**get, "n": 5}, {**put, "exp": True},
    ]
    for claims in bad:
        token = forge(secret.encode(), claims)
        method = claims.get("m", "GET") if isinstance(claims, dict) else "GET"
        r = await client.request(method, f"/objects/{token}", data=b"x",
                                 headers={"Content-Type": "text/plain"})
        await assert_error(r, 403, "Forbidden", r.url.path, "forbidden")
    # the well-formed claims still work: an unknown key is a 404, not a 403
    r = await client.get(f"/objects/{forge(secret.encode(), get)}")
    assert r.status == 404
