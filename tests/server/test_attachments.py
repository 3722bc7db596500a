"""Attachments over HTTP: announce, upload to the presigned URL, complete, link, delete.

Most tests use the zero-setup local store (files under the data directory, URLs
served by the service itself); ``test_s3_*`` run the same flow against moto's S3 server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chat_storage.runtime.settings import Settings
from chat_storage.server.app import create_app
from chat_storage.server.middlewares import to_api_error
from chat_storage.storage.errors import ObjectStoreUnavailable
from tests.conftest import Tenant
from tests.server.test_messages import error_of, fields, new_session
from tests.support import motoserver
from tests.support.motoserver import CREDENTIALS

DATA = "a file's bytes, ünïcode included\n".encode() * 50


def announce(data: bytes = DATA, **body: Any) -> dict[str, Any]:
    return {"name": "notes.txt", "mime": "text/plain", "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), **body}


async def create(client: Any, tenant: Tenant, sid: str, data: bytes = DATA,
                 **body: Any) -> dict[str, Any]:
    r = await client.post(f"/api/v1/sessions/{sid}/attachments", json=announce(data, **body),
                          headers=tenant.headers)
    assert r.status == 201, await r.text()
    created = dict(await r.json())
    assert r.headers["Location"] == (
        f"/api/v1/sessions/{sid}/attachments/{created['attachment']['id']}")
    return created


async def upload(client: Any, created: dict[str, Any], data: bytes = DATA) -> int:
    """Send ``data`` where the service said, as a client of the object store would."""
    target = created["upload"]
    async with client.session.request(target["method"], target["url"], data=data,
                                      headers=target["headers"]) as r:
        return int(r.status)


async def complete(client: Any, tenant: Tenant, sid: str, aid: str) -> Any:
    return await client.post(f"/api/v1/sessions/{sid}/attachments/{aid}/complete",
                             headers=tenant.headers)


async def ready(client: Any, tenant: Tenant, sid: str, data: bytes = DATA) -> str:
    created = await create(client, tenant, sid, data)
    assert await upload(client, created, data) == 200
    r = await complete(client, tenant, sid, created["attachment"]["id"])
    assert r.status == 200, await r.text()
    return str(created["attachment"]["id"])


async def fetch(client: Any, tenant: Tenant, sid: str, aid: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/sessions/{sid}/attachments/{aid}", headers=tenant.headers)
    assert r.status == 200, await r.text()
    return dict(await r.json())


async def download(client: Any, url: str) -> tuple[int, bytes, Any]:
    async with client.session.get(url) as r:
        return r.status, await r.read(), r.headers


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


async def test_upload_complete_and_download(client: Any, tenant: Tenant,
                                            settings: Settings) -> None:
    sid = await new_session(client, tenant)
    created = await create(client, tenant, sid)
    attachment, target = created["attachment"], created["upload"]
    assert attachment["status"] == "pending" and attachment["message_id"] is None
    assert (attachment["name"], attachment["size"]) == ("notes.txt", len(DATA))
    assert target["method"] == "PUT" and target["url"].startswith(f"http://{client.host}:")
    assert target["headers"] == {"Content-Type": "text/plain"}
    aid = attachment["id"]

    # nothing uploaded yet: not complete, and nothing to download
    body = await error_of(await complete(client, tenant, sid, aid), 409)
    assert body["message"] == "upload is not complete: no file was uploaded"
    assert (await fetch(client, tenant, sid, aid))["download_url"] is None

    # the store keeps only the announced file
    assert await upload(client, created, DATA[:-1] + b"?") == 400
    assert await upload(client, created, DATA + b"more") == 400
    async with client.session.put(target["url"], data=DATA,
                                  headers={"Content-Type": "text/html"}) as r:
        assert r.status == 400
    async with client.session.get(target["url"]) as r:  # an upload URL is not a download URL
        assert r.status == 403
        assert (await r.json())["message"] == "this URL is not for GET"
    assert files_under(settings.data_dir / "objects") == []

    assert await upload(client, created, DATA) == 200
    for _ in range(2):  # completing again answers the same
        r = await complete(client, tenant, sid, aid)
        assert r.status == 200
        assert await r.json() == {**attachment, "status": "ready"}
    got = await fetch(client, tenant, sid, aid)
    status, content, headers = await download(client, got["download_url"])
    assert (status, content) == (200, DATA)
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["Content-Disposition"] == (
        "attachment; filename=\"notes.txt\"; filename*=UTF-8''notes.txt")
    # a forged URL gets nothing
    status, _, _ = await download(client, got["download_url"][:-3] + "AAA")
    assert status == 403


async def test_bad_announcements_are_refused_before_any_url(client: Any, tenant: Tenant,
                                                            pool: asyncpg.Pool) -> None:
    sid = await new_session(client, tenant)
    url = f"/api/v1/sessions/{sid}/attachments"
    r = await client.post(url, json=announce(size=100 * 1024 * 1024 + 1), headers=tenant.headers)
    assert fields(await error_of(r, 413)) == {"size"}
    for bad, field in ((announce(sha256="z" * 64), "sha256"), (announce(name="../x"), "name"),
                       (announce(mime="text"), "mime"), (announce(size=-1), "size"),
                       ({**announce(), "extra": 1}, "extra")):
        r = await client.post(url, json=bad, headers=tenant.headers)
        assert fields(await error_of(r, 400)) == {field}, bad
    r = await client.post(f"/api/v1/sessions/{uuid.uuid4()}/attachments", json=announce(),
                          headers=tenant.headers)
    assert (await error_of(r, 404))["message"] == "session not found"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM attachments WHERE tenant_id = $1",
                                   tenant.id) == 0
    # an uppercase checksum is the same checksum
    created = await create(client, tenant, sid, sha256=hashlib.sha256(DATA).hexdigest().upper())
    assert created["attachment"]["sha256"] == hashlib.sha256(DATA).hexdigest()


async def test_messages_link_ready_attachments_of_their_session_once(
    client: Any, tenant: Tenant, pool: asyncpg.Pool
) -> None:
    sid, other = await new_session(client, tenant), await new_session(client, tenant)
    a1, a2 = await ready(client, tenant, sid), await ready(client, tenant, sid)
    pending = (await create(client, tenant, sid))["attachment"]["id"]
    foreign = await ready(client, tenant, other)
    messages = f"/api/v1/sessions/{sid}/messages"

    r = await client.post(messages, headers=tenant.headers, json={
        "role": "user", "content": "see attached", "attachment_ids": [a1]})
    assert r.status == 201, await r.text()
    linked = (await r.json())["id"]
    assert (await fetch(client, tenant, sid, a1))["message_id"] == linked

    for ids, message in (([a1], "is already attached to a message"),
                         ([pending], "is not uploaded yet: complete the upload first"),
                         ([foreign], "is not an attachment of this session"),
                         ([str(uuid.uuid4())], "is not an attachment of this session"),
                         ([a2, a2], "is already attached to a message")):
        r = await client.post(messages, headers=tenant.headers,
                              json={"role": "user", "content": "x", "attachment_ids": ids})
        body = await error_of(r, 400)
        assert body["errors"][0]["message"] == message, ids

    # a batch is all or nothing: the second message cannot take a2 again
    r = await client.post(f"{messages}/batch", headers=tenant.headers, json={"messages": [
        {"role": "user", "content": "one", "attachment_ids": [a2]},
        {"role": "user", "content": "two", "attachment_ids": [a2]}]})
    assert fields(await error_of(r, 400)) == {"messages.1.attachment_ids.0"}
    assert (await fetch(client, tenant, sid, a2))["message_id"] is None
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE session_id = $1",
                                   uuid.UUID(sid)) == 1
    r = await client.post(f"{messages}/batch", headers=tenant.headers, json={"messages": [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two", "attachment_ids": [a2]}]})
    assert r.status == 201, await r.text()
    assert (await fetch(client, tenant, sid, a2))["message_id"] == (await r.json())["data"][1]["id"]


async def test_deletes_remove_the_files(client: Any, tenant: Tenant, settings: Settings) -> None:
    root = settings.data_dir / "objects"
    sid = await new_session(client, tenant)
    a1, a2 = await ready(client, tenant, sid), await ready(client, tenant, sid)
    r = await client.post(f"/api/v1/sessions/{sid}/messages", headers=tenant.headers,
                          json={"role": "user", "content": "x", "attachment_ids": [a1]})
    message_id = (await r.json())["id"]
    assert len(files_under(root)) == 2

    # a tombstone erases the message's attachments, files included
    r = await client.delete(f"/api/v1/sessions/{sid}/messages/{message_id}",
                            headers=tenant.headers)
    assert r.status == 204
    r = await client.get(f"/api/v1/sessions/{sid}/attachments/{a1}", headers=tenant.headers)
    assert r.status == 404
    assert [p.name for p in files_under(root)] == [a2]

    # so does deleting the session, and erasing a user
    r = await client.delete(f"/api/v1/sessions/{sid}", headers=tenant.headers)
    assert r.status == 204
    assert files_under(root) == []
    sid = await new_session(client, tenant, user_id="leaving")
    await ready(client, tenant, sid)
    r = await client.delete("/api/v1/users/leaving/sessions", headers=tenant.headers)
    assert r.status in (202, 204)
    assert files_under(root) == []


async def test_create_with_an_idempotency_key_replays(client: Any, tenant: Tenant,
                                                      pool: asyncpg.Pool) -> None:
    sid = await new_session(client, tenant)
    headers = {**tenant.headers, "Idempotency-Key": f"att-{uuid.uuid4()}"}
    url = f"/api/v1/sessions/{sid}/attachments"
    first = await client.post(url, json=announce(), headers=headers)
    again = await client.post(url, json=announce(), headers=headers)
    assert (first.status, again.status) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == await first.read()
    assert again.headers["Location"] == first.headers["Location"]
    r = await client.post(url, json=announce(name="other.txt"), headers=headers)
    assert r.status == 422
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM attachments WHERE session_id = $1",
                                   uuid.UUID(sid)) == 1


@pytest.fixture
async def s3_client(aiohttp_client: Any, settings: Settings, s3_endpoint: str,
                    s3_bucket: str) -> Any:
    return await aiohttp_client(create_app(dataclasses.replace(
        settings, s3_bucket=s3_bucket, s3_endpoint_url=s3_endpoint,
        s3_region=CREDENTIALS["region_name"], s3_access_key_id=CREDENTIALS["aws_access_key_id"],
        s3_secret_access_key=CREDENTIALS["aws_secret_access_key"])))


async def test_s3_upload_complete_download_and_delete(s3_client: Any, tenant: Tenant,
                                                      s3_endpoint: str, s3_bucket: str,
                                                      settings: Settings) -> None:
    client = s3_client
    sid = await new_session(client, tenant)
    created = await create(client, tenant, sid)
    target = created["upload"]
    assert target["url"].startswith(s3_endpoint + "/")
    assert set(target["headers"]) == {"Content-Type", "Content-Length", "x-amz-checksum-sha256"}
    aid = created["attachment"]["id"]

    # moto stores a body that differs from the signed checksum (AWS would refuse it);
    # complete still finds out, by hashing what is stored
    wrong = DATA[::-1]
    assert await upload(client, created, wrong) == 200
    body = await error_of(await complete(client, tenant, sid, aid), 409)
    assert "sha256 differs" in body["message"]
    assert await upload(client, created, DATA) == 200
    r = await complete(client, tenant, sid, aid)
    assert (await r.json())["status"] == "ready"
    got = await fetch(client, tenant, sid, aid)
    assert got["download_url"].startswith(s3_endpoint + "/")
    status, content, _ = await download(client, got["download_url"])
    assert (status, content) == (200, DATA)
    assert not (settings.data_dir / "objects").exists()  # nothing went to local files
    assert await motoserver.keys(s3_endpoint, s3_bucket) == [f"{tenant.id}/{sid}/{aid}"]

    r = await client.delete(f"/api/v1/sessions/{sid}", headers=tenant.headers)
    assert r.status == 204
    assert await motoserver.keys(s3_endpoint, s3_bucket) == []


async def test_s3_erasure_is_503_until_the_archives_can_be_erased(
    s3_client: Any, tenant: Tenant, s3_endpoint: str, s3_bucket: str,
) -> None:
    client = s3_client
    await new_session(client, tenant, user_id="leaving")
    await motoserver.drop_bucket(s3_endpoint, s3_bucket)  # the store fails
    r = await client.delete("/api/v1/users/leaving/sessions", headers=tenant.headers)
    body = await error_of(r, 503)
    assert body["message"] == "the user's archives could not be erased; retry the request"
    assert r.headers["Retry-After"] == "5"
    assert "Bucket" not in await r.text()
    await motoserver.make_bucket(s3_endpoint, s3_bucket)
    r = await client.delete("/api/v1/users/leaving/sessions", headers=tenant.headers)
    assert r.status == 204


async def test_signed_urls_stay_out_of_the_access_log(
    client: Any, tenant: Tenant, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chat_storage.access")
    sid = await new_session(client, tenant)
    created = await create(client, tenant, sid)
    assert await upload(client, created) == 200
    token = created["upload"]["url"].rsplit("/", 1)[1]
    paths = [getattr(r, "path", "") for r in caplog.records if r.name == "chat_storage.access"]
    assert "/objects/{token}" in paths
    assert not any(token in p for p in paths)


async def test_concurrent_messages_cannot_share_an_attachment(
    client: Any, tenant: Tenant, pool: asyncpg.Pool,
) -> None:
    sid = await new_session(client, tenant)
    aid = await ready(client, tenant, sid)

    async def claim(n: int) -> int:
        r = await client.post(f"/api/v1/sessions/{sid}/messages", headers=tenant.headers,
                              json={"role": "user", "content": f"#{n}", "attachment_ids": [aid]})
        return int(r.status)

    statuses = await asyncio.gather(*(claim(n) for n in range(8)))
    assert sorted(statuses) == [201] + [400] * 7
    async with pool.acquire() as conn:
        stored = await conn.fetch("SELECT id FROM messages WHERE session_id = $1",
                                  uuid.UUID(sid))
        linked = await conn.fetchval("SELECT message_id FROM attachments WHERE id = $1",
                                     uuid.UUID(aid))
    assert [r["id"] for r in stored] == [linked]  # the refused ones left nothing behind


async def test_two_servers_cannot_link_one_attachment_twice(
    client: Any, aiohttp_client: Any, settings: Settings, tenant: Tenant,
) -> None:
    # a second app on the same database: its own session actors, as another replica has
    other = await aiohttp_client(create_app(settings))
    sid = await new_session(client, tenant)
    aid = await ready(client, tenant, sid)

    async def claim(via: Any, n: int) -> int:
        r = await via.post(f"/api/v1/sessions/{sid}/messages", headers=tenant.headers,
                           json={"role": "user", "content": f"#{n}", "attachment_ids": [aid]})
        return int(r.status)

    statuses = await asyncio.gather(*(claim(client if n % 2 else other, n) for n in range(10)))
    assert sorted(statuses) == [201] + [400] * 9


def test_an_unavailable_store_answers_503_with_retry_after() -> None:
    err = to_api_error(ObjectStoreUnavailable("object store call failed: EndpointConnectionError"))
    assert err is not None
    assert (err.status, err.message) == (503, "object store is unavailable; retry later")
    assert err.headers == {"Retry-After": "1"}  # and, as for every 503, nothing internal


async def test_an_upload_url_stores_nothing_once_its_attachment_is_gone(
    client: Any, tenant: Tenant, settings: Settings,
) -> None:
    sid = await new_session(client, tenant)
    created = await create(client, tenant, sid)
    r = await client.delete(f"/api/v1/sessions/{sid}", headers=tenant.headers)
    assert r.status == 204
    target = created["upload"]
    async with client.session.put(target["url"], data=DATA, headers=target["headers"]) as r:
        assert r.status == 404
        assert (await r.json())["message"] == "attachment not found"
    assert files_under(settings.data_dir / "objects") == []
