"""The S3 store against moto's S3 server (a real HTTP server on loopback)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from chat_storage.storage.errors import ObjectStoreUnavailable
from chat_storage.storage.objects import Mismatch, verify
from chat_storage.storage.objects.s3 import S3Store
from tests.support.motoserver import CREDENTIALS
from tests.support.procs import free_port


@pytest.fixture
async def store(s3_endpoint: str, s3_bucket: str) -> AsyncIterator[S3Store]:
    s = await S3Store.open(s3_bucket, endpoint_url=s3_endpoint, region=CREDENTIALS["region_name"],
                           access_key_id=CREDENTIALS["aws_access_key_id"],
                           secret_access_key=CREDENTIALS["aws_secret_access_key"])
    await s.check()
    yield s
    await s.close()


async def _upload(store: S3Store, key: str, data: bytes, *, announced: bytes | None = None,
                  ) -> int:
    """PUT ``data`` to an upload URL made for ``announced`` (default: ``data``)."""
    announced = data if announced is None else announced
    target = await store.upload_url(key, size=len(announced), mime="text/plain",
                                    sha256=hashlib.sha256(announced).hexdigest(), expires_s=60)
    async with aiohttp.ClientSession() as http, http.request(
            target.method, target.url, data=data, headers=dict(target.headers)) as r:
        return r.status


async def test_upload_url_stores_the_file_and_download_url_serves_it(store: S3Store) -> None:
    data = "grüße, world\n".encode() * 1000
    target = await store.upload_url("t/s/a", size=len(data), mime="text/plain",
                                    sha256=hashlib.sha256(data).hexdigest(), expires_s=60)
    assert target.method == "PUT" and "X-Amz-Signature=" in target.url
    # the URL signs the type, length and checksum: a client must send exactly these
    assert "x-amz-checksum-sha256" in target.url and "content-length" in target.url
    assert target.headers["Content-Length"] == str(len(data))
    assert await _upload(store, "t/s/a", data) == 200

    info = await store.stat("t/s/a")
    assert info is not None and info.size == len(data)
    await verify(store, "t/s/a", size=len(data), sha256=hashlib.sha256(data).hexdigest())

    url = await store.download_url("t/s/a", name="grüße.txt", mime="text/plain", expires_s=60)
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200
        assert await r.read() == data
        assert r.headers["Content-Disposition"] == (
            "attachment; filename=\"gr__e.txt\"; filename*=UTF-8''gr%C3%BC%C3%9Fe.txt")


async def test_verify_reads_the_object_when_the_store_keeps_no_checksum(store: S3Store) -> None:
    # moto accepts an upload whose body differs from the signed checksum (AWS would
    # refuse it): verify must still catch it, by hashing what is stored
    announced, sent = b"the announced file", b"another file, same"
    assert len(announced) == len(sent)
    assert await _upload(store, "t/s/b", sent, announced=announced) == 200
    info = await store.stat("t/s/b")
    assert info is not None and info.sha256 is None  # moto reports none
    with pytest.raises(Mismatch, match="sha256"):
        await verify(store, "t/s/b", size=len(announced),
                     sha256=hashlib.sha256(announced).hexdigest())
    with pytest.raises(Mismatch, match="18 bytes, not 5"):
        await verify(store, "t/s/b", size=5, sha256=hashlib.sha256(sent).hexdigest())
    with pytest.raises(Mismatch, match="no file"):
        await verify(store, "t/s/none", size=1, sha256="0" * 64)


async def test_put_read_and_delete_in_batches(store: S3Store,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # a small batch, so that several DeleteObjects calls are made
    monkeypatch.setattr("chat_storage.storage.objects.s3.DELETE_BATCH", 2)
    keys = [f"t/s/{i}" for i in range(5)]
    for i, key in enumerate(keys):
        await store.put(key, bytes([i]) * (i + 1), "application/octet-stream")
    assert b"".join([c async for c in store.read("t/s/3")]) == b"\x03" * 4
    await store.delete([*keys[:4], "t/s/never-there"])
    assert [await store.stat(k) is None for k in keys] == [True] * 4 + [False]


async def test_check_names_a_missing_bucket(s3_endpoint: str) -> None:
    s = await S3Store.open("no-such-bucket-here", endpoint_url=s3_endpoint,
                           region=CREDENTIALS["region_name"],
                           access_key_id=CREDENTIALS["aws_access_key_id"],
                           secret_access_key=CREDENTIALS["aws_secret_access_key"])
    try:
        with pytest.raises(OSError, match="'no-such-bucket-here' is not usable: 404"):
            await s.check()
    finally:
        await s.close()


async def test_presigned_urls_use_the_public_endpoint(s3_endpoint: str, s3_bucket: str) -> None:
    public = s3_endpoint.replace("127.0.0.1", "localhost")
    s = await S3Store.open(s3_bucket, endpoint_url=s3_endpoint, public_url=public,
                           region=CREDENTIALS["region_name"],
                           access_key_id=CREDENTIALS["aws_access_key_id"],
                           secret_access_key=CREDENTIALS["aws_secret_access_key"])
    try:
        data = b"through the public name"
        assert await _upload(s, "t/s/p", data) == 200
        url = await s.download_url("t/s/p", name="p", mime="text/plain", expires_s=60)
        assert url.startswith(public + "/")
        info = await s.stat("t/s/p")  # the service itself uses its own endpoint
        assert info is not None and info.size == len(data)
    finally:
        await s.close()


async def test_an_unreachable_store_is_unavailable_naming_no_address() -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    s = await S3Store.open("any-bucket", endpoint_url=closed, region=CREDENTIALS["region_name"],
                           access_key_id=CREDENTIALS["aws_access_key_id"],
                           secret_access_key=CREDENTIALS["aws_secret_access_key"],
                           attempts=1)  # no back-off: the test is about the error
    try:
        for call in (s.stat("k"), s.put("k", b"x", "a/b"), s.delete(["k"]), s.list_keys("p/")):
            with pytest.raises(ObjectStoreUnavailable) as caught:
                await call
            assert "127.0.0.1" not in str(caught.value)
            assert str(caught.value) == "object store call failed: EndpointConnectionError"
    finally:
        await s.close()


async def test_check_names_an_unreachable_endpoint_without_its_address() -> None:
    s = await S3Store.open("any-bucket", endpoint_url=f"http://127.0.0.1:{free_port()}",
                           region=CREDENTIALS["region_name"],
                           access_key_id=CREDENTIALS["aws_access_key_id"],
                           secret_access_key=CREDENTIALS["aws_secret_access_key"], attempts=1)
    try:
        with pytest.raises(OSError) as caught:
            await s.check()
        assert str(caught.value) == "S3 bucket 'any-bucket' is not usable: EndpointConnectionError"
    finally:
        await s.close()
