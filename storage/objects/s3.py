"""The S3 object store (AWS S3, MinIO, moto's server, any S3-compatible endpoint).

Upload URLs are presigned ``PUT``s (Signature Version 4) that sign the object's
``Content-Type``, ``Content-Length`` and ``x-amz-checksum-sha256``: AWS S3 refuses
an upload that differs in any of them, and keeps the checksum, which
:func:`storage.objects.base.verify` then reads back. A store that ignores the checksum
(moto does) is checked by reading the object instead.

Server-side encryption (``S3_SSE=aws:kms|AES256``, ``S3_SSE_KMS_KEY_ID``) is asked for
on every write this service makes and is part of every upload URL's signature: the
client must send the same ``x-amz-server-side-encryption`` headers, so an upload
cannot opt out of it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from chat_storage.storage.errors import ObjectStoreUnavailable
from chat_storage.storage.objects.base import (
    CHUNK_BYTES,
    STORE_ERRORS,
    ObjectInfo,
    Upload,
    content_disposition,
    expires_at,
)

DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes
PART_BYTES = 64 * 1024 * 1024  # a file larger than this goes up in parts of this size
SSE_MODES = ("aws:kms", "AES256")  # S3_SSE


class S3Store:
    """One bucket, through one long-lived aiobotocore client."""

    def __init__(self, client: Any, bucket: str, stack: contextlib.AsyncExitStack,
                 signer: Any = None, *, sse: str | None = None,
                 sse_kms_key_id: str | None = None) -> None:
        if sse not in (None, *SSE_MODES) or (sse_kms_key_id and sse != "aws:kms"):
            raise ValueError("S3_SSE is aws:kms or AES256; S3_SSE_KMS_KEY_ID needs aws:kms")
        # the parameters of every write (and of the upload URLs' signatures)
        self._sse: dict[str, str] = {}
        self._sse_headers: dict[str, str] = {}
        if sse is not None:
            self._sse["ServerSideEncryption"] = sse
            self._sse_headers["x-amz-server-side-encryption"] = sse
        if sse_kms_key_id:
            self._sse["SSEKMSKeyId"] = sse_kms_key_id
            self._sse_headers["x-amz-server-side-encryption-aws-kms-key-id"] = sse_kms_key_id
        self._client = client
        self._signer = client if signer is None else signer  # makes the presigned URLs
        self.bucket = bucket
        self._stack = stack

    @classmethod
    async def open(cls, bucket: str, *, endpoint_url: str | None = None,
                   public_url: str | None = None, region: str | None = None,
                   access_key_id: str | None = None,
                   secret_access_key: str | None = None, attempts: int = 3,
                   sse: str | None = None, sse_kms_key_id: str | None = None) -> S3Store:
        """Connect to ``bucket``; credentials default to boto's chain (env, role, ...).

        ``public_url``: the endpoint clients reach, when it differs from the one this
        service uses (a private network name); presigned URLs are made for it.
        ``attempts``: tries per call (boto's "standard" retry mode, with back-off).
        """
        stack = contextlib.AsyncExitStack()
        clients = []
        for url in (endpoint_url, public_url) if public_url else (endpoint_url,):
            clients.append(await stack.enter_async_context(get_session().create_client(
                "s3", endpoint_url=url, region_name=region,
                aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                config=Config(signature_version="s3v4",
                              retries={"max_attempts": attempts, "mode": "standard"}),
            )))
        return cls(clients[0], bucket, stack, signer=clients[-1], sse=sse,
                   sse_kms_key_id=sse_kms_key_id)

    async def check(self) -> None:
        """Raise :class:`OSError`, saying why, unless the bucket exists and answers."""
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            # an OSError: serve and the CLI turn it into one line, never a traceback
            code = _unavailable(exc, "check").code
            raise OSError(f"S3 bucket {self.bucket!r} is not usable: {code}") from None

    async def upload_url(self, key: str, *, size: int, mime: str, sha256: str,
                         expires_s: int) -> Upload:
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        url = await self._signer.generate_presigned_url("put_object", Params={
            "Bucket": self.bucket, "Key": key, "ContentType": mime, "ContentLength": size,
            "ChecksumSHA256": checksum, **self._sse,
        }, ExpiresIn=expires_s)
        return Upload(url=url, method="PUT", headers={
            "Content-Type": mime, "Content-Length": str(size),
            "x-amz-checksum-sha256": checksum, **self._sse_headers,
        }, expires_at=expires_at(expires_s))

    async def download_url(self, key: str, *, name: str, mime: str, expires_s: int) -> str:
        url: str = await self._signer.generate_presigned_url("get_object", Params={
            "Bucket": self.bucket, "Key": key, "ResponseContentType": mime,
            "ResponseContentDisposition": content_disposition(name),
        }, ExpiresIn=expires_s)
        return url

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = await self._client.head_object(Bucket=self.bucket, Key=key,
                                                  ChecksumMode="ENABLED")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise _unavailable(exc, "stat") from exc
        except BotoCoreError as exc:
            raise _unavailable(exc, "stat") from exc
        checksum = head.get("ChecksumSHA256")
        # a multipart upload's checksum is of its parts ("…-N"), not of the object
        sha256 = (base64.b64decode(checksum).hex()
                  if checksum and "-" not in checksum else None)
        return ObjectInfo(size=int(head["ContentLength"]), sha256=sha256)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                while chunk := await body.read(CHUNK_BYTES):
                    yield chunk
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc, "read") from exc

    async def put(self, key: str, data: bytes, mime: str) -> None:
        try:
            await self._client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                          ContentType=mime, **self._sse)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc, "put") from exc

    async def put_file(self, key: str, path: Path, mime: str) -> None:
        """Store the file at ``path`` under ``key``, in parts if it is large (backups)."""
        size = (await asyncio.to_thread(path.stat)).st_size
        try:
            if size <= PART_BYTES:
                data = await asyncio.to_thread(path.read_bytes)
                await self._client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                              ContentType=mime, **self._sse)
                return
            await self._put_parts(key, path, mime, size)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc, "put_file") from exc

    async def _put_parts(self, key: str, path: Path, mime: str, size: int) -> None:
        upload = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                             ContentType=mime, **self._sse)
        upload_id = upload["UploadId"]
        parts = []
        try:
            with path.open("rb") as source:
                for number in range(1, size // PART_BYTES + 2):
                    data = await asyncio.to_thread(source.read, PART_BYTES)
                    if not data:
                        break
                    sent = await self._client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                        Body=data)
                    parts.append({"PartNumber": number, "ETag": sent["ETag"]})
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": parts})
        except BaseException:
            # no half-made object stays behind, nor its parts (which S3 would bill)
            await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                      UploadId=upload_id)
            raise

    async def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            chunk = keys[start:start + DELETE_BATCH]
            try:
                answer = await self._client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in chunk], "Quiet": True})
            except (BotoCoreError, ClientError) as exc:
                raise _unavailable(exc, "delete") from exc
            if answer.get("Errors"):
                STORE_ERRORS.labels("delete").inc()
                first = answer["Errors"][0]
                raise ObjectStoreUnavailable(
                    f"S3 kept {len(answer['Errors'])} of {len(chunk)} objects: "
                    f"{first.get('Code')} {first.get('Key')}")

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        try:
            async for page in pages:
                keys += [o["Key"] for o in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc, "list_keys") from exc
        return keys

    async def close(self) -> None:
        await self._stack.aclose()


def _unavailable(exc: BotoCoreError | ClientError, op: str) -> ObjectStoreUnavailable:
    """The store's failure in ``op``, named by its error code (no URL, no credentials);
    counted in ``chat_object_store_errors_total``."""
    STORE_ERRORS.labels(op).inc()
    code = (exc.response.get("Error", {}).get("Code", "?") if isinstance(exc, ClientError)
            else type(exc).__name__)
    failure = ObjectStoreUnavailable(f"object store call failed: {code}")
    failure.code = code
    return failure
