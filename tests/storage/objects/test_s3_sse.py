"""Server-side encryption of the S3 store, against moto's S3 and KMS server.

moto keeps and reports the encryption asked for (``head_object``) but checks no
signature: that the SSE headers are signed is read from the URL's ``X-Amz-SignedHeaders``,
which AWS S3 enforces.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiobotocore.session import get_session

from chat_storage.storage.objects.s3 import S3Store
from tests.support.motoserver import CREDENTIALS


@pytest.fixture
async def kms_key(s3_endpoint: str) -> AsyncIterator[str]:
    async with get_session().create_client("kms", endpoint_url=s3_endpoint,
                                           **CREDENTIALS) as kms:
        yield (await kms.create_key(Description="S3 SSE test"))["KeyMetadata"]["Arn"]


async def open_store(endpoint: str, bucket: str, sse: str | None,
                     key_id: str | None = None) -> S3Store:
    return await S3Store.open(
        bucket, endpoint_url=endpoint, region=CREDENTIALS["region_name"],
        access_key_id=CREDENTIALS["aws_access_key_id"],
        secret_access_key=CREDENTIALS["aws_secret_access_key"], sse=sse, sse_kms_key_id=key_id)


async def head(endpoint: str, bucket: str, key: str) -> dict[str, str]:
    async with get_session().create_client("s3", endpoint_url=endpoint, **CREDENTIALS) as s3:
        answer = await s3.head_object(Bucket=bucket, Key=key)
    return {k: answer[k] for k in ("ServerSideEncryption", "SSEKMSKeyId") if k in answer}


@pytest.mark.parametrize("mode", ["aws:kms", "AES256"])
async def test_every_write_and_upload_url_asks_for_sse(
        s3_endpoint: str, s3_bucket: str, kms_key: str, tmp_path: Path, mode: str) -> None:
    key_id = kms_key if mode == "aws:kms" else None
    store = await open_store(s3_endpoint, s3_bucket, mode, key_id)
    want = {"ServerSideEncryption": mode, **({"SSEKMSKeyId": key_id} if key_id else {})}
    try:
        await store.put("archive.jsonl.gz", b"archived", "application/gzip")
        assert await head(s3_endpoint, s3_bucket, "archive.jsonl.gz") == want
        path = tmp_path / "backup.dump"
        path.write_bytes(b"backup bytes")
        await store.put_file("backup.dump", path, "application/octet-stream")
        assert await head(s3_endpoint, s3_bucket, "backup.dump") == want
        data = b"an attachment"
        target = await store.upload_url("upload.txt", size=len(data), mime="text/plain",
                                        sha256=hashlib.sha256(data).hexdigest(), expires_s=60)
        signed = parse_qs(urlsplit(target.url).query)["X-Amz-SignedHeaders"][0].split(";")
        assert "x-amz-server-side-encryption" in signed
        assert target.headers["x-amz-server-side-encryption"] == mode
        if key_id:
            assert "x-amz-server-side-encryption-aws-kms-key-id" in signed
        async with aiohttp.ClientSession() as http, http.put(
                target.url, data=data, headers=dict(target.headers)) as r:
            assert r.status == 200, await r.text()
        assert await head(s3_endpoint, s3_bucket, "upload.txt") == want
    finally:
        await store.close()


async def test_without_sse_nothing_is_asked(s3_endpoint: str, s3_bucket: str) -> None:
    store = await open_store(s3_endpoint, s3_bucket, None)
    try:
        target = await store.upload_url("plain.txt", size=1, mime="text/plain",
                                        sha256=hashlib.sha256(b"x").hexdigest(), expires_s=60)
        assert not any(h.startswith("x-amz-server-side") for h in target.headers)
    finally:
        await store.close()


@pytest.mark.parametrize(("sse", "key_id"), [("aes256", None), ("AES256", "k")])
async def test_a_bad_sse_setting_is_refused(s3_endpoint: str, s3_bucket: str, sse: str,
                                            key_id: str | None) -> None:
    with pytest.raises(ValueError, match="S3_SSE"):
        S3Store(object(), s3_bucket, None, sse=sse, sse_kms_key_id=key_id)  # type: ignore[arg-type]
